import { QueryClientProvider } from "@tanstack/react-query";
import { render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, test, vi } from "vitest";
import type { Schemas } from "../../api/client";
import { makeQueryClient } from "../../App";
import { ERROR_MESSAGES } from "../../lib/errors";
import { error, mockApi } from "../../test/render";
import { OrderEntry } from "./OrderEntry";

const INSTRUMENT: Schemas["InstrumentOut"] = {
  symbol: "ETH-USD",
  base_asset: "ETH",
  quote_asset: "USD",
  price_scale: 2,
  tick_size: "0.05",
  lot_size: "0.001",
  min_quantity: "0.010",
  max_quantity: "1000.000",
  price_band_bps: 500,
  last_price: "0.30",
  status: "open",
  sequence: 1,
  created_at: "2026-01-01T00:00:00Z",
  updated_at: "2026-01-01T00:00:00Z",
};

function setup() {
  const client = makeQueryClient();
  render(
    <QueryClientProvider client={client}>
      <OrderEntry instrument={INSTRUMENT} quoteScale={2} />
    </QueryClientProvider>,
  );
  return userEvent.setup();
}

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("order entry", () => {
  test("refuses a price off the tick and a quantity off the lot before sending anything", async () => {
    const calls = mockApi(() => undefined);
    const user = setup();
    await user.type(screen.getByLabelText("Price (USD)"), "0.32");
    await user.type(screen.getByLabelText("Quantity (ETH)"), "1.0005");
    await user.click(screen.getByRole("button", { name: "Buy ETH" }));
    expect(screen.getByLabelText("Price (USD)")).toHaveAccessibleDescription(/multiple of the tick 0.05/);
    expect(screen.getByLabelText("Quantity (ETH)")).toHaveAccessibleDescription(/at most 3 decimals/);
    await user.clear(screen.getByLabelText("Quantity (ETH)"));
    await user.type(screen.getByLabelText("Quantity (ETH)"), "0.005");
    expect(screen.getByLabelText("Quantity (ETH)")).toHaveAccessibleDescription(/minimum quantity is 0.010/);
    await user.clear(screen.getByLabelText("Price (USD)"));
    await user.type(screen.getByLabelText("Price (USD)"), "0.40");
    expect(screen.getByLabelText("Price (USD)")).toHaveAccessibleDescription(/within 5% of the last price 0.30/);
    expect(calls).toEqual([]);
  });

  test("the estimate is exact where floats drift (0.1 + 0.2 style), and the order is sent as strings", async () => {
    const calls = mockApi(({ method, path }) => {
      if (method === "POST" && path === "/api/v1/orders") {
        return { status: 201, body: { id: 7, status: "resting", filled_quantity: "0.000", quantity: "3.000", reject_reason: null } };
      }
      return undefined;
    });
    const user = setup();
    // 0.30 is 0.1 + 0.2: as floats, 0.1 + 0.2 = 0.30000000000000004 and times 3 gives 0.9000000000000001.
    expect((0.1 + 0.2) * 3).not.toBe(0.9);
    await user.type(screen.getByLabelText("Price (USD)"), "0.30");
    await user.type(screen.getByLabelText("Quantity (ETH)"), "3");
    const estimate = screen.getByRole("group", { name: "Estimate" });
    expect(within(estimate).getByTestId("estimate-notional")).toHaveTextContent("0.90 USD");
    expect(within(estimate).getByTestId("estimate-fee")).toHaveTextContent("0.01 USD"); // 0.0018 rounded up
    expect(within(estimate).getByTestId("estimate-total")).toHaveTextContent("0.91 USD");

    await user.click(screen.getByRole("button", { name: "Buy ETH" }));
    expect(await screen.findByText(/Order 7: Resting/)).toBeInTheDocument();
    const order = calls.find((c) => c.path === "/api/v1/orders");
    expect(order?.body).toEqual({ instrument: "ETH-USD", side: "buy", type: "limit", tif: "gtc", price: "0.30", quantity: "3" });
    expect(order?.headers.get("Idempotency-Key")).toMatch(/^[0-9a-f-]{36}$/);
  });

  test("a refusal from the server is shown next to its field", async () => {
    mockApi(({ path }) => (path === "/api/v1/orders" ? error(409, "insufficient_funds") : undefined));
    const user = setup();
    await user.type(screen.getByLabelText("Price (USD)"), "0.30");
    await user.type(screen.getByLabelText("Quantity (ETH)"), "3");
    await user.click(screen.getByRole("button", { name: "Buy ETH" }));
    expect(await screen.findByRole("alert")).toHaveTextContent(ERROR_MESSAGES.insufficient_funds.message);
  });

  test("a market order cannot be GTC and a market buy asks for the amount to spend", async () => {
    mockApi(() => undefined);
    const user = setup();
    await user.selectOptions(screen.getByLabelText("Type"), "market");
    expect(screen.queryByLabelText("Price (USD)")).not.toBeInTheDocument();
    expect(screen.queryByRole("option", { name: /GTC/ })).not.toBeInTheDocument();
    await user.type(screen.getByLabelText("Spend at most (USD, fee included)"), "100.20");
    expect(screen.getByTestId("estimate-notional")).toHaveTextContent("100.00 USD");
    expect(screen.getByTestId("estimate-fee")).toHaveTextContent("0.20 USD");
  });

  test("a retry after a network failure reuses the Idempotency-Key, so the order is placed once", async () => {
    let attempts = 0;
    const calls = mockApi(({ path }) => {
      if (path !== "/api/v1/orders") return undefined;
      attempts += 1;
      if (attempts === 1) throw new TypeError("Failed to fetch");
      return { status: 201, body: { id: 8, status: "resting", filled_quantity: "0.000", quantity: "3.000", reject_reason: null } };
    });
    const user = setup();
    await user.type(screen.getByLabelText("Price (USD)"), "0.30");
    await user.type(screen.getByLabelText("Quantity (ETH)"), "3");
    await user.click(screen.getByRole("button", { name: "Buy ETH" }));
    expect(await screen.findByRole("alert")).toHaveTextContent(ERROR_MESSAGES.network_error.message);
    await user.click(screen.getByRole("button", { name: "Buy ETH" }));
    expect(await screen.findByText(/Order 8: Resting/)).toBeInTheDocument();
    const keys = calls.filter((c) => c.path === "/api/v1/orders").map((c) => c.headers.get("Idempotency-Key"));
    expect(keys).toHaveLength(2);
    expect(keys[0]).toBe(keys[1]);
  });
});
