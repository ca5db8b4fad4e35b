/**
 * A human message for every error code the API answers, and the form field it concerns.
 *
 * The codes are the `error` enums of the schema's error responses (src/api/schema.d.ts);
 * `ERROR_MESSAGES` is typed so that `tsc` fails when a code the schema names has no
 * message, and errors.test.ts checks the same against openapi.json.
 */
import type { operations } from "../api/schema";

type ResponsesOf<O> = O extends { responses: infer R } ? R[keyof R] : never;
type CodeOf<R> = R extends { content: { "application/json": infer J } }
  ? J extends { error?: infer E }
    ? E extends string
      ? string extends E
        ? never
        : E
      : never
    : never
  : never;

/** Every error code the schema declares. */
export type SchemaErrorCode = CodeOf<ResponsesOf<operations[keyof operations]>>;

/** Codes the UI itself uses, or that endpoints not yet in the committed schema answer. */
export type ClientErrorCode =
  | "network_error"
  | "unexpected_response"
  | "csrf_refused"
  | "user_not_found"
  | "deposit_currency_mismatch"
  | "received_amount_unknown";

export type ErrorCode = SchemaErrorCode | ClientErrorCode;

export interface ErrorMessage {
  message: string;
  /** The request field it concerns, where there is one (a form shows it next to that input). */
  field?: string;
}

const RETRY = "The service is busy for a moment. Please try again in a few seconds.";

