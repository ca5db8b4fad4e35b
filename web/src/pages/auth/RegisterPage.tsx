import { useCallback, useState, type SyntheticEvent } from "react";
import { Link, useSearchParams } from "react-router";
import { api, unwrap } from "../../api/client";
import { Alert, Button, Card, Page, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";

const FIELDS = ["email", "password", "referral_code"] as const;

export default function RegisterPage() {
  const [params] = useSearchParams();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [referral, setReferral] = useState(params.get("ref") ?? "");
  const [done, setDone] = useState(false);

  const register = useCallback(async () => {
    const code = referral.trim();
    await unwrap(api.POST("/api/v1/auth/register", { body: { email, password, ...(code ? { referral_code: code } : {}) } }));
    setDone(true);
  }, [email, password, referral]);
  const action = useAction(register);

  function onSubmit(event: SyntheticEvent) {
    event.preventDefault();
    void action.run();
  }

  if (done) {
    return (
      <Page title="Register">
        <Alert kind="success">
          Your account is ready. <Link className="underline" to="/signin">Sign in</Link> with {email}.
        </Alert>
      </Page>
    );
  }

  const banner = action.formError(FIELDS);
  return (
    <Page title="Register">
      <Card className="max-w-md">
        <form onSubmit={onSubmit} noValidate className="flex flex-col gap-4">
          {banner && <Alert>{banner}</Alert>}
          <TextField label="Email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} error={action.fieldError("email")} />
          <TextField
            label="Password"
            type="password"
            autoComplete="new-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            error={action.fieldError("password")}
            hint="Long enough, and not containing your email address."
          />
          <TextField
            label="Referral code (optional)"
            autoComplete="off"
            value={referral}
            onChange={(e) => setReferral(e.target.value)}
            error={action.fieldError("referral_code")}
            hint={params.get("ref") ? "From your introducing broker's link." : undefined}
          />
          <div>
            <Button type="submit" busy={action.busy}>
              {action.busy ? "Creating your account…" : "Create account"}
            </Button>
          </div>
        </form>
        <p className="mt-4 text-sm">
          Already registered? <Link className="text-blue-700 underline" to="/signin">Sign in</Link>
        </p>
      </Card>
    </Page>
  );
}
