import { useQuery } from "@tanstack/react-query";
import { useCallback, useMemo, useState, type SyntheticEvent } from "react";
import { Link, useNavigate } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Button, Card, Loading, Page, SelectField, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { useIdempotencyKey } from "../../hooks/useIdempotencyKey";
import { messageOf } from "../../lib/errors";
import { formatTime, humanize } from "../../lib/format";
import { tryParseDecimal } from "../../lib/money";
import { PROVIDERS, useAssets } from "./common";

const FIELDS = ["amount", "asset", "connector"] as const;

export default function DepositPage() {
  const navigate = useNavigate();
  const assets = useAssets();
  const active = useMemo(() => (assets.data ?? []).filter((asset) => asset.active), [assets.data]);
  const [assetCode, setAssetCode] = useState("");
  const [amount, setAmount] = useState("");
  const [connector, setConnector] = useState("");
  const [amountError, setAmountError] = useState<string | undefined>();
  const asset = active.find((a) => a.code === assetCode) ?? active[0];
  const deposits = useQuery({ queryKey: ["deposits"], queryFn: () => unwrap(api.GET("/api/v1/deposits", { params: { query: { limit: 20 } } })) });

  const idempotency = useIdempotencyKey();
  const create = useAction(
    useCallback(async () => {
      if (!asset) return;
      const body = { asset: asset.code, amount: amount.trim(), ...(connector ? { connector } : {}) };
      const deposit = await unwrap(api.POST("/api/v1/deposits", { params: { header: { "idempotency-key": idempotency.keyFor(body) } }, body }));
      idempotency.done();
      void navigate(`/deposits/${deposit.id}`, { state: { checkout: deposit.checkout_url } });
    }, [asset, amount, connector, navigate, idempotency]),
  );

  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    if (!asset) return;
    const parsed = tryParseDecimal(amount, asset.scale);
    if (!parsed.ok || parsed.value <= 0n) {
      setAmountError(parsed.ok ? "The amount must be more than zero." : parsed.problem === "precision" ? `${asset.code} has at most ${asset.scale} decimals.` : "Enter an amount, like 100.00.");
      return;
    }
    setAmountError(undefined);
    void create.run();
  }

  const banner = create.formError(FIELDS);
  return (
    <Page title="Deposit">
      {assets.isPending ? (
        <Loading />
      ) : assets.isError ? (
        <Alert>{messageOf(assets.error)}</Alert>
      ) : active.length === 0 ? (
        <Alert kind="info">No asset can be deposited right now.</Alert>
      ) : (
        <Card className="max-w-md">
          <form onSubmit={onSubmit} noValidate className="flex flex-col gap-4">
            {banner && <Alert>{banner}</Alert>}
            <SelectField label="Asset" value={asset?.code ?? ""} onChange={(e) => setAssetCode(e.target.value)} error={create.fieldError("asset")}>
              {active.map((a) => (
                <option key={a.code} value={a.code}>{a.code} ({a.name})</option>
              ))}
            </SelectField>
            <TextField label="Amount" inputMode="decimal" autoComplete="off" value={amount} onChange={(e) => setAmount(e.target.value)} error={amountError ?? create.fieldError("amount")} hint={asset ? `Up to ${asset.scale} decimals.` : undefined} />
            <SelectField label="Provider" value={connector} onChange={(e) => setConnector(e.target.value)} error={create.fieldError("connector")}>
              {PROVIDERS.map((p) => (
                <option key={p.value} value={p.value}>{p.label}</option>
              ))}
            </SelectField>
            <div>
              <Button type="submit" busy={create.busy}>{create.busy ? "Starting the deposit…" : "Continue to checkout"}</Button>
            </div>
          </form>
        </Card>
      )}
      <Card title="Your deposits" className="mt-6">
        {deposits.isPending ? (
          <Loading />
        ) : deposits.isError ? (
          <Alert>{messageOf(deposits.error)}</Alert>
        ) : deposits.data.data.length === 0 ? (
          <p>No deposits yet.</p>
        ) : (
          <ul className="divide-y divide-slate-100">
            {deposits.data.data.map((d) => (
              <li key={d.id} className="flex flex-wrap items-center justify-between gap-2 py-2 text-sm">
                <span className="font-mono">{d.amount} {d.asset}</span>
                <span>{humanize(d.state)}</span>
                <span className="text-slate-600">{formatTime(d.created_at)}</span>
                <Link className="text-blue-700 underline" to={`/deposits/${d.id}`}>Details<span className="sr-only"> of the deposit of {d.amount} {d.asset}</span></Link>
              </li>
            ))}
          </ul>
        )}
      </Card>
    </Page>
  );
}