export const ERROR_MESSAGES: Record<ErrorCode, ErrorMessage> = {
  // Identity
  invalid_credentials: { message: "The email or password is not right.", field: "password" },
  invalid_email: { message: "Enter a valid email address.", field: "email" },
  email_taken: { message: "An account with this email already exists.", field: "email" },
  password_too_short: { message: "The password is too short.", field: "password" },
  password_too_long: { message: "The password is too long.", field: "password" },
  password_contains_email: { message: "The password must not contain your email address.", field: "password" },
  invalid_token: { message: "Your session has ended. Please sign in again." },
  totp_required: { message: "Enter the 6-digit code from your authenticator app.", field: "totp_code" },
  invalid_totp_code: { message: "That code is not right. Enter the current code from your authenticator app.", field: "totp_code" },
  totp_already_enabled: { message: "Two-factor authentication is already on." },
  totp_not_enrolled: { message: "Two-factor authentication is not set up yet." },
  account_locked: { message: "This account is locked. Contact support." },
  too_many_attempts: { message: "Too many attempts. Wait a few minutes and try again." },
  throttle_unavailable: { message: RETRY },
  csrf_refused: { message: "The request was refused for your security. Reload the page and try again." },
  user_not_found: { message: "There is no such user." },
  forbidden: { message: "You do not have access to this." },
  // Referrals and IBs
  invalid_referral_code: { message: "This referral code is not valid.", field: "referral_code" },
  unknown_referral_code: { message: "This referral code does not exist or is no longer active.", field: "referral_code" },
  referral_code_not_found: { message: "This referral code does not exist." },
  referral_code_taken: { message: "This code is already taken. Choose another.", field: "code" },
  too_many_referral_codes: { message: "You have as many referral codes as allowed. Revoke one first." },
  not_an_ib: { message: "This user is not an introducing broker." },
  ib_not_found: { message: "There is no such introducing broker." },
  plan_invalid: { message: "The commission plan is not valid." },
  plan_exceeds_fee: { message: "The commission plan pays out more than the fee." },
  plan_too_deep: { message: "The commission plan has too many levels." },
  plan_not_found: { message: "There is no commission plan." },
  payout_not_found: { message: "There is no such payout." },
  // Amounts and assets
  amount_invalid: { message: "Enter an amount, like 12.50.", field: "amount" },
  amount_must_be_string: { message: "The amount must be sent as text.", field: "amount" },
  amount_not_positive: { message: "The amount must be more than zero.", field: "amount" },
  amount_precision: { message: "The amount has too many decimals for this asset.", field: "amount" },
  amount_too_large: { message: "The amount is too large.", field: "amount" },
  asset_inactive: { message: "This asset is not available right now.", field: "asset" },
  asset_exists: { message: "This asset already exists.", field: "code" },
  unknown_asset: { message: "There is no such asset.", field: "asset" },
  invalid_asset: { message: "The asset is not valid.", field: "asset" },
  insufficient_funds: { message: "You do not have enough available funds.", field: "amount" },
  self_transfer: { message: "You cannot transfer to yourself.", field: "to_user_id" },
  unknown_recipient: { message: "There is no such recipient.", field: "to_user_id" },
  account_not_found: { message: "There is no such account." },
  hold_not_found: { message: "There is no such hold." },
  entry_not_found: { message: "There is no such ledger entry." },
  entry_already_reversed: { message: "This entry has already been reversed." },
  entry_not_reversible: { message: "This entry cannot be reversed." },
  // Payments
  connector_unsupported: { message: "This provider does not support this asset or operation.", field: "connector" },
  unknown_connector: { message: "There is no such payment provider.", field: "connector" },
  deposit_not_found: { message: "There is no such deposit." },
  withdrawal_not_found: { message: "There is no such withdrawal." },
  daily_limit_exceeded: { message: "This is above your daily withdrawal limit.", field: "amount" },
  withdrawal_cooling_off: { message: "Withdrawals are paused for a while after a security change (such as 2FA). Try again later." },
  withdrawals_blocked: { message: "Withdrawals are blocked on this account. Contact support." },
  already_approved: { message: "You have already approved this withdrawal; a second operator must approve it." },
  self_approval_forbidden: { message: "You cannot approve your own withdrawal." },
  deposit_currency_mismatch: { message: "The provider reported the payment in another currency: it cannot be credited as it is." },
  received_amount_unknown: { message: "The provider did not report the amount received: it cannot be credited." },
  invalid_state: { message: "This cannot be done in its current state. Refresh to see its state." },
  reason_required: { message: "Give a reason.", field: "reason" },
  psp_error: { message: "The payment provider failed. Try again later." },
  psp_refused: { message: "The payment provider refused this." },
  psp_unavailable: { message: "The payment provider cannot be reached. Try again later." },
  invalid_signature: { message: "The webhook signature is not valid." },
  signature_expired: { message: "The webhook signature has expired." },
  malformed_event: { message: "The webhook event is malformed." },
  report_not_found: { message: "There is no such reconciliation report." },
  invalid_period: { message: "The period is not valid.", field: "day" },
  // Trading
  unknown_instrument: { message: "There is no such instrument.", field: "instrument" },
  invalid_instrument: { message: "The instrument is not valid.", field: "instrument" },
  instrument_exists: { message: "This instrument already exists.", field: "symbol" },
  instrument_immutable_field: { message: "This field cannot change once the instrument has orders." },
  instrument_price_band_invalid: { message: "The price band is not valid.", field: "price_band_bps" },
  instrument_price_scale_invalid: { message: "The price scale is not valid.", field: "price_scale" },
  instrument_quantity_limits_invalid: { message: "The quantity limits are not valid.", field: "min_quantity" },
  instrument_same_assets: { message: "The base and quote assets must differ.", field: "quote_asset" },
  instrument_symbol_invalid: { message: "The symbol is not valid.", field: "symbol" },
  market_halted: { message: "Trading on this market is halted." },
  invalid_order: { message: "This order is not valid." },
  order_invalid: { message: "This order is not valid." },
  order_not_found: { message: "There is no such order." },
  order_not_open: { message: "This order is no longer open." },
  price_off_tick: { message: "The price must be a multiple of the tick size.", field: "price" },
  price_outside_band: { message: "The price is too far from the last traded price.", field: "price" },
  quantity_off_lot: { message: "The quantity must be a multiple of the lot size.", field: "quantity" },
  quantity_too_small: { message: "The quantity is below the minimum.", field: "quantity" },
  quantity_too_large: { message: "The quantity is above the maximum.", field: "quantity" },
  invalid_interval: { message: "The chart interval is not valid.", field: "interval" },
  book_busy: { message: RETRY },
  trade_not_found: { message: "There is no such trade." },
  trade_already_busted: { message: "This trade has already been busted." },
  bust_insufficient_funds: { message: "The trade cannot be busted: a party no longer has the funds." },
  bust_reason_invalid: { message: "Give a reason for the bust.", field: "reason" },
  // Jobs
  failed_job_not_found: { message: "This failed job no longer exists." },
  // Requests in general
  idempotency_in_progress: { message: "This request is still being processed. Wait a moment." },
  idempotency_key_invalid: { message: "The request could not be sent safely. Reload and try again." },
  idempotency_key_required: { message: "The request could not be sent safely. Reload and try again." },
  idempotency_key_reused: { message: "This request was already sent with different details. Start again." },
  invalid_cursor: { message: "This page of results is no longer valid. Start from the first page." },
  time_out_of_range: { message: "The date is out of range." },
  control_character: { message: "Remove the special characters from the text." },
  validation_error: { message: "Some fields are not valid." },
  invalid_json: { message: "The request was malformed." },
  payload_too_large: { message: "The request is too large." },
  unsupported_media_type: { message: "The request was malformed." },
  not_found: { message: "Not found." },
  internal_error: { message: "Something went wrong on our side. Please try again." },
  database_busy: { message: RETRY },
  database_unavailable: { message: RETRY },
  overloaded: { message: RETRY },
  temporarily_unavailable: { message: RETRY },
  transient_conflict: { message: RETRY },
  // The UI's own
  network_error: { message: "The server cannot be reached. Check your connection and try again." },
  unexpected_response: { message: "The server answered something unexpected. Please try again." },
};

