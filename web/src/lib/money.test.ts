import { describe, expect, test } from "vitest";
import {
  addDecimals,
  basisPoints,
  compareDecimals,
  divide,
  formatMinor,
  isMultiple,
  isZero,
  notional,
  parseDecimal,
  scaleOf,
  tryParseDecimal,
  withinBand,
} from "./money";

describe("parsing decimal strings into minor units", () => {
  test.each([
    ["0", 2, 0n],
    ["12.5", 2, 1250n],
    ["12.50", 2, 1250n],
    ["0.01", 2, 1n],
    ["0.10000", 2, 10n],
    ["123456789012345678901234567890.123456789", 9, 123456789012345678901234567890123456789n],
    ["-1.5", 1, -15n],
    ["7", 0, 7n],
  ])("%s at scale %i is %s", (text, scale, minor) => {
    expect(parseDecimal(text, scale)).toBe(minor);
  });

  test("more decimals than the scale is refused, never rounded", () => {
    expect(tryParseDecimal("0.001", 2)).toEqual({ ok: false, problem: "precision" });
    expect(() => parseDecimal("1.005", 2)).toThrow(RangeError);
  });

  test.each(["", "abc", "1e3", "1.", ".5", "1,5", "0x10", "NaN", "Infinity", "1.2.3", "+1"])("%j is not a decimal", (text) => {
    expect(tryParseDecimal(text, 8)).toEqual({ ok: false, problem: "invalid" });
  });

  test("a negative amount is refused unless allowed", () => {
    expect(tryParseDecimal("-1", 2)).toEqual({ ok: false, problem: "negative" });
    expect(tryParseDecimal("-1", 2, { allowNegative: true })).toEqual({ ok: true, value: -100n });
  });
});

describe("formatting minor units", () => {
  test.each([
    [0n, 2, "0.00"],
    [1n, 2, "0.01"],
    [1250n, 2, "12.50"],
    [-15n, 1, "-1.5"],
    [7n, 0, "7"],
    [100000000n, 8, "1.00000000"],
    [2n ** 70n, 18, "1180.591620717411303424"],
  ])("%s at scale %i is %s", (minor, scale, text) => {
    expect(formatMinor(minor, scale)).toBe(text);
  });

  test("parse and format round-trip", () => {
    for (const text of ["0.00000001", "98765.43210000", "1.10000000"]) {
      expect(formatMinor(parseDecimal(text, 8), 8)).toBe(text);
    }
  });
});

describe("arithmetic", () => {
  test("0.1 + 0.2 is exactly 0.3, where floats drift", () => {
    expect(0.1 + 0.2).not.toBe(0.3);
    expect(addDecimals("0.1", "0.2", 1)).toBe("0.3");
    expect(parseDecimal("0.1", 8) + parseDecimal("0.2", 8)).toBe(parseDecimal("0.3", 8));
  });

  test("division rounds down or up, once", () => {
    expect(divide(10n, 3n, "down")).toBe(3n);
    expect(divide(10n, 3n, "up")).toBe(4n);
    expect(divide(9n, 3n, "up")).toBe(3n);
    expect(() => divide(1n, 0n, "down")).toThrow(RangeError);
  });

  test("notional is price times quantity at the quote scale, as the server computes it", () => {
    // 3 quantity 0.1 (base scale 8) at price 0.3 (price scale 2), quote scale 2.
    expect(notional(30n, 2, 10_000_000n, 8, 2, "up")).toBe(3n); // 0.03
    // 0.00000001 BTC at 30000.00 is 0.0003 USD: 0.00 down, 0.01 up.
    expect(notional(3_000_000n, 2, 1n, 8, 2, "down")).toBe(0n);
    expect(notional(3_000_000n, 2, 1n, 8, 2, "up")).toBe(1n);
  });

  test("basis points round up by default", () => {
    expect(basisPoints(10_000n, 20)).toBe(20n);
    expect(basisPoints(1n, 20)).toBe(1n);
    expect(basisPoints(1n, 20, "down")).toBe(0n);
    expect(() => basisPoints(1n, 0.5)).toThrow(RangeError);
  });

  test("multiples, band and comparison", () => {
    expect(isMultiple(150n, 50n)).toBe(true);
    expect(isMultiple(151n, 50n)).toBe(false);
    expect(withinBand(110n, 100n, 1000)).toBe(true);
    expect(withinBand(111n, 100n, 1000)).toBe(false);
    expect(withinBand(90n, 100n, 1000)).toBe(true);
    expect(compareDecimals("1.10", "1.1")).toBe(0);
    expect(compareDecimals("0.3", "0.29999999999999999")).toBe(1);
    expect(scaleOf("0.010")).toBe(3);
    expect(isZero("0.0000")).toBe(true);
    expect(isZero("0.0001")).toBe(false);
  });
});
