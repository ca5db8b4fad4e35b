import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { Alert, Button, Loading, cx } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { messageOf } from "../../lib/errors";
import { formatTime, humanize } from "../../lib/format";

type Tab = "open" | "history" | "fills";

function CancelOrder({ order }: { order: Schemas["OrderOut"] }) {
  const client = useQueryClient();
  const cancel = useAction(
    useCallback(async () => {
      await unwrap(api.DELETE("/api/v1/orders/{order_id}", { params: { path: { order_id: order.id } } }));
      await client.invalidateQueries({ queryKey: ["orders"] });
    }, [order.id, client]),
  );
  return (
    <span className="flex flex-col items-end">
      <Button variant="secondary" className="px-2 py-1" busy={cancel.busy} onClick={() => void cancel.run()}>
        {cancel.busy ? "Cancelling…" : "Cancel"}<span className="sr-only"> order {order.id}</span>
      </Button>
      {cancel.error !== null && <span role="alert" className="text-xs text-red-700">{messageOf(cancel.error)}</span>}
    </span>
  );
}

function OrdersTable({ orders, cancellable }: { orders: Schemas["OrderOut"][]; cancellable: boolean }) {
  if (orders.length === 0) return <p className="py-2 text-sm text-slate-600">None.</p>;
  return (
    <div className="overflow-x-auto" tabIndex={0} role="region" aria-label={cancellable ? "Open orders" : "Order history"}>
      <table className="w-full min-w-[36rem] text-left text-sm">
        <thead>
          <tr className="border-b border-slate-200 text-xs text-slate-600">
            <th scope="col" className="py-1">Time</th>
            <th scope="col">Side</th>
            <th scope="col">Type</th>
            <th scope="col" className="text-right">Price</th>
            <th scope="col" className="text-right">Filled / quantity</th>
            <th scope="col">Status</th>
            {cancellable && <th scope="col"><span className="sr-only">Actions</span></th>}
          </tr>
        </thead>
        <tbody>
          {orders.map((o) => (
            <tr key={o.id} className="border-b border-slate-100">
              <td className="py-1">{formatTime(o.created_at)}</td>
              <td className={o.side === "buy" ? "text-green-800" : "text-red-800"}>{humanize(o.side)}</td>
              <td>{o.type} {o.tif.toUpperCase()}</td>
              <td className="text-right font-mono">{o.price ?? "market"}</td>
              <td className="text-right font-mono">{o.filled_quantity} / {o.quantity}</td>
              <td>{humanize(o.status)}{o.cancel_requested ? " (cancelling)" : ""}{o.cancel_reason ? ` (${o.cancel_reason})` : ""}</td>
              {cancellable && <td className="text-right"><CancelOrder order={o} /></td>}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function OrdersPanel({ symbol }: { symbol: string }) {
  const client = useQueryClient();
  const [tab, setTab] = useState<Tab>("open");
  const open = useQuery({ queryKey: ["orders", "open"], queryFn: () => unwrap(api.GET("/api/v1/orders", { params: { query: { status: "open", limit: 200 } } })) });
  const history = useQuery({ queryKey: ["orders", "all"], queryFn: () => unwrap(api.GET("/api/v1/orders", { params: { query: { status: "all", limit: 200 } } })), enabled: tab === "history" });
  const fills = useQuery({ queryKey: ["my-trades"], queryFn: () => unwrap(api.GET("/api/v1/trades", { params: { query: { limit: 200 } } })), enabled: tab === "fills" });
  const cancelAll = useAction(
    useCallback(async () => {
      await unwrap(api.DELETE("/api/v1/orders", { params: { query: { instrument: symbol } } }));
      await client.invalidateQueries({ queryKey: ["orders"] });
    }, [symbol, client]),
  );
  const mineOpen = (open.data?.data ?? []).filter((o) => o.instrument === symbol);
  const tabs: { id: Tab; label: string }[] = [
    { id: "open", label: `Open orders (${mineOpen.length})` },
    { id: "history", label: "Order history" },
    { id: "fills", label: "Fills" },
  ];

  return (
    <div>
      <div role="tablist" aria-label="Your orders" className="mb-2 flex flex-wrap gap-1 border-b border-slate-200">
        {tabs.map((t) => (
          <button
            key={t.id}
            type="button"
            role="tab"
            id={`tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls={`panel-${t.id}`}
            onClick={() => setTab(t.id)}
            className={cx("px-3 py-2 text-sm", tab === t.id ? "border-b-2 border-blue-700 font-semibold" : "text-slate-600")}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`}>
        {tab === "open" &&
          (open.isPending ? <Loading /> : open.isError ? <Alert>{messageOf(open.error)}</Alert> : (
            <>
              {mineOpen.length > 0 && (
                <div className="mb-2 flex items-center gap-3">
                  <Button variant="danger" className="px-3 py-1" busy={cancelAll.busy} onClick={() => void cancelAll.run()}>
                    {cancelAll.busy ? "Cancelling all…" : `Cancel all on ${symbol}`}
                  </Button>
                  {cancelAll.error !== null && <span role="alert" className="text-sm text-red-700">{messageOf(cancelAll.error)}</span>}
                </div>
              )}
              <OrdersTable orders={mineOpen} cancellable />
            </>
          ))}
        {tab === "history" &&
          (history.isPending ? <Loading /> : history.isError ? <Alert>{messageOf(history.error)}</Alert> : <OrdersTable orders={history.data.data.filter((o) => o.instrument === symbol)} cancellable={false} />)}
        {tab === "fills" &&
          (fills.isPending ? <Loading /> : fills.isError ? <Alert>{messageOf(fills.error)}</Alert> : (
            <FillsTable fills={fills.data.data.filter((f) => f.instrument === symbol)} />
          ))}
      </div>
    </div>
  );
}

function FillsTable({ fills }: { fills: Schemas["TradeOut"][] }) {
  if (fills.length === 0) return <p className="py-2 text-sm text-slate-600">No fills yet.</p>;
  return (
    <div className="overflow-x-auto" tabIndex={0} role="region" aria-label="Fills">
      <table className="w-full min-w-[36rem] text-left text-sm">
        <thead>
          <tr className="border-b border-slate-200 text-xs text-slate-600">
            <th scope="col" className="py-1">Time</th>
            <th scope="col">Side</th>
            <th scope="col" className="text-right">Price</th>
            <th scope="col" className="text-right">Quantity</th>
            <th scope="col" className="text-right">Value</th>
            <th scope="col" className="text-right">Fee</th>
            <th scope="col" className="pl-4">Liquidity</th>
          </tr>
        </thead>
        <tbody>
          {fills.map((f) => (
            <tr key={`${f.id}-${f.order_id}`} className="border-b border-slate-100">
              <td className="py-1">{formatTime(f.created_at)}</td>
              <td className={f.side === "buy" ? "text-green-800" : "text-red-800"}>{humanize(f.side)}</td>
              <td className="text-right font-mono">{f.price}</td>
              <td className="text-right font-mono">{f.quantity}</td>
              <td className="text-right font-mono">{f.quote_amount}</td>
              <td className="text-right font-mono">{f.fee}</td>
              <td className="pl-4">{f.liquidity}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
