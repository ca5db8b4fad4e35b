/** Seeding through the real command line and the real API, as the README's walkthroughs do. */
import { execFileSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import path from "node:path";
import { expect } from "@playwright/test";
import { REPO, bourseEnv } from "./paths";

export const PASSWORD = "correct horse battery staple";

export function baseUrl(): string {
  const url = process.env.BOURSE_E2E_URL;
  if (!url) throw new Error("BOURSE_E2E_URL is not set");
  return url;
}

/** Run `bourse ARGS` in the server's directory with its settings; its stdout. */
export function bourse(args: string[], input?: string): string {
  return execFileSync(path.join(REPO, ".venv", "bin", "bourse"), args, {
    cwd: process.env.BOURSE_E2E_DIR,
    env: bourseEnv(),
    input: input ?? "",
    encoding: "utf8",
    timeout: 120_000,
  });
}

/** A unique email for this run, so scenarios never collide. */
export function email(name: string): string {
  return `${name}-${randomUUID().slice(0, 8)}@example.com`;
}

/** Create a user with a role on the command line (password on stdin); their id. */
export function createUser(address: string, role: "client" | "ib" | "operator" | "admin"): string {
  const out = bourse(["users", "create", "--email", address, "--role", role], `${PASSWORD}\n`);
  const id = out.trim().split(/\s+/).pop();
  if (!id) throw new Error(`bourse users create printed nothing: ${out}`);
  return id;
}

type Json = Record<string, unknown>;

export async function call(method: string, route: string, token?: string, body?: unknown, idempotent = false): Promise<{ status: number; json: Json }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (idempotent) headers["idempotency-key"] = randomUUID();
  const response = await fetch(`${baseUrl()}${route}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await response.text();
  return { status: response.status, json: text ? (JSON.parse(text) as Json) : {} };
}

export async function ok(method: string, route: string, token?: string, body?: unknown, idempotent = false): Promise<Json> {
  const { status, json } = await call(method, route, token, body, idempotent);
  if (status >= 300) throw new Error(`${method} ${route}: ${status} ${JSON.stringify(json)}`);
  return json;
}

export async function login(address: string): Promise<string> {
  const json = await ok("POST", "/api/v1/auth/login", undefined, { email: address, password: PASSWORD });
  return json.access_token as string;
}

/** Register a client through the API; its id. */
export async function register(address: string, referralCode?: string): Promise<string> {
  const user = await ok("POST", "/api/v1/auth/register", undefined, { email: address, password: PASSWORD, ...(referralCode ? { referral_code: referralCode } : {}) });
  return user.id as string;
}

/** Deposit through the simulator and approve its checkout (as its Approve button does); wait for the credit. */
export async function fund(token: string, asset: string, amount: string): Promise<void> {
  const deposit = await ok("POST", "/api/v1/deposits", token, { asset, amount }, true);
  const approved = await fetch(`${deposit.checkout_url as string}/approve`, { method: "POST" });
  if (approved.status !== 200) throw new Error(`approving the checkout: ${approved.status}`);
  await expect
    .poll(async () => (await ok("GET", `/api/v1/deposits/${deposit.id as string}`, token)).state, { timeout: 60_000, intervals: [250, 500, 1000] })
    .toBe("succeeded");
}

/** The simulator's development secrets (its defaults, which `bourse up` uses). */
const SIM_API_KEY = "dev-only-psp-sim-api-key";
const SIM_WEBHOOK_SECRET = "dev-only-psp-sim-webhook-secret";

/**
 * Start a deposit and have the provider report a different amount paid (`paidMinor`), as a
 * late or odd delivery would: a `deposit.succeeded` webhook signed as the simulator signs.
 * Bourse sends the deposit to `needs_review`; waits for that. The deposit's id.
 */
export async function depositNeedingReview(token: string, asset: string, amount: string, paidMinor: number): Promise<string> {
  const deposit = await ok("POST", "/api/v1/deposits", token, { asset, amount }, true);
  const sim = process.env.BOURSE_E2E_SIM_URL;
  const simDeposit = (await (await fetch(`${sim}/v1/deposits/${deposit.psp_reference as string}`, { headers: { authorization: `Bearer ${SIM_API_KEY}` } })).json()) as Json;
  const event = {
    id: `evt_e2e_${randomUUID().replace(/-/g, "")}`,
    object: "event",
    type: "deposit.succeeded",
    created: Math.floor(Date.now() / 1000),
    data: { object: { ...simDeposit, status: "succeeded", amount: paidMinor } },
  };
  const body = JSON.stringify(event);
  const t = Math.floor(Date.now() / 1000);
  const signature = createHmac("sha256", SIM_WEBHOOK_SECRET).update(`${t}.${body}`).digest("hex");
  const delivered = await fetch(`${baseUrl()}/api/v1/psp/simulator/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json", "PSP-Signature": `t=${t},v1=${signature}` },
    body,
  });
  if (delivered.status !== 200) throw new Error(`the webhook was refused: ${delivered.status} ${await delivered.text()}`);
  await expect
    .poll(async () => (await ok("GET", `/api/v1/deposits/${deposit.id as string}`, token)).state, { timeout: 60_000, intervals: [250, 500, 1000] })
    .toBe("needs_review");
  return deposit.id as string;
}

/**
 * Record a failed job as the worker records one after its last try: a real job
 * (`identity.prune_expired`, harmless and idempotent, so its retry succeeds), with an
 * exception carrying `marker` and a traceback. Written straight into the embedded
 * SQLite database, as the queue's own tests do through the driver.
 */
export function recordFailedJob(marker: string): void {
  const script = `
import sqlite3, sys, time, uuid
db = sqlite3.connect(sys.argv[1], timeout=60)
now = time.time()
with db:
    db.execute(
        "INSERT INTO queue_failed_jobs (uuid, queue, job, payload, attempts, exception, traceback, request_id, created_at, failed_at)"
        " VALUES (?, 'default', 'identity.prune_expired', '{}', 3, ?, ?, NULL, ?, ?)",
        (uuid.uuid4().hex, "OperationalError: " + sys.argv[2],
         'Traceback (most recent call last):\\n  File "bourse/identity/jobs.py", line 21, in prune_expired\\nOperationalError: ' + sys.argv[2], now - 60, now),
    )
`;
  execFileSync(path.join(REPO, ".venv", "bin", "python"), ["-c", script, path.join(process.env.BOURSE_E2E_DIR ?? "", "bourse.db"), marker], { timeout: 120_000 });
}
