import { screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, expect, test, vi } from "vitest";
import { setAccessToken } from "../../api/session";
import { ERROR_MESSAGES } from "../../lib/errors";
import { error, mockApi, renderWithApp } from "../../test/render";
import WithdrawPage from "./WithdrawPage";

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

const PENDING = {
  id: "w1", user_id: "u1", asset: "USD", amount: "50000.00", connector: "simulator", destination: "acct-123", state: "pending_review",
  required_approvals: 2, approvals: [], hold_id: "h1", psp_reference: null, failure_reason: null, created_at: "2026-01-01T00:00:00Z", settled_at: null,
};

test("a withdrawal asks for the TOTP code when refused with totp_required, checks the amount's decimals, and a pending one can be cancelled", async () => {
  let list = [PENDING];
  const calls = mockApi(({ method, path, body }) => {
    if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
    if (path === "/api/v1/auth/me") return { status: 200, body: { id: "u1", email: "a@example.com", role: "client", status: "active", totp_enabled: false, created_at: "2026-01-01T00:00:00Z" } };
    if (path === "/api/v1/assets") return { status: 200, body: [{ code: "USD", scale: 2, name: "US dollar", active: true }] };
    if (path === "/api/v1/wallets") return { status: 200, body: { wallets: [{ asset: "USD", available: "100.00", held: "0.00", available_account_id: null, held_account_id: null }] } };
    if (method === "GET" && path.startsWith("/api/v1/withdrawals")) return { status: 200, body: { data: list, next_before: null } };
    if (method === "POST" && path === "/api/v1/withdrawals") {
      return (body as { totp_code?: string }).totp_code ? { status: 201, body: { ...PENDING, id: "w2", amount: "10.00" } } : error(401, "totp_required");
    }
    if (path === "/api/v1/withdrawals/w1/cancel") {
      list = [{ ...PENDING, state: "cancelled" }];
      return { status: 200, body: list[0] };
    }
    return undefined;
  });
  const user = userEvent.setup();
  renderWithApp(<WithdrawPage />);
  expect(await screen.findByText("Available: 100.00 USD")).toBeInTheDocument();

  await user.type(screen.getByLabelText("Amount"), "10.001");
  await user.type(screen.getByLabelText("Destination"), "acct-9");
  await user.click(screen.getByRole("button", { name: "Request withdrawal" }));
  expect(screen.getByLabelText("Amount")).toHaveAccessibleDescription(/USD has at most 2 decimals/);
  expect(calls.some((c) => c.method === "POST" && c.path === "/api/v1/withdrawals")).toBe(false);

  await user.clear(screen.getByLabelText("Amount"));
  await user.type(screen.getByLabelText("Amount"), "10.00");
  await user.click(screen.getByRole("button", { name: "Request withdrawal" }));
  const code = await screen.findByLabelText("Authentication code");
  expect(code).toHaveAccessibleDescription(new RegExp(ERROR_MESSAGES.totp_required.message));
  await user.type(code, "123456");
  await user.click(screen.getByRole("button", { name: "Request withdrawal" }));
  expect(await screen.findByText(/Your withdrawal of 10.00 USD is waiting for approval/)).toBeInTheDocument();
  const posts = calls.filter((c) => c.method === "POST" && c.path === "/api/v1/withdrawals");
  expect(posts.map((c) => c.body)).toEqual([
    { asset: "USD", amount: "10.00", destination: "acct-9" },
    { asset: "USD", amount: "10.00", destination: "acct-9", totp_code: "123456" },
  ]);
  expect(new Set(posts.map((c) => c.headers.get("Idempotency-Key"))).size).toBe(2);

  const item = screen.getByText("to acct-123").closest("li");
  if (!item) throw new Error("no withdrawal row");
  await user.click(within(item).getByRole("button", { name: /Cancel/ }));
  expect(await within(item).findByText("Cancelled")).toBeInTheDocument();
});
