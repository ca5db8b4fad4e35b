import { useInfiniteQuery } from "@tanstack/react-query";
import { Link, useParams } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Button, Card, Loading, Page } from "../../components/ui";
import { messageOf } from "../../lib/errors";
import { formatTime } from "../../lib/format";

const PAGE = 50;

export default function StatementPage() {
  const { accountId = "" } = useParams();
  const statement = useInfiniteQuery({
    queryKey: ["statement", accountId],
    initialPageParam: null as string | null,
    queryFn: ({ pageParam }) =>
      unwrap(
        api.GET("/api/v1/accounts/{account_id}/postings", {
          params: { path: { account_id: accountId }, query: { limit: PAGE, ...(pageParam ? { cursor: pageParam } : {}) } },
        }),
      ),
    getNextPageParam: (last) => last.next_cursor,
  });

  const first = statement.data?.pages[0];
  const nextPageError = statement.isFetchNextPageError ? statement.error : null;
  return (
    <Page title={first ? `Statement: ${first.asset} ${first.kind}` : "Statement"}>
      <p className="mb-4 text-sm"><Link className="text-blue-700 underline" to="/wallets">Back to wallets</Link></p>
      {statement.isPending ? (
        <Loading label="Loading the statement…" />
      ) : statement.isError ? (
        <Alert>{messageOf(statement.error)}</Alert>
      ) : (
        <Card>
          <p className="mb-3">Balance: <span className="font-mono">{first?.balance} {first?.asset}</span></p>
          <div className="overflow-x-auto" tabIndex={0} role="region" aria-label="Postings">
            <table className="w-full min-w-[32rem] text-left text-sm">
              <caption className="sr-only">Postings, newest first</caption>
              <thead>
                <tr className="border-b border-slate-200">
                  <th scope="col" className="py-2">Time</th>
                  <th scope="col" className="py-2">What</th>
                  <th scope="col" className="py-2 text-right">Amount</th>
                  <th scope="col" className="py-2 text-right">Balance after</th>
                </tr>
              </thead>
              <tbody>
                {statement.data.pages.flatMap((page) =>
                  page.postings.map((line) => (
                    <tr key={`${line.entry_id}-${line.seq}`} className="border-b border-slate-100">
                      <td className="py-2">{formatTime(line.created_at)}</td>
                      <td className="py-2">{line.kind.replace(/_/g, " ")}</td>
                      <td className="py-2 text-right font-mono">{line.amount}</td>
                      <td className="py-2 text-right font-mono">{line.balance_after}</td>
                    </tr>
                  )),
                )}
              </tbody>
            </table>
          </div>
          {statement.data.pages[0]?.postings.length === 0 && <p className="mt-3">No postings yet.</p>}
          {nextPageError !== null && <div className="mt-3"><Alert>{messageOf(nextPageError)}</Alert></div>}
          {statement.hasNextPage && (
            <div className="mt-3">
              <Button variant="secondary" busy={statement.isFetchingNextPage} onClick={() => void statement.fetchNextPage()}>
                {statement.isFetchingNextPage ? "Loading…" : "Load older postings"}
              </Button>
            </div>
          )}
        </Card>
      )}
    </Page>
  );
}
