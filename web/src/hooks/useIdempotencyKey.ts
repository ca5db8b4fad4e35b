import { useCallback, useMemo, useRef } from "react";

/**
 * One Idempotency-Key per intended operation: the same key while the request body stays
 * the same (so a retry after a network failure is replayed by the server, never done
 * twice), a new one once the body changes or the operation succeeded (`done`).
 */
export function useIdempotencyKey(): { keyFor: (body: unknown) => string; done: () => void } {
  const current = useRef<{ body: string; key: string } | null>(null);
  const keyFor = useCallback((body: unknown) => {
    const text = JSON.stringify(body);
    if (current.current?.body !== text) current.current = { body: text, key: crypto.randomUUID() };
    return current.current.key;
  }, []);
  const done = useCallback(() => {
    current.current = null;
  }, []);
  return useMemo(() => ({ keyFor, done }), [keyFor, done]);
}
