import { screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, expect, test, vi } from "vitest";
import { setAccessToken } from "../../api/session";
import { ERROR_MESSAGES } from "../../lib/errors";
import { error, mockApi, renderWithApp } from "../../test/render";
import BackOfficePage from "./BackOfficePage";

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

const DEPOSIT = {
  id: "d1", user_id: "u9", asset: "USD", amount: "100.00", connector: "simulator", state: "needs_review", psp_reference: "p", checkout_url: null,
  received_amount: "90.00", received_currency: "USD", reversed_amount: "0.00", failure_reason: "amount mismatch", created_at: "2026-01-01T00:00:00Z",
  settled_at: null, credited_at: null,
};
const WITHDRAWAL = {
  id: "w1", user_id: "u9", asset: "USD", amount: "50000.00", connector: "simulator", destination: "acct", state: "pending_review", required_approvals: 2,
  approvals: [{ operator_id: "op1", at: "2026-01-01T00:00:00Z" }], hold_id: "h", psp_reference: null, failure_reason: null, created_at: "2026-01-01T00:00:00Z", settled_at: null,
};

function api(credit: () => { status: number; body?: unknown }) {
  return mockApi(({ method, path }) => {
    if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
    if (path === "/api/v1/auth/me") return { status: 200, body: { id: "op1", email: "op@example.com", role: "operator", status: "active", totp_enabled: true, created_at: "2026-01-01T00:00:00Z" } };
    if (method === "GET" && path.startsWith("/api/v1/admin/withdrawals")) return { status: 200, body: { data: [WITHDRAWAL], next_before: null } };
    if (method === "GET" && path.startsWith("/api/v1/admin/deposits")) return { status: 200, body: { data: [DEPOSIT], next_before: null } };
    if (path === "/api/v1/admin/jobs/stats") return { status: 200, body: { busy_workers: 1, workers: 2, failed: 0, pipeline_heartbeat_at: null, queues: [{ queue: "deposits", ready: 3, delayed: 0, reserved: 1, oldest_job_age_seconds: 12.4 }] } };
    if (path.startsWith("/api/v1/admin/jobs/failed")) return { status: 200, body: [] };
    if (path === "/api/v1/instruments") return { status: 200, body: [] };
    if (path.startsWith("/api/v1/admin/reconciliation-reports")) return { status: 200, body: { data: [] } };
    if (method === "POST" && path === "/api/v1/admin/deposits/d1/credit") return credit();
    return undefined;
  });
}

test("four eyes is visible: the operator who approved first cannot approve again", async () => {
  api(() => ({ status: 500 }));
  renderWithApp(<BackOfficePage />);
  expect(await screen.findByRole("button", { name: "Approved by you" })).toBeDisabled();
  expect(screen.getByText(/you cannot approve twice/)).toBeInTheDocument();
  expect(screen.getByText("Approvals 1 of 2", { exact: false })).toBeInTheDocument();
  expect(await screen.findByRole("rowheader", { name: "deposits" })).toBeInTheDocument();
});

test("crediting a deposit under review needs a reason, sends it with an Idempotency-Key, and shows a refusal", async () => {
  const calls = api(() => error(409, "deposit_currency_mismatch"));
  const user = userEvent.setup();
  renderWithApp(<BackOfficePage />);
  const row = (await screen.findByText("received 90.00 USD")).closest("li");
  if (!row) throw new Error("no deposit row");
  await user.click(within(row).getByRole("button", { name: "Credit the amount received" }));
  expect(within(row).getByLabelText("Reason")).toHaveAccessibleDescription(/Give a reason/);
  expect(calls.some((c) => c.path.endsWith("/credit"))).toBe(false);

  await user.type(within(row).getByLabelText("Reason"), "PSP confirmed 90.00 by email");
  await user.click(within(row).getByRole("button", { name: "Credit the amount received" }));
  expect(await within(row).findByRole("alert")).toHaveTextContent(ERROR_MESSAGES.deposit_currency_mismatch.message);
  const credit = calls.find((c) => c.path.endsWith("/credit"));
  expect(credit?.body).toEqual({ reason: "PSP confirmed 90.00 by email" });
  expect(credit?.headers.get("Idempotency-Key")).toBeTruthy();
  expect(credit?.headers.get("Authorization")).toBe("Bearer t");
});
