/**
 * Scenario 5: a deposit whose payment arrived with another amount waits in `needs_review`;
 * an operator credits the amount received from the back office, with a reason, and the
 * client sees it credited.
 */
import { expect, test } from "@playwright/test";
import { createUser, depositNeedingReview, email, login, register } from "./support/bourse";
import { visit } from "./support/checks";
import { signIn } from "./support/ui";

test("an operator credits a needs_review deposit from the back office", async ({ page, browser }) => {
  const client = email("nadia");
  const clientId = await register(client);
  const depositId = await depositNeedingReview(await login(client), "USD", "60.00", 5000); // 50.00 USD paid
  const operator = email("ops");
  createUser(operator, "operator");

  // The client sees the deposit under review, nothing credited.
  await signIn(page, client, `/deposits/${depositId}`);
  await expect(page.getByText("Needs review", { exact: true })).toBeVisible();
  await expect(page.getByText("Our operations team is reviewing it.", { exact: false })).toBeVisible();
  await visit(page, "deposit-status-needs-review");

  // The operator finds it in the back office, with what was received, and credits it.
  const context = await browser.newContext({ baseURL: process.env.BOURSE_E2E_URL, viewport: { width: 1280, height: 800 } });
  const ops = await context.newPage();
  await signIn(ops, operator, "/admin");
  const item = ops.getByRole("region", { name: "Deposits needing review" }).getByRole("listitem").filter({ hasText: `user ${clientId}` });
  await expect(item).toContainText("60.00 USD");
  await expect(item).toContainText(/received 50(\.00)? USD|received 5000/);
  // A reason is required before anything is sent.
  await item.getByRole("button", { name: "Credit the amount received" }).click();
  await expect(item.getByText("Give a reason (at least 3 characters); it is kept in the audit trail.")).toBeVisible();
  await visit(ops, "back-office-deposit-review", async () => { await expect(item).toBeVisible(); });
  await item.getByLabel("Reason").fill("paid 50.00 by bank transfer, confirmed with the client");
  await item.getByRole("button", { name: "Credit the amount received" }).click();
  await expect(item).toHaveCount(0);

  // The client's balance has the 50.00 received.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Wallets" }).click();
  await expect(page.getByRole("link", { name: "50.00 USD available: statement" })).toBeVisible();
  await context.close();
});
