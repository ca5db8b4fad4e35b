import { useQueryClient } from "@tanstack/react-query";
import { useCallback, useMemo, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { Alert, Button, SelectField, TextField, cx } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { useIdempotencyKey } from "../../hooks/useIdempotencyKey";
import { humanize } from "../../lib/format";
import { checkOrder, type OrderDraft, type OrderType, type Side, type TimeInForce } from "../../lib/orderEntry";

const FIELDS = ["price", "quantity", "quote_budget", "tif", "side", "type"] as const;

/**
 * The fee rate used for the estimate. The API does not expose a user's fee rates (they
 * are per user, on the server); this is Bourse's default taker rate, the larger of the
 * two defaults, so the estimate is the most a default-rate order pays.
 */
export const ESTIMATE_FEE_BPS = 20;

export function OrderEntry({ instrument, quoteScale }: { instrument: Schemas["InstrumentOut"]; quoteScale: number }) {
  const client = useQueryClient();
  const [draft, setDraft] = useState<OrderDraft>({ side: "buy", type: "limit", tif: "GTC", price: "", quantity: "", quoteBudget: "" });
  const [touched, setTouched] = useState(false);
  const [result, setResult] = useState<string | null>(null);
  const checked = useMemo(() => checkOrder(draft, instrument, quoteScale, ESTIMATE_FEE_BPS), [draft, instrument, quoteScale]);
  const update = (patch: Partial<OrderDraft>) => {
    setResult(null);
    setDraft((current) => ({ ...current, ...patch }));
  };

  const idempotency = useIdempotencyKey();
  const place = useAction(
    useCallback(async () => {
      const marketBuy = draft.type === "market" && draft.side === "buy";
      const body = {
        instrument: instrument.symbol,
        side: draft.side,
        type: draft.type,
        tif: draft.tif.toLowerCase(),
        ...(draft.type === "limit" ? { price: draft.price.trim() } : {}),
        ...(marketBuy ? { quote_budget: draft.quoteBudget.trim() } : { quantity: draft.quantity.trim() }),
      };
      const order = await unwrap(api.POST("/api/v1/orders", { params: { header: { "idempotency-key": idempotency.keyFor(body) } }, body }));
      idempotency.done();
      setResult(`Order ${order.id}: ${humanize(order.status)}${order.reject_reason ? ` (${order.reject_reason})` : ""}. Filled ${order.filled_quantity} of ${order.quantity}.`);
      setTouched(false);
      setDraft((current) => ({ ...current, quantity: "", quoteBudget: "" }));
      await Promise.all([
        client.invalidateQueries({ queryKey: ["orders"] }),
        client.invalidateQueries({ queryKey: ["my-trades"] }),
        client.invalidateQueries({ queryKey: ["wallets"] }),
      ]);
    }, [draft, instrument.symbol, client, idempotency]),
  );

  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    setTouched(true);
    if (Object.keys(checked.errors).length === 0) void place.run();
  }

  const show = (field: keyof typeof checked.errors) => (touched ? checked.errors[field] : undefined) ?? place.fieldError(field);
  const marketBuy = draft.type === "market" && draft.side === "buy";
  const banner = place.formError(FIELDS);
  const halted = instrument.status !== "open";

  return (
    <form onSubmit={onSubmit} noValidate className="flex flex-col gap-3" aria-label={`Order entry for ${instrument.symbol}`}>
      <fieldset className="grid grid-cols-2 gap-1 rounded border border-slate-300 p-1">
        <legend className="sr-only">Side</legend>
        {(["buy", "sell"] as Side[]).map((side) => (
          <label key={side} className={cx("cursor-pointer rounded py-1.5 text-center text-sm font-semibold focus-within:ring-2 focus-within:ring-blue-600", draft.side === side ? (side === "buy" ? "bg-green-700 text-white" : "bg-red-700 text-white") : "text-slate-700")}>
            <input type="radio" name="side" value={side} className="sr-only" checked={draft.side === side} onChange={() => update({ side })} />
            {side === "buy" ? "Buy" : "Sell"}
          </label>
        ))}
      </fieldset>
      <div className="grid grid-cols-2 gap-3">
        <SelectField label="Type" value={draft.type} onChange={(e) => { const type = e.target.value as OrderType; update({ type, tif: type === "market" ? "IOC" : draft.tif }); }}>
          <option value="limit">Limit</option>
          <option value="market">Market</option>
        </SelectField>
        <SelectField label="Time in force" value={draft.tif} onChange={(e) => update({ tif: e.target.value as TimeInForce })} error={show("tif")}>
          {draft.type === "limit" && <option value="GTC">GTC (until cancelled)</option>}
          <option value="IOC">IOC (immediate or cancel)</option>
          <option value="FOK">FOK (fill or kill)</option>
        </SelectField>
      </div>
      {draft.type === "limit" && (
        <TextField label={`Price (${instrument.quote_asset})`} inputMode="decimal" autoComplete="off" value={draft.price} onChange={(e) => update({ price: e.target.value })} error={show("price")} hint={`Tick ${instrument.tick_size}${instrument.last_price ? `; within ${instrument.price_band_bps / 100}% of ${instrument.last_price}` : ""}`} />
      )}
      {marketBuy ? (
        <TextField label={`Spend at most (${instrument.quote_asset}, fee included)`} inputMode="decimal" autoComplete="off" value={draft.quoteBudget} onChange={(e) => update({ quoteBudget: e.target.value })} error={show("quote_budget")} />
      ) : (
        <TextField label={`Quantity (${instrument.base_asset})`} inputMode="decimal" autoComplete="off" value={draft.quantity} onChange={(e) => update({ quantity: e.target.value })} error={show("quantity")} hint={`Lot ${instrument.lot_size}; min ${instrument.min_quantity}, max ${instrument.max_quantity}`} />
      )}
      <div role="group" className="rounded bg-slate-50 p-2 text-sm" aria-live="polite" aria-label="Estimate">
        {checked.estimate ? (
          <dl className="grid grid-cols-[1fr_auto] gap-x-3 gap-y-1">
            <dt>Estimated value</dt>
            <dd className="text-right font-mono" data-testid="estimate-notional">{checked.estimate.notional} {checked.estimate.asset}</dd>
            <dt>Estimated fee (at most, {ESTIMATE_FEE_BPS / 100}%)</dt>
            <dd className="text-right font-mono" data-testid="estimate-fee">{checked.estimate.fee} {checked.estimate.asset}</dd>
            <dt className="font-medium">{draft.side === "buy" ? "Total held" : "You receive about"}</dt>
            <dd className="text-right font-mono font-medium" data-testid="estimate-total">{checked.estimate.total} {checked.estimate.asset}</dd>
          </dl>
        ) : (
          <p className="text-slate-600">{draft.type === "market" && draft.side === "sell" ? "A market sell fills at the best bids." : "Enter a price and quantity to see the cost."}</p>
        )}
      </div>
      {banner && <Alert>{banner}</Alert>}
      {result && <Alert kind="success">{result}</Alert>}
      {halted && <Alert kind="info">Trading on {instrument.symbol} is halted.</Alert>}
      <Button type="submit" busy={place.busy} disabled={halted} variant={draft.side === "buy" ? "primary" : "danger"}>
        {place.busy ? "Placing the order…" : `${draft.side === "buy" ? "Buy" : "Sell"} ${instrument.base_asset}`}
      </Button>
    </form>
  );
}
