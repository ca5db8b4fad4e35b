import { useState, type ReactNode } from "react";
import { Link, NavLink, useNavigate } from "react-router";
import { useAuth, type Role } from "../auth/AuthContext";
import { messageOf } from "../lib/errors";
import { cx } from "./ui";

interface NavItem {
  to: string;
  label: string;
  roles?: readonly Role[];
}

export const NAV: readonly NavItem[] = [
  { to: "/wallets", label: "Wallets" },
  { to: "/trade", label: "Trade" },
  { to: "/deposit", label: "Deposit" },
  { to: "/withdraw", label: "Withdraw" },
  { to: "/security", label: "Security" },
  { to: "/ib", label: "IB portal", roles: ["ib"] },
  { to: "/admin", label: "Back office", roles: ["operator", "admin"] },
];

export function Layout({ children }: { children: ReactNode }) {
  const { status, user, signOut } = useAuth();
  const navigate = useNavigate();
  const [open, setOpen] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const items = user ? NAV.filter((item) => !item.roles || item.roles.includes(user.role)) : [];

  async function onSignOut() {
    setBusy(true);
    setError(null);
    try {
      await signOut();
      void navigate("/signin");
    } catch (caught) {
      setError(messageOf(caught));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="min-h-screen">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:left-2 focus:top-2 focus:bg-white focus:p-2">
        Skip to content
      </a>
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-7xl flex-wrap items-center gap-2 px-4 py-3">
          <Link to="/" className="mr-4 text-lg font-bold text-blue-800">
            Bourse
          </Link>
          {user && (
            <button
              type="button"
              className="ml-auto rounded border border-slate-300 px-3 py-1 text-sm md:hidden"
              aria-expanded={open}
              aria-controls="main-nav"
              onClick={() => setOpen((value) => !value)}
            >
              Menu
            </button>
          )}
          {user && (
            <nav id="main-nav" aria-label="Main" className={cx("w-full md:flex md:w-auto md:flex-1", open ? "block" : "hidden")}>
              <ul className="flex flex-col gap-1 md:flex-row md:items-center md:gap-4">
                {items.map((item) => (
                  <li key={item.to}>
                    <NavLink
                      to={item.to}
                      onClick={() => setOpen(false)}
                      className={({ isActive }) => cx("block rounded px-2 py-1 text-sm", isActive ? "bg-blue-50 font-semibold text-blue-800" : "text-slate-700 hover:bg-slate-100")}
                    >
                      {item.label}
                    </NavLink>
                  </li>
                ))}
              </ul>
            </nav>
          )}
          {user && (
            <div className={cx("flex items-center gap-3 md:ml-auto", open ? "flex" : "hidden md:flex")}>
              <span className="text-sm text-slate-600">
                {user.email} <span className="sr-only">signed in as</span>
                <span className="ml-1 rounded bg-slate-100 px-1.5 py-0.5 text-xs">{user.role}</span>
              </span>
              <button type="button" className="rounded border border-slate-300 px-3 py-1 text-sm hover:bg-slate-100" onClick={() => void onSignOut()} disabled={busy} aria-busy={busy || undefined}>
                {busy ? "Signing out…" : "Sign out"}
              </button>
            </div>
          )}
          {status === "signedOut" && (
            <div className="ml-auto flex gap-3 text-sm">
              <Link to="/signin" className="text-blue-700 underline">Sign in</Link>
              <Link to="/register" className="text-blue-700 underline">Register</Link>
            </div>
          )}
        </div>
        {error && (
          <p role="alert" className="bg-red-50 px-4 py-2 text-sm text-red-800">
            {error}
          </p>
        )}
      </header>
      {children}
    </div>
  );
}
