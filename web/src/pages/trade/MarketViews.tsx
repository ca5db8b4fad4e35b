import type { BookState, Level, TradesState } from "../../lib/book";
import { formatTime } from "../../lib/format";

const DEPTH = 12;

function Rows({ levels, side }: { levels: Level[]; side: "bid" | "ask" }) {
  return (
    <>
      {levels.slice(0, DEPTH).map(([price, quantity, count]) => (
        <tr key={price}>
          <td className={side === "bid" ? "py-0.5 font-mono text-green-800" : "py-0.5 font-mono text-red-800"}>{price}</td>
          <td className="py-0.5 text-right font-mono">{quantity}</td>
          <td className="py-0.5 text-right text-slate-600">{count}</td>
        </tr>
      ))}
    </>
  );
}

export function BookView({ book, base, quote }: { book: BookState; base: string; quote: string }) {
  // Room for the depth shown, so the snapshot arriving does not push the page down.
  return (
    <div className="min-h-[16rem]">
      {!book.synced && <p role="status" className="mb-1 text-xs text-slate-600">{book.gaps > 0 ? "Resynchronising…" : "Loading the book…"}</p>}
      <table className="w-full text-sm">
        <caption className="sr-only">Order book: asks, then bids</caption>
        <thead>
          <tr className="text-xs text-slate-600">
            <th scope="col" className="text-left font-medium">Price ({quote})</th>
            <th scope="col" className="text-right font-medium">Size ({base})</th>
            <th scope="col" className="text-right font-medium">Orders</th>
          </tr>
        </thead>
        <tbody aria-label="Asks">
          <Rows levels={[...book.asks.slice(0, DEPTH)].reverse()} side="ask" />
        </tbody>
        <tbody aria-label="Bids" className="border-t border-slate-300">
          <Rows levels={book.bids} side="bid" />
        </tbody>
      </table>
      {book.synced && book.bids.length === 0 && book.asks.length === 0 && <p className="text-sm text-slate-600">The book is empty.</p>}
    </div>
  );
}

export function TradesView({ trades }: { trades: TradesState }) {
  return (
    <div className="min-h-[12rem]">
      {!trades.synced && <p role="status" className="mb-1 text-xs text-slate-600">Loading trades…</p>}
      <table className="w-full text-sm">
        <caption className="sr-only">Recent trades, newest first</caption>
        <thead>
          <tr className="text-xs text-slate-600">
            <th scope="col" className="text-left font-medium">Price</th>
            <th scope="col" className="text-right font-medium">Size</th>
            <th scope="col" className="text-right font-medium">Time</th>
          </tr>
        </thead>
        <tbody>
          {trades.trades.map((trade) => (
            <tr key={trade.id}>
              <td className={trade.side === "buy" ? "font-mono text-green-800" : "font-mono text-red-800"}>{trade.price}</td>
              <td className="text-right font-mono">{trade.quantity}</td>
              <td className="text-right text-xs text-slate-600">{formatTime(trade.time)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {trades.synced && trades.trades.length === 0 && <p className="text-sm text-slate-600">No trades yet.</p>}
    </div>
  );
}
