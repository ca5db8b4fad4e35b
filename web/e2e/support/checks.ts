/** Accessibility (axe-core) and screenshots of the pages the scenarios visit. */
import AxeBuilder from "@axe-core/playwright";
import { expect, type Page } from "@playwright/test";
import path from "node:path";
import { SCREENSHOTS } from "./paths";

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 812 };

/** Run axe on the page as it stands; fail on any serious or critical violation. */
export async function checkA11y(page: Page, where: string): Promise<void> {
  const results = await new AxeBuilder({ page }).analyze();
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  const report = bad
    .map((v) => `${v.id} (${v.impact}): ${v.help} ${v.helpUrl}\n` + v.nodes.map((n) => `    ${n.target.join(" ")}`).join("\n"))
    .join("\n");
  if (bad.length) console.log(`axe on ${where} (${page.url()}):\n${report}`);
  expect(report, `axe: serious or critical violations on ${where} (${page.url()})`).toBe("");
}

/**
 * Check the page with axe, then save it at desktop and phone width as NAME-desktop.png and
 * NAME-phone.png (axe runs again at phone width: the layout changes there). `ready` is
 * awaited after each resize, so the picture shows the page settled.
 */
export async function visit(page: Page, name: string, ready?: () => Promise<void>): Promise<void> {
  const original = page.viewportSize() ?? DESKTOP;
  await page.setViewportSize(DESKTOP);
  if (ready) await ready();
  await checkA11y(page, `${name} (desktop)`);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
  if (ready) await ready();
  await checkA11y(page, `${name} (phone)`);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize(original);
}
