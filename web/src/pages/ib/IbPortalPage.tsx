import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { Alert, Button, Card, Loading, Page, SelectField, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { messageOf } from "../../lib/errors";
import { formatTime, humanize } from "../../lib/format";

export function referralLink(code: string): string {
  return `${window.location.origin}/register?ref=${encodeURIComponent(code)}`;
}

function CodeRow({ code }: { code: Schemas["ReferralCodeOut"] }) {
  const client = useQueryClient();
  const [copied, setCopied] = useState<string | null>(null);
  const revoke = useAction(
    useCallback(async () => {
      await unwrap(api.DELETE("/api/v1/ib/referral-codes/{code}", { params: { path: { code: code.code } } }));
      await client.invalidateQueries({ queryKey: ["ib", "codes"] });
    }, [code.code, client]),
  );
  async function copy() {
    try {
      await navigator.clipboard.writeText(referralLink(code.code));
      setCopied("Link copied.");
    } catch {
      setCopied("Copying is not allowed here: select the link and copy it.");
    }
  }
  return (
    <li className="flex flex-col gap-1 py-2 text-sm">
      <div className="flex flex-wrap items-center gap-3">
        <span className="font-mono font-semibold">{code.code}</span>
        <span>{code.active ? "Active" : "Revoked"}</span>
        <span className="text-slate-600">{code.referred_users} referred</span>
        {code.active && (
          <span className="ml-auto flex gap-2">
            <Button variant="secondary" className="px-2 py-1" onClick={() => void copy()}>Copy link<span className="sr-only"> for {code.code}</span></Button>
            <Button variant="danger" className="px-2 py-1" busy={revoke.busy} onClick={() => void revoke.run()}>{revoke.busy ? "Revoking…" : "Revoke"}<span className="sr-only"> {code.code}</span></Button>
          </span>
        )}
      </div>
      {code.active && <code className="break-all text-xs text-slate-600">{referralLink(code.code)}</code>}
      {copied && <span role="status" className="text-xs text-green-800">{copied}</span>}
      {revoke.error !== null && <span role="alert" className="text-xs text-red-700">{messageOf(revoke.error)}</span>}
    </li>
  );
}

function ReferralCodes() {
  const client = useQueryClient();
  const codes = useQuery({ queryKey: ["ib", "codes"], queryFn: () => unwrap(api.GET("/api/v1/ib/referral-codes")) });
  const [wanted, setWanted] = useState("");
  const create = useAction(
    useCallback(async () => {
      const code = wanted.trim();
      await unwrap(api.POST("/api/v1/ib/referral-codes", { body: code ? { code } : {} }));
      setWanted("");
      await client.invalidateQueries({ queryKey: ["ib", "codes"] });
    }, [wanted, client]),
  );
  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    void create.run();
  }
  return (
    <Card title="Referral codes">
      <form onSubmit={onSubmit} noValidate className="mb-3 flex flex-wrap items-end gap-3">
        <TextField label="New code (optional)" hint="6 to 32 of A–Z, 0–9 and -; a random one when empty." value={wanted} onChange={(e) => setWanted(e.target.value.toUpperCase())} error={create.fieldError("code")} />
        <Button type="submit" busy={create.busy}>{create.busy ? "Creating…" : "Create code"}</Button>
      </form>
      {create.formError(["code"]) && <Alert>{create.formError(["code"])}</Alert>}
      {codes.isPending ? <Loading /> : codes.isError ? <Alert>{messageOf(codes.error)}</Alert> : codes.data.codes.length === 0 ? <p className="text-sm">No codes yet.</p> : (
        <ul className="divide-y divide-slate-100">{codes.data.codes.map((c) => <CodeRow key={c.code} code={c} />)}</ul>
      )}
    </Card>
  );
}

