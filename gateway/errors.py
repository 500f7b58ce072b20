"""The one error catalogue: every failure a client can see, with a stable code.

A code never changes meaning once published. Each area adds its codes here, in its own block,
so that the catalogue stays one list (served at `/openapi.json` under `x-error-codes` and in
README). Domain code raises `SOME_CODE.error(...)`; `gateway.middleware` turns it into
`{"error": {"code", "message", "details", "request_id"}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """A failure to show the client: code, HTTP status, message, details."""

    def __init__(
        self,
        code: str,
        status: int,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str

    def error(
        self,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> ApiError:
        return ApiError(self.code, self.status, message or self.message, details, headers)


CATALOGUE: dict[str, ErrorCode] = {}


def define(code: str, status: int, message: str) -> ErrorCode:
    assert code not in CATALOGUE, f"error code {code} defined twice"
    assert 400 <= status < 600
    entry = ErrorCode(code, status, message)
    CATALOGUE[code] = entry
    return entry


# --- platform: request shape -------------------------------------------------------------
MALFORMED_JSON = define("malformed_json", 400, "The request body is not valid JSON.")
VALIDATION_FAILED = define("validation_failed", 400, "The request does not match the schema.")
UNSUPPORTED_MEDIA_TYPE = define("unsupported_media_type", 415, "Send the body as application/json.")
BODY_TOO_LARGE = define("body_too_large", 413, "The request body is larger than allowed.")
NOT_FOUND = define("not_found", 404, "No such resource.")
METHOD_NOT_ALLOWED = define("method_not_allowed", 405, "This method is not allowed here.")
BAD_REQUEST = define("bad_request", 400, "The request could not be understood.")
INTERNAL_ERROR = define("internal_error", 500, "Something went wrong on our side.")
SERVICE_UNAVAILABLE = define("service_unavailable", 503, "A service the gateway needs is down.")

# --- platform: idempotency ---------------------------------------------------------------
IDEMPOTENCY_KEY_REQUIRED = define(
    "idempotency_key_required", 400, "This request moves money: send an Idempotency-Key header."
)
IDEMPOTENCY_KEY_INVALID = define(
    "idempotency_key_invalid", 400, "An Idempotency-Key is 1 to 255 visible ASCII characters."
)
IDEMPOTENCY_KEY_REUSED = define(
    "idempotency_key_reused", 422, "This Idempotency-Key was used with a different request."
)
IDEMPOTENCY_KEY_IN_FLIGHT = define(
    "idempotency_key_in_flight", 409, "A request with this Idempotency-Key is still running."
)

# --- ledger ------------------------------------------------------------------------------
INSUFFICIENT_BALANCE = define(
    "insufficient_balance", 422, "The account balance would fall below its floor."
)
ACCOUNT_NOT_FOUND = define("account_not_found", 404, "No such account.")

# --- identity and access -----------------------------------------------------------------
UNAUTHENTICATED = define("unauthenticated", 401, "Missing or invalid credentials.")
FORBIDDEN = define("forbidden", 403, "This kind of caller may not use this route.")
INVALID_CREDENTIALS = define("invalid_credentials", 401, "Wrong phone number or password.")
TOKEN_INVALID = define("token_invalid", 401, "The token is not valid.")
REFRESH_TOKEN_INVALID = define("refresh_token_invalid", 401, "The refresh token is not valid.")
BAD_SIGNATURE = define("bad_signature", 401, "The request signature is not valid.")
STALE_REQUEST = define("stale_request", 401, "The request timestamp is outside the window.")
REPLAYED_REQUEST = define("replayed_request", 401, "This nonce was already used.")
RATE_LIMITED = define("rate_limited", 429, "Too many requests; retry later.")
PHONE_TAKEN = define("phone_taken", 409, "This phone number already has an account.")
WEAK_PASSWORD = define("weak_password", 400, "Choose a longer, less common password.")

# --- QR codes ----------------------------------------------------------------------------
QR_CHALLENGE_INVALID = define(
    "qr_challenge_invalid", 400, "The challenge is unknown, expired, already used or not yours."
)
QR_DEVICE_KEY_INVALID = define(
    "qr_device_key_invalid", 400, "The device key is not a compressed P-256 point on the curve."
)
QR_PROOF_INVALID = define(
    "qr_proof_invalid", 422, "The signature does not prove possession of the device key."
)
QR_BATCH_TOO_LARGE = define(
    "qr_batch_too_large", 413, "Too many rides in one upload; split the batch."
)
QR_DEVICE_IN_USE = define(
    "qr_device_in_use", 409, "This device key is registered to another rider."
)
QR_ACCOUNT_DENIED = define(
    "qr_account_denied", 403, "This account may not ride by QR code; contact customer service."
)

# --- top-ups and payment channels ----------------------------------------------------------
PAYMENT_CHANNEL_UNAVAILABLE = define(
    "payment_channel_unavailable",
    503,
    "The payment channel did not answer; retry with the same Idempotency-Key.",
)
PAYMENT_CHANNEL_REFUSED = define(
    "payment_channel_refused", 422, "The payment channel refused the payment."
)
CHANNEL_NOT_CONFIGURED = define(
    "channel_not_configured", 503, "This payment channel is not available now."
)
TOPUP_AMOUNT_NOT_ALLOWED = define(
    "topup_amount_not_allowed", 422, "This amount cannot be topped up; see the allowed amounts."
)
CARD_BALANCE_CEILING = define(
    "card_balance_ceiling", 422, "The card cannot hold this much; see the room left."
)
CARD_UNREADABLE = define("card_unreadable", 400, "The card data is not a valid card's.")
CARD_LINKED_ELSEWHERE = define(
    "card_linked_elsewhere", 409, "This card is linked to another account or reported lost."
)
TOPUP_NOT_REFUNDABLE = define(
    "topup_not_refundable", 422, "This top-up cannot be refunded (now, or by this much)."
)
PARTNER_FLOAT_INSUFFICIENT = define(
    "partner_float_insufficient", 422, "The partner's prepaid float cannot pay this top-up."
)

# --- partners and webhooks ----------------------------------------------------------------
WEBHOOK_URL_REFUSED = define(
    "webhook_url_refused", 400, "This webhook URL is not allowed; see the reason in the details."
)
WEBHOOK_LIMIT_REACHED = define(
    "webhook_limit_reached", 422, "This partner already has as many webhook endpoints as allowed."
)

# --- over-the-air loads ---------------------------------------------------------------------
TOPUP_NOT_LOADABLE = define(
    "topup_not_loadable", 409, "This top-up is not waiting to be loaded onto its card."
)
TOPUP_LOAD_IN_PROGRESS = define(
    "topup_load_in_progress",
    409,
    "This top-up may already be on the card; it can be refunded once that is settled.",
)
OTA_CARD_MISMATCH = define("ota_card_mismatch", 422, "This top-up is for another card.")
OTA_NOTHING_TO_LOAD = define("ota_nothing_to_load", 422, "Nothing is waiting to be loaded.")
OTA_LOAD_HELD = define(
    "ota_load_held", 409, "An operator is checking an earlier load of this top-up."
)
OTA_SESSION_SUPERSEDED = define(
    "ota_session_superseded", 409, "A newer session for this card took over; start again."
)
OTA_SESSION_OVER = define("ota_session_over", 409, "This session has ended.")
OTA_STEP_MISMATCH = define(
    "ota_step_mismatch", 409, "This answer is not for the session's current step."
)
OTA_LOAD_FAILED = define("ota_load_failed", 422, "The card could not be loaded; see the reason.")
OTA_LOAD_NOT_HELD = define("ota_load_not_held", 409, "This load is not held for an operator.")
