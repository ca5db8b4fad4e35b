import { expect, type Page } from "@playwright/test";
import { PASSWORD } from "./bourse";

/** Sign in through the sign-in page (no 2FA); lands on `next` (the wallets by default). */
export async function signIn(page: Page, address: string, next?: string): Promise<void> {
  await page.goto(next ? `/signin?next=${encodeURIComponent(next)}` : "/signin");
  await expect(page.getByRole("heading", { name: "Sign in", level: 1 })).toBeVisible();
  await page.getByLabel("Email").fill(address);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await expect(page.getByText(address)).toBeVisible();
  await expect(page).not.toHaveURL(/\/signin/);
}
