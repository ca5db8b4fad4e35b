import { lazy, Suspense } from "react";
import { BrowserRouter, Route, Routes } from "react-router";

const SignInPage = lazy(() => import("./pages/auth/SignInPage"));
const TradePage = lazy(() => import("./pages/trade/TradePage"));
const NotFoundPage = lazy(() => import("./pages/NotFoundPage"));

export function App() {
  return (
    <BrowserRouter>
      <Suspense fallback={<p role="status">Loading…</p>}>
        <Routes>
          <Route path="/signin" element={<SignInPage />} />
          <Route path="/trade/:symbol" element={<TradePage />} />
          <Route path="*" element={<NotFoundPage />} />
        </Routes>
      </Suspense>
    </BrowserRouter>
  );
}
