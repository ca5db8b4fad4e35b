import { screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, expect, test, vi } from "vitest";
import { setAccessToken } from "../../api/session";
import { ERROR_MESSAGES } from "../../lib/errors";
import { error, mockApi, renderWithApp } from "../../test/render";
import SecurityPage from "./SecurityPage";

afterEach(() => {
  vi.unstubAllGlobals();
  setAccessToken(null);
});

test("enrolling in 2FA shows the QR code of the otpauth URI, then confirms with a code", async () => {
  let enabled = false;
  const calls = mockApi(({ path, body }) => {
    if (path === "/api/v1/auth/session/refresh") return { status: 200, body: { access_token: "t", token_type: "bearer", expires_in: 900 } };
    if (path === "/api/v1/auth/me") return { status: 200, body: { id: "u1", email: "ann@example.com", role: "client", status: "active", totp_enabled: enabled, created_at: "2026-01-01T00:00:00Z" } };
    if (path === "/api/v1/auth/totp/enrol") return { status: 200, body: { secret: "CZCYN4JSDX63GUPU", provisioning_uri: "otpauth://totp/Bourse:ann%40example.com?secret=CZCYN4JSDX63GUPU&issuer=Bourse" } };
    if (path === "/api/v1/auth/totp/confirm") {
      if ((body as { code: string }).code !== "123456") return error(401, "invalid_totp_code");
      enabled = true;
      return { status: 204 };
    }
    return undefined;
  });
  const user = userEvent.setup();
  renderWithApp(<SecurityPage />);
  await user.click(await screen.findByRole("button", { name: "Set up 2FA" }));
  const qr = await screen.findByRole("img", { name: "QR code for your authenticator app" });
  expect(qr.querySelector("path")?.getAttribute("d")?.length).toBeGreaterThan(100);
  expect(screen.getByText("CZCYN4JSDX63GUPU")).toBeInTheDocument();

  await user.type(screen.getByLabelText("Code from the app"), "999999");
  await user.click(screen.getByRole("button", { name: "Turn on 2FA" }));
  expect(await screen.findByText(ERROR_MESSAGES.invalid_totp_code.message)).toBeInTheDocument();

  await user.clear(screen.getByLabelText("Code from the app"));
  await user.type(screen.getByLabelText("Code from the app"), "123456");
  await user.click(screen.getByRole("button", { name: "Turn on 2FA" }));
  expect(await screen.findByText(/Two-factor authentication is on\./)).toBeInTheDocument();
  expect(await screen.findByRole("button", { name: "Turn off 2FA" })).toBeInTheDocument();
  expect(calls.filter((c) => c.path === "/api/v1/auth/totp/confirm").map((c) => c.body)).toEqual([{ code: "999999" }, { code: "123456" }]);
});
