/**
 * Scenario 1: a client registers through an IB's referral link, signs in, enrols 2FA,
 * deposits through the simulator's checkout and sees the balance arrive.
 */
import { randomUUID } from "node:crypto";
import { expect, test } from "@playwright/test";
import { PASSWORD, createUser, email, login, ok } from "./support/bourse";
import { visit } from "./support/checks";
import { totp } from "./support/totp";

test("a client registers through an IB's link, enrols 2FA, deposits through the checkout and sees the balance", async ({ page, context }) => {
  // The IB and its referral code, through the CLI and the API.
  const ib = email("ib");
  createUser(ib, "ib");
  const ibToken = await login(ib);
  const code = `E2E-${randomUUID().slice(0, 6).toUpperCase()}`;
  await ok("POST", "/api/v1/ib/referral-codes", ibToken, { code });

  // Register through the link: the code is filled in from ?ref=.
  const client = email("client");
  await page.goto(`/register?ref=${code}`);
  await expect(page.getByRole("heading", { name: "Register", level: 1 })).toBeVisible();
  await expect(page.getByLabel("Referral code (optional)")).toHaveValue(code);
  await visit(page, "register");
  await page.getByLabel("Email").fill(client);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page.getByText("Your account is ready.")).toBeVisible();

  // Sign in.
  await page.getByRole("main").getByRole("link", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Sign in", level: 1 })).toBeVisible();
  await visit(page, "signin");
  await page.getByLabel("Email").fill(client);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await expect(page).toHaveURL(/\/wallets$/);
  await expect(page.getByRole("heading", { name: "Wallets", level: 1 })).toBeVisible();
  await expect(page.getByRole("row", { name: "USD 0.00 0.00" })).toBeVisible();

  // The IB sees the new client among its referrals.
  const referrals = await ok("GET", "/api/v1/ib/referrals", ibToken);
  expect(JSON.stringify(referrals)).toContain(client);

  // Enrol 2FA: read the secret off the page, confirm with a code computed from it.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Security" }).click();
  await expect(page.getByRole("heading", { name: "Security", level: 1 })).toBeVisible();
  await page.getByRole("button", { name: "Set up 2FA" }).click();
  const secretBox = page.locator("code");
  await expect(secretBox).toBeVisible();
  await visit(page, "security-2fa-enrol", async () => { await expect(page.getByRole("img", { name: "QR code for your authenticator app" })).toBeVisible(); });
  const secret = (await secretBox.innerText()).trim();
  expect(secret).toMatch(/^[A-Z2-7]+=*$/);
  await page.getByLabel("Code from the app").fill(totp(secret));
  await page.getByRole("button", { name: "Turn on 2FA" }).click();
  await expect(page.getByRole("status").filter({ hasText: "Two-factor authentication is on." })).toBeVisible();
  await expect(page.getByRole("button", { name: "Turn off 2FA" })).toBeVisible();

  // Deposit 1500.00 USD through the simulator.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Deposit" }).click();
  await expect(page.getByRole("heading", { name: "Deposit", level: 1 })).toBeVisible();
  await page.getByLabel("Asset").selectOption("USD");
  await page.getByLabel("Amount").fill("1500.00");
  await visit(page, "deposit");
  await page.getByRole("button", { name: "Continue to checkout" }).click();
  await expect(page).toHaveURL(/\/deposits\/[0-9a-f-]{36}$/);
  await expect(page.getByText("1500.00 USD")).toBeVisible();
  await expect(page.getByText("Pending", { exact: true })).toBeVisible();
  const checkoutLink = page.getByRole("link", { name: /Pay at the provider's checkout/ });
  await expect(checkoutLink).toBeVisible();
  await visit(page, "deposit-status-pending");

  // The checkout opens in a new tab; approve the payment there.
  const [checkout] = await Promise.all([context.waitForEvent("page"), checkoutLink.click()]);
  await checkout.waitForLoadState();
  await expect(checkout.getByRole("heading", { name: /Pay with PSP Simulator/ })).toBeVisible();
  await expect(checkout.locator("dl")).toContainText("150000 (minor units)");
  await expect(checkout.locator("dl")).toContainText("USD");
  await checkout.getByRole("button", { name: "Approve" }).click();
  await expect(checkout.getByRole("heading", { name: "Payment approved", level: 1 })).toBeVisible();
  await checkout.close();

  // The status page updates by itself; the balance is on the wallets page.
  await expect(page.getByText("Succeeded", { exact: true })).toBeVisible({ timeout: 60_000 });
  await expect(page.getByText("The payment arrived and your balance is credited.")).toBeVisible();
  await visit(page, "deposit-status-succeeded");
  await page.getByRole("link", { name: "See your wallets" }).click();
  await expect(page.getByRole("heading", { name: "Wallets", level: 1 })).toBeVisible();
  const usd = page.getByRole("row", { name: /^USD/ });
  await expect(usd.getByRole("link", { name: "1500.00 USD available: statement" })).toBeVisible();
  await expect(usd.getByRole("cell").nth(1)).toHaveText("0.00"); // held
  await visit(page, "wallets");

  // The statement shows the credit.
  await usd.getByRole("link", { name: "1500.00 USD available: statement" }).click();
  await expect(page).toHaveURL(/\/statement$/);
  await expect(page.getByText("1500.00").first()).toBeVisible();
  await visit(page, "statement");
});
