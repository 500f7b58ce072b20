"""The phone side of an over-the-air load (DESIGN.md "OTA load"; the gateway's `/v1/ota/sessions`
routes): read the card, open a load session, carry each command APDU the gateway hands out to
the card and each answer back, until the gateway says the session is done.

The gateway decides every command; the phone only carries them, and refuses to carry any command
a load never needs (a purchase, for one). Retries are safe by construction: after a network
error, a timeout or a 5xx the client re-posts the very same request (same step, same answer of
the card), which the contract makes idempotent; it never re-sends a command APDU to the card on
its own. Whatever the reader raises (`ReaderError`, `CardTorn`: the card left the field)
propagates untouched, so the caller knows the card went away.

This is the one `hce` module that does network I/O, with the standard library only
(`urllib.request`, `json`): it must never import aiohttp, asyncpg or redis, and never put the
bearer token in a log line, a repr or an exception's text.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hce import apdu as A
from hce.readers import CardReader

__all__ = [
    "EPURSE_AIDS",
    "CardError",
    "CardReading",
    "Exchange",
    "GatewayProtocolError",
    "GatewayUnreachable",
    "LoadFailed",
    "LoadResult",
    "NextApdu",
    "RelayClient",
    "RelayError",
    "error_from_answer",
    "parse_answer",
    "read_card",
]

# The e-purse applications a gate selects, in its order (hce.terminal.Gate's default `aids`:
# city card, then T-Union). Repeated here so that the phone side needs no cryptography library.
EPURSE_AIDS = (bytes.fromhex("A00000000386980701"), bytes.fromhex("A000000632010105"))

SESSIONS_PATH = "/v1/ota/sessions"
REQUEST_TIMEOUT_S = 10.0
RETRY_COUNT_DEFAULT = 3  # re-sends of one request after its first try
RETRY_COUNT_MAX = 10
RETRY_BACKOFF_S = 0.25  # the first wait; it doubles with each retry
RETRY_BACKOFF_MAX_S = 2.0
STEP_COUNT_MAX = 64  # a load takes 2 steps per order, a few more to settle an unsure one
ANSWER_BYTES_MAX = 64 * 1024
SESSION_ID_CHARS_MAX = 128
TEXT_CHARS_MAX = 500  # of a message from the gateway, as shown

# What the gateway may have the phone send to a card during a load: reading, loading and the
# proof of an interrupted load. Never a purchase.
RELAYED_COMMANDS: tuple[type, ...] = (
    A.Select,
    A.ReadBinary,
    A.ReadRecord,
    A.GetBalance,
    A.InitializeForLoad,
    A.CreditForLoad,
    A.GetTransactionProve,
)


# --- errors ----------------------------------------------------------------------------------


class RelayError(Exception):
    """A load did not finish, for a reason of the gateway or of the card's answers. The
    reader's own exceptions (`ReaderError`, `CardTorn`) are never wrapped in one."""


class LoadFailed(RelayError):
    """The gateway answered with an error: its stable `code`, `message` and `details` (e.g.
    422 `ota_load_failed` with `details["reason"]`, 409 `ota_session_superseded`)."""

    def __init__(
        self, code: str, message: str, details: Mapping[str, Any], *, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details)
        self.status = status


