/**
 * Exact decimal amounts as bigint minor units.
 *
 * The API sends every amount, price and quantity as a decimal string. The UI shows those
 * strings as they are; where it must compute (an order's cost, its fee, tick and lot
 * checks) it works on bigint minor units at a known scale, never on JavaScript numbers,
 * so `0.1 + 0.2` is `0.3` here, exactly.
 */

export type ParseProblem = "invalid" | "precision" | "negative";

export type Parsed = { ok: true; value: bigint } | { ok: false; problem: ParseProblem };

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;
const TEN = 10n;

export function pow10(exponent: number): bigint {
  if (!Number.isInteger(exponent) || exponent < 0) throw new RangeError(`pow10 takes a natural number, not ${exponent}`);
  return TEN ** BigInt(exponent);
}

/** A decimal string (e.g. "12.50") at `scale` decimals: 1250n for scale 2. Never rounds. */
export function tryParseDecimal(text: string, scale: number, { allowNegative = false } = {}): Parsed {
  const match = DECIMAL.exec(text.trim());
  if (!match) return { ok: false, problem: "invalid" };
  const [, minus, whole = "0", fraction = ""] = match;
  if (minus && !allowNegative) return { ok: false, problem: "negative" };
  const trimmed = fraction.replace(/0+$/, "");
  if (trimmed.length > scale) return { ok: false, problem: "precision" };
  const value = BigInt(whole) * pow10(scale) + BigInt(trimmed.padEnd(scale, "0") || "0");
  return { ok: true, value: minus ? -value : value };
}

export function parseDecimal(text: string, scale: number): bigint {
  const parsed = tryParseDecimal(text, scale, { allowNegative: true });
  if (!parsed.ok) throw new RangeError(`${JSON.stringify(text)} is not a decimal with at most ${scale} decimals`);
  return parsed.value;
}

/** Minor units back to a decimal string with exactly `scale` decimals: (1250n, 2) is "12.50". */
export function formatMinor(value: bigint, scale: number): string {
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(scale + 1, "0");
  const whole = digits.slice(0, digits.length - scale);
  const fraction = scale > 0 ? `.${digits.slice(digits.length - scale)}` : "";
  return `${negative ? "-" : ""}${whole}${fraction}`;
}

/** The number of decimals a decimal string is written with ("0.010" is 3). */
export function scaleOf(text: string): number {
  const match = DECIMAL.exec(text.trim());
  if (!match) throw new RangeError(`${JSON.stringify(text)} is not a decimal`);
  return match[3]?.length ?? 0;
}

export type Rounding = "down" | "up";

/** numerator / denominator for non-negative bigints, rounded down or up. */
export function divide(numerator: bigint, denominator: bigint, rounding: Rounding): bigint {
  if (denominator <= 0n || numerator < 0n) throw new RangeError("divide takes a non-negative numerator and a positive denominator");
  const quotient = numerator / denominator;
  return rounding === "up" && quotient * denominator !== numerator ? quotient + 1n : quotient;
}

/**
 * `price` (at `priceScale`, quote per whole base) times `quantity` (at `baseScale`) in the
 * quote asset's minor units (at `quoteScale`), rounded once, as the server does
 * (`bourse.trading.instruments.notional`): up for what a buyer must hold, down for what a
 * seller receives.
 */
export function notional(
  price: bigint,
  priceScale: number,
  quantity: bigint,
  baseScale: number,
  quoteScale: number,
  rounding: Rounding,
): bigint {
  return divide(price * quantity * pow10(quoteScale), pow10(priceScale + baseScale), rounding);
}

/** `value` times `bps` basis points, rounded up (the most a fee can be). */
export function basisPoints(value: bigint, bps: number, rounding: Rounding = "up"): bigint {
  if (!Number.isInteger(bps) || bps < 0) throw new RangeError(`basis points are a natural number, not ${bps}`);
  return divide(value * BigInt(bps), 10_000n, rounding);
}

export function isMultiple(value: bigint, step: bigint): boolean {
  return step > 0n && value % step === 0n;
}

/** Is `price` within `bandBps` of `last`, inclusive, as the server checks it? */
export function withinBand(price: bigint, last: bigint, bandBps: number): boolean {
  const distance = price > last ? price - last : last - price;
  return distance * 10_000n <= BigInt(bandBps) * last;
}

export function addDecimals(a: string, b: string, scale: number): string {
  return formatMinor(parseDecimal(a, scale) + parseDecimal(b, scale), scale);
}

export function isZero(text: string): boolean {
  const match = DECIMAL.exec(text.trim());
  return match !== null && /^0*$/.test(match[2] ?? "") && /^0*$/.test(match[3] ?? "");
}

/** Compares two decimal strings exactly (-1, 0 or 1), whatever their scales. */
export function compareDecimals(a: string, b: string): number {
  const scale = Math.max(scaleOf(a), scaleOf(b));
  const x = parseDecimal(a, scale);
  const y = parseDecimal(b, scale);
  return x < y ? -1 : x > y ? 1 : 0;
}
