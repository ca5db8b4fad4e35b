/** The typed API client: openapi-fetch over the generated `paths`, with the session's token. */
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";
import { apiErrorOf, getAccessToken, refreshSession, send } from "./session";

export type Schemas = components["schemas"];

let onSignedOut: () => void = () => undefined;

/** What to do when a call is refused for want of a session and refreshing did not help. */
export function setSignedOutHandler(handler: () => void): void {
  onSignedOut = handler;
}

function withToken(request: Request): Request {
  const token = getAccessToken();
  if (token) request.headers.set("Authorization", `Bearer ${token}`);
  return request;
}

/**
 * Whether a 401 is about the access token (missing, expired, revoked), which a refresh
 * may cure, and not a refusal of what was sent (a wrong password or TOTP code, which
 * must never be sent twice).
 */
async function tokenRefused(response: Response): Promise<boolean> {
  if (response.status !== 401) return false;
  try {
    const body = (await response.clone().json()) as { error?: unknown };
    return body.error === "invalid_token";
  } catch {
    return false;
  }
}

/** Sends with the access token; on a 401 for the token, refreshes the session once and retries. */
export async function authFetch(request: Request): Promise<Response> {
  const retry = request.clone();
  const hadToken = getAccessToken() !== null;
  const response = await send(withToken(request));
  if (!(await tokenRefused(response))) return response;
  const refreshed = await refreshSession().catch(() => false);
  if (!refreshed) {
    if (hadToken) onSignedOut();
    return response;
  }
  const second = await send(withToken(retry));
  if (await tokenRefused(second)) onSignedOut();
  return second;
}

export const api = createClient<paths>({
  baseUrl: typeof window === "undefined" ? "" : window.location.origin,
  fetch: authFetch,
});

interface Result<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The answer's data, or the ApiError it refused with. */
export async function unwrap<T>(call: Promise<Result<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (error !== undefined || !response.ok) {
    throw apiErrorOf(response.status, error, response.headers.get("X-Request-ID"));
  }
  return data as T;
}
