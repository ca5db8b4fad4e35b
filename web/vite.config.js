// @ts-check
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

const outDir = fileURLToPath(new URL("../src/bourse/webui/dist", import.meta.url));
const api = process.env.BOURSE_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: "assets",
    manifest: true,
    target: "es2022",
    sourcemap: false,
    // The budgets are checked by scripts/budgets.mjs, with gzip, per route.
    chunkSizeWarningLimit: 1000,
  },
  server: {
    proxy: {
      "/api": { target: api, changeOrigin: false, ws: true },
    },
  },
  test: {
    environment: "jsdom",
    setupFiles: ["./src/test/setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
    css: false,
  },
});
