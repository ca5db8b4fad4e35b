/**
 * Scenario 2: a client reaches no back-office (or IB) data, neither by URL (a 404 page, and
 * no back-office request is even made; signed out: the sign-in page) nor by the API with
 * its own token (403).
 */
import { expect, test, type Request } from "@playwright/test";
import { email, register } from "./support/bourse";
import { checkA11y } from "./support/checks";
import { signIn } from "./support/ui";

const PRIVILEGED = /\/api\/v1\/(admin|ib)(\/|\?|$)/;

test("a client cannot reach back-office data by URL or by API", async ({ page, browser }) => {
  const client = email("nosy");
  await register(client);

  // Every request the page makes, and the access token its sign-in received (in memory only).
  const requests: string[] = [];
  page.on("request", (request: Request) => requests.push(request.url()));
  const session = page.waitForResponse((r) => r.url().endsWith("/api/v1/auth/session") && r.request().method() === "POST");
  await signIn(page, client);
  const token = ((await (await session).json()) as { access_token: string }).access_token;
  expect(token).toBeTruthy();

  // By URL: the back office and the IB portal are a 404 page for a client. The first is
  // typed (a page load: the session is restored from the cookie); the others are reached
  // inside the app, as a link or the history would, so the run makes one refresh, not five.
  await page.goto("/admin");
  await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
  for (const path of ["/admin", "/admin/withdrawals", "/admin/deposits", "/admin/queues", "/ib"]) {
    await page.evaluate((to) => {
      window.history.pushState({}, "", to);
      window.dispatchEvent(new PopStateEvent("popstate"));
    }, path);
    await expect(page).toHaveURL(new RegExp(`${path}$`));
    await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
    await expect(page.getByText(client)).toBeVisible(); // still signed in: refused, not signed out
    await checkA11y(page, `${path} as a client`);
  }
  // The navigation offers neither.
  await expect(page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: /back office|admin|IB/i })).toHaveCount(0);
  expect(requests.filter((url) => PRIVILEGED.test(new URL(url).pathname))).toEqual([]);

  // By API, from the page, with the client's own token: 403 for every back-office read and action.
  const answers = await page.evaluate(async (accessToken) => {
    const calls: [string, string][] = [
      ["GET", "/api/v1/admin/withdrawals?state=pending_review"],
      ["GET", "/api/v1/admin/deposits?state=needs_review"],
      ["GET", "/api/v1/admin/jobs/stats"],
      ["GET", "/api/v1/admin/jobs/failed"],
      ["GET", "/api/v1/admin/reconciliation-reports"],
      ["GET", "/api/v1/admin/instruments/BTC-USD/orders"],
      ["POST", "/api/v1/admin/instruments/BTC-USD/halt"],
      ["GET", "/api/v1/ib/referrals"],
    ];
    const out: { call: string; status: number; body: string }[] = [];
    for (const [method, path] of calls) {
      const response = await fetch(path, {
        method,
        headers: { authorization: `Bearer ${accessToken}`, "content-type": "application/json" },
        ...(method === "POST" ? { body: JSON.stringify({ reason: "e2e" }) } : {}),
      });
      out.push({ call: `${method} ${path}`, status: response.status, body: await response.text() });
    }
    return out;
  }, token);
  for (const answer of answers) {
    expect(answer.status, `${answer.call}: ${answer.body}`).toBe(403);
    expect(answer.body).not.toContain(client);
  }

  // Signed out, the back office is the sign-in page.
  const visitor = await browser.newContext({ baseURL: process.env.BOURSE_E2E_URL });
  const anonymous = await visitor.newPage();
  await anonymous.goto("/admin");
  await expect(anonymous).toHaveURL(/\/signin\?next=%2Fadmin$/);
  await expect(anonymous.getByRole("heading", { name: "Sign in", level: 1 })).toBeVisible();
  await checkA11y(anonymous, "/admin signed out");
  await visitor.close();
});
