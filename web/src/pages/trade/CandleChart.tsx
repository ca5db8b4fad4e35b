import { useQuery } from "@tanstack/react-query";
import { CandlestickSeries, createChart, type IChartApi, type ISeriesApi, type UTCTimestamp } from "lightweight-charts";
import { useEffect, useRef, useState } from "react";
import { api, unwrap } from "../../api/client";
import { cx } from "../../components/ui";
import { messageOf } from "../../lib/errors";

export const INTERVALS = ["1m", "5m", "1h", "1d"] as const;
type Interval = (typeof INTERVALS)[number];

interface Candle {
  time: string;
  open: string;
  high: string;
  low: string;
  close: string;
  volume: string;
}

/**
 * The OHLC chart of GET /api/v1/instruments/{symbol}/candles. The chart library draws
 * with numbers, so prices become numbers here for drawing only; nothing is computed
 * with them.
 */
export default function CandleChart({ symbol }: { symbol: string }) {
  const [interval, setChartInterval] = useState<Interval>("1m");
  const container = useRef<HTMLDivElement>(null);
  const chart = useRef<IChartApi | null>(null);
  const series = useRef<ISeriesApi<"Candlestick"> | null>(null);
  const candles = useQuery({
    queryKey: ["candles", symbol, interval],
    queryFn: async () => {
      const body = await unwrap(api.GET("/api/v1/instruments/{symbol}/candles", { params: { path: { symbol }, query: { interval, limit: 200 } } }));
      return (body as { data?: Candle[] }).data ?? [];
    },
    refetchInterval: 30_000,
  });

  useEffect(() => {
    if (!container.current) return;
    const created = createChart(container.current, {
      autoSize: true,
      layout: { background: { color: "#ffffff" }, textColor: "#334155", attributionLogo: false },
      grid: { vertLines: { color: "#f1f5f9" }, horzLines: { color: "#f1f5f9" } },
      timeScale: { timeVisible: true, secondsVisible: false },
    });
    series.current = created.addSeries(CandlestickSeries, {
      upColor: "#15803d",
      downColor: "#b91c1c",
      borderVisible: false,
      wickUpColor: "#15803d",
      wickDownColor: "#b91c1c",
    });
    chart.current = created;
    return () => {
      created.remove();
      chart.current = null;
      series.current = null;
    };
  }, []);

  useEffect(() => {
    if (!series.current || !candles.data) return;
    series.current.setData(
      candles.data.map((c) => ({
        time: Math.floor(Date.parse(c.time) / 1000) as UTCTimestamp,
        open: Number(c.open),
        high: Number(c.high),
        low: Number(c.low),
        close: Number(c.close),
      })),
    );
    chart.current?.timeScale().fitContent();
  }, [candles.data]);

  return (
    <div>
      <div role="group" aria-label="Chart interval" className="mb-2 flex gap-1">
        {INTERVALS.map((value) => (
          <button
            key={value}
            type="button"
            aria-pressed={interval === value}
            onClick={() => setChartInterval(value)}
            className={cx("rounded px-2 py-1 text-xs font-medium focus:outline-none focus-visible:ring-2 focus-visible:ring-blue-600", interval === value ? "bg-slate-800 text-white" : "bg-slate-100 text-slate-800")}
          >
            {value}
          </button>
        ))}
      </div>
      {/* The messages sit over the chart, so what loads after the page never moves it (no layout shift). */}
      <div className="relative">
        <div ref={container} className="h-64 w-full md:h-80" role="img" aria-label={`${symbol} candles, ${interval}`} />
        {candles.isError && <p role="alert" className="absolute inset-x-0 top-2 text-center text-sm text-red-700">{messageOf(candles.error)}</p>}
        {candles.data?.length === 0 && <p className="absolute inset-x-0 top-2 text-center text-sm text-slate-600">No trades in this period yet.</p>}
      </div>
    </div>
  );
}