class GatewayUnreachable(RelayError):
    """No answer from the gateway after every retry (network error, timeout, 5xx): the outcome
    of the last request is unknown. The gateway settles a load it left unsure at the card's
    next contact; the phone must not guess."""

    def __init__(self, reason: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(f"gateway unreachable after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.attempts = attempts
        self.status = status


class GatewayProtocolError(RelayError):
    """The gateway answered something that is not in the contract (bad JSON, a missing field,
    a command a load never needs). Nothing of it was sent to the card."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CardError(RelayError):
    """The card answered, but not as an e-purse card must before a load (no e-purse
    application, unreadable file 0015, ...), or it is not the card the load is for."""

    def __init__(self, message: str, sw: int | None = None) -> None:
        super().__init__(message if sw is None else f"{message} (SW {sw:04X})")
        self.sw = sw


# --- what goes by --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One command sent to the card and its answer. `step` is the gateway's step number of a
    relayed command, None for the phone's own reading of the card. `answer` is None when the
    reader raised instead of answering (the card left the field); the exception follows."""

    step: int | None
    command: bytes
    answer: bytes | None

    @property
    def command_hex(self) -> str:
        return self.command.hex().upper()

    @property
    def answer_hex(self) -> str:
        return "" if self.answer is None else self.answer.hex().upper()

    @property
    def data(self) -> bytes:
        return self.answer[:-2] if self.answer is not None and len(self.answer) >= 2 else b""

    @property
    def sw(self) -> int | None:
        if self.answer is None or len(self.answer) < 2:
            return None
        return int.from_bytes(self.answer[-2:], "big")

    @property
    def meaning(self) -> str:
        if self.answer is None:
            return "no answer"
        sw = self.sw
        return "no status word" if sw is None else A.StatusWord.describe(sw)


Log = Callable[[Exchange], None]


@dataclass(frozen=True, slots=True)
class CardReading:
    """What the phone reads before opening a session (the contract's create body)."""

    select_data: bytes  # the FCI, without SW
    file_0015: bytes
    issuer_info: A.IssuerInfo
    balance_fen: int

    @property
    def asn(self) -> str:
        """The card number as the API writes it: 20 digits."""
        return self.issuer_info.asn.hex().upper()

    def session_fields(self) -> dict[str, Any]:
        return {
            "select_hex": self.select_data.hex().upper(),
            "file_0015_hex": self.file_0015.hex().upper(),
            "balance_fen": self.balance_fen,
        }


@dataclass(frozen=True, slots=True)
class NextApdu:
    """A session that goes on: send `apdu` to the card, post its answer with `step`."""

    session_id: str
    step: int
    apdu: bytes
    state: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A finished session: the gateway's `done` (orders loaded, orders held for an operator).
    `balance_fen` is the card's balance as the gateway last verified it; None when it could
    not (e.g. every load was held)."""

    session_id: str
    state: str
    balance_fen: int | None
    loaded_fen: int
    orders: tuple[int, ...]
    held: tuple[int, ...]


# --- reading the card (as hce.terminal.Gate selects) ----------------------------------------


def _transmit(reader: CardReader, step: int | None, command: bytes, log: Log | None) -> bytes:
    """The one place a command goes to the card: once, logged, the reader's exceptions as
    they are."""
    try:
        answer = bytes(reader.transmit(command))
    except Exception:
        if log is not None:
            log(Exchange(step, command, None))
        raise
    if log is not None:
        log(Exchange(step, command, answer))
    return answer


def _send(reader: CardReader, command: bytes, log: Log | None) -> A.ResponseApdu:
    answer = _transmit(reader, None, command, log)
    try:
        return A.ResponseApdu.from_bytes(answer)
    except A.ApduError as exc:
        raise CardError(f"unreadable answer: {exc}") from None


def _select(reader: CardReader, aids: Sequence[bytes], log: Log | None) -> bytes:
    answer = A.ResponseApdu.status(A.StatusWord.FILE_NOT_FOUND)
    for aid in aids:
        answer = _send(reader, A.Select(aid).to_bytes(), log)
        if answer.ok:
            try:
                A.SelectResponse.from_bytes(answer.data)
            except A.ApduError as exc:
                raise CardError(f"bad FCI: {exc}") from None
            return answer.data
        if answer.sw != A.StatusWord.FILE_NOT_FOUND:
            raise CardError(f"SELECT: {answer.meaning}", answer.sw)
    raise CardError("no e-purse application", answer.sw)


def read_card(
    reader: CardReader, *, aids: Sequence[bytes] = EPURSE_AIDS, log: Log | None = None
) -> CardReading:
    """SELECT the e-purse, READ BINARY file 0015, GET BALANCE (CARD_PROTOCOL.md "Applications
    and files", "Other commands"). `CardError` when the card refuses any of them."""
    fci = _select(reader, aids, log)
    answer = _send(reader, A.ReadBinary().to_bytes(), log)
    if not answer.ok:
        raise CardError(f"READ BINARY 0015: {answer.meaning}", answer.sw)
    try:
        info = A.IssuerInfo.from_bytes(answer.data)
    except A.ApduError as exc:
        raise CardError(f"bad file 0015: {exc}") from None
    file_0015 = answer.data
    answer = _send(reader, A.GetBalance().to_bytes(), log)
    if not answer.ok:
        raise CardError(f"GET BALANCE: {answer.meaning}", answer.sw)
    try:
        balance = A.GetBalanceResponse.from_bytes(answer.data)
    except A.ApduError as exc:
        raise CardError(f"bad GET BALANCE answer: {exc}") from None
    return CardReading(fci, file_0015, info, balance.balance_fen)


# --- the gateway's answers (pure: bytes and dicts in, values or exceptions out) -------------


def _visible(text: str) -> bool:
    """Non-empty visible ASCII: what a header value can carry without being split or mangled."""
    return bool(text) and all(33 <= ord(c) <= 126 for c in text)


def _text(value: object, limit: int = TEXT_CHARS_MAX) -> str:
    shown = value if isinstance(value, str) else repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GatewayProtocolError(f"{name} must be a non-negative integer, got {_text(value)}")
    return value


def _ids(body: Mapping[str, Any], name: str) -> tuple[int, ...]:
    value = body.get(name)
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise GatewayProtocolError(f"{name} must be a list of order ids, got {_text(value)}")
    return tuple(value)


def _session_id(body: Mapping[str, Any]) -> str:
    value = body.get("id")
    if not isinstance(value, str) or not _visible(value) or len(value) > SESSION_ID_CHARS_MAX:
        raise GatewayProtocolError(f"the session id must be a short string, got {_text(value)}")
    return value


def decode_json(body: bytes, status: int | None = None) -> dict[str, Any]:
    """A JSON object, or `GatewayProtocolError`."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise GatewayProtocolError("the gateway's answer is not JSON", status=status) from None
    if not isinstance(value, dict):
        raise GatewayProtocolError("the gateway's answer is not a JSON object", status=status)
    return value


def parse_answer(body: Mapping[str, Any]) -> NextApdu | LoadResult:
    """A 2xx answer of `POST /v1/ota/sessions` or `.../responses`: the next command to relay, or
    the end of the session (`done`)."""
    session_id = _session_id(body)
    state = body.get("state", "")
    if not isinstance(state, str):
        raise GatewayProtocolError(f"state must be a string, got {_text(state)}")
    done = body.get("done")
    if done is not None:
        if not isinstance(done, dict):
            raise GatewayProtocolError("done must be an object")
        return LoadResult(
            session_id,
            state,
            balance_fen=None if done.get("balance_fen") is None else _int(done, "balance_fen"),
            loaded_fen=_int(done, "loaded_fen"),
            orders=_ids(done, "orders"),
            held=_ids(done, "held"),
        )
    step = _int(body, "step")
    apdu = body.get("next_apdu")
    try:
        command = bytes.fromhex(apdu) if isinstance(apdu, str) else None
    except ValueError:
        command = None
    if step < 1 or not command:
        raise GatewayProtocolError("a session that goes on has a step >= 1 and a hex next_apdu")
    return NextApdu(session_id, step, command, state)


def error_from_answer(status: int, body: bytes) -> LoadFailed | GatewayProtocolError:
    """The exception for an error answer: `LoadFailed` with the API's code when the body is the
    gateway's `{"error": {"code", "message", "details"}}`, `GatewayProtocolError` otherwise."""
    try:
        error = decode_json(body, status).get("error")
    except GatewayProtocolError:
        return GatewayProtocolError(f"HTTP {status} with a body that is not JSON", status=status)
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return GatewayProtocolError(f"HTTP {status} without an error code", status=status)
    message = error.get("message")
    details = error.get("details")
    return LoadFailed(
        _text(error["code"], 100),
        _text(message) if message is not None else "",
        details if isinstance(details, dict) else {},
        status=status,
    )


# --- the client ------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token (and a POST turned into a GET) elsewhere.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Transient(Exception):
    """One try that got no usable answer; worth the same request again."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _api_base(api_base: str) -> str:
    parts = urllib.parse.urlsplit(api_base)
    # The messages do not repeat the URL: a user:password in it would be printed.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the API base must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("the API base has no user, password, query or fragment")
    return api_base.rstrip("/")


def _check_token(token: str) -> None:
    if not _visible(token):
        raise ValueError("the token is empty or has characters a header cannot carry")


class RelayClient:
    """Loads the card behind `reader` through the gateway at `api_base` with a rider's access
    `token`. One `load` at a time; `session_id` is the session of the latest `load` once the
    gateway opened it (None before), for a caller that must tell the rider which one broke."""

    def __init__(
        self,
        api_base: str,
        token: str,
        reader: CardReader,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        retries: int = RETRY_COUNT_DEFAULT,
        log: Log | None = None,
        aids: Sequence[bytes] = EPURSE_AIDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_token(token)
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if not 0 <= retries <= RETRY_COUNT_MAX:
            raise ValueError(f"retries must be 0..{RETRY_COUNT_MAX}")
        self.api_base = _api_base(api_base)
        self._token = token
        self.reader = reader
        self.timeout_s = timeout_s
        self.retries = retries
        self._log = log
        self._aids = tuple(aids)
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.session_id: str | None = None

    def __repr__(self) -> str:
        return f"RelayClient(api_base={self.api_base!r}, reader={self.reader!r})"

    def load(self, order_id: int | None = None, *, card: str | None = None) -> LoadResult:
        """Load one paid order (`order_id`), or every load pending for the card (`card`, the
        20-digit ASN, which must be the card in the field; or neither: the card in the field).
        """
        target = _target(order_id, card)
        self.session_id = None
        reading = read_card(self.reader, aids=self._aids, log=self._log)
        if card is not None and card != reading.asn:
            raise CardError(f"the card in the field is {reading.asn}, not {card}")
        body = {**(target or {"card": reading.asn}), **reading.session_fields()}
        answer = self._post(SESSIONS_PATH, body, f"ota-{uuid.uuid4()}")
        for _ in range(STEP_COUNT_MAX):
            outcome = parse_answer(answer)
            if self.session_id is not None and outcome.session_id != self.session_id:
                raise GatewayProtocolError("the gateway answered for another session")
            self.session_id = outcome.session_id
            if isinstance(outcome, LoadResult):
                return outcome
            rapdu = self._relay(outcome)
            path = f"{SESSIONS_PATH}/{urllib.parse.quote(outcome.session_id, safe='')}/responses"
            step = {"step": outcome.step, "rapdu": rapdu.hex().upper()}
            answer = self._post(path, step, f"ota-{outcome.session_id}-{outcome.step}")
        raise GatewayProtocolError(f"the session did not end within {STEP_COUNT_MAX} steps")

    def _relay(self, next_apdu: NextApdu) -> bytes:
        try:
            command = A.parse_command(A.CommandApdu.from_bytes(next_apdu.apdu))
        except A.ApduError as exc:
            message = f"step {next_apdu.step}: not an e-purse command: {exc}"
            raise GatewayProtocolError(message) from None
        if not isinstance(command, RELAYED_COMMANDS):
            raise GatewayProtocolError(
                f"step {next_apdu.step}: a load never sends {type(command).__name__}; not relayed"
            )
        return _transmit(self.reader, next_apdu.step, next_apdu.apdu, self._log)

    # --- HTTP: the same request again on a transient failure, never anything new ------------

    def _post(self, path: str, payload: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        data = json.dumps(payload).encode()
        failure = _Transient("no attempt")
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), RETRY_BACKOFF_MAX_S))
            try:
                status, body = self._send(path, data, idempotency_key)
            except _Transient as exc:
                failure = exc
                continue
            if 200 <= status < 300:
                return decode_json(body, status)
            raise self._redacted(error_from_answer(status, body))
        reason = self._scrub(failure.reason)
        raise GatewayUnreachable(reason, attempts=self.retries + 1, status=failure.status)

    def _send(self, path: str, data: bytes, idempotency_key: str) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in _api_base
            self.api_base + path,
            data=data,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Idempotency-Key": idempotency_key,
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status, body = int(response.status), _read(response)
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, _read(exc)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, timeout
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _Transient(f"{type(cause).__name__}: {cause}") from None
        if status >= 500:
            error = error_from_answer(status, body)
            shown = f"{error.code}: {error.message}" if isinstance(error, LoadFailed) else ""
            raise _Transient(f"HTTP {status} {shown}".strip(), status)
        if 300 <= status < 400:
            raise GatewayProtocolError(f"HTTP {status}: redirects are not followed", status=status)
        return status, body

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]")

    def _redacted(self, error: RelayError) -> RelayError:
        if self._token not in str(error):
            return error
        if isinstance(error, LoadFailed):
            return LoadFailed(
                self._scrub(error.code),
                self._scrub(error.message),
                error.details,
                status=error.status,
            )
        return GatewayProtocolError(self._scrub(str(error)))


def _read(response: Any) -> bytes:
    try:
        body: bytes = response.read(ANSWER_BYTES_MAX + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"answer cut short: {type(exc).__name__}") from None
    if len(body) > ANSWER_BYTES_MAX:
        raise GatewayProtocolError(f"the gateway's answer is over {ANSWER_BYTES_MAX} bytes")
    return body


def _target(order_id: int | None, card: str | None) -> dict[str, Any] | None:
    """The contract's "exactly one of order_id or card"; None: the card in the field."""
    if order_id is not None and card is not None:
        raise ValueError("give an order id or a card, not both")
    if order_id is not None:
        if not isinstance(order_id, int) or isinstance(order_id, bool) or order_id < 1:
            raise ValueError("an order id is a positive integer")
        return {"order_id": order_id}
    if card is not None:
        if len(card) != 20 or not card.isdigit() or not card.isascii():
            raise ValueError("a card number (ASN) is 20 digits")
        return {"card": card}
    return None
