/** Checks an order against its instrument before it is sent, and estimates what it costs. */
import {
  basisPoints,
  formatMinor,
  isMultiple,
  notional,
  parseDecimal,
  scaleOf,
  tryParseDecimal,
  withinBand,
  type ParseProblem,
} from "./money";

export type Side = "buy" | "sell";
export type OrderType = "limit" | "market";
export type TimeInForce = "GTC" | "IOC" | "FOK";

export interface InstrumentTerms {
  symbol: string;
  base_asset: string;
  quote_asset: string;
  price_scale: number;
  tick_size: string;
  lot_size: string;
  min_quantity: string;
  max_quantity: string;
  price_band_bps: number;
  last_price: string | null;
  status: string;
}

export interface OrderDraft {
  side: Side;
  type: OrderType;
  tif: TimeInForce;
  price: string;
  quantity: string;
  quoteBudget: string;
}

export type DraftField = "price" | "quantity" | "quote_budget" | "tif";

export interface Estimate {
  /** What the order is worth in the quote asset, rounded as the server rounds it. */
  notional: string;
  /** The most the fee can be, at `feeBps`. */
  fee: string;
  /** For a buy, what is held: notional plus fee; for a sell, what it receives less the fee. */
  total: string;
  asset: string;
}

export interface Checked {
  errors: Partial<Record<DraftField, string>>;
  estimate: Estimate | null;
}

const PROBLEMS: Record<ParseProblem, string> = {
  invalid: "Enter a number, like 12.5",
  precision: "Too many decimals",
  negative: "Must be positive",
};

function parseField(text: string, scale: number, what: string): { value?: bigint; error?: string } {
  if (text.trim() === "") return { error: `Enter the ${what}` };
  const parsed = tryParseDecimal(text, scale);
  if (!parsed.ok) {
    return { error: parsed.problem === "precision" ? `The ${what} has at most ${scale} decimals` : PROBLEMS[parsed.problem] };
  }
  if (parsed.value <= 0n) return { error: `The ${what} must be more than zero` };
  return { value: parsed.value };
}

/**
 * Everything the server checks that the client can know: the amounts' shapes, the tick,
 * the lot, the minimum and maximum, the price band around the last price, and the rules
 * of the order types (a market order is IOC or FOK; a market buy spends a quote budget).
 */
export function checkOrder(draft: OrderDraft, instrument: InstrumentTerms, quoteScale: number, feeBps: number): Checked {
  const errors: Partial<Record<DraftField, string>> = {};
  const priceScale = instrument.price_scale;
  const baseScale = scaleOf(instrument.lot_size);
  const tick = parseDecimal(instrument.tick_size, priceScale);
  const lot = parseDecimal(instrument.lot_size, baseScale);
  const min = parseDecimal(instrument.min_quantity, baseScale);
  const max = parseDecimal(instrument.max_quantity, baseScale);
  const marketBuy = draft.type === "market" && draft.side === "buy";

  if (draft.type === "market" && draft.tif === "GTC") errors.tif = "A market order is IOC or FOK: it never rests";

  let price: bigint | undefined;
  if (draft.type === "limit") {
    const parsed = parseField(draft.price, priceScale, "price");
    if (parsed.error) errors.price = parsed.error;
    else if (parsed.value !== undefined) {
      price = parsed.value;
      if (!isMultiple(price, tick)) errors.price = `The price must be a multiple of the tick ${instrument.tick_size}`;
      else if (instrument.last_price !== null) {
        const last = parseDecimal(instrument.last_price, priceScale);
        if (!withinBand(price, last, instrument.price_band_bps)) {
          errors.price = `The price must be within ${instrument.price_band_bps / 100}% of the last price ${instrument.last_price}`;
        }
      }
    }
  }

  let quantity: bigint | undefined;
  if (!marketBuy) {
    const parsed = parseField(draft.quantity, baseScale, "quantity");
    if (parsed.error) errors.quantity = parsed.error;
    else if (parsed.value !== undefined) {
      quantity = parsed.value;
      if (!isMultiple(quantity, lot)) errors.quantity = `The quantity must be a multiple of the lot ${instrument.lot_size}`;
      else if (quantity < min) errors.quantity = `The minimum quantity is ${instrument.min_quantity}`;
      else if (quantity > max) errors.quantity = `The maximum quantity is ${instrument.max_quantity}`;
    }
  }

  let budget: bigint | undefined;
  if (marketBuy) {
    const parsed = parseField(draft.quoteBudget, quoteScale, "amount to spend");
    if (parsed.error) errors.quote_budget = parsed.error;
    else budget = parsed.value;
  }

  let estimate: Estimate | null = null;
  const asset = instrument.quote_asset;
  if (Object.keys(errors).length === 0) {
    if (budget !== undefined) {
      // The budget includes the fee: at most budget * 10000 / (10000 + fee) buys, the rest pays the fee.
      const spend = (budget * 10_000n) / (10_000n + BigInt(feeBps));
      estimate = { notional: formatMinor(spend, quoteScale), fee: formatMinor(budget - spend, quoteScale), total: formatMinor(budget, quoteScale), asset };
    } else if (price !== undefined && quantity !== undefined) {
      const buy = draft.side === "buy";
      const value = notional(price, priceScale, quantity, baseScale, quoteScale, buy ? "up" : "down");
      const fee = basisPoints(value, feeBps, "up");
      estimate = {
        notional: formatMinor(value, quoteScale),
        fee: formatMinor(fee, quoteScale),
        total: formatMinor(buy ? value + fee : value - fee, quoteScale),
        asset,
      };
    }
  }
  return { errors, estimate };
}
