// Prints the compressed JavaScript each route loads first, and fails when a budget is exceeded.
//
// It reads the Vite manifest of the build (build.manifest: true). A route's initial
// JavaScript is the entry chunk (index.html) with every chunk it imports statically,
// plus the route's lazy chunk with every chunk that one imports statically: what the
// browser must fetch before that page can render. Dynamic imports inside a route (for
// example a chart loaded later) are not counted, as the page renders without them.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import path from "node:path";

const dist = fileURLToPath(new URL("../../src/bourse/webui/dist/", import.meta.url));
const manifest = JSON.parse(readFileSync(path.join(dist, ".vite", "manifest.json"), "utf8"));

/** Routes with a budget: the module React.lazy loads, and its limit in bytes (gzip). */
const BUDGETS = [
  { route: "sign-in (/signin)", module: "src/pages/auth/SignInPage.tsx", limit: 200_000 },
  // The trade screen loads its chart lazily, but right away: it is counted.
  { route: "trade (/trade/:symbol)", module: "src/pages/trade/TradePage.tsx", also: ["src/pages/trade/CandleChart.tsx"], limit: 350_000 },
];

const gzipCache = new Map();
function gzipSize(file) {
  if (!gzipCache.has(file)) {
    gzipCache.set(file, gzipSync(readFileSync(path.join(dist, file)), { level: 9 }).length);
  }
  return gzipCache.get(file);
}

/** The files of a manifest key and of everything it imports statically. */
function closure(key, files = new Set()) {
  const chunk = manifest[key];
  if (!chunk) throw new Error(`budgets: ${key} is not in the Vite manifest`);
  if (files.has(chunk.file)) return files;
  files.add(chunk.file);
  for (const imported of chunk.imports ?? []) closure(imported, files);
  return files;
}

const kb = (bytes) => `${(bytes / 1000).toFixed(1)} kB`;
const total = (files) => [...files].reduce((sum, file) => sum + gzipSize(file), 0);

const entryKey = Object.keys(manifest).find((key) => manifest[key].isEntry);
if (!entryKey) throw new Error("budgets: no entry in the Vite manifest");
const entryFiles = closure(entryKey);

console.log("\nInitial JavaScript per route (gzip):");
console.log(`  ${`entry (${entryKey})`.padEnd(47)} ${kb(total(entryFiles)).padStart(10)}`);
const lazy = Object.keys(manifest).filter((key) => manifest[key].isDynamicEntry).sort();
for (const key of lazy) {
  const files = closure(key, new Set(entryFiles));
  console.log(`  ${key.padEnd(47)} ${kb(total(files)).padStart(10)}`);
}

let failed = false;
console.log("\nBudgets:");
for (const { route, module, also = [], limit } of BUDGETS) {
  const files = closure(module, new Set(entryFiles));
  for (const extra of also) closure(extra, files);
  const size = total(files);
  const ok = size <= limit;
  failed ||= !ok;
  console.log(`  ${ok ? "ok  " : "FAIL"} ${route.padEnd(28)} ${kb(size).padStart(10)} of ${kb(limit)}`);
}
if (failed) {
  console.error("\nbudgets: a route's initial JavaScript is over its budget");
  process.exit(1);
}
