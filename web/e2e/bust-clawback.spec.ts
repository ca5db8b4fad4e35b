/**
 * Scenario 6: an operator busts a trade from the back office, and the IB's commission on it
 * is clawed back: the IB portal shows it before and no longer after.
 */
import { randomUUID } from "node:crypto";
import { expect, test } from "@playwright/test";
import { createUser, email, fund, login, ok, register } from "./support/bourse";
import { visit } from "./support/checks";
import { signIn } from "./support/ui";

test("an operator busts a trade and the IB's commission is clawed back", async ({ page, browser }) => {
  // An IB on 30% of its clients' fees, a client it referred, and a counterparty.
  const ib = email("ib");
  const ibId = createUser(ib, "ib");
  const admin = email("admin");
  createUser(admin, "admin");
  const operator = email("ops");
  createUser(operator, "operator");
  const ibToken = await login(ib);
  await ok("PUT", `/api/v1/admin/ib/${ibId}/plan`, await login(admin), { kind: "percent_of_fee", levels: [3000] });
  const code = `E2E-${randomUUID().slice(0, 6).toUpperCase()}`;
  await ok("POST", "/api/v1/ib/referral-codes", ibToken, { code });
  const buyer = email("grace");
  const seller = email("bob");
  await register(buyer, code);
  await register(seller);
  const buyerToken = await login(buyer);
  const sellerToken = await login(seller);
  await fund(buyerToken, "USD", "1500.00");
  await fund(sellerToken, "EUR", "1000.00");

  // They trade 1000 EUR at 1.10000: the buyer pays a 2.20 USD taker fee, 0.66 of it the IB's.
  const order = { instrument: "EUR-USD", type: "limit", price: "1.10000", quantity: "1000.00" };
  await ok("POST", "/api/v1/orders", sellerToken, { ...order, side: "sell" }, true);
  await ok("POST", "/api/v1/orders", buyerToken, { ...order, side: "buy" }, true);
  let tradeId = 0;
  await expect
    .poll(async () => {
      const fills = (await ok("GET", "/api/v1/trades", buyerToken)).data as { id: number; instrument: string }[];
      tradeId = fills.find((f) => f.instrument === "EUR-USD")?.id ?? 0;
      return tradeId;
    }, { timeout: 60_000 })
    .toBeGreaterThan(0);
  await expect
    .poll(async () => JSON.stringify((await ok("GET", "/api/v1/ib/commissions", ibToken)).lines), { timeout: 60_000 })
    .toContain('"amount":"0.66"');

  // The IB portal shows the referral and the commission.
  await signIn(page, ib, "/ib");
  await expect(page.getByRole("heading", { name: "IB portal", level: 1 })).toBeVisible();
  const commissions = page.getByRole("region", { name: "Commissions" });
  await expect(commissions.getByRole("row").filter({ hasText: "0.66 USD" })).toBeVisible();
  await expect(page.getByRole("region", { name: "Referral codes" })).toContainText(code);
  await expect(page.getByRole("region", { name: "Referral tree" })).toContainText(buyer);
  await visit(page, "ib-portal", async () => { await expect(commissions.getByRole("row").filter({ hasText: "0.66 USD" })).toBeVisible(); });

  // The operator busts the trade, with a reason.
  const context = await browser.newContext({ baseURL: process.env.BOURSE_E2E_URL, viewport: { width: 1280, height: 800 } });
  const ops = await context.newPage();
  await signIn(ops, operator, "/admin");
  const bust = ops.getByRole("region", { name: "Bust a trade" });
  await bust.getByLabel("Trade number").fill(String(tradeId));
  await bust.getByLabel("Reason").fill("fat finger, agreed with both parties");
  await bust.getByRole("button", { name: "Bust the trade" }).click();
  await expect(bust.getByRole("status")).toHaveText(`Trade ${tradeId} on EUR-USD is busted; 1 commissions clawed back.`);
  await visit(ops, "back-office-bust", async () => { await expect(bust.getByRole("status")).toBeVisible(); });
  await context.close();

  // The IB's commission is gone.
  const nav = page.getByRole("navigation", { name: "Main" });
  await nav.getByRole("link", { name: "Wallets" }).click();
  await expect(page.getByRole("heading", { name: "Wallets", level: 1 })).toBeVisible();
  await nav.getByRole("link", { name: "IB portal" }).click();
  await expect(page.getByRole("heading", { name: "IB portal", level: 1 })).toBeVisible();
  await expect(commissions.getByText("No commissions yet.")).toBeVisible();
});
