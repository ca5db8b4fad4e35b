/**
 * Scenario 3: two clients trade with each other, each in their own browser, and both see
 * the book, the recent trades and their own orders and fills update live (over the WebSocket).
 */
import { expect, test, type Page } from "@playwright/test";
import { email, fund, login, register } from "./support/bourse";
import { visit } from "./support/checks";
import { signIn } from "./support/ui";

const SYMBOL = "EUR-USD";

async function openTrade(page: Page, screenshot = false): Promise<void> {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Trade" }).click();
  const link = page.getByRole("link", { name: SYMBOL, exact: true });
  await expect(link).toBeVisible();
  if (screenshot) await visit(page, "markets");
  await link.click();
  await expect(page.getByRole("heading", { name: SYMBOL, level: 1 })).toBeVisible();
  await expect(page.getByRole("region", { name: "Order book" }).getByText("Loading the book…")).toHaveCount(0);
  await expect(page.getByRole("region", { name: "Recent trades" }).getByText("Loading trades…")).toHaveCount(0);
}

async function placeLimit(page: Page, side: "Buy" | "Sell", price: string, quantity: string): Promise<void> {
  const form = page.getByRole("form", { name: `Order entry for ${SYMBOL}` });
  await form.getByText(side, { exact: true }).click();
  await expect(form.getByRole("radio", { name: side })).toBeChecked();
  await form.getByLabel("Price (USD)").fill(price);
  await form.getByLabel("Quantity (EUR)").fill(quantity);
  await expect(form.getByTestId("estimate-notional")).toHaveText("1100.00 USD");
  await form.getByRole("button", { name: `${side} EUR` }).click();
  await expect(form.getByRole("status").filter({ hasText: /^Order / })).toBeVisible();
}

test("two clients trade with each other and both see the book and their fills update live", async ({ browser }) => {
  const seller = email("bob");
  const buyer = email("grace");
  await register(seller);
  await register(buyer);
  await fund(await login(seller), "EUR", "1000.00");
  await fund(await login(buyer), "USD", "1500.00");

  const base = { baseURL: process.env.BOURSE_E2E_URL, viewport: { width: 1280, height: 800 } };
  const bobContext = await browser.newContext(base);
  const graceContext = await browser.newContext(base);
  const bob = await bobContext.newPage();
  const grace = await graceContext.newPage();
  await signIn(bob, seller);
  await signIn(grace, buyer);
  await openTrade(bob);
  await openTrade(grace, true);

  // Bob watches his fills; none yet.
  await bob.getByRole("tab", { name: "Fills" }).click();
  await expect(bob.getByText("No fills yet.")).toBeVisible();

  // Bob offers 1000 EUR at 1.10000: both books show the level, without a reload.
  await placeLimit(bob, "Sell", "1.10000", "1000.00");
  const level = (page: Page) => page.getByRole("region", { name: "Order book" }).getByRole("row", { name: "1.10000 1000.00 1" });
  await expect(level(bob)).toBeVisible();
  await expect(level(grace)).toBeVisible();
  await expect(bob.getByRole("tab", { name: "Open orders (1)" })).toBeVisible();

  // Grace bids the same price: the level empties, the trade appears on both screens (other
  // scenarios on this server may have traded the same price and size before: count them),
  // and each one's fill arrives in their own table.
  const tape = (page: Page) => page.getByRole("region", { name: "Recent trades" }).getByRole("row").filter({ hasText: "1.10000" }).filter({ hasText: "1000.00" });
  const before = await tape(grace).count();
  await expect(tape(bob)).toHaveCount(before);
  await grace.getByRole("tab", { name: "Fills" }).click();
  await placeLimit(grace, "Buy", "1.10000", "1000.00");
  for (const page of [bob, grace]) {
    await expect(level(page)).toHaveCount(0);
    await expect(tape(page)).toHaveCount(before + 1);
  }
  const fill = (page: Page) => page.getByRole("region", { name: "Fills" }).getByRole("row").filter({ hasText: "1.10000" });
  await expect(fill(bob)).toHaveCount(1);
  await expect(fill(bob)).toContainText("Sell");
  await expect(fill(bob)).toContainText("1100.00");
  await expect(fill(bob)).toContainText("maker");
  await expect(fill(grace)).toHaveCount(1);
  await expect(fill(grace)).toContainText("Buy");
  await expect(fill(grace)).toContainText("taker");
  await expect(bob.getByRole("tab", { name: "Open orders (0)" })).toBeVisible();

  await visit(grace, "trade", async () => { await expect(fill(grace)).toBeVisible(); });
  await visit(bob, "trade-seller", async () => { await expect(fill(bob)).toBeVisible(); });

  // The balances moved: Grace holds the euros.
  await grace.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Wallets" }).click();
  await expect(grace.getByRole("link", { name: "1000.00 EUR available: statement" })).toBeVisible();
  await bobContext.close();
  await graceContext.close();
});
