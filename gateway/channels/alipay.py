"""The Alipay connector: OpenAPI `gateway.do` with RSA2 signatures, in the neutral `Connector`
shape.

- `create_payment`: no server call. Alipay's app payment starts on the phone: the connector
  signs an `alipay.trade.app.pay` order string that the app SDK's `payV2` takes; Alipay
  creates the trade when the buyer opens it.
- `query`, `close`, `refund`, `refund_query`, `statement`: signed form posts to `gateway.do`;
  every answer's signature is checked against Alipay's public key before anything in it is
  read. An answer that does not verify is no answer (`ChannelUnavailable`).
- `parse_notification`: verifies Alipay's signature over the form (without `sign` and
  `sign_type`), one opaque `BadNotification` for every kind of bad input, and gives the
  answer Alipay expects (`success`).

Every I/O goes through the shared `Executor`. Connectors know channels, never orders. This
module never logs, and never puts a key, a signature or a body in an error message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels import alipay_wire as wire
from gateway.channels.executor import Executor, HttpAnswer, HttpCall
from gateway.channels.money import InexactAmount, fen_to_yuan
from gateway.channels.types import (
    Ack,
    AppPayment,
    BadNotification,
    Channel,
    ChannelRefused,
    ChannelUnavailable,
    Notification,
    PaymentOrder,
    RefundOrder,
    RefundState,
    RefundStatus,
    Statement,
    StatementLine,
    StatementUnreadable,
    TradeState,
    TradeStatus,
)

BASE_URL_DEFAULT = "https://openapi.alipay.com/gateway.do"
RSA_KEY_BITS_MIN = 2048
NOTIFICATION_BYTES_MAX = 64 * 1024  # a notification is a few hundred bytes
ORDER_STRING_KEY = "order_string"  # AppPayment.params: what the app SDK's payV2 takes
BILL_TYPE_TRADE = "trade"
ACK = Ack(200, wire.ACK_BODY, "text/plain")
# Alipay's own "try again" answers: the outcome is unknown, exactly as with no answer.
_UNSURE_SUB_CODES = frozenset({wire.SUB_SYSTEM_ERROR, "isp.unknow-error", "aop.ACQ.SYSTEM_ERROR"})
# HTTP statuses under 500 that still say "no answer yet" rather than "no".
_UNSURE_STATUSES = frozenset({408, 429})

A = TypeVar("A", bound=wire.Answer)


@dataclass(frozen=True)
class AlipayCredentials:
    """What Alipay's console gives a merchant (the sandbox's `GET /sandbox/credentials`)."""

    app_id: str
    app_private_key: rsa.RSAPrivateKey = field(repr=False)
    alipay_public_key: rsa.RSAPublicKey = field(repr=False)
    base_url: str = BASE_URL_DEFAULT  # the gateway.do URL

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> AlipayCredentials:
        """`app_id`, `app_private_key_pem`, `app_public_key_pem`, `alipay_public_key_pem` and
        optionally `base_url`. ValueError naming the field (never its value) when one is bad."""
        app_id = _text(mapping, "app_id")
        if not (app_id.isascii() and app_id.isdigit()):
            raise ValueError("app_id: not an Alipay app id")
        private_key = _private_key(_text(mapping, "app_private_key_pem"))
        app_public_key = _public_key(_text(mapping, "app_public_key_pem"), "app_public_key_pem")
        if app_public_key.public_numbers() != private_key.public_key().public_numbers():
            raise ValueError("app_public_key_pem: not the public half of app_private_key_pem")
        alipay_key = _public_key(_text(mapping, "alipay_public_key_pem"), "alipay_public_key_pem")
        base_url = str(mapping.get("base_url") or BASE_URL_DEFAULT)
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise ValueError("base_url: not an http(s) URL")
        return cls(app_id, private_key, alipay_key, base_url)


def _text(mapping: Mapping[str, Any], name: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: missing")
    return value


def _private_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("app_private_key_pem: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_KEY_BITS_MIN:
        raise ValueError("app_private_key_pem: not an RSA key of 2048 bits or more")
    return key


def _public_key(pem: str, name: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError(f"{name}: not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < RSA_KEY_BITS_MIN:
        raise ValueError(f"{name}: not an RSA key of 2048 bits or more")
    return key


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlipayConnector:
    channel = Channel.ALIPAY

    def __init__(
        self,
        executor: Executor,
        credentials: AlipayCredentials,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._executor = executor
        self._credentials = credentials
        self._clock = clock

    # ------------------------------------------------------------------ payments
    async def create_payment(self, order: PaymentOrder) -> AppPayment:
        """The signed `alipay.trade.app.pay` order string; `time_expire` makes it unpayable
        after the order expires, even if the buyer never opened it (then Alipay has no trade
        to close)."""
        assert order.amount_fen > 0, "a payment of nothing is our bug"
        content = wire.AppPayContent(
            out_trade_no=order.out_trade_no, total_amount=fen_to_yuan(order.amount_fen),
            subject=order.subject, product_code=wire.PRODUCT_CODE_APP,
            time_expire=wire.format_time(order.expires_at),
        )  # fmt: skip
        params = self._signed(wire.METHOD_APP_PAY, content, order.notify_url)
        return AppPayment(Channel.ALIPAY, {ORDER_STRING_KEY: wire.encode_form(params)})

    async def query(self, out_trade_no: str) -> TradeStatus:
        content = wire.TradeQueryContent(out_trade_no=out_trade_no)
        answer = await self._call("query", wire.METHOD_QUERY, content, wire.TradeQueryAnswer)
        if answer.sub_code == wire.SUB_TRADE_NOT_EXIST:
            return TradeStatus(out_trade_no, TradeState.NOT_FOUND)
        _succeeded(answer)
        return _read(wire.queried_trade, answer, out_trade_no)

    async def close(self, out_trade_no: str) -> None:
        """Closes an unpaid trade. An order string never opened is no trade at Alipay:
        `ChannelRefused("ACQ.TRADE_NOT_EXIST")`, and its `time_expire` keeps it unpayable."""
        content = wire.TradeCloseContent(out_trade_no=out_trade_no)
        answer = await self._call("close", wire.METHOD_CLOSE, content, wire.TradeCloseAnswer)
        _succeeded(answer)

    # ------------------------------------------------------------------ refunds
    async def refund(self, order: RefundOrder) -> RefundStatus:
        """Alipay refunds synchronously; `out_request_no` (our out_refund_no) makes a repeat
        of the same refund a no-op. Its notification goes to the payment's notify URL (Alipay
        takes none per refund)."""
        content = wire.TradeRefundContent(
            out_trade_no=order.out_trade_no, refund_amount=fen_to_yuan(order.refund_fen),
            out_request_no=order.out_refund_no, refund_reason=order.reason or None,
            query_options=["refund_detail_item_list"],
        )  # fmt: skip
        answer = await self._call("refund", wire.METHOD_REFUND, content, wire.TradeRefundAnswer)
        _succeeded(answer)
        return _read(wire.refunded, answer, order.out_trade_no, order.out_refund_no)

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        content = wire.RefundQueryContent(
            out_trade_no=out_trade_no, out_request_no=out_refund_no,
            query_options=["gmt_refund_pay"],
        )  # fmt: skip
        method = wire.METHOD_REFUND_QUERY
        answer = await self._call("refund_query", method, content, wire.RefundQueryAnswer)
        if answer.sub_code == wire.SUB_TRADE_NOT_EXIST:
            return RefundStatus(out_trade_no, out_refund_no, RefundState.NOT_FOUND)
        _succeeded(answer)
        return _read(wire.queried_refund, answer, out_trade_no, out_refund_no)

    # ------------------------------------------------------------------ notifications
    def parse_notification(
        self, headers: dict[str, str], body: bytes, content_type: str
    ) -> Notification:
        return parse_notification(self._credentials, body, content_type)

    # ------------------------------------------------------------------ the daily bill
    async def statement(self, day: date) -> Statement:
        """The day's trade bill (a Beijing day), with Alipay's fees. `ChannelRefused` with
        `isp.bill_not_exist` when Alipay has none for the day (no trades, or not made yet)."""
        content = wire.BillUrlContent(bill_type=BILL_TYPE_TRADE, bill_date=day.isoformat())
        answer = await self._call("statement", wire.METHOD_BILL_URL, content, wire.BillUrlAnswer)
        _succeeded(answer)
        url = answer.bill_download_url or ""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ChannelUnavailable("alipay statement: no download URL in the answer")
        download = HttpCall("statement_download", "GET", url)
        got = await self._executor.send(Channel.ALIPAY, download)
        if got.status != 200:
            raise ChannelUnavailable(f"alipay statement download: HTTP {got.status}")
        try:
            lines = wire.read_bill(got.body)
        except (ValueError, InexactAmount) as exc:
            raise StatementUnreadable(f"alipay statement {day}: {exc}") from None
        return Statement(day, [_statement_line(line) for line in lines])

    # ------------------------------------------------------------------ the gateway
    def _signed(
        self, method: str, content: msgspec.Struct, notify_url: str | None = None
    ) -> dict[str, str]:
        params = {
            "app_id": self._credentials.app_id, "method": method, "format": wire.FORMAT,
            "charset": wire.CHARSET, "sign_type": wire.SIGN_TYPE,
            "timestamp": wire.format_time(self._clock()), "version": wire.VERSION,
            "notify_url": notify_url or "", "biz_content": msgspec.json.encode(content).decode(),
        }  # fmt: skip
        return wire.signed(self._credentials.app_private_key, params)

    async def _call(
        self, operation: str, method: str, content: msgspec.Struct, answer_type: type[A]
    ) -> A:
        """The verified answer to one gateway call (any code: the caller reads it)."""
        body = wire.encode_form(self._signed(method, content)).encode("ascii")
        headers = {"Content-Type": f"{wire.FORM_CONTENT_TYPE};charset={wire.CHARSET}"}
        call = HttpCall(operation, "POST", self._credentials.base_url, headers, body)
        got = await self._executor.send(Channel.ALIPAY, call)
        if got.status in _UNSURE_STATUSES:
            raise ChannelUnavailable(f"alipay {operation}: HTTP {got.status}")
        if got.status != 200:
            raise ChannelRefused(f"http_{got.status}", f"alipay {operation}: HTTP {got.status}")
        answer = _verified(got, method, self._credentials.alipay_public_key, answer_type)
        if answer.code == wire.CODE_UNAVAILABLE or answer.sub_code in _UNSURE_SUB_CODES:
            raise ChannelUnavailable(f"alipay {operation}: {answer.sub_code or answer.code}")
        return answer


def _verified(got: HttpAnswer, method: str, key: rsa.RSAPublicKey, answer_type: type[A]) -> A:
    """The answer object, once its signature over its exact text verifies."""
    try:
        members = wire.answer_members(got.body.decode("utf-8"))
        root = wire.answer_root(method)
        text, _ = members[root] if root in members else members[wire.ERROR_ROOT]
        _, signature = members["sign"]
    except (ValueError, KeyError):
        raise ChannelUnavailable("alipay: an answer not in Alipay's envelope") from None
    if not isinstance(signature, str) or not wire.rsa2_verify(key, text, signature):
        raise ChannelUnavailable("alipay: an answer not signed by Alipay")
    try:
        return msgspec.json.decode(text, type=answer_type)
    except msgspec.DecodeError:  # a ValidationError too
        raise ChannelUnavailable("alipay: a signed answer of the wrong shape") from None


def _succeeded(answer: wire.Answer) -> None:
    if answer.code != wire.CODE_SUCCESS:
        code = answer.sub_code or answer.code
        raise ChannelRefused(code, answer.sub_msg or answer.msg)


R = TypeVar("R")


def _read(convert: Callable[..., R], *args: Any) -> R:
    """A successful answer in neutral terms; a signed answer that makes no sense is no answer."""
    try:
        return convert(*args)
    except ValueError:
        raise ChannelUnavailable("alipay: a signed answer that does not add up") from None


def _statement_line(line: wire.BillLine) -> StatementLine:
    refund = line.kind == wire.BILL_KIND_REFUND
    return StatementLine(
        "refund" if refund else "payment", line.out_trade_no, line.trade_no,
        abs(line.amount_fen), abs(line.fee_fen), line.finished_at,
        line.out_request_no if refund else None,
    )  # fmt: skip


def parse_notification(
    credentials: AlipayCredentials, body: bytes, content_type: str
) -> Notification:
    """A verified Alipay notification in neutral terms; `BadNotification` for anything else.

    Pure, so that it can be tested on its own: the connector's `parse_notification` is this."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != wire.FORM_CONTENT_TYPE or len(body) > NOTIFICATION_BYTES_MAX:
        raise BadNotification("alipay notification")
    try:
        params = wire.decode_form(body.decode("utf-8"))
        if not wire.notification_verifies(credentials.alipay_public_key, params):
            raise ValueError("signature")
        if params.get("app_id") != credentials.app_id:
            raise ValueError("another app's notification")
        note = msgspec.convert(params, wire.TradeNotification)
        payment = wire.notified_trade(note)
    except (ValueError, msgspec.ValidationError):
        raise BadNotification("alipay notification") from None
    return Notification(ACK, payment, wire.notified_refund(note))
