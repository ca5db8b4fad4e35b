import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { useAuth } from "../../auth/AuthContext";
import { Alert, Button, Card, Loading, Page, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { messageOf } from "../../lib/errors";
import { formatTime } from "../../lib/format";
import { InstrumentsAdmin, Reconciliation, TradeBust } from "./MarketsAdmin";

function WithdrawalReview({ withdrawal }: { withdrawal: Schemas["WithdrawalOut"] }) {
  const { user } = useAuth();
  const client = useQueryClient();
  const [reason, setReason] = useState("");
  const [reasonError, setReasonError] = useState<string | undefined>();
  const approve = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/admin/withdrawals/{withdrawal_id}/approve", { params: { path: { withdrawal_id: withdrawal.id } }, body: reason.trim() ? { reason: reason.trim() } : {} }));
      await client.invalidateQueries({ queryKey: ["admin", "withdrawals"] });
    }, [withdrawal.id, reason, client]),
  );
  const reject = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/admin/withdrawals/{withdrawal_id}/reject", { params: { path: { withdrawal_id: withdrawal.id } }, body: { reason: reason.trim() } }));
      await client.invalidateQueries({ queryKey: ["admin", "withdrawals"] });
    }, [withdrawal.id, reason, client]),
  );
  const approvedByMe = withdrawal.approvals.some((a) => a.operator_id === user?.id);
  const ownRequest = withdrawal.user_id === user?.id;
  function onReject(event: SyntheticEvent) {
    event.preventDefault();
    if (!reason.trim()) {
      setReasonError("Give a reason to reject.");
      return;
    }
    setReasonError(undefined);
    void reject.run();
  }
  const error = approve.error ?? reject.error;
  return (
    <li className="py-3 text-sm">
      <div className="flex flex-wrap gap-x-4 gap-y-1">
        <span className="font-mono font-semibold">{withdrawal.amount} {withdrawal.asset}</span>
        <span className="break-all">to {withdrawal.destination} via {withdrawal.connector}</span>
        <span className="text-slate-600">user {withdrawal.user_id}</span>
        <span className="text-slate-600">{formatTime(withdrawal.created_at)}</span>
      </div>
      <p className="mt-1">
        Approvals {withdrawal.approvals.length} of {withdrawal.required_approvals}
        {withdrawal.approvals.map((a) => (
          <span key={a.operator_id} className="ml-2 rounded bg-slate-100 px-1.5 py-0.5 text-xs">
            {a.operator_id === user?.id ? "you" : a.operator_id} at {formatTime(a.at)}
          </span>
        ))}
      </p>
      <form onSubmit={onReject} noValidate className="mt-2 flex flex-wrap items-end gap-2">
        <TextField label="Reason" className="min-w-[12rem] flex-1" value={reason} onChange={(e) => setReason(e.target.value)} error={reasonError ?? reject.fieldError("reason") ?? approve.fieldError("reason")} hint="Required to reject; recorded with an approval." />
        <Button busy={approve.busy} disabled={approvedByMe || ownRequest} onClick={() => void approve.run()} title={approvedByMe ? "You approved it already: a second operator must approve." : undefined}>
          {approve.busy ? "Approving…" : approvedByMe ? "Approved by you" : "Approve"}
        </Button>
        <Button type="submit" variant="danger" busy={reject.busy}>{reject.busy ? "Rejecting…" : "Reject"}</Button>
      </form>
      {approvedByMe && <p className="mt-1 text-xs text-slate-600">Four eyes: you cannot approve twice; another operator must approve.</p>}
      {ownRequest && <p className="mt-1 text-xs text-slate-600">This is your own withdrawal: you cannot approve it.</p>}
      {error !== null && <div className="mt-2"><Alert>{messageOf(error)}</Alert></div>}
    </li>
  );
}

function Withdrawals() {
  const pending = useQuery({
    queryKey: ["admin", "withdrawals", "pending_review"],
    queryFn: () => unwrap(api.GET("/api/v1/admin/withdrawals", { params: { query: { state: ["pending_review"], limit: 100 } } })),
    refetchInterval: 15_000,
  });
  return (
    <Card title="Withdrawals waiting for approval">
      {pending.isPending ? <Loading /> : pending.isError ? <Alert>{messageOf(pending.error)}</Alert> : pending.data.data.length === 0 ? <p className="text-sm">None waiting.</p> : (
        <ul className="divide-y divide-slate-100">{pending.data.data.map((w) => <WithdrawalReview key={w.id} withdrawal={w} />)}</ul>
      )}
    </Card>
  );
}