export function isKnownCode(code: string): code is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ERROR_MESSAGES, code);
}

const WITH_DETAIL: ReadonlySet<string> = new Set(["invalid_order", "order_invalid", "plan_invalid", "invalid_state"]);

export interface FieldError {
  loc: string;
  msg: string;
  type: string;
}

/** An API refusal as the UI handles it: the code, a human message, and messages per field. */
export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly detail: string;
  readonly requestId: string | null;
  readonly fields: Record<string, string>;

  constructor(status: number, code: string, detail: string, requestId: string | null, errors: FieldError[] = []) {
    const known = isKnownCode(code) ? ERROR_MESSAGES[code] : undefined;
    // A few codes cover many rules; the server's detail says which one.
    super(known && WITH_DETAIL.has(code) ? `${known.message} ${detail}` : (known?.message ?? detail));
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.requestId = requestId;
    this.fields = {};
    if (known?.field) this.fields[known.field] = known.message;
    for (const error of errors) {
      // "body.amount" -> "amount"; "query.limit" -> "limit"
      const field = error.loc.split(".").slice(1).join(".") || error.loc;
      const own = isKnownCode(error.type) ? ERROR_MESSAGES[error.type].message : undefined;
      this.fields[field] ??= own ?? fieldMessage(error);
    }
  }

  /** The message for a field, if this error concerns it. */
  field(name: string): string | undefined {
    return this.fields[name];
  }

  /** Whether a form shows this error next to one of `fields` (and not as a banner). */
  concernsOnly(fields: readonly string[]): boolean {
    const mine = Object.keys(this.fields);
    return mine.length > 0 && mine.every((name) => fields.includes(name));
  }
}

function fieldMessage(error: FieldError): string {
  if (error.type === "missing") return "This field is required.";
  if (error.type.startsWith("string_too_long")) return "This is too long.";
  if (error.type.startsWith("string_too_short")) return "This is too short.";
  return error.msg;
}

/** What to show for any thrown value. */
export function messageOf(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return ERROR_MESSAGES.unexpected_response.message;
}
