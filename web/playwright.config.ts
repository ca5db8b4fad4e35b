import { defineConfig, devices } from "@playwright/test";

/**
 * End-to-end tests in a real browser (Debian's Chromium) against a real `bourse up`
 * on SQLite, started by e2e/global-setup.ts in a fresh temporary directory on free
 * ports. One worker: the scenarios share that one server, and a loaded 2-core CI
 * machine runs the API, a worker, the scheduler, the simulator and the browser.
 */
export default defineConfig({
  testDir: "./e2e",
  testMatch: "**/*.spec.ts",
  globalSetup: "./e2e/global-setup.ts",
  fullyParallel: false,
  workers: 1,
  retries: 0,
  forbidOnly: true,
  timeout: 180_000,
  expect: { timeout: 30_000 },
  reporter: [["list"]],
  outputDir: "../var/e2e-results",
  use: {
    // global-setup.ts sets BOURSE_E2E_URL before the workers start.
    baseURL: process.env.BOURSE_E2E_URL,
    viewport: { width: 1280, height: 800 },
    actionTimeout: 30_000,
    navigationTimeout: 60_000,
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        ...devices["Desktop Chrome"],
        viewport: { width: 1280, height: 800 },
        launchOptions: { executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium" },
      },
    },
  ],
});
