import { useQueryClient } from "@tanstack/react-query";
import { useEffect, useReducer, useRef, useState } from "react";
import { getAccessToken } from "../../api/session";
import { applyBook, applyTrades, emptyBook, emptyTrades, type BookState, type TradesState } from "../../lib/book";
import { MarketSocket, type ConnectionState, type ServerMessage } from "../../lib/marketSocket";

interface Stream {
  book: BookState;
  trades: TradesState;
}

type Action = { message: ServerMessage; priceScale: number; onResync: (channel: "book" | "trades") => void } | { reset: true };

function reduce(state: Stream, action: Action): Stream {
  if ("reset" in action) return { book: emptyBook, trades: emptyTrades };
  const { message, priceScale, onResync } = action;
  if (message.type === "snapshot" || message.type === "delta") {
    if (message.channel === "book") {
      const { state: book, resync } = applyBook(state.book, message, priceScale);
      if (resync) queueMicrotask(() => onResync("book"));
      return book === state.book ? state : { ...state, book };
    }
    const { state: trades, resync } = applyTrades(state.trades, message);
    if (resync) queueMicrotask(() => onResync("trades"));
    return trades === state.trades ? state : { ...state, trades };
  }
  if (message.type === "trade") {
    const { state: trades, resync } = applyTrades(state.trades, message);
    if (resync) queueMicrotask(() => onResync("trades"));
    return trades === state.trades ? state : { ...state, trades };
  }
  if (message.type === "resync") {
    // The server dropped queued messages and sends a fresh snapshot next.
    if (message.channel === "book") return { ...state, book: { ...state.book, synced: false } };
    if (message.channel === "trades") return { ...state, trades: { ...state.trades, synced: false } };
  }
  return state;
}

/** The live book and trades of `symbol`; the user's order and fill messages refresh their queries. */
export function useMarketStream(symbol: string, priceScale: number | undefined) {
  const client = useQueryClient();
  const [stream, dispatch] = useReducer(reduce, { book: emptyBook, trades: emptyTrades });
  const [connection, setConnection] = useState<ConnectionState>("connecting");
  const [streamError, setStreamError] = useState<string | null>(null);
  const socketRef = useRef<MarketSocket | null>(null);

  useEffect(() => {
    if (priceScale === undefined) return;
    dispatch({ reset: true });
    const onResync = (channel: "book" | "trades") => socketRef.current?.resync(channel);
    let refresh: ReturnType<typeof setTimeout> | undefined;
    let mine = false;
    const socket = new MarketSocket({
      symbol,
      token: getAccessToken,
      onState: setConnection,
      onMessage: (message) => {
        if (message.type === "error") {
          setStreamError(message.error);
          return;
        }
        if (message.type === "order" || message.type === "fill" || message.type === "trade") {
          // Re-read the user's orders, fills and balances (debounced: a burst is one read).
          mine ||= message.type !== "trade";
          clearTimeout(refresh);
          refresh = setTimeout(() => {
            if (mine) {
              mine = false;
              void client.invalidateQueries({ queryKey: ["orders"] });
              void client.invalidateQueries({ queryKey: ["my-trades"] });
              void client.invalidateQueries({ queryKey: ["wallets"] });
            }
            void client.invalidateQueries({ queryKey: ["candles", symbol] });
          }, 250);
        }
        dispatch({ message, priceScale, onResync });
      },
    });
    socketRef.current = socket;
    socket.start();
    return () => {
      clearTimeout(refresh);
      socket.stop();
      socketRef.current = null;
    };
  }, [symbol, priceScale, client]);

  return { ...stream, connection, streamError };
}
