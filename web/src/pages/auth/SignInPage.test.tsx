import { screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { Route, Routes } from "react-router";
import { afterEach, describe, expect, test, vi } from "vitest";
import { getAccessToken, setAccessToken } from "../../api/session";
import { ERROR_MESSAGES } from "../../lib/errors";
import { error, mockApi, renderWithApp } from "../../test/render";
import SignInPage from "./SignInPage";

const USER = { id: "u1", email: "ann@example.com", role: "client", status: "active", totp_enabled: true, created_at: "2026-01-01T00:00:00Z" };

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

function app() {
  return renderWithApp(
    <Routes>
      <Route path="/signin" element={<SignInPage />} />
      <Route path="/wallets" element={<p>wallets page</p>} />
    </Routes>,
    "/signin",
  );
}

describe("sign in", () => {
  test("asks for the TOTP code when the account has 2FA, shows a wrong code next to the field, then signs in", async () => {
    const user = userEvent.setup();
    const calls = mockApi(({ method, path, body }) => {
      if (path === "/api/v1/auth/session/refresh") return error(401, "invalid_token");
      if (method === "POST" && path === "/api/v1/auth/session") {
        const { totp_code } = body as { totp_code?: string };
        if (totp_code === undefined) return error(401, "totp_required");
        if (totp_code !== "123456") return error(401, "invalid_totp_code");
        return { status: 200, body: { access_token: "tok-1", token_type: "bearer", expires_in: 900 } };
      }
      if (path === "/api/v1/auth/me") return { status: 200, body: USER };
      return undefined;
    });
    app();

    await user.type(await screen.findByLabelText("Email"), "ann@example.com");
    await user.type(screen.getByLabelText("Password"), "correct horse");
    await user.click(screen.getByRole("button", { name: "Sign in" }));

    const code = await screen.findByLabelText("Authentication code");
    expect(screen.queryByLabelText("Password")).not.toBeInTheDocument();
    await user.type(code, "000000");
    await user.click(screen.getByRole("button", { name: "Verify and sign in" }));
    const message = await screen.findByText(ERROR_MESSAGES.invalid_totp_code.message);
    expect(code).toHaveAttribute("aria-invalid", "true");
    expect(code.getAttribute("aria-describedby")).toContain(message.id);
    expect(getAccessToken()).toBeNull();

    await user.clear(code);
    await user.type(code, "123456");
    await user.click(screen.getByRole("button", { name: "Verify and sign in" }));
    expect(await screen.findByText("wallets page")).toBeInTheDocument();

    // The token is in memory only; the session calls carry the CSRF header and the cookie.
    expect(getAccessToken()).toBe("tok-1");
    expect(window.localStorage.length).toBe(0);
    expect(window.sessionStorage.length).toBe(0);
    expect(document.cookie).toBe("");
    const logins = calls.filter((c) => c.path === "/api/v1/auth/session");
    expect(logins.map((c) => (c.body as { totp_code?: string }).totp_code)).toEqual([undefined, "000000", "123456"]);
    expect(logins.every((c) => c.headers.get("X-Bourse-CSRF") === "1")).toBe(true);
    const me = calls.find((c) => c.path === "/api/v1/auth/me");
    expect(me?.headers.get("Authorization")).toBe("Bearer tok-1");
  });

  test("wrong credentials are shown next to the password, and the button is busy meanwhile", async () => {
    const user = userEvent.setup();
    let release: () => void = () => undefined;
    mockApi(({ path }) => {
      if (path === "/api/v1/auth/session/refresh") return error(401, "invalid_token");
      if (path === "/api/v1/auth/session") return error(401, "invalid_credentials");
      return undefined;
    });
    const realFetch = globalThis.fetch;
    vi.stubGlobal("fetch", async (input: RequestInfo | URL, init?: RequestInit) => {
      if (String(input instanceof Request ? input.url : input).endsWith("/api/v1/auth/session")) await new Promise<void>((resolve) => { release = resolve; });
      return realFetch(input, init);
    });
    app();
    await user.type(await screen.findByLabelText("Email"), "ann@example.com");
    await user.type(screen.getByLabelText("Password"), "wrong");
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    const busy = await screen.findByRole("button", { name: "Signing in…" });
    expect(busy).toBeDisabled();
    release();
    await waitFor(() => { expect(screen.getByLabelText("Password")).toHaveAttribute("aria-invalid", "true"); });
    expect(screen.getByText(ERROR_MESSAGES.invalid_credentials.message)).toBeInTheDocument();
  });
});
