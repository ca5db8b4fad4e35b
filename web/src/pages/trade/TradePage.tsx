import { useQuery } from "@tanstack/react-query";
import { lazy, Suspense } from "react";
import { Link, useParams } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Card, Loading, Page } from "../../components/ui";
import { messageOf } from "../../lib/errors";
import { BookView, TradesView } from "./MarketViews";
import { OrderEntry } from "./OrderEntry";
import { OrdersPanel } from "./OrdersPanel";
import { useMarketStream } from "./useMarketStream";

// The chart library loads after the page renders: it is in neither the sign-in nor the trade screen's initial bundle.
const CandleChart = lazy(() => import("./CandleChart"));

export default function TradePage() {
  const { symbol = "" } = useParams();
  const instrument = useQuery({
    queryKey: ["instrument", symbol],
    queryFn: () => unwrap(api.GET("/api/v1/instruments/{symbol}", { params: { path: { symbol } } })),
  });
  const assets = useQuery({ queryKey: ["assets"], queryFn: () => unwrap(api.GET("/api/v1/assets")), staleTime: 300_000 });
  const { book, trades, connection, streamError } = useMarketStream(symbol, instrument.data?.price_scale);

  if (instrument.isPending || assets.isPending) return <Loading label={`Loading ${symbol}…`} />;
  if (instrument.isError || assets.isError) {
    return (
      <Page title={symbol}>
        <Alert>{messageOf(instrument.error ?? assets.error)}</Alert>
        <p className="mt-4"><Link className="text-blue-700 underline" to="/trade">All markets</Link></p>
      </Page>
    );
  }
  const data = instrument.data;
  const quote = assets.data.find((asset) => asset.code === data.quote_asset);
  const last = trades.trades[0]?.price ?? data.last_price;

  return (
    <Page title={symbol} wide>
      <div className="mb-4 flex flex-wrap items-center gap-4 text-sm">
        <span>Last price: <strong className="font-mono">{last ?? "none yet"}</strong> {data.quote_asset}</span>
        <span>{data.status === "open" ? "Open" : "Halted"}</span>
        <span role="status" className={connection === "open" ? "text-green-800" : "text-amber-700"}>
          {connection === "open" ? "Live" : connection === "connecting" ? "Connecting…" : "Reconnecting…"}
        </span>
        {streamError && <span role="alert" className="text-red-700">Live data: {streamError.replace(/_/g, " ")}</span>}
        <Link className="ml-auto text-blue-700 underline" to="/trade">All markets</Link>
      </div>
      <div className="grid grid-cols-1 gap-4 lg:grid-cols-[18rem_1fr_20rem]">
        <Card title="Order book" className="order-2 lg:order-1">
          <BookView book={book} base={data.base_asset} quote={data.quote_asset} />
        </Card>
        <div className="order-1 flex flex-col gap-4 lg:order-2">
          <Card title="Chart">
            {/* The chart's own height (its interval buttons and the plot) while it loads, so nothing below it moves. */}
            <div className="min-h-[18rem] md:min-h-[22rem]">
              <Suspense fallback={<Loading label="Loading the chart…" />}>
                <CandleChart symbol={symbol} />
              </Suspense>
            </div>
          </Card>
          <Card title="Recent trades">
            <TradesView trades={trades} />
          </Card>
        </div>
        <Card title="Place an order" className="order-1 lg:order-3">
          {quote ? <OrderEntry instrument={data} quoteScale={quote.scale} /> : <Alert>The quote asset {data.quote_asset} is unknown.</Alert>}
        </Card>
      </div>
      <Card title="Your orders" className="mt-4">
        <OrdersPanel symbol={symbol} />
      </Card>
    </Page>
  );
}
