import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useMemo, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { useAuth } from "../../auth/AuthContext";
import { Alert, Button, Card, Loading, Page, SelectField, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { useIdempotencyKey } from "../../hooks/useIdempotencyKey";
import { ApiError, messageOf } from "../../lib/errors";
import { formatTime } from "../../lib/format";
import { tryParseDecimal } from "../../lib/money";
import { PROVIDERS, useAssets } from "./common";

const FIELDS = ["amount", "asset", "connector", "destination", "totp_code"] as const;

export const WITHDRAWAL_STATES: Record<Schemas["WithdrawalState"], string> = {
  pending_review: "Waiting for approval",
  approved: "Approved",
  processing: "Being paid",
  succeeded: "Paid",
  failed: "Failed",
  cancelled: "Cancelled",
  rejected: "Rejected",
};

function CancelButton({ withdrawal }: { withdrawal: Schemas["WithdrawalOut"] }) {
  const client = useQueryClient();
  const cancel = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/withdrawals/{withdrawal_id}/cancel", { params: { path: { withdrawal_id: withdrawal.id } } }));
      await client.invalidateQueries({ queryKey: ["withdrawals"] });
      await client.invalidateQueries({ queryKey: ["wallets"] });
    }, [withdrawal.id, client]),
  );
  return (
    <span className="flex flex-col items-end gap-1">
      <Button variant="secondary" className="px-2 py-1" busy={cancel.busy} onClick={() => void cancel.run()}>
        {cancel.busy ? "Cancelling…" : "Cancel"}
        <span className="sr-only"> the withdrawal of {withdrawal.amount} {withdrawal.asset}</span>
      </Button>
      {cancel.error !== null && <span role="alert" className="text-xs text-red-700">{messageOf(cancel.error)}</span>}
    </span>
  );
}

