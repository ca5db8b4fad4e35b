import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Card, Loading, Page } from "../../components/ui";
import { messageOf } from "../../lib/errors";

export default function WalletsPage() {
  const wallets = useQuery({ queryKey: ["wallets"], queryFn: () => unwrap(api.GET("/api/v1/wallets")) });
  return (
    <Page title="Wallets">
      <div className="mb-4 flex flex-wrap gap-3 text-sm">
        <Link className="rounded bg-blue-700 px-3 py-2 font-medium text-white" to="/deposit">Deposit</Link>
        <Link className="rounded border border-slate-300 bg-white px-3 py-2 font-medium" to="/withdraw">Withdraw</Link>
      </div>
      {wallets.isPending ? (
        <Loading label="Loading your wallets…" />
      ) : wallets.isError ? (
        <Alert>{messageOf(wallets.error)}</Alert>
      ) : wallets.data.wallets.length === 0 ? (
        <Card><p>You have no balances yet. <Link className="text-blue-700 underline" to="/deposit">Make a deposit</Link> to start.</p></Card>
      ) : (
        <Card>
          <table className="w-full text-left text-sm">
            <caption className="sr-only">Balances per asset</caption>
            <thead>
              <tr className="border-b border-slate-200">
                <th scope="col" className="py-2">Asset</th>
                <th scope="col" className="py-2 text-right">Available</th>
                <th scope="col" className="py-2 text-right">Held</th>
              </tr>
            </thead>
            <tbody>
              {wallets.data.wallets.map((wallet) => (
                <tr key={wallet.asset} className="border-b border-slate-100">
                  <th scope="row" className="py-2 font-medium">{wallet.asset}</th>
                  <td className="py-2 text-right font-mono">
                    {wallet.available_account_id ? (
                      <Link className="text-blue-700 underline" to={`/wallets/${wallet.available_account_id}/statement`} aria-label={`${wallet.available} ${wallet.asset} available: statement`}>
                        {wallet.available}
                      </Link>
                    ) : (
                      wallet.available
                    )}
                  </td>
                  <td className="py-2 text-right font-mono">
                    {wallet.held_account_id ? (
                      <Link className="text-blue-700 underline" to={`/wallets/${wallet.held_account_id}/statement`} aria-label={`${wallet.held} ${wallet.asset} held: statement`}>
                        {wallet.held}
                      </Link>
                    ) : (
                      wallet.held
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <p className="mt-3 text-xs text-slate-600">Select a balance to see its statement.</p>
        </Card>
      )}
    </Page>
  );
}
