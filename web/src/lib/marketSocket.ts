/**
 * The market-data WebSocket (/api/v1/ws) for one instrument: book and trades, and with a
 * token the user's own orders channel. It reconnects with backoff, resubscribes on a gap
 * (which answers with a fresh snapshot), and reports every message to its owner.
 */
import type { BookDeltaMessage, BookSnapshotMessage, TradeMessage, TradesSnapshotMessage } from "./book";

export type ServerMessage =
  | BookSnapshotMessage
  | BookDeltaMessage
  | TradesSnapshotMessage
  | TradeMessage
  | { type: "order" | "fill"; channel: "orders"; instrument: string }
  | { type: "resync"; channel: string; instrument: string }
  | { type: "subscribed" | "unsubscribed"; channel: string }
  | { type: "authenticated" }
  | { type: "error"; error: string };

export type ConnectionState = "connecting" | "open" | "closed";

export interface SocketOptions {
  symbol: string;
  token: () => string | null;
  onMessage: (message: ServerMessage) => void;
  onState: (state: ConnectionState) => void;
  url?: string;
}

export function streamUrl(): string {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/api/v1/ws`;
}

export class MarketSocket {
  private socket: WebSocket | null = null;
  private closed = false;
  private attempts = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly options: SocketOptions) {}

  start(): void {
    this.closed = false;
    this.connect();
  }

  stop(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket?.close();
    this.socket = null;
  }

  /** Subscribe again: the server answers with a fresh snapshot (after a gap). */
  resync(channel: "book" | "trades"): void {
    this.send({ op: "subscribe", channel, instrument: this.options.symbol });
  }

  private send(message: object): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  private connect(): void {
    this.options.onState("connecting");
    const socket = new WebSocket(this.options.url ?? streamUrl());
    this.socket = socket;
    socket.onopen = () => {
      this.attempts = 0;
      this.options.onState("open");
      const token = this.options.token();
      if (token) this.send({ op: "auth", token });
      this.send({ op: "subscribe", channel: "book", instrument: this.options.symbol });
      this.send({ op: "subscribe", channel: "trades", instrument: this.options.symbol });
    };
    socket.onmessage = (event: MessageEvent<string>) => {
      let message: ServerMessage;
      try {
        message = JSON.parse(event.data) as ServerMessage;
      } catch {
        return;
      }
      if (message.type === "authenticated") this.send({ op: "subscribe", channel: "orders" });
      this.options.onMessage(message);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.options.onState("closed");
      if (this.closed) return;
      const delay = Math.min(30_000, 500 * 2 ** this.attempts);
      this.attempts += 1;
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }
}
