/**
 * Starts a real Bourse for the suite: `bourse up` (migrate, API, worker, scheduler and the
 * PSP simulator) on SQLite, in a fresh temporary directory, on free ports, and waits for
 * /readyz. The address and the directory go to the workers through BOURSE_E2E_* variables.
 * The returned function stops it and prints where the screenshots are.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { REPO, SCREENSHOTS, bourseEnv } from "./support/paths";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export default async function globalSetup(): Promise<() => Promise<void>> {
  const bourse = path.join(REPO, ".venv", "bin", "bourse");
  if (!existsSync(bourse)) throw new Error(`${bourse} is missing: run make install first`);
  if (!existsSync(path.join(REPO, "src", "bourse", "webui", "dist", "index.html"))) {
    throw new Error("the UI is not built: run make web first");
  }
  rmSync(SCREENSHOTS, { recursive: true, force: true });
  mkdirSync(SCREENSHOTS, { recursive: true });

  const dir = mkdtempSync(path.join(tmpdir(), "bourse-e2e-"));
  const port = await freePort();
  const simPort = await freePort();
  process.env.BOURSE_E2E_DIR = dir;
  process.env.BOURSE_E2E_URL = `http://127.0.0.1:${port}`;
  process.env.BOURSE_E2E_SIM_URL = `http://127.0.0.1:${simPort}`;

  const logPath = path.join(dir, "bourse-up.log");
  const log = openSync(logPath, "a");
  const child = spawn(bourse, ["up"], { cwd: dir, env: bourseEnv(), stdio: ["ignore", log, log], detached: true });
  let exited: number | null | undefined;
  const exit = new Promise<void>((resolve) => child.on("exit", (code) => { exited = code; resolve(); }));

  const deadline = Date.now() + 180_000;
  for (;;) {
    if (exited !== undefined) throw new Error(`bourse up exited (${exited}) before it was ready; see ${logPath}`);
    try {
      const response = await fetch(`${process.env.BOURSE_E2E_URL}/readyz`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`bourse up was not ready within 3 minutes; see ${logPath}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  console.log(`bourse up at ${process.env.BOURSE_E2E_URL} (simulator ${process.env.BOURSE_E2E_SIM_URL}), in ${dir}`);

  return async () => {
    if (exited === undefined && child.pid) {
      child.kill("SIGTERM");
      const stopped = await Promise.race([exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20_000))]);
      if (!stopped) process.kill(-child.pid, "SIGKILL"); // its own process group, started above
    }
    if (process.env.BOURSE_E2E_KEEP !== "1") rmSync(dir, { recursive: true, force: true });
    console.log(`Screenshots: ${SCREENSHOTS}`);
  };
}
