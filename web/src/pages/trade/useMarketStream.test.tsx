import { QueryClientProvider } from "@tanstack/react-query";
import { act, render, screen } from "@testing-library/react";
import { afterEach, beforeEach, expect, test, vi } from "vitest";
import { makeQueryClient } from "../../App";
import { useMarketStream } from "./useMarketStream";

class FakeSocket {
  static last: FakeSocket | null = null;
  static OPEN = 1;
  readyState = 0;
  sent: unknown[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.last = this;
  }
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  receive(message: object) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
}

function Probe() {
  const { book, connection } = useMarketStream("BTC-USD", 2);
  return (
    <p>
      {connection} {book.synced ? "synced" : "unsynced"} seq={book.sequence} best={book.bids[0]?.[0] ?? "none"}
    </p>
  );
}

beforeEach(() => {
  vi.stubGlobal("WebSocket", FakeSocket);
});
afterEach(() => {
  vi.unstubAllGlobals();
});

test("the stream applies deltas and, on a gap, subscribes again and waits for the fresh snapshot", async () => {
  render(
    <QueryClientProvider client={makeQueryClient()}>
      <Probe />
    </QueryClientProvider>,
  );
  const socket = FakeSocket.last;
  if (!socket) throw new Error("no socket");
  expect(socket.url).toMatch(/^ws:\/\/.+\/api\/v1\/ws$/);
  act(() => socket.open());
  expect(socket.sent).toEqual([
    { op: "subscribe", channel: "book", instrument: "BTC-USD" },
    { op: "subscribe", channel: "trades", instrument: "BTC-USD" },
  ]);
  act(() => socket.receive({ type: "snapshot", channel: "book", instrument: "BTC-USD", sequence: 5, bids: [["10.00", "1", 1]], asks: [] }));
  act(() => socket.receive({ type: "delta", channel: "book", instrument: "BTC-USD", prev_sequence: 5, sequence: 6, changes: [["buy", "10.50", "2", 1]] }));
  expect(screen.getByText(/open synced seq=6 best=10.50/)).toBeInTheDocument();

  // prev_sequence 7 after 6: a delta was missed.
  act(() => socket.receive({ type: "delta", channel: "book", instrument: "BTC-USD", prev_sequence: 7, sequence: 8, changes: [["buy", "11.00", "2", 1]] }));
  await act(async () => { await Promise.resolve(); });
  expect(screen.getByText(/unsynced seq=6 best=10.50/)).toBeInTheDocument();
  expect(socket.sent.at(-1)).toEqual({ op: "subscribe", channel: "book", instrument: "BTC-USD" });

  act(() => socket.receive({ type: "snapshot", channel: "book", instrument: "BTC-USD", sequence: 8, bids: [["11.00", "2", 1], ["10.50", "2", 1]], asks: [] }));
  expect(screen.getByText(/open synced seq=8 best=11.00/)).toBeInTheDocument();
});
