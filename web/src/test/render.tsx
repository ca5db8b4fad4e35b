import { QueryClientProvider } from "@tanstack/react-query";
import { render } from "@testing-library/react";
import type { ReactElement } from "react";
import { MemoryRouter } from "react-router";
import { vi } from "vitest";
import { makeQueryClient } from "../App";
import { AuthProvider } from "../auth/AuthContext";

export interface Call {
  method: string;
  path: string;
  body: unknown;
  headers: Headers;
}

type Handler = (call: Call) => { status: number; body?: unknown } | undefined;

/** Stubs fetch with `handler`, recording every call; an unhandled call fails the test. */
export function mockApi(handler: Handler): Call[] {
  const calls: Call[] = [];
  vi.stubGlobal("fetch", async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = input instanceof Request ? input : new Request(new URL(String(input), window.location.origin), init);
    const text = await request.text();
    const call: Call = { method: request.method, path: new URL(request.url).pathname + new URL(request.url).search, body: text ? (JSON.parse(text) as unknown) : undefined, headers: request.headers };
    calls.push(call);
    const answer = handler(call);
    if (!answer) throw new Error(`unexpected call ${call.method} ${call.path}`);
    return new Response(answer.body === undefined ? null : JSON.stringify(answer.body), {
      status: answer.status,
      headers: { "Content-Type": "application/json" },
    });
  });
  return calls;
}

export function renderWithApp(ui: ReactElement, path = "/") {
  const client = makeQueryClient();
  client.setDefaultOptions({ queries: { retry: false } });
  return render(
    <QueryClientProvider client={client}>
      <MemoryRouter initialEntries={[path]}>
        <AuthProvider>{ui}</AuthProvider>
      </MemoryRouter>
    </QueryClientProvider>,
  );
}

export const error = (status: number, code: string, extra: Record<string, unknown> = {}) => ({
  status,
  body: { error: code, detail: code, request_id: "test", ...extra },
});
