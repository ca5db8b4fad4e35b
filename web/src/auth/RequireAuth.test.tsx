import { screen } from "@testing-library/react";
import { Suspense } from "react";
import { afterEach, describe, expect, test, vi } from "vitest";
import { AppRoutes } from "../App";
import { setAccessToken } from "../api/session";
import { error, mockApi, renderWithApp } from "../test/render";

const user = (role: string) => ({ id: "u1", email: "c@example.com", role, status: "active", totp_enabled: false, created_at: "2026-01-01T00:00:00Z" });

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

function routes(path: string) {
  return renderWithApp(
    <Suspense fallback={<p>loading</p>}>
      <AppRoutes />
    </Suspense>,
    path,
  );
}

describe("route guards", () => {
  test("a client who types a back-office URL gets a 404 and no back-office data is requested", async () => {
    const calls = mockApi(({ path }) => {
      if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
      if (path === "/api/v1/auth/me") return { status: 200, body: user("client") };
      return error(403, "forbidden");
    });
    routes("/admin");
    expect(await screen.findByRole("heading", { name: "Page not found" })).toBeInTheDocument();
    expect(calls.map((c) => c.path).filter((p) => p.startsWith("/api/v1/admin"))).toEqual([]);
  });

  test("an operator sees the back office", async () => {
    mockApi(({ path }) => {
      if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
      if (path === "/api/v1/auth/me") return { status: 200, body: user("operator") };
      if (path.startsWith("/api/v1/admin/withdrawals")) return { status: 200, body: { data: [], next_before: null } };
      if (path.startsWith("/api/v1/admin/deposits")) return { status: 200, body: { data: [], next_before: null } };
      if (path === "/api/v1/admin/jobs/stats") return { status: 200, body: { busy_workers: 0, workers: 1, failed: 0, pipeline_heartbeat_at: null, queues: [] } };
      if (path.startsWith("/api/v1/admin/jobs/failed")) return { status: 200, body: [] };
      return undefined;
    });
    routes("/admin");
    expect(await screen.findByRole("heading", { name: "Back office" })).toBeInTheDocument();
    expect(await screen.findByText("None waiting.")).toBeInTheDocument();
  });

  test("signed out, a protected page sends to sign-in (the session cookie is tried first)", async () => {
    const calls = mockApi(({ path }) => (path === "/api/v1/auth/session/refresh" ? error(401, "invalid_token") : undefined));
    routes("/wallets");
    expect(await screen.findByRole("heading", { name: "Sign in" })).toBeInTheDocument();
    expect(calls.map((c) => c.path)).toEqual(["/api/v1/auth/session/refresh"]);
  });

  test("a reload while the server answers 503 tries the session again and stays signed in", async () => {
    let refreshes = 0;
    mockApi(({ path }) => {
      if (path === "/api/v1/auth/session/refresh") {
        refreshes += 1;
        return refreshes === 1 ? error(503, "database_busy") : { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
      }
      if (path === "/api/v1/auth/me") return { status: 200, body: user("operator") };
      if (path.startsWith("/api/v1/admin/withdrawals")) return { status: 200, body: { data: [], next_before: null } };
      if (path.startsWith("/api/v1/admin/deposits")) return { status: 200, body: { data: [], next_before: null } };
      if (path === "/api/v1/admin/jobs/stats") return { status: 200, body: { busy_workers: 0, workers: 1, failed: 0, pipeline_heartbeat_at: null, queues: [] } };
      if (path.startsWith("/api/v1/admin/jobs/failed")) return { status: 200, body: [] };
      return undefined;
    });
    routes("/admin");
    expect(await screen.findByRole("heading", { name: "Back office" }, { timeout: 5000 })).toBeInTheDocument();
    expect(refreshes).toBe(2);
  });

  test("a reload whose session refresh fails otherwise is signed out, without a second try of the cookie", async () => {
    const calls = mockApi(({ path }) => (path === "/api/v1/auth/session/refresh" ? error(500, "internal_error") : undefined));
    routes("/wallets");
    expect(await screen.findByRole("heading", { name: "Sign in" })).toBeInTheDocument();
    expect(calls.map((c) => c.path)).toEqual(["/api/v1/auth/session/refresh"]);
  });

  test("a 401 on a call refreshes the session once and retries with the new token", async () => {
    let refreshes = 0;
    const calls = mockApi(({ path, headers }) => {
      if (path === "/api/v1/auth/session/refresh") {
        refreshes += 1;
        return { status: 200, body: { access_token: `t${refreshes}`, token_type: "bearer", expires_in: 900 } };
      }
      if (path === "/api/v1/auth/me") return { status: 200, body: user("client") };
      if (path === "/api/v1/wallets") {
        return headers.get("Authorization") === "Bearer t2" ? { status: 200, body: { wallets: [{ asset: "USD", available: "10.10", held: "0.00", available_account_id: null, held_account_id: null }] } } : error(401, "invalid_token");
      }
      return undefined;
    });
    routes("/wallets");
    expect(await screen.findByText("10.10")).toBeInTheDocument();
    expect(refreshes).toBe(2);
    expect(calls.filter((c) => c.path === "/api/v1/wallets").map((c) => c.headers.get("Authorization"))).toEqual(["Bearer t1", "Bearer t2"]);
  });
});
