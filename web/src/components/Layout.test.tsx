import { screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, test, vi } from "vitest";
import { getAccessToken, setAccessToken } from "../api/session";
import { mockApi, renderWithApp } from "../test/render";
import { Layout } from "./Layout";

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

function signedInAs(role: string) {
  return mockApi(({ method, path }) => {
    if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
    if (path === "/api/v1/auth/me") return { status: 200, body: { id: "u1", email: "x@example.com", role, status: "active", totp_enabled: false, created_at: "2026-01-01T00:00:00Z" } };
    if (method === "DELETE" && path === "/api/v1/auth/session") return { status: 204 };
    return undefined;
  });
}

const links = () => screen.getAllByRole("link").map((link) => link.textContent);

describe("navigation by role", () => {
  test.each([
    ["client", false, false],
    ["ib", true, false],
    ["operator", false, true],
    ["admin", false, true],
  ])("%s: IB portal %s, back office %s", async (role, ib, office) => {
    signedInAs(role);
    renderWithApp(<Layout><p>page</p></Layout>);
    await screen.findByText("x@example.com", { exact: false });
    expect(links()).toContain("Wallets");
    expect(links().includes("IB portal")).toBe(ib);
    expect(links().includes("Back office")).toBe(office);
  });

  test("sign out ends the session on the server and forgets the token", async () => {
    const calls = signedInAs("client");
    renderWithApp(<Layout><p>page</p></Layout>);
    const user = userEvent.setup();
    await user.click(await screen.findByRole("button", { name: "Sign out" }));
    expect(await screen.findByRole("link", { name: "Sign in" })).toBeInTheDocument();
    expect(getAccessToken()).toBeNull();
    const signOut = calls.find((c) => c.method === "DELETE");
    expect(signOut?.headers.get("X-Bourse-CSRF")).toBe("1");
  });
});