function DepositReview({ deposit }: { deposit: Schemas["DepositOut"] }) {
  const { user } = useAuth();
  const client = useQueryClient();
  const [reason, setReason] = useState("");
  const [reasonError, setReasonError] = useState<string | undefined>();
  const [key] = useState(() => crypto.randomUUID());
  const decide = useAction(
    useCallback(
      async (decision: "credit" | "reject") => {
        const path = { deposit_id: deposit.id };
        const body = { reason: reason.trim() };
        if (decision === "credit") {
          await unwrap(api.POST("/api/v1/admin/deposits/{deposit_id}/credit", { params: { path, header: { "idempotency-key": key } }, body }));
        } else {
          await unwrap(api.POST("/api/v1/admin/deposits/{deposit_id}/reject", { params: { path }, body }));
        }
        await client.invalidateQueries({ queryKey: ["admin", "deposits"] });
      },
      [deposit.id, reason, key, client],
    ),
  );
  const own = deposit.user_id === user?.id;
  function run(decision: "credit" | "reject") {
    if (reason.trim().length < 3) {
      setReasonError("Give a reason (at least 3 characters); it is kept in the audit trail.");
      return;
    }
    setReasonError(undefined);
    void decide.run(decision);
  }
  return (
    <li className="py-3 text-sm">
      <div className="flex flex-wrap gap-x-4 gap-y-1">
        <span className="font-mono font-semibold">{deposit.amount} {deposit.asset}</span>
        <span>received {deposit.received_amount ?? "unknown"} {deposit.received_currency ?? ""}</span>
        <span>via {deposit.connector}</span>
        <span className="text-slate-600">user {deposit.user_id}</span>
        <span className="text-slate-600">{formatTime(deposit.created_at)}</span>
        {deposit.failure_reason && <span>{deposit.failure_reason}</span>}
      </div>
      <div className="mt-2 flex flex-wrap items-end gap-2">
        <TextField label="Reason" className="min-w-[12rem] flex-1" value={reason} onChange={(e) => setReason(e.target.value)} error={reasonError ?? decide.fieldError("reason")} />
        <Button busy={decide.busy} disabled={own} onClick={() => run("credit")}>Credit the amount received</Button>
        <Button variant="danger" busy={decide.busy} disabled={own} onClick={() => run("reject")}>Refuse</Button>
      </div>
      {own && <p className="mt-1 text-xs text-slate-600">This is your own deposit: another operator must decide.</p>}
      {decide.formError(["reason"]) && <div className="mt-2"><Alert>{decide.formError(["reason"])}</Alert></div>}
    </li>
  );
}

function DepositsForReview() {
  const deposits = useQuery({
    queryKey: ["admin", "deposits", "needs_review"],
    queryFn: () => unwrap(api.GET("/api/v1/admin/deposits", { params: { query: { state: ["needs_review"], limit: 100 } } })),
    refetchInterval: 15_000,
  });
  return (
    <Card title="Deposits needing review">
      {deposits.isPending ? <Loading /> : deposits.isError ? <Alert>{messageOf(deposits.error)}</Alert> : deposits.data.data.length === 0 ? <p className="text-sm">None to review.</p> : (
        <ul className="divide-y divide-slate-100">{deposits.data.data.map((d) => <DepositReview key={d.id} deposit={d} />)}</ul>
      )}
    </Card>
  );
}

