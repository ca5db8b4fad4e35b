import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, test } from "vitest";
import { ApiError, ERROR_MESSAGES, isKnownCode } from "./errors";

/** Every `error` enum in the error responses of openapi.json. */
function schemaCodes(): Set<string> {
  const schema = JSON.parse(readFileSync(path.join(process.cwd(), "openapi.json"), "utf8")) as unknown;
  const codes = new Set<string>();
  const walk = (node: unknown, inError: boolean): void => {
    if (Array.isArray(node)) {
      node.forEach((item) => { walk(item, inError); });
      return;
    }
    if (node === null || typeof node !== "object") return;
    const record = node as Record<string, unknown>;
    const error = record.error as { enum?: unknown } | undefined;
    if (inError && error && Array.isArray(error.enum)) error.enum.forEach((code) => codes.add(String(code)));
    for (const [key, value] of Object.entries(record)) walk(value, inError || key === "responses");
  };
  walk(schema, false);
  return codes;
}

describe("error messages", () => {
  test("the schema declares error codes (the walk finds them)", () => {
    const codes = schemaCodes();
    expect(codes.size).toBeGreaterThan(50);
    expect(codes).toContain("totp_required");
    expect(codes).toContain("price_off_tick");
  });

  test("every code in openapi.json has a human message", () => {
    const missing = [...schemaCodes()].filter((code) => !isKnownCode(code));
    expect(missing).toEqual([]);
  });

  test("messages are sentences, not codes", () => {
    for (const [code, { message }] of Object.entries(ERROR_MESSAGES)) {
      expect(message, code).toMatch(/^[A-Z].*\.$/);
      expect(message, code).not.toContain("_");
    }
  });

  test("an error is placed next to its field", () => {
    const error = new ApiError(422, "price_off_tick", "30000.05 is not a multiple of the tick", "r1");
    expect(error.field("price")).toBe(ERROR_MESSAGES.price_off_tick.message);
    expect(error.concernsOnly(["price", "quantity"])).toBe(true);
  });

  test("a 422's per-field entries map to fields", () => {
    const error = new ApiError(422, "validation_error", "body.email: missing", "r2", [
      { loc: "body.email", msg: "Field required", type: "missing" },
      { loc: "body.amount", msg: "bad", type: "amount_precision" },
    ]);
    expect(error.field("email")).toBe("This field is required.");
    expect(error.field("amount")).toBe(ERROR_MESSAGES.amount_precision.message);
  });

  test("an unknown code falls back to the server's detail", () => {
    const error = new ApiError(418, "teapot", "I am a teapot", null);
    expect(error.message).toBe("I am a teapot");
  });
});
