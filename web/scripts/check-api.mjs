// Fails when src/api/schema.d.ts is not what openapi-typescript generates from openapi.json.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(path.join(tmpdir(), "bourse-api-"));
const fresh = path.join(dir, "schema.d.ts");
try {
  execFileSync(path.join(root, "node_modules", ".bin", "openapi-typescript"), ["openapi.json", "-o", fresh], {
    cwd: root,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const committed = readFileSync(path.join(root, "src", "api", "schema.d.ts"), "utf8");
  if (readFileSync(fresh, "utf8") !== committed) {
    console.error(
      "check:api: src/api/schema.d.ts differs from the types generated from openapi.json.\n" +
        "Regenerate it with `npm run gen:api` (after updating openapi.json from `bourse openapi`) and commit both.",
    );
    process.exit(1);
  }
  console.log("check:api: src/api/schema.d.ts matches openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
