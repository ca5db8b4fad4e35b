import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Card, Loading, Page } from "../../components/ui";
import { messageOf } from "../../lib/errors";

export default function MarketsPage() {
  const instruments = useQuery({ queryKey: ["instruments"], queryFn: () => unwrap(api.GET("/api/v1/instruments")) });
  return (
    <Page title="Markets">
      {instruments.isPending ? (
        <Loading />
      ) : instruments.isError ? (
        <Alert>{messageOf(instruments.error)}</Alert>
      ) : instruments.data.length === 0 ? (
        <Alert kind="info">No instrument is listed yet.</Alert>
      ) : (
        <Card>
          <ul className="divide-y divide-slate-100">
            {instruments.data.map((i) => (
              <li key={i.symbol} className="flex flex-wrap items-center justify-between gap-2 py-2">
                <Link className="font-semibold text-blue-700 underline" to={`/trade/${encodeURIComponent(i.symbol)}`}>{i.symbol}</Link>
                <span className="font-mono text-sm">{i.last_price ?? "no trades yet"}</span>
                <span className="text-sm">{i.status === "open" ? "Open" : "Halted"}</span>
              </li>
            ))}
          </ul>
        </Card>
      )}
    </Page>
  );
}