export default function WithdrawPage() {
  const { user } = useAuth();
  const client = useQueryClient();
  const assets = useAssets();
  const usable = useMemo(() => (assets.data ?? []).filter((asset) => asset.active), [assets.data]);
  const [assetCode, setAssetCode] = useState("");
  const [amount, setAmount] = useState("");
  const [destination, setDestination] = useState("");
  const [connector, setConnector] = useState("");
  const [code, setCode] = useState("");
  const [askCode, setAskCode] = useState(false);
  const [local, setLocal] = useState<Partial<Record<"amount" | "destination", string>>>({});
  const [done, setDone] = useState<string | null>(null);
  const asset = usable.find((a) => a.code === assetCode) ?? usable[0];
  const wallets = useQuery({ queryKey: ["wallets"], queryFn: () => unwrap(api.GET("/api/v1/wallets")) });
  const withdrawals = useQuery({ queryKey: ["withdrawals"], queryFn: () => unwrap(api.GET("/api/v1/withdrawals", { params: { query: { limit: 50 } } })) });
  const available = wallets.data?.wallets.find((w) => w.asset === asset?.code)?.available;
  const needsCode = askCode || user?.totp_enabled === true;

  const idempotency = useIdempotencyKey();
  const create = useAction(
    useCallback(async () => {
      if (!asset) return;
      try {
        const body = { asset: asset.code, amount: amount.trim(), destination: destination.trim(), ...(connector ? { connector } : {}), ...(code ? { totp_code: code } : {}) };
        const created = await unwrap(api.POST("/api/v1/withdrawals", { params: { header: { "idempotency-key": idempotency.keyFor(body) } }, body }));
        idempotency.done();
        setDone(`Your withdrawal of ${created.amount} ${created.asset} is ${WITHDRAWAL_STATES[created.state].toLowerCase()}.`);
        setAmount("");
        setCode("");
      } catch (error) {
        if (error instanceof ApiError && error.code === "totp_required") setAskCode(true);
        throw error;
      } finally {
        await client.invalidateQueries({ queryKey: ["withdrawals"] });
        await client.invalidateQueries({ queryKey: ["wallets"] });
      }
    }, [asset, amount, destination, connector, code, client, idempotency]),
  );

  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    if (!asset) return;
    setDone(null);
    const errors: typeof local = {};
    const parsed = tryParseDecimal(amount, asset.scale);
    if (!parsed.ok || parsed.value <= 0n) {
      errors.amount = parsed.ok ? "The amount must be more than zero." : parsed.problem === "precision" ? `${asset.code} has at most ${asset.scale} decimals.` : "Enter an amount, like 100.00.";
    }
    if (destination.trim() === "") errors.destination = "Enter where to send the money.";
    setLocal(errors);
    if (Object.keys(errors).length === 0) void create.run();
  }

  const banner = create.formError(FIELDS);
  return (
    <Page title="Withdraw">
      {assets.isPending ? (
        <Loading />
      ) : assets.isError ? (
        <Alert>{messageOf(assets.error)}</Alert>
      ) : (
        <Card className="max-w-md">
          <form onSubmit={onSubmit} noValidate className="flex flex-col gap-4">
            {done && <Alert kind="success">{done}</Alert>}
            {banner && <Alert>{banner}</Alert>}
            <SelectField label="Asset" value={asset?.code ?? ""} onChange={(e) => setAssetCode(e.target.value)} error={create.fieldError("asset")}>
              {usable.map((a) => (
                <option key={a.code} value={a.code}>{a.code} ({a.name})</option>
              ))}
            </SelectField>
            <TextField
              label="Amount"
              inputMode="decimal"
              autoComplete="off"
              value={amount}
              onChange={(e) => setAmount(e.target.value)}
              error={local.amount ?? create.fieldError("amount")}
              hint={available !== undefined ? `Available: ${available} ${asset?.code ?? ""}` : undefined}
            />
            <TextField label="Destination" hint="The account or address the provider pays out to." autoComplete="off" value={destination} onChange={(e) => setDestination(e.target.value)} error={local.destination ?? create.fieldError("destination")} />
            <SelectField label="Provider" value={connector} onChange={(e) => setConnector(e.target.value)} error={create.fieldError("connector")}>
              {PROVIDERS.map((p) => (
                <option key={p.value} value={p.value}>{p.label}</option>
              ))}
            </SelectField>
            {needsCode && (
              <TextField label="Authentication code" hint="The 6-digit code from your authenticator app." inputMode="numeric" autoComplete="one-time-code" maxLength={16} value={code} onChange={(e) => setCode(e.target.value.trim())} error={create.fieldError("totp_code")} />
            )}
            <p className="text-xs text-slate-600">
              Large withdrawals wait for approval by our operations team, and a daily limit applies. The API does not publish the
              current limits; a withdrawal above them is refused with the reason.
            </p>
            <div>
              <Button type="submit" busy={create.busy}>{create.busy ? "Requesting…" : "Request withdrawal"}</Button>
            </div>
          </form>
        </Card>
      )}
      <Card title="Your withdrawals" className="mt-6">
        {withdrawals.isPending ? (
          <Loading />
        ) : withdrawals.isError ? (
          <Alert>{messageOf(withdrawals.error)}</Alert>
        ) : withdrawals.data.data.length === 0 ? (
          <p>No withdrawals yet.</p>
        ) : (
          <ul className="divide-y divide-slate-100">
            {withdrawals.data.data.map((w) => (
              <li key={w.id} className="flex flex-wrap items-center justify-between gap-2 py-2 text-sm">
                <span className="font-mono">{w.amount} {w.asset}</span>
                <span className="break-all">to {w.destination}</span>
                <span>
                  {WITHDRAWAL_STATES[w.state]}
                  {w.state === "pending_review" && ` (${w.approvals.length} of ${w.required_approvals} approvals)`}
                </span>
                <span className="text-slate-600">{formatTime(w.created_at)}</span>
                {w.state === "pending_review" && <CancelButton withdrawal={w} />}
              </li>
            ))}
          </ul>
        )}
      </Card>
    </Page>
  );
}
