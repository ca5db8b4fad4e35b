/**
 * Scenario 4: a client asks for a withdrawal above the second review threshold (10000 USD),
 * and two different operators approve it in the back office; four eyes is visible (the
 * first cannot approve twice), and the client sees it paid.
 */
import { expect, test, type Browser, type Page } from "@playwright/test";
import { createUser, email, fund, login, register } from "./support/bourse";
import { visit } from "./support/checks";
import { signIn } from "./support/ui";

const AMOUNT = "11000.00";
const DESTINATION = "GB33BUKB20201555555555";

async function backOffice(browser: Browser, operator: string): Promise<Page> {
  const context = await browser.newContext({ baseURL: process.env.BOURSE_E2E_URL, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await signIn(page, operator, "/admin");
  await expect(page.getByRole("heading", { name: "Back office", level: 1 })).toBeVisible();
  return page;
}

test("a withdrawal above the review threshold is approved by two different operators", async ({ page, browser }) => {
  const client = email("wanda");
  await register(client);
  await fund(await login(client), "USD", "12000.00");
  const first = email("ops1");
  const second = email("ops2");
  createUser(first, "operator");
  createUser(second, "operator");

  // The client asks for 11000.00 USD: held, waiting for two approvals.
  await signIn(page, client);
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Withdraw" }).click();
  await expect(page.getByRole("heading", { name: "Withdraw", level: 1 })).toBeVisible();
  await page.getByLabel("Asset").selectOption("USD");
  await page.getByLabel("Amount").fill(AMOUNT);
  await page.getByLabel("Destination").fill(DESTINATION);
  await page.getByRole("button", { name: "Request withdrawal" }).click();
  const mine = page.getByRole("region", { name: "Your withdrawals" }).getByRole("listitem").filter({ hasText: `${AMOUNT} USD` });
  await expect(mine).toContainText("Waiting for approval (0 of 2 approvals)");
  await expect(mine.getByRole("button", { name: /Cancel/ })).toBeVisible();
  await visit(page, "withdraw");

  // The first operator approves; the page shows it, and that they cannot approve again.
  const ops1 = await backOffice(browser, first);
  const queue = (p: Page) => p.getByRole("region", { name: "Withdrawals waiting for approval" });
  const item1 = queue(ops1).getByRole("listitem").filter({ hasText: `${AMOUNT} USD` });
  await expect(item1).toContainText("Approvals 0 of 2");
  await item1.getByLabel("Reason").fill("known client, e2e");
  await item1.getByRole("button", { name: "Approve", exact: true }).click();
  await expect(item1).toContainText("Approvals 1 of 2");
  await expect(item1.getByRole("button", { name: "Approved by you" })).toBeDisabled();
  await expect(item1.getByText("Four eyes: you cannot approve twice; another operator must approve.")).toBeVisible();
  await visit(ops1, "back-office", async () => { await expect(item1).toContainText("Approvals 1 of 2"); });

  // The second operator sees the first approval and gives the second: it leaves the queue.
  const ops2 = await backOffice(browser, second);
  const item2 = queue(ops2).getByRole("listitem").filter({ hasText: `${AMOUNT} USD` });
  await expect(item2).toContainText("Approvals 1 of 2");
  await expect(item2.getByRole("button", { name: "Approve", exact: true })).toBeEnabled();
  await item2.getByRole("button", { name: "Approve", exact: true }).click();
  await expect(item2).toHaveCount(0);

  // The client sees it approved, then paid by the worker through the simulator.
  // (Inside the app: leaving and coming back re-reads the list; no page load.)
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(async () => {
    await nav.getByRole("link", { name: "Wallets" }).click();
    await expect(page.getByRole("heading", { name: "Wallets", level: 1 })).toBeVisible();
    await nav.getByRole("link", { name: "Withdraw" }).click();
    await expect(mine).toContainText("Paid", { timeout: 5_000 });
  }).toPass({ timeout: 90_000 });
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Wallets" }).click();
  await expect(page.getByRole("link", { name: "1000.00 USD available: statement" })).toBeVisible();
  await ops1.context().close();
  await ops2.context().close();
});
