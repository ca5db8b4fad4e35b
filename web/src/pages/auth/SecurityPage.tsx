import { useQueryClient } from "@tanstack/react-query";
import { useCallback, useState, type SyntheticEvent } from "react";
import { api, unwrap, type Schemas } from "../../api/client";
import { useAuth } from "../../auth/AuthContext";
import { QrCode } from "../../components/QrCode";
import { Alert, Button, Card, Page, TextField } from "../../components/ui";
import { useAction } from "../../hooks/useAction";

const CODE_FIELDS = ["code", "totp_code"] as const;

export default function SecurityPage() {
  const { user } = useAuth();
  const client = useQueryClient();
  const [enrolment, setEnrolment] = useState<Schemas["TotpEnrolmentResponse"] | null>(null);
  const [code, setCode] = useState("");
  const [notice, setNotice] = useState<string | null>(null);

  const enrol = useAction(
    useCallback(async () => {
      setNotice(null);
      setEnrolment(await unwrap(api.POST("/api/v1/auth/totp/enrol")));
    }, []),
  );
  const confirm = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/auth/totp/confirm", { body: { code } }));
      setEnrolment(null);
      setCode("");
      setNotice("Two-factor authentication is on. You will be asked for a code when you sign in and withdraw.");
      await client.invalidateQueries({ queryKey: ["me"] });
    }, [code, client]),
  );
  const disable = useAction(
    useCallback(async () => {
      await unwrap(api.POST("/api/v1/auth/totp/disable", { body: { code } }));
      setCode("");
      setNotice("Two-factor authentication is off.");
      await client.invalidateQueries({ queryKey: ["me"] });
    }, [code, client]),
  );

  if (!user) return null;
  const codeError = (action: typeof confirm) => action.fieldError("code") ?? action.fieldError("totp_code");

  function onConfirm(event: SyntheticEvent) {
    event.preventDefault();
    void confirm.run();
  }
  function onDisable(event: SyntheticEvent) {
    event.preventDefault();
    void disable.run();
  }

  return (
    <Page title="Security">
      <Card title="Two-factor authentication">
        {notice && <div className="mb-3"><Alert kind="success">{notice}</Alert></div>}
        {user.totp_enabled ? (
          <form onSubmit={onDisable} noValidate className="flex flex-col gap-4">
            <p>Two-factor authentication is <strong>on</strong>. To turn it off, enter a current code.</p>
            {disable.formError(CODE_FIELDS) && <Alert>{disable.formError(CODE_FIELDS)}</Alert>}
            <TextField label="Authentication code" inputMode="numeric" autoComplete="one-time-code" maxLength={16} value={code} onChange={(e) => setCode(e.target.value.trim())} error={codeError(disable)} />
            <div>
              <Button type="submit" variant="danger" busy={disable.busy}>{disable.busy ? "Turning off…" : "Turn off 2FA"}</Button>
            </div>
          </form>
        ) : enrolment ? (
          <form onSubmit={onConfirm} noValidate className="flex flex-col gap-4">
            <p>Scan this code with your authenticator app, then enter the 6-digit code it shows.</p>
            <div className="self-start rounded border border-slate-200 p-2">
              <QrCode value={enrolment.provisioning_uri} label="QR code for your authenticator app" />
            </div>
            <p className="text-sm">
              Cannot scan it? Enter this key: <code className="break-all rounded bg-slate-100 px-1">{enrolment.secret}</code>
            </p>
            {confirm.formError(CODE_FIELDS) && <Alert>{confirm.formError(CODE_FIELDS)}</Alert>}
            <TextField label="Code from the app" inputMode="numeric" autoComplete="one-time-code" maxLength={16} value={code} onChange={(e) => setCode(e.target.value.trim())} error={codeError(confirm)} />
            <div>
              <Button type="submit" busy={confirm.busy}>{confirm.busy ? "Checking…" : "Turn on 2FA"}</Button>
            </div>
          </form>
        ) : (
          <div className="flex flex-col gap-4">
            <p>Two-factor authentication is <strong>off</strong>. Turn it on to protect sign-in and withdrawals.</p>
            {enrol.formError([]) && <Alert>{enrol.formError([])}</Alert>}
            <div>
              <Button busy={enrol.busy} onClick={() => void enrol.run()}>{enrol.busy ? "Starting…" : "Set up 2FA"}</Button>
            </div>
          </div>
        )}
      </Card>
    </Page>
  );
}
