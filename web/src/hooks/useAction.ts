import { useCallback, useState } from "react";
import { ApiError, messageOf } from "../lib/errors";

export interface Action<A extends unknown[]> {
  busy: boolean;
  error: unknown;
  /** The message for a form field, if the last error concerns it. */
  fieldError(name: string): string | undefined;
  /** The message to show above the form: an error that concerns none of `fields`. */
  formError(fields: readonly string[]): string | undefined;
  run(...args: A): Promise<boolean>;
  reset(): void;
}

/** Runs an async action with a busy state and its error, never silently. */
export function useAction<A extends unknown[]>(action: (...args: A) => Promise<unknown>): Action<A> {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const run = useCallback(
    async (...args: A) => {
      setBusy(true);
      setError(null);
      try {
        await action(...args);
        return true;
      } catch (caught) {
        setError(caught);
        return false;
      } finally {
        setBusy(false);
      }
    },
    [action],
  );

  return {
    busy,
    error,
    fieldError: (name) => (error instanceof ApiError ? error.field(name) : undefined),
    formError: (fields) => {
      if (error === null) return undefined;
      if (error instanceof ApiError && error.concernsOnly(fields)) return undefined;
      return messageOf(error);
    },
    run,
    reset: () => setError(null),
  };
}
