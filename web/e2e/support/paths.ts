import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root (web/e2e/support is three levels down). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** Where the screenshots go; printed at the end of the run. */
export const SCREENSHOTS = path.join(REPO, "var", "e2e-screenshots");

/** The environment for `bourse up` and the `bourse` commands: no inherited BOURSE_* setting. */
export function bourseEnv(): NodeJS.ProcessEnv {
  const dir = process.env.BOURSE_E2E_DIR;
  const url = process.env.BOURSE_E2E_URL;
  const sim = process.env.BOURSE_E2E_SIM_URL;
  if (!dir || !url || !sim) throw new Error("BOURSE_E2E_* are not set: run through playwright test (global-setup.ts)");
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.toUpperCase().startsWith("BOURSE_")) env[name] = value;
  }
  return {
    ...env,
    BOURSE_PORT: new URL(url).port,
    BOURSE_PSP_SIM_URL: sim,
    BOURSE_DATABASE_URL: `sqlite:///${path.join(dir, "bourse.db")}`,
  };
}