function Tree() {
  const tree = useQuery({ queryKey: ["ib", "tree"], queryFn: () => unwrap(api.GET("/api/v1/ib/referrals/tree")) });
  return (
    <Card title="Referral tree">
      {tree.isPending ? <Loading /> : tree.isError ? <Alert>{messageOf(tree.error)}</Alert> : tree.data.members.length === 0 ? <p className="text-sm">Nobody has registered with your codes yet.</p> : (
        <ul className="text-sm">
          {tree.data.members.map((m) => (
            <li key={m.user_id} className="py-1">
              <span className="inline-block text-slate-500" aria-hidden="true">{"— ".repeat(m.level)}</span>
              <span className="sr-only">Level {m.level}: </span>
              {m.email} <span className="text-slate-600">({m.role}, joined {formatTime(m.joined)})</span>
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}

type GroupBy = "day" | "client" | "instrument";

function Commissions() {
  const [groupBy, setGroupBy] = useState<GroupBy>("day");
  const commissions = useQuery({ queryKey: ["ib", "commissions", groupBy], queryFn: () => unwrap(api.GET("/api/v1/ib/commissions", { params: { query: { group_by: groupBy } } })) });
  return (
    <Card title="Commissions">
      <SelectField label="Group by" value={groupBy} onChange={(e) => setGroupBy(e.target.value as GroupBy)} className="mb-3 max-w-xs">
        <option value="day">Day</option>
        <option value="client">Client</option>
        <option value="instrument">Instrument</option>
      </SelectField>
      {commissions.isPending ? <Loading /> : commissions.isError ? <Alert>{messageOf(commissions.error)}</Alert> : commissions.data.lines.length === 0 ? <p className="text-sm">No commissions yet.</p> : (
        <table className="w-full text-left text-sm">
          <thead><tr className="border-b border-slate-200"><th scope="col" className="py-1">{humanize(groupBy)}</th><th scope="col" className="text-right">Amount</th><th scope="col" className="text-right">Fills</th></tr></thead>
          <tbody>
            {commissions.data.lines.map((line) => (
              <tr key={`${line.key}-${line.asset}`} className="border-b border-slate-100">
                <td className="py-1">{line.key}</td>
                <td className="text-right font-mono">{line.amount} {line.asset}</td>
                <td className="text-right">{line.accruals}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Card>
  );
}

function Payouts() {
  const payouts = useQuery({ queryKey: ["ib", "payouts"], queryFn: () => unwrap(api.GET("/api/v1/ib/payouts")) });
  const [open, setOpen] = useState<string | null>(null);
  const detail = useQuery({
    queryKey: ["ib", "payout", open],
    queryFn: () => unwrap(api.GET("/api/v1/ib/payouts/{payout_id}", { params: { path: { payout_id: open ?? "" } } })),
    enabled: open !== null,
  });
  return (
    <Card title="Payouts">
      {payouts.isPending ? <Loading /> : payouts.isError ? <Alert>{messageOf(payouts.error)}</Alert> : payouts.data.payouts.length === 0 ? <p className="text-sm">No payouts yet.</p> : (
        <ul className="divide-y divide-slate-100 text-sm">
          {payouts.data.payouts.map((p) => (
            <li key={p.id} className="py-2">
              <div className="flex flex-wrap items-center gap-3">
                <span className="font-mono">{p.amount} {p.asset}</span>
                <span className="text-slate-600">{p.accruals} fills, {formatTime(p.created_at)}</span>
                <Button variant="secondary" className="ml-auto px-2 py-1" aria-expanded={open === p.id} onClick={() => setOpen(open === p.id ? null : p.id)}>
                  {open === p.id ? "Hide statement" : "Statement"}
                </Button>
              </div>
              {open === p.id && (detail.isPending ? <Loading /> : detail.isError ? <Alert>{messageOf(detail.error)}</Alert> : (
                <pre className="mt-2 max-h-64 overflow-auto rounded bg-slate-50 p-2 text-xs">{JSON.stringify(detail.data.statement, null, 2)}</pre>
              ))}
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}

export default function IbPortalPage() {
  return (
    <Page title="IB portal" wide>
      <div className="grid grid-cols-1 gap-4 lg:grid-cols-2">
        <ReferralCodes />
        <Tree />
        <Commissions />
        <Payouts />
      </div>
    </Page>
  );
}
