import { describe, expect, test } from "vitest";
import { applyBook, applyTrades, emptyBook, emptyTrades, type BookDeltaMessage, type BookState, type TradeMessage } from "./book";

const snapshot = {
  type: "snapshot" as const,
  channel: "book" as const,
  instrument: "BTC-USD",
  sequence: 10,
  bids: [["100.00", "1.0", 1], ["99.00", "2.0", 2]] as [string, string, number][],
  asks: [["101.00", "1.5", 1]] as [string, string, number][],
};

const delta = (prev: number, sequence: number, changes: BookDeltaMessage["changes"]): BookDeltaMessage => ({
  type: "delta",
  channel: "book",
  instrument: "BTC-USD",
  prev_sequence: prev,
  sequence,
  changes,
});

function synced(): BookState {
  return applyBook(emptyBook, snapshot, 2).state;
}

describe("the book reducer", () => {
  test("a snapshot sets the book and its sequence", () => {
    const state = synced();
    expect(state).toMatchObject({ synced: true, sequence: 10, bids: snapshot.bids, asks: snapshot.asks });
  });

  test("the next delta adds, changes and removes levels, keeping each side sorted best first", () => {
    const { state, resync } = applyBook(
      synced(),
      delta(10, 11, [
        ["buy", "100.50", "0.5", 1], // a new best bid
        ["buy", "99.00", "0.0", 0], // removed
        ["sell", "100.90", "3.0", 2], // a new best ask
        ["sell", "101.00", "1.0", 1], // changed
      ]),
      2,
    );
    expect(resync).toBe(false);
    expect(state.sequence).toBe(11);
    expect(state.bids).toEqual([["100.50", "0.5", 1], ["100.00", "1.0", 1]]);
    expect(state.asks).toEqual([["100.90", "3.0", 2], ["101.00", "1.0", 1]]);
  });

  test("prices sort as decimals, not as strings or floats", () => {
    const { state } = applyBook(synced(), delta(10, 11, [["buy", "1000.00", "1", 1], ["buy", "9.99", "1", 1]]), 2);
    expect(state.bids.map(([price]) => price)).toEqual(["1000.00", "100.00", "99.00", "9.99"]);
  });

  test("an old delta (already in the snapshot) is skipped", () => {
    const before = synced();
    const { state, resync } = applyBook(before, delta(9, 10, [["buy", "50.00", "1", 1]]), 2);
    expect(resync).toBe(false);
    expect(state).toBe(before);
  });

  test("a gap stops applying and asks for a resync until the next snapshot", () => {
    const gap = applyBook(synced(), delta(11, 12, [["buy", "50.00", "1", 1]]), 2);
    expect(gap.resync).toBe(true);
    expect(gap.state.synced).toBe(false);
    expect(gap.state.gaps).toBe(1);
    expect(gap.state.bids).toEqual(snapshot.bids);
    // Deltas are ignored while out of sync...
    const ignored = applyBook(gap.state, delta(12, 13, [["buy", "60.00", "1", 1]]), 2);
    expect(ignored.state.bids).toEqual(snapshot.bids);
    expect(ignored.resync).toBe(false);
    // ...until a fresh snapshot.
    const fresh = applyBook(ignored.state, { ...snapshot, sequence: 13, bids: [["60.00", "1", 1]] }, 2);
    expect(fresh.state).toMatchObject({ synced: true, sequence: 13, bids: [["60.00", "1", 1]], gaps: 1 });
    expect(applyBook(fresh.state, delta(13, 14, []), 2).state.sequence).toBe(14);
  });

  test("deltas before the first snapshot are ignored", () => {
    const { state, resync } = applyBook(emptyBook, delta(0, 1, [["buy", "1.00", "1", 1]]), 2);
    expect(state).toBe(emptyBook);
    expect(resync).toBe(false);
  });
});

describe("the trades reducer", () => {
  const trade = (prev: number | null, sequence: number, id: number): TradeMessage => ({
    type: "trade",
    channel: "trades",
    instrument: "BTC-USD",
    prev_sequence: prev,
    sequence,
    id,
    price: "100.00",
    quantity: "1",
    side: "buy",
    time: "2026-01-01T00:00:00Z",
  });

  test("trades chain from the snapshot, newest first; a first trade has no previous", () => {
    let state = applyTrades(emptyTrades, { type: "snapshot", channel: "trades", instrument: "BTC-USD", sequence: 0, trades: [] }).state;
    state = applyTrades(state, trade(null, 5, 1)).state;
    state = applyTrades(state, trade(5, 7, 2)).state;
    expect(state.trades.map((t) => t.id)).toEqual([2, 1]);
    expect(state.sequence).toBe(7);
  });

  test("a missing trade is a gap", () => {
    const state = applyTrades(emptyTrades, { type: "snapshot", channel: "trades", instrument: "BTC-USD", sequence: 7, trades: [] }).state;
    const { resync, state: after } = applyTrades(state, trade(8, 9, 3));
    expect(resync).toBe(true);
    expect(after.synced).toBe(false);
  });
});
