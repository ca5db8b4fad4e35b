import { useQuery } from "@tanstack/react-query";
import { Link, useParams } from "react-router";
import { api, unwrap, type Schemas } from "../../api/client";
import { Alert, Card, Loading, Page } from "../../components/ui";
import { messageOf } from "../../lib/errors";
import { formatTime, humanize } from "../../lib/format";

const FINAL: ReadonlySet<Schemas["DepositState"]> = new Set(["succeeded", "failed", "expired", "refunded", "charged_back"]);

const EXPLAIN: Record<Schemas["DepositState"], string> = {
  pending: "Waiting for the payment. Complete it at the provider's checkout; this page updates by itself.",
  succeeded: "The payment arrived and your balance is credited.",
  failed: "The payment failed. Nothing was credited.",
  expired: "The checkout expired before the payment. Nothing was credited.",
  needs_review: "The payment arrived but does not match the deposit. Our operations team is reviewing it.",
  refunded: "The payment was refunded.",
  charged_back: "The payment was charged back.",
};

export default function DepositStatusPage() {
  const { depositId = "" } = useParams();
  const deposit = useQuery({
    queryKey: ["deposit", depositId],
    queryFn: () => unwrap(api.GET("/api/v1/deposits/{deposit_id}", { params: { path: { deposit_id: depositId } } })),
    // Live: poll until the deposit reaches a final state.
    refetchInterval: (query) => (query.state.data && FINAL.has(query.state.data.state) ? false : 2000),
  });

  return (
    <Page title="Deposit">
      <p className="mb-4 text-sm"><Link className="text-blue-700 underline" to="/deposit">All deposits</Link></p>
      {deposit.isPending ? (
        <Loading label="Loading the deposit…" />
      ) : deposit.isError ? (
        <Alert>{messageOf(deposit.error)}</Alert>
      ) : (
        <Card>
          <dl className="grid grid-cols-[auto_1fr] gap-x-4 gap-y-2 text-sm">
            <dt className="font-medium">Amount</dt>
            <dd className="font-mono">{deposit.data.amount} {deposit.data.asset}</dd>
            <dt className="font-medium">Provider</dt>
            <dd>{deposit.data.connector}</dd>
            <dt className="font-medium">Status</dt>
            <dd aria-live="polite">
              <strong>{humanize(deposit.data.state)}</strong>
              {!FINAL.has(deposit.data.state) && <span className="ml-2 text-slate-600">(updating)</span>}
            </dd>
            <dt className="font-medium">Started</dt>
            <dd>{formatTime(deposit.data.created_at)}</dd>
            {deposit.data.credited_at && (
              <>
                <dt className="font-medium">Credited</dt>
                <dd>{formatTime(deposit.data.credited_at)}</dd>
              </>
            )}
            {deposit.data.failure_reason && (
              <>
                <dt className="font-medium">Reason</dt>
                <dd>{deposit.data.failure_reason}</dd>
              </>
            )}
          </dl>
          <p className="mt-4 text-sm">{EXPLAIN[deposit.data.state]}</p>
          {deposit.data.state === "pending" && deposit.data.checkout_url && (
            <p className="mt-4">
              <a className="inline-block rounded bg-blue-700 px-4 py-2 text-sm font-medium text-white" href={deposit.data.checkout_url} target="_blank" rel="noopener noreferrer">
                Pay at the provider&apos;s checkout (opens in a new tab)
              </a>
            </p>
          )}
          {deposit.data.state === "succeeded" && (
            <p className="mt-4"><Link className="text-blue-700 underline" to="/wallets">See your wallets</Link></p>
          )}
        </Card>
      )}
    </Page>
  );
}
