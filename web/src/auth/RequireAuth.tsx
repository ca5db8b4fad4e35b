import { lazy } from "react";
import { Navigate, Outlet, useLocation } from "react-router";
import { Loading } from "../components/ui";
import { useAuth, type Role } from "./AuthContext";

const NotFoundPage = lazy(() => import("../pages/NotFoundPage"));

/**
 * Renders its routes only for a signed-in user with one of `roles` (any role when
 * omitted). Signed out: the sign-in page. Signed in without the role: a 404, so a
 * client learns nothing of the back office, and none of its queries ever run.
 */
export function RequireAuth({ roles }: { roles?: readonly Role[] }) {
  const { status, user } = useAuth();
  const location = useLocation();
  if (status === "restoring") return <Loading label="Restoring your session…" />;
  if (status === "signedOut" || !user) {
    const next = encodeURIComponent(location.pathname + location.search);
    return <Navigate to={`/signin?next=${next}`} replace />;
  }
  if (roles && !roles.includes(user.role)) return <NotFoundPage />;
  return <Outlet />;
}
