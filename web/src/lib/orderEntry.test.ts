import { describe, expect, test } from "vitest";
import { checkOrder, type InstrumentTerms, type OrderDraft } from "./orderEntry";

const instrument: InstrumentTerms = {
  symbol: "BTC-USD",
  base_asset: "BTC",
  quote_asset: "USD",
  price_scale: 2,
  tick_size: "0.10",
  lot_size: "0.00010000",
  min_quantity: "0.00100000",
  max_quantity: "100.00000000",
  price_band_bps: 1000,
  last_price: "30000.00",
  status: "open",
};

const draft = (overrides: Partial<OrderDraft>): OrderDraft => ({
  side: "buy",
  type: "limit",
  tif: "GTC",
  price: "30000.00",
  quantity: "0.0010",
  quoteBudget: "",
  ...overrides,
});

describe("order entry checks", () => {
  test("a valid limit buy has no errors and an exact estimate", () => {
    const { errors, estimate } = checkOrder(draft({}), instrument, 2, 20);
    expect(errors).toEqual({});
    expect(estimate).toEqual({ notional: "30.00", fee: "0.06", total: "30.06", asset: "USD" });
  });

  test("price off the tick, outside the band, and with too many decimals", () => {
    expect(checkOrder(draft({ price: "30000.05" }), instrument, 2, 20).errors.price).toMatch(/tick 0.10/);
    expect(checkOrder(draft({ price: "33000.10" }), instrument, 2, 20).errors.price).toMatch(/within 10%/);
    expect(checkOrder(draft({ price: "30000.001" }), instrument, 2, 20).errors.price).toMatch(/at most 2 decimals/);
    expect(checkOrder(draft({ price: "" }), instrument, 2, 20).errors.price).toMatch(/Enter the price/);
    expect(checkOrder(draft({ price: "0" }), instrument, 2, 20).errors.price).toMatch(/more than zero/);
  });

  test("quantity off the lot, below the minimum, above the maximum", () => {
    expect(checkOrder(draft({ quantity: "0.00105" }), instrument, 2, 20).errors.quantity).toMatch(/lot/);
    expect(checkOrder(draft({ quantity: "0.0009" }), instrument, 2, 20).errors.quantity).toMatch(/minimum/);
    expect(checkOrder(draft({ quantity: "100.0001" }), instrument, 2, 20).errors.quantity).toMatch(/maximum/);
  });

  test("a market order cannot be GTC, and a market buy spends a budget", () => {
    expect(checkOrder(draft({ type: "market", tif: "GTC" }), instrument, 2, 20).errors.tif).toBeDefined();
    const marketBuy = checkOrder(draft({ type: "market", tif: "IOC", quoteBudget: "100.20" }), instrument, 2, 20);
    expect(marketBuy.errors).toEqual({});
    expect(marketBuy.estimate).toEqual({ notional: "100.00", fee: "0.20", total: "100.20", asset: "USD" });
  });

  test("a sell receives the notional less the fee", () => {
    const { estimate } = checkOrder(draft({ side: "sell", price: "0.30", quantity: "1" }), { ...instrument, last_price: null }, 2, 20);
    expect(estimate).toEqual({ notional: "0.30", fee: "0.01", total: "0.29", asset: "USD" });
  });

  test("no float drift: 0.1 + 0.2 style prices give exact costs", () => {
    const cheap = { ...instrument, tick_size: "0.01", last_price: null, min_quantity: "0.00010000" };
    // 0.1 * 3 = 0.30000000000000004 in floats; 3 units at 0.10 cost exactly 0.30.
    expect(0.1 * 3).not.toBe(0.3);
    const three = checkOrder(draft({ price: "0.10", quantity: "3" }), cheap, 2, 0);
    expect(three.estimate?.notional).toBe("0.30");
    // 0.7 units at 0.1 + 0.2 = 0.3: floats give 0.21000000000000002.
    expect(0.7 * (0.1 + 0.2)).not.toBe(0.21);
    const mixed = checkOrder(draft({ price: "0.30", quantity: "0.7" }), cheap, 2, 0);
    expect(mixed.estimate?.notional).toBe("0.21");
    // Large amounts keep every digit.
    const big = checkOrder(draft({ price: "12345678.91", quantity: "99.9999" }), { ...cheap, max_quantity: "1000.00000000" }, 2, 0);
    expect(big.estimate?.notional).toBe("1234566656.44") // 1234566656.432109, rounded up for a buy;
  });
});
