/**
 * The live order book and recent trades of one instrument, from the WebSocket feed.
 *
 * The protocol (src/bourse/trading/feed.py): a subscription starts with a snapshot
 * carrying the instrument's `sequence`; each committed command then publishes one
 * `delta` with `prev_sequence` and `sequence`. A delta whose `prev_sequence` is the last
 * applied sequence is the next one; one whose `sequence` is not above it is old and
 * skipped; anything else is a gap, and the client subscribes again for a fresh
 * snapshot. Trades chain the same way from one trade's sequence to the next.
 */
import { parseDecimal } from "./money";

/** [price, quantity, order count] as the API sends a level. */
export type Level = [string, string, number];
export type BookSide = "buy" | "sell";

export interface BookSnapshotMessage {
  type: "snapshot";
  channel: "book";
  instrument: string;
  sequence: number;
  bids: Level[];
  asks: Level[];
}

export interface BookDeltaMessage {
  type: "delta";
  channel: "book";
  instrument: string;
  sequence: number;
  prev_sequence: number;
  changes: [BookSide, string, string, number][];
}

export interface Trade {
  id: number;
  sequence: number;
  price: string;
  quantity: string;
  side: string;
  time: string;
}

export interface TradesSnapshotMessage {
  type: "snapshot";
  channel: "trades";
  instrument: string;
  sequence: number;
  trades: Trade[];
}

export interface TradeMessage extends Trade {
  type: "trade";
  channel: "trades";
  instrument: string;
  prev_sequence: number | null;
}

export interface BookState {
  /** False until a snapshot arrived, and again from a gap until the next snapshot. */
  synced: boolean;
  sequence: number;
  bids: Level[];
  asks: Level[];
  /** How many gaps were detected (each one asks for a resync). */
  gaps: number;
}

export interface TradesState {
  synced: boolean;
  sequence: number;
  trades: Trade[];
  gaps: number;
}

export const emptyBook: BookState = { synced: false, sequence: 0, bids: [], asks: [], gaps: 0 };
export const emptyTrades: TradesState = { synced: false, sequence: 0, trades: [], gaps: 0 };

export const MAX_TRADES = 50;

export type Applied<S> = { state: S; resync: boolean };

function priceKey(price: string, scale: number): bigint {
  return parseDecimal(price, scale);
}

function isEmptyLevel(quantity: string, count: number): boolean {
  return count === 0 || /^0*(\.0*)?$/.test(quantity);
}

/** A side's levels with one level set or removed, kept sorted best first. */
function setLevel(levels: Level[], level: Level, side: BookSide, scale: number): Level[] {
  const key = priceKey(level[0], scale);
  const rest = levels.filter(([price]) => priceKey(price, scale) !== key);
  if (isEmptyLevel(level[1], level[2])) return rest;
  rest.push(level);
  rest.sort((a, b) => {
    const x = priceKey(a[0], scale);
    const y = priceKey(b[0], scale);
    const ascending = x < y ? -1 : x > y ? 1 : 0;
    return side === "buy" ? -ascending : ascending;
  });
  return rest;
}

export function applyBook(state: BookState, message: BookSnapshotMessage | BookDeltaMessage, priceScale: number): Applied<BookState> {
  if (message.type === "snapshot") {
    return { state: { synced: true, sequence: message.sequence, bids: message.bids, asks: message.asks, gaps: state.gaps }, resync: false };
  }
  if (!state.synced) return { state, resync: false }; // waiting for the snapshot
  if (message.sequence <= state.sequence) return { state, resync: false }; // old: already in the snapshot
  if (message.prev_sequence !== state.sequence) {
    return { state: { ...state, synced: false, gaps: state.gaps + 1 }, resync: true };
  }
  let { bids, asks } = state;
  for (const [side, price, quantity, count] of message.changes) {
    if (side === "buy") bids = setLevel(bids, [price, quantity, count], "buy", priceScale);
    else asks = setLevel(asks, [price, quantity, count], "sell", priceScale);
  }
  return { state: { ...state, sequence: message.sequence, bids, asks }, resync: false };
}

export function applyTrades(state: TradesState, message: TradesSnapshotMessage | TradeMessage): Applied<TradesState> {
  if (message.type === "snapshot") {
    return { state: { synced: true, sequence: message.sequence, trades: message.trades.slice(0, MAX_TRADES), gaps: state.gaps }, resync: false };
  }
  if (!state.synced) return { state, resync: false };
  if (message.sequence <= state.sequence) return { state, resync: false };
  if ((message.prev_sequence ?? 0) !== state.sequence) {
    return { state: { ...state, synced: false, gaps: state.gaps + 1 }, resync: true };
  }
  const { id, sequence, price, quantity, side, time } = message;
  return {
    state: { ...state, sequence, trades: [{ id, sequence, price, quantity, side, time }, ...state.trades].slice(0, MAX_TRADES) },
    resync: false,
  };
}
