import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { Alert, Button, Card, Loading, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { messageOf } from "../../lib/errors";
import { formatTime } from "../../lib/format";

const REASON = ["reason"] as const;

function InstrumentStatus({ instrument }: { instrument: Schemas["InstrumentOut"] }) {
  const client = useQueryClient();
  const [reason, setReason] = useState("");
  const [showBook, setShowBook] = useState(false);
  const halted = instrument.status === "halted";
  const change = useAction(
    useCallback(async () => {
      const params = { params: { path: { symbol: instrument.symbol } }, body: { reason: reason.trim() } };
      if (halted) await unwrap(api.POST("/api/v1/admin/instruments/{symbol}/resume", params));
      else await unwrap(api.POST("/api/v1/admin/instruments/{symbol}/halt", params));
      setReason("");
      await client.invalidateQueries({ queryKey: ["instruments"] });
    }, [instrument.symbol, reason, halted, client]),
  );
  const book = useQuery({
    queryKey: ["admin", "book", instrument.symbol],
    queryFn: () => unwrap(api.GET("/api/v1/admin/instruments/{symbol}/orders", { params: { path: { symbol: instrument.symbol } } })),
    enabled: showBook,
  });
  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    void change.run();
  }
  return (
    <li className="py-3 text-sm">
      <form onSubmit={onSubmit} noValidate className="flex flex-wrap items-end gap-2">
        <span className="w-24 font-semibold">{instrument.symbol}</span>
        <span className="w-16">{halted ? "Halted" : "Open"}</span>
        <TextField label={`Reason to ${halted ? "resume" : "halt"} ${instrument.symbol}`} className="min-w-[12rem] flex-1" value={reason} onChange={(e) => setReason(e.target.value)} error={change.fieldError("reason")} />
        <Button type="submit" variant={halted ? "primary" : "danger"} busy={change.busy}>{halted ? "Resume" : "Halt"}</Button>
        <Button variant="secondary" aria-expanded={showBook} onClick={() => setShowBook(!showBook)}>{showBook ? "Hide book" : "Full book"}</Button>
      </form>
      {change.formError(REASON) && <div className="mt-2"><Alert>{change.formError(REASON)}</Alert></div>}
      {showBook && (book.isPending ? <Loading /> : book.isError ? <Alert>{messageOf(book.error)}</Alert> : book.data.data.length === 0 ? <p className="mt-2">No resting orders.</p> : (
        <div className="mt-2 overflow-x-auto" tabIndex={0} role="region" aria-label={`${instrument.symbol} resting orders`}>
          <table className="w-full min-w-[32rem] text-left text-xs">
            <thead><tr className="border-b border-slate-200"><th scope="col">Order</th><th scope="col">Side</th><th scope="col" className="text-right">Price</th><th scope="col" className="text-right">Remaining</th><th scope="col">User</th><th scope="col">Time</th></tr></thead>
            <tbody>
              {book.data.data.map((o) => (
                <tr key={o.id} className="border-b border-slate-100"><td>{o.id}</td><td>{o.side}</td><td className="text-right font-mono">{o.price}</td><td className="text-right font-mono">{o.remaining}</td><td>{o.user_id}</td><td>{formatTime(o.created_at)}</td></tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </li>
  );
}

export function InstrumentsAdmin() {
  const instruments = useQuery({ queryKey: ["instruments"], queryFn: () => unwrap(api.GET("/api/v1/instruments")) });
  return (
    <Card title="Instruments" className="lg:col-span-2">
      {instruments.isPending ? <Loading /> : instruments.isError ? <Alert>{messageOf(instruments.error)}</Alert> : (
        <ul className="divide-y divide-slate-100">{instruments.data.map((i) => <InstrumentStatus key={i.symbol} instrument={i} />)}</ul>
      )}
    </Card>
  );
}

export function TradeBust() {
  const [tradeId, setTradeId] = useState("");
  const [reason, setReason] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const [idError, setIdError] = useState<string | undefined>();
  const bust = useAction(
    useCallback(async () => {
      const result = await unwrap(api.POST("/api/v1/admin/trades/{trade_id}/bust", { params: { path: { trade_id: Number(tradeId) } }, body: { reason: reason.trim() } }));
      setDone(`Trade ${result.trade_id} on ${result.instrument} is busted; ${result.commissions_clawed_back} commissions clawed back.`);
      setTradeId("");
      setReason("");
    }, [tradeId, reason]),
  );
  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    setDone(null);
    if (!/^[1-9]\d{0,17}$/.test(tradeId.trim())) {
      setIdError("Enter the trade's number.");
      return;
    }
    setIdError(undefined);
    void bust.run();
  }
  return (
    <Card title="Bust a trade">
      <form onSubmit={onSubmit} noValidate className="flex flex-col gap-3">
        {done && <Alert kind="success">{done}</Alert>}
        {bust.formError(["reason", "trade_id"]) && <Alert>{bust.formError(["reason", "trade_id"])}</Alert>}
        <TextField label="Trade number" inputMode="numeric" value={tradeId} onChange={(e) => setTradeId(e.target.value)} error={idError ?? bust.fieldError("trade_id")} />
        <TextField label="Reason" value={reason} onChange={(e) => setReason(e.target.value)} error={bust.fieldError("reason")} />
        <div><Button type="submit" variant="danger" busy={bust.busy}>{bust.busy ? "Busting…" : "Bust the trade"}</Button></div>
      </form>
    </Card>
  );
}

function yesterday(): string {
  const date = new Date(Date.now() - 86_400_000);
  return date.toISOString().slice(0, 10);
}

export function Reconciliation() {
  const client = useQueryClient();
  const reports = useQuery({ queryKey: ["admin", "reconciliation"], queryFn: () => unwrap(api.GET("/api/v1/admin/reconciliation-reports", { params: { query: { limit: 30 } } })) });
  const [connector, setConnector] = useState("simulator");
  const [day, setDay] = useState(yesterday);
  const run = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/admin/reconciliation-reports", { body: { connector: connector.trim(), day } }));
      await client.invalidateQueries({ queryKey: ["admin", "reconciliation"] });
    }, [connector, day, client]),
  );
  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    void run.run();
  }
  return (
    <Card title="Reconciliation">
      <form onSubmit={onSubmit} noValidate className="mb-3 flex flex-wrap items-end gap-2">
        <TextField label="Connector" value={connector} onChange={(e) => setConnector(e.target.value)} error={run.fieldError("connector")} />
        <TextField label="Day" type="date" value={day} onChange={(e) => setDay(e.target.value)} error={run.fieldError("day")} />
        <Button type="submit" busy={run.busy}>{run.busy ? "Reconciling…" : "Run"}</Button>
      </form>
      {run.formError(["connector", "day"]) && <Alert>{run.formError(["connector", "day"])}</Alert>}
      {reports.isPending ? <Loading /> : reports.isError ? <Alert>{messageOf(reports.error)}</Alert> : reports.data.data.length === 0 ? <p className="text-sm">No reports yet.</p> : (
        <ul className="divide-y divide-slate-100 text-sm">
          {reports.data.data.map((r) => (
            <li key={r.id} className="py-2">
              <div className="flex flex-wrap gap-x-4">
                <span className="font-semibold">{r.connector} {r.day}</span>
                <span>{r.matched} matched of {r.psp_transactions}</span>
                <span className={r.mismatch_count > 0 ? "font-semibold text-red-800" : "text-green-800"}>{r.mismatch_count} mismatches</span>
                <span className="text-slate-600">by {r.actor}, {formatTime(r.created_at)}</span>
              </div>
              {r.mismatch_count > 0 && (
                <details className="mt-1">
                  <summary className="cursor-pointer text-blue-700">Mismatches</summary>
                  <pre className="mt-1 max-h-48 overflow-auto rounded bg-slate-50 p-2 text-xs">{JSON.stringify({ mismatches: r.mismatches, missing_at_psp: r.missing_at_psp, missing_here: r.missing_here }, null, 2)}</pre>
                </details>
              )}
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}
