import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { lazy, Suspense } from "react";
import { BrowserRouter, Navigate, Route, Routes } from "react-router";
import { AuthProvider } from "./auth/AuthContext";
import { RequireAuth } from "./auth/RequireAuth";
import { Layout } from "./components/Layout";
import { Loading } from "./components/ui";
import { ApiError } from "./lib/errors";

const SignInPage = lazy(() => import("./pages/auth/SignInPage"));
const RegisterPage = lazy(() => import("./pages/auth/RegisterPage"));
const SecurityPage = lazy(() => import("./pages/auth/SecurityPage"));
const WalletsPage = lazy(() => import("./pages/wallets/WalletsPage"));
const StatementPage = lazy(() => import("./pages/wallets/StatementPage"));
const DepositPage = lazy(() => import("./pages/payments/DepositPage"));
const DepositStatusPage = lazy(() => import("./pages/payments/DepositStatusPage"));
const WithdrawPage = lazy(() => import("./pages/payments/WithdrawPage"));
const MarketsPage = lazy(() => import("./pages/trade/MarketsPage"));
const TradePage = lazy(() => import("./pages/trade/TradePage"));
const IbPortalPage = lazy(() => import("./pages/ib/IbPortalPage"));
const BackOfficePage = lazy(() => import("./pages/admin/BackOfficePage"));
const NotFoundPage = lazy(() => import("./pages/NotFoundPage"));

export function makeQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        // A refusal (4xx) is an answer: retrying it does not help.
        retry: (failures, error) => failures < 2 && !(error instanceof ApiError && error.status >= 400 && error.status < 500),
        refetchOnWindowFocus: false,
      },
    },
  });
}

const queryClient = makeQueryClient();

export function App() {
  return (
    <QueryClientProvider client={queryClient}>
      <BrowserRouter>
        <AuthProvider>
          <Layout>
            <Suspense fallback={<Loading />}>
              <AppRoutes />
            </Suspense>
          </Layout>
        </AuthProvider>
      </BrowserRouter>
    </QueryClientProvider>
  );
}

export function AppRoutes() {
  return (
    <Routes>
      <Route path="/" element={<Navigate to="/wallets" replace />} />
      <Route path="/signin" element={<SignInPage />} />
      <Route path="/register" element={<RegisterPage />} />
      <Route element={<RequireAuth />}>
        <Route path="/security" element={<SecurityPage />} />
        <Route path="/wallets" element={<WalletsPage />} />
        <Route path="/wallets/:accountId/statement" element={<StatementPage />} />
        <Route path="/deposit" element={<DepositPage />} />
        <Route path="/deposits/:depositId" element={<DepositStatusPage />} />
        <Route path="/withdraw" element={<WithdrawPage />} />
        <Route path="/trade" element={<MarketsPage />} />
        <Route path="/trade/:symbol" element={<TradePage />} />
      </Route>
      <Route element={<RequireAuth roles={["ib"]} />}>
        <Route path="/ib" element={<IbPortalPage />} />
      </Route>
      <Route element={<RequireAuth roles={["operator", "admin"]} />}>
        <Route path="/admin" element={<BackOfficePage />} />
        <Route path="/admin/*" element={<BackOfficePage />} />
      </Route>
      <Route path="*" element={<NotFoundPage />} />
    </Routes>
  );
}
