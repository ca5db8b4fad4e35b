import { useCallback, useRef, useState, type SyntheticEvent } from "react";
import { Link, Navigate, useNavigate, useSearchParams } from "react-router";
import { useAuth } from "../../auth/AuthContext";
import { Alert, Button, Card, Page, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";
import { ApiError } from "../../lib/errors";

const FIELDS = ["email", "password", "totp_code"] as const;

/** Where to go after signing in: only a path of this site. */
export function safeNext(next: string | null): string {
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/wallets";
}

export default function SignInPage() {
  const { status, signIn } = useAuth();
  const navigate = useNavigate();
  const [params] = useSearchParams();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [totpStep, setTotpStep] = useState(false);
  const codeRef = useRef<HTMLInputElement>(null);
  const next = safeNext(params.get("next"));

  const submit = useCallback(
    async (withCode: boolean) => {
      try {
        await signIn({ email, password, ...(withCode ? { totp_code: code } : {}) });
      } catch (error) {
        if (error instanceof ApiError && error.code === "totp_required") {
          setTotpStep(true);
          requestAnimationFrame(() => codeRef.current?.focus());
          return;
        }
        throw error;
      }
      void navigate(next, { replace: true });
    },
    [email, password, code, signIn, navigate, next],
  );
  const action = useAction(submit);

  if (status === "signedIn") return <Navigate to={next} replace />;

  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    void action.run(totpStep);
  }

  const banner = action.formError(FIELDS);
  return (
    <Page title="Sign in">
      <Card className="max-w-md">
        <form onSubmit={onSubmit} noValidate className="flex flex-col gap-4" aria-describedby={banner ? "signin-error" : undefined}>
          {banner && (
            <div id="signin-error">
              <Alert>{banner}</Alert>
            </div>
          )}
          {!totpStep ? (
            <>
              <TextField label="Email" type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} error={action.fieldError("email")} />
              <TextField label="Password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} error={action.fieldError("password")} />
            </>
          ) : (
            <>
              <p className="text-sm">Two-factor authentication is on for {email}.</p>
              <TextField
                ref={codeRef}
                label="Authentication code"
                hint="The 6-digit code from your authenticator app."
                inputMode="numeric"
                autoComplete="one-time-code"
                pattern="[0-9]*"
                maxLength={16}
                required
                value={code}
                onChange={(e) => setCode(e.target.value.trim())}
                error={action.fieldError("totp_code")}
              />
            </>
          )}
          <div className="flex flex-wrap items-center gap-3">
            <Button type="submit" busy={action.busy}>
              {action.busy ? "Signing in…" : totpStep ? "Verify and sign in" : "Sign in"}
            </Button>
            {totpStep && (
              <Button variant="secondary" onClick={() => { setTotpStep(false); setCode(""); action.reset(); }}>
                Back
              </Button>
            )}
          </div>
        </form>
        <p className="mt-4 text-sm">
          No account yet? <Link className="text-blue-700 underline" to="/register">Register</Link>
        </p>
      </Card>
    </Page>
  );
}