function FailedJob({ job }: { job: Schemas["FailedJobOut"] }) {
  const client = useQueryClient();
  const [open, setOpen] = useState(false);
  const retry = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/admin/jobs/failed/{ident}/retry", { params: { path: { ident: job.uuid } } }));
      await client.invalidateQueries({ queryKey: ["admin"] });
    }, [job.uuid, client]),
  );
  const forget = useAction(
    useCallback(async () => {
      await unwrap(api.DELETE("/api/v1/admin/jobs/failed/{ident}", { params: { path: { ident: job.uuid } } }));
      await client.invalidateQueries({ queryKey: ["admin"] });
    }, [job.uuid, client]),
  );
  const error = retry.error ?? forget.error;
  return (
    <li className="py-2 text-sm">
      <div className="flex flex-wrap items-center gap-x-4 gap-y-1">
        <span className="font-semibold">{job.job}</span>
        <span>queue {job.queue}</span>
        <span>{job.attempts} attempts</span>
        <span className="text-slate-600">{job.failed_at ? formatTime(job.failed_at) : ""}</span>
        <span className="ml-auto flex gap-2">
          <Button variant="secondary" className="px-2 py-1" aria-expanded={open} onClick={() => setOpen(!open)}>{open ? "Hide traceback" : "Traceback"}</Button>
          <Button className="px-2 py-1" busy={retry.busy} onClick={() => void retry.run()}>{retry.busy ? "Retrying…" : "Retry"}</Button>
          <Button variant="danger" className="px-2 py-1" busy={forget.busy} onClick={() => void forget.run()}>{forget.busy ? "Forgetting…" : "Forget"}</Button>
        </span>
      </div>
      <p className="mt-1 break-all text-red-800">{job.exception}</p>
      {open && <pre tabIndex={0} role="region" aria-label={`Traceback of ${job.job}`} className="mt-2 max-h-72 overflow-auto rounded bg-slate-900 p-2 text-xs text-slate-100">{job.traceback}</pre>}
      {error !== null && <Alert>{messageOf(error)}</Alert>}
    </li>
  );
}

function Queues() {
  const stats = useQuery({ queryKey: ["admin", "stats"], queryFn: () => unwrap(api.GET("/api/v1/admin/jobs/stats")), refetchInterval: 5_000 });
  const failed = useQuery({ queryKey: ["admin", "failed"], queryFn: () => unwrap(api.GET("/api/v1/admin/jobs/failed", { params: { query: { limit: 100 } } })), refetchInterval: 15_000 });
  return (
    <Card title="Queues" className="lg:col-span-2">
      {stats.isPending ? <Loading /> : stats.isError ? <Alert>{messageOf(stats.error)}</Alert> : (
        <>
          <p className="mb-2 text-sm">
            Workers: {stats.data.busy_workers} busy of {stats.data.workers}. Failed jobs: {stats.data.failed}.
            {stats.data.pipeline_heartbeat_at && ` Last heartbeat ${formatTime(stats.data.pipeline_heartbeat_at)}.`}
          </p>
          <div className="overflow-x-auto" tabIndex={0} role="region" aria-label="Queue depths">
            <table className="w-full min-w-[28rem] text-left text-sm">
              <thead><tr className="border-b border-slate-200"><th scope="col" className="py-1">Queue</th><th scope="col" className="text-right">Ready</th><th scope="col" className="text-right">Delayed</th><th scope="col" className="text-right">Running</th><th scope="col" className="text-right">Oldest job</th></tr></thead>
              <tbody>
                {stats.data.queues.map((q) => (
                  <tr key={q.queue} className="border-b border-slate-100">
                    <th scope="row" className="py-1 font-medium">{q.queue}</th>
                    <td className="text-right">{q.ready}</td>
                    <td className="text-right">{q.delayed}</td>
                    <td className="text-right">{q.reserved}</td>
                    <td className="text-right">{Math.round(q.oldest_job_age_seconds)} s</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <p className="mt-1 text-xs text-slate-600">Jobs processed per minute are not in the API&apos;s queue statistics.</p>
        </>
      )}
      <h3 className="mt-4 font-semibold">Failed jobs</h3>
      {failed.isPending ? <Loading /> : failed.isError ? <Alert>{messageOf(failed.error)}</Alert> : failed.data.length === 0 ? <p className="text-sm">No failed jobs.</p> : (
        <ul className="divide-y divide-slate-100">{failed.data.map((job) => <FailedJob key={job.uuid} job={job} />)}</ul>
      )}
    </Card>
  );
}

export default function BackOfficePage() {
  return (
    <Page title="Back office" wide>
      <div className="grid grid-cols-1 gap-4 lg:grid-cols-2">
        <Withdrawals />
        <DepositsForReview />
        <Queues />
        <Reconciliation />
        <TradeBust />
        <InstrumentsAdmin />
      </div>
    </Page>
  );
}

