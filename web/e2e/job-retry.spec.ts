/**
 * Scenario 7: a failed job is retried from the back office's queue screen; it runs and
 * leaves the failed list.
 */
import { randomUUID } from "node:crypto";
import { expect, test } from "@playwright/test";
import { call, createUser, email, login, ok, recordFailedJob } from "./support/bourse";
import { visit } from "./support/checks";
import { signIn } from "./support/ui";

test("a failed job is retried from the queue screen", async ({ page }) => {
  const marker = `database went away (e2e ${randomUUID().slice(0, 8)})`;
  recordFailedJob(marker);
  const operator = email("ops");
  createUser(operator, "operator");

  await signIn(page, operator, "/admin");
  const queues = page.getByRole("region", { name: "Queues", exact: true });
  const job = queues.getByRole("listitem").filter({ hasText: marker });
  await expect(job).toContainText("identity.prune_expired");
  await expect(job).toContainText("queue default");
  await expect(job).toContainText("3 attempts");
  await job.getByRole("button", { name: "Traceback" }).click();
  await expect(job.locator("pre")).toContainText("Traceback (most recent call last):");
  await expect(job.getByRole("button", { name: "Hide traceback" })).toHaveAttribute("aria-expanded", "true");
  await visit(page, "back-office-queues", async () => { await expect(job.locator("pre")).toBeVisible(); });

  await job.getByRole("button", { name: "Retry" }).click();
  await expect(job).toHaveCount(0);

  // Back on its queue, a worker runs it, and it does not fail again.
  const operatorToken = await login(operator);
  await expect
    .poll(async () => {
      const stats = await ok("GET", "/api/v1/admin/jobs/stats", operatorToken);
      const queue = (stats.queues as { queue: string; ready: number; reserved: number }[]).find((q) => q.queue === "default");
      const failed = (await call("GET", "/api/v1/admin/jobs/failed?limit=100", operatorToken)).json as unknown as { job: string }[];
      const again = failed.filter((f) => f.job === "identity.prune_expired").length;
      return `${again} failed again, ${(queue?.ready ?? 0) + (queue?.reserved ?? 0)} waiting on default`;
    }, { timeout: 60_000 })
    .toBe("0 failed again, 0 waiting on default");
  const nav = page.getByRole("navigation", { name: "Main" });
  await nav.getByRole("link", { name: "Wallets" }).click();
  await expect(page.getByRole("heading", { name: "Wallets", level: 1 })).toBeVisible();
  await nav.getByRole("link", { name: "Back office" }).click();
  await expect(page.getByRole("heading", { name: "Back office", level: 1 })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Failed jobs" })).toBeVisible();
  await expect(queues.getByRole("status")).toHaveCount(0); // both lists loaded
  await expect(queues.getByRole("listitem").filter({ hasText: "identity.prune_expired" })).toHaveCount(0);
});
