/**
 * The browser session: the access token in this module's memory only, the refresh token
 * in the HttpOnly cookie the API sets on /api/v1/auth/session (the script never sees it).
 *
 * Nothing is written to localStorage, sessionStorage or a readable cookie: a reload
 * keeps the user signed in because the app asks /api/v1/auth/session/refresh for a new
 * access token with the cookie.
 */
import { ApiError, type FieldError } from "../lib/errors";

export const SESSION_PATH = "/api/v1/auth/session";
const CSRF = { "X-Bourse-CSRF": "1" } as const;

let accessToken: string | null = null;
const listeners = new Set<() => void>();

export function getAccessToken(): string | null {
  return accessToken;
}

export function setAccessToken(token: string | null): void {
  if (token === accessToken) return;
  accessToken = token;
  listeners.forEach((listener) => { listener(); });
}

export function subscribeToken(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

interface ErrorBody {
  error?: unknown;
  detail?: unknown;
  request_id?: unknown;
  errors?: unknown;
}

/** An error body (parsed) as an ApiError; any body that is not the documented shape too. */
export function apiErrorOf(status: number, parsed: unknown, requestIdHeader: string | null): ApiError {
  const body: ErrorBody = parsed !== null && typeof parsed === "object" ? parsed : {};
  const code = typeof body.error === "string" ? body.error : "unexpected_response";
  const detail = typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
  const requestId = typeof body.request_id === "string" ? body.request_id : requestIdHeader;
  const errors = Array.isArray(body.errors) ? (body.errors as FieldError[]) : [];
  return new ApiError(status, code, detail, requestId, errors);
}

/** An API error response as an ApiError. */
export async function errorFrom(response: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: an unexpected response
  }
  return apiErrorOf(response.status, body, response.headers.get("X-Request-ID"));
}

export async function send(input: RequestInfo, init?: RequestInit): Promise<Response> {
  try {
    return await fetch(input, init);
  } catch {
    throw new ApiError(0, "network_error", "The server cannot be reached", null);
  }
}

interface SessionToken {
  access_token: string;
  token_type: string;
  expires_in: number;
}

let refreshing: Promise<boolean> | null = null;

/** Gets a new access token with the session cookie; false when signed out. One at a time. */
export function refreshSession(): Promise<boolean> {
  refreshing ??= (async () => {
    try {
      const response = await send(`${SESSION_PATH}/refresh`, {
        method: "POST",
        credentials: "same-origin",
        headers: CSRF,
      });
      if (response.ok) {
        setAccessToken(((await response.json()) as SessionToken).access_token);
        return true;
      }
      if (response.status === 401 || response.status === 403) {
        setAccessToken(null);
        return false;
      }
      throw await errorFrom(response);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export interface Credentials {
  email: string;
  password: string;
  totp_code?: string;
}

/** Signs in: the access token is kept in memory, the refresh token set as a cookie. */
export async function signIn(credentials: Credentials): Promise<void> {
  const response = await send(SESSION_PATH, {
    method: "POST",
    credentials: "same-origin",
    headers: { ...CSRF, "Content-Type": "application/json" },
    body: JSON.stringify(credentials),
  });
  if (!response.ok) throw await errorFrom(response);
  setAccessToken(((await response.json()) as SessionToken).access_token);
}

/** Signs out: the server ends the session and clears the cookie; the memory is cleared anyway. */
export async function signOut(): Promise<void> {
  try {
    const response = await send(SESSION_PATH, { method: "DELETE", credentials: "same-origin", headers: CSRF });
    if (!response.ok && response.status !== 401) throw await errorFrom(response);
  } finally {
    setAccessToken(null);
  }
}
