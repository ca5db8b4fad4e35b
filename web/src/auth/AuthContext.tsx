import { useQuery, useQueryClient } from "@tanstack/react-query";
import { createContext, useCallback, useContext, useEffect, useMemo, useState, useSyncExternalStore, type ReactNode } from "react";
import { api, setSignedOutHandler, unwrap, type Schemas } from "../api/client";
import { ApiError } from "../lib/errors";
import { getAccessToken, refreshSession, signIn as startSession, signOut as endSession, subscribeToken, type Credentials } from "../api/session";

export type User = Schemas["UserOut"];
export type Role = Schemas["Role"];

export interface Auth {
  /** "restoring" until the first refresh has answered, on load. */
  status: "restoring" | "signedOut" | "signedIn";
  user: User | null;
  signIn: (credentials: Credentials) => Promise<void>;
  signOut: () => Promise<void>;
}

const AuthContext = createContext<Auth | null>(null);

export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (!auth) throw new Error("useAuth is used outside <AuthProvider>");
  return auth;
}

/** Waits before each new try of a refused restore: a busy server is not a signed-out user. */
export const RESTORE_BACKOFF_MS = [500, 1000, 2000];

/**
 * The session refresh on load, tried again after a 503: the server refused it before doing
 * anything (admission control, a busy database), so the cookie is still the current one.
 * Any other failure is final: after a lost answer the cookie may already be used up, and
 * trying it again would be taken for a stolen token and end the session.
 */
async function restoreSession(): Promise<boolean> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await refreshSession();
    } catch (error) {
      const busy = error instanceof ApiError && error.status === 503;
      if (!busy || attempt >= RESTORE_BACKOFF_MS.length) throw error;
      await new Promise((resolve) => setTimeout(resolve, RESTORE_BACKOFF_MS[attempt]));
    }
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const client = useQueryClient();
  const token = useSyncExternalStore(subscribeToken, getAccessToken);
  const [restored, setRestored] = useState(false);

  useEffect(() => {
    let live = true;
    // A reload keeps the session: the cookie gets a new access token.
    void restoreSession()
      .catch(() => false)
      .finally(() => {
        if (live) setRestored(true);
      });
    return () => {
      live = false;
    };
  }, []);

  useEffect(() => {
    setSignedOutHandler(() => {
      client.clear();
    });
  }, [client]);

  const me = useQuery({
    queryKey: ["me"],
    queryFn: () => unwrap(api.GET("/api/v1/auth/me")),
    enabled: token !== null,
    staleTime: 60_000,
  });

  const signIn = useCallback(async (credentials: Credentials) => {
    await startSession(credentials);
  }, []);

  const signOut = useCallback(async () => {
    try {
      await endSession();
    } finally {
      client.clear();
    }
  }, [client]);

  const value = useMemo<Auth>(() => {
    let status: Auth["status"];
    if (token === null) status = restored ? "signedOut" : "restoring";
    else status = me.data ? "signedIn" : me.isError ? "signedOut" : "restoring";
    return { status, user: token !== null ? (me.data ?? null) : null, signIn, signOut };
  }, [token, restored, me.data, me.isError, signIn, signOut]);

  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}
