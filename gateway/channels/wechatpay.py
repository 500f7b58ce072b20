"""The WeChat Pay connector: API v3 for APP payments, platform public key mode.

It builds signed requests and reads verified answers in WeChat's own protocol
(`gateway.channels.wechatpay_wire`), converts them to the neutral types, and leaves every I/O
to the shared executor. It knows the channel, never an order.

Trust: every answer it reads must carry a valid platform signature (`Wechatpay-Serial` the
configured public key id, a fresh timestamp); an answer that does not verify or does not parse
is `MalformedAnswer`, which is a `ChannelUnavailable`: the outcome is unknown, so the caller
asks again. Bills are the one exception WeChat makes (a bill download is not signed): a bill is
trusted through the SHA1 its signed request answer gave. Notifications are verified over their
raw bytes, then decrypted with the APIv3 key; every kind of bad input is one `BadNotification`.

It never logs, and its credentials never print a key (`repr` leaves them out).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

import msgspec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from yarl import URL

from gateway.channels import wechatpay_wire as wire
from gateway.channels.executor import Executor, HttpAnswer, HttpCall
from gateway.channels.types import (
    Ack,
    AppPayment,
    BadNotification,
    Channel,
    ChannelRefused,
    MalformedAnswer,
    Notification,
    PaymentOrder,
    RefundOrder,
    RefundState,
    RefundStatus,
    Statement,
    TradeState,
    TradeStatus,
)

BASE_URL_DEFAULT = "https://api.mch.weixin.qq.com"
RSA_KEY_BITS_MIN = 2048
NOTIFY_BODY_BYTES_MAX = 64 * 1024
BILL_BYTES_MAX = 64 * 1024 * 1024  # a day's bill, uncompressed; a larger one is refused
ACK = Ack(status=204)  # "200 or 204, no body needed"
USER_AGENT = "onecard-gateway (WeChat Pay APIv3)"

_MCHID = re.compile(r"^[0-9]{1,32}$")
_APPID = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_SERIAL = re.compile(r"^[0-9A-Fa-f]{1,64}$")
_PUBLIC_KEY_ID = re.compile(r"^PUB_KEY_ID_[0-9A-Za-z_]{1,64}$")

Message = TypeVar("Message", bound=msgspec.Struct)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _nonce() -> str:
    return secrets.token_hex(16).upper()


# ---------------------------------------------------------------------- credentials
@dataclass(frozen=True)
class WeChatPayCredentials:
    """What the merchant platform gives a merchant, in the shape `from_mapping` reads (the
    sandbox's `GET /sandbox/credentials` answers the same shape)."""

    mchid: str
    appid: str
    merchant_serial_no: str
    merchant_private_key: RSAPrivateKey = field(repr=False)
    apiv3_key: bytes = field(repr=False)
    platform_public_key_id: str
    platform_public_key: RSAPublicKey = field(repr=False)
    base_url: str = BASE_URL_DEFAULT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WeChatPayCredentials:
        """ValueError naming the first bad field (never its value)."""
        return cls(
            mchid=_matching(data, "mchid", _MCHID),
            appid=_matching(data, "appid", _APPID),
            merchant_serial_no=_matching(data, "merchant_serial_no", _SERIAL).upper(),
            merchant_private_key=_private_key(data, "merchant_private_key_pem"),
            apiv3_key=_apiv3_key(data, "apiv3_key"),
            platform_public_key_id=_matching(data, "platform_public_key_id", _PUBLIC_KEY_ID),
            platform_public_key=_public_key(data, "platform_public_key_pem"),
            base_url=_base_url(data, "base_url"),
        )


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"WeChat Pay credentials: {name} is missing or not text")
    return value


def _matching(data: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = _text(data, name)
    if not pattern.match(value):
        raise ValueError(f"WeChat Pay credentials: {name} is not well formed")
    return value


def _private_key(data: Mapping[str, Any], name: str) -> RSAPrivateKey:
    try:
        key = load_pem_private_key(_text(data, name).encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"WeChat Pay credentials: {name} is not a PEM private key") from exc
    if not isinstance(key, RSAPrivateKey) or key.key_size < RSA_KEY_BITS_MIN:
        raise ValueError(f"WeChat Pay credentials: {name} is not an RSA 2048 key")
    return key


def _public_key(data: Mapping[str, Any], name: str) -> RSAPublicKey:
    try:
        key = load_pem_public_key(_text(data, name).encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"WeChat Pay credentials: {name} is not a PEM public key") from exc
    if not isinstance(key, RSAPublicKey) or key.key_size < RSA_KEY_BITS_MIN:
        raise ValueError(f"WeChat Pay credentials: {name} is not an RSA 2048 key")
    return key


def _apiv3_key(data: Mapping[str, Any], name: str) -> bytes:
    key = _text(data, name).encode()
    if len(key) != wire.APIV3_KEY_BYTES:
        raise ValueError(f"WeChat Pay credentials: {name} is not 32 bytes")
    return key


def _base_url(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, BASE_URL_DEFAULT)
    parts = urlsplit(value if isinstance(value, str) else "")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(f"WeChat Pay credentials: {name} is not an http(s) origin")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


# ---------------------------------------------------------------------- the connector
class WeChatPayConnector:
    channel = Channel.WECHATPAY

    def __init__(
        self, executor: Executor, credentials: WeChatPayCredentials,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:  # fmt: skip
        self._executor = executor
        self._credentials = credentials
        self._clock = clock

    async def create_payment(self, order: PaymentOrder) -> AppPayment:
        c = self._credentials
        request = wire.PrepayRequest(
            appid=c.appid, mchid=c.mchid, description=order.subject,
            out_trade_no=order.out_trade_no, notify_url=order.notify_url,
            amount=wire.Amount(total=wire.fen_raw(order.amount_fen), currency=wire.CURRENCY),
            time_expire=wire.wechat_time(order.expires_at),
        )  # fmt: skip
        answer = await self._call("create", "POST", "/v3/pay/transactions/app", request)
        prepay = self._expect(answer, 200, wire.PrepayAnswer)
        return AppPayment(self.channel, self._app_params(prepay.prepay_id))

    def _app_params(self, prepay_id: str) -> dict[str, str]:
        """What the phone hands to the WeChat app SDK's `PayReq`."""
        c = self._credentials
        timestamp, noncestr = wire.timestamp_of(self._clock()), _nonce()
        message = wire.app_pay_message(c.appid, timestamp, noncestr, prepay_id)
        return {
            "appid": c.appid, "partnerid": c.mchid, "prepayid": prepay_id,
            "package": wire.APP_PACKAGE, "noncestr": noncestr, "timestamp": timestamp,
            "sign": wire.sign(c.merchant_private_key, message),
        }  # fmt: skip

    async def query(self, out_trade_no: str) -> TradeStatus:
        path = f"/v3/pay/transactions/out-trade-no/{_segment(out_trade_no)}"
        answer = await self._call("query", "GET", f"{path}?mchid={self._credentials.mchid}")
        if _error_code(answer) == "ORDER_NOT_EXIST":
            return TradeStatus(out_trade_no, TradeState.NOT_FOUND)
        return _read(wire.trade_status, self._expect(answer, 200, wire.Transaction))

    async def close(self, out_trade_no: str) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{_segment(out_trade_no)}/close"
        request = wire.CloseRequest(mchid=self._credentials.mchid)
        self._expect_empty(await self._call("close", "POST", path, request), 204)

    async def refund(self, order: RefundOrder) -> RefundStatus:
        request = wire.RefundRequest(
            out_trade_no=order.out_trade_no, out_refund_no=order.out_refund_no,
            reason=order.reason or None, notify_url=order.notify_url,
            amount=wire.RefundAmountRequest(
                refund=wire.fen_raw(order.refund_fen), total=wire.fen_raw(order.total_fen),
                currency=wire.CURRENCY,
            ),
        )  # fmt: skip
        answer = await self._call("refund", "POST", "/v3/refund/domestic/refunds", request)
        return _refund_status(self._expect(answer, 200, wire.Refund))

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        path = f"/v3/refund/domestic/refunds/{_segment(out_refund_no)}"
        answer = await self._call("refund_query", "GET", path)
        if _error_code(answer) == "RESOURCE_NOT_EXISTS":
            return RefundStatus(out_trade_no, out_refund_no, RefundState.NOT_FOUND)
        return _refund_status(self._expect(answer, 200, wire.Refund))

    async def statement(self, day: date) -> Statement:
        path = f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL&tar_type=GZIP"
        answer = await self._call("statement", "GET", path)
        if _error_code(answer) == "NO_STATEMENT_EXIST":  # no payment and no refund that day
            return Statement(day)
        bill = self._expect(answer, 200, wire.TradeBillAnswer)
        data = await self._download_bill(bill)
        rows = _read(wire.parse_bill, data)
        return Statement(day, [_read(wire.statement_line, row) for row in rows])

    async def _download_bill(self, bill: wire.TradeBillAnswer) -> bytes:
        """The bill file, unpacked and checked against the hash of the signed answer."""
        url = URL(bill.download_url)
        if bill.hash_type != "SHA1" or url.origin() != URL(self._credentials.base_url).origin():
            raise MalformedAnswer("wechatpay statement: an unexpected bill download")
        answer = await self._call("statement_download", "GET", url.raw_path_qs, signed=False)
        if answer.status != 200:
            self._refuse(answer)
        data = _gunzip(answer.body)
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        if not hmac.compare_digest(digest, bill.hash_value.lower()):
            raise MalformedAnswer("wechatpay statement: the bill does not match its hash")
        return data

    # ------------------------------------------------------------------ notifications
    def parse_notification(
        self, headers: dict[str, str], body: bytes, content_type: str
    ) -> Notification:
        """A verified, decrypted notification and the answer WeChat expects (204, no body)."""
        try:
            return self._notification(headers, body, content_type)
        except (ValueError, msgspec.DecodeError) as exc:
            raise BadNotification("not a WeChat Pay notification") from exc

    def _notification(self, headers: dict[str, str], body: bytes, content_type: str) -> (
        Notification
    ):  # fmt: skip
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise ValueError("not JSON")
        if len(body) > NOTIFY_BODY_BYTES_MAX:
            raise ValueError("too large")
        lowered = {name.lower(): value for name, value in headers.items()}
        if not self._verified(lowered.get, body):
            raise ValueError("signature")
        envelope = msgspec.json.decode(body, type=wire.NotifyEnvelope)
        if envelope.resource_type != wire.ENCRYPT_RESOURCE:
            raise ValueError("not an encrypted resource")
        plain = wire.open_resource(self._credentials.apiv3_key, envelope.resource)
        kind = envelope.event_type.partition(".")[0]
        if kind == "TRANSACTION" and envelope.resource.original_type == "transaction":
            tx = msgspec.json.decode(plain, type=wire.Transaction)
            self._same_merchant(tx.mchid)
            return Notification(ACK, payment=wire.trade_status(tx))
        if kind == "REFUND" and envelope.resource.original_type == "refund":
            refund = msgspec.json.decode(plain, type=wire.RefundResource)
            self._same_merchant(refund.mchid)
            status = wire.refund_status(
                refund.out_trade_no, refund.out_refund_no, refund.refund_status, refund.amount
            )
            return Notification(ACK, refund=status)
        raise ValueError("an event this connector does not read")

    def _same_merchant(self, mchid: str) -> None:
        if mchid != self._credentials.mchid:
            raise ValueError("another merchant's resource")

    def _verified(self, header: Callable[[str], str | None], body: bytes) -> bool:
        """Whether headers carry a fresh platform signature of `body` by the configured key."""
        timestamp = header(wire.TIMESTAMP.lower()) or ""
        nonce = header(wire.NONCE.lower()) or ""
        signature = header(wire.SIGNATURE.lower()) or ""
        serial = header(wire.SERIAL.lower()) or ""
        signature_type = header(wire.SIGNATURE_TYPE.lower())
        c = self._credentials
        return (
            serial == c.platform_public_key_id  # an id, not a secret: the signature is the check
            and signature_type in (None, wire.AUTH_SCHEMA)
            and wire.fresh(timestamp, self._clock())
            and wire.well_formed_nonce(nonce)
            and wire.verify(
                c.platform_public_key, wire.answer_message(timestamp, nonce, body), signature
            )
        )

    # ------------------------------------------------------------------ calls
    async def _call(
        self, operation: str, method: str, path: str, message: msgspec.Struct | None = None,
        signed: bool = True,
    ) -> HttpAnswer:  # fmt: skip
        """Send one signed request; the answer, verified (but for a 200 when `signed` is False:
        the bill file, which WeChat does not sign)."""
        c = self._credentials
        url = URL(c.base_url + path)  # the URL as aiohttp will send it: sign exactly that
        body = wire.encode(message) if message is not None else b""
        authorization = wire.sign_request(
            c.merchant_private_key, c.mchid, c.merchant_serial_no, method, url.raw_path_qs,
            body, self._clock(), _nonce(),
        )  # fmt: skip
        headers = {"Authorization": authorization, "Accept": "application/json",
                   "User-Agent": USER_AGENT}  # fmt: skip
        if body:
            headers["Content-Type"] = "application/json"
        call = HttpCall(operation, method, str(url), headers, body)
        answer = await self._executor.send(self.channel, call)
        unsigned_ok = not signed and answer.status == 200
        if not unsigned_ok and not self._verified(answer.headers.get, answer.body):
            raise MalformedAnswer(f"wechatpay {operation}: answer {answer.status} not signed")
        return answer

    def _expect(self, answer: HttpAnswer, status: int, kind: type[Message]) -> Message:
        """The answer's body as `kind` when it has `status`; the channel's refusal otherwise."""
        if answer.status == status:
            try:
                return msgspec.json.decode(answer.body, type=kind)
            except msgspec.DecodeError as exc:
                raise MalformedAnswer(f"wechatpay: unreadable {status} answer") from exc
        self._refuse(answer)

    def _expect_empty(self, answer: HttpAnswer, status: int) -> None:
        if answer.status != status:
            self._refuse(answer)

    def _refuse(self, answer: HttpAnswer) -> NoReturn:
        if 400 <= answer.status < 500:
            try:
                error = msgspec.json.decode(answer.body, type=wire.ErrorAnswer)
            except msgspec.DecodeError:
                pass
            else:
                raise ChannelRefused(error.code, error.message)
        raise MalformedAnswer(f"wechatpay: unexpected answer {answer.status}")


def _segment(value: str) -> str:
    """One path segment, escaped: a number never reaches another path."""
    return quote(value, safe="")


def _error_code(answer: HttpAnswer) -> str | None:
    if not 400 <= answer.status < 500:
        return None
    try:
        return msgspec.json.decode(answer.body, type=wire.ErrorAnswer).code
    except msgspec.DecodeError:
        return None


Read = TypeVar("Read")
Source = TypeVar("Source")


def _read(convert: Callable[[Source], Read], source: Source) -> Read:
    """A signed answer converted; a signed answer that does not convert is malformed."""
    try:
        return convert(source)
    except ValueError as exc:
        raise MalformedAnswer("wechatpay: an answer that does not read") from exc


def _refund_status(refund: wire.Refund) -> RefundStatus:
    return _read(
        lambda r: wire.refund_status(r.out_trade_no, r.out_refund_no, r.status, r.amount), refund
    )


def _gunzip(data: bytes) -> bytes:
    """The bill, unpacked to at most `BILL_BYTES_MAX` (a small file never unpacks to gigabytes)."""
    if not data.startswith(b"\x1f\x8b"):
        return data  # WeChat sends the plain stream when tar_type is left out
    unpacker = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = unpacker.decompress(data, BILL_BYTES_MAX + 1)
    except zlib.error as exc:
        raise MalformedAnswer("wechatpay statement: the bill does not unpack") from exc
    if len(out) > BILL_BYTES_MAX or not unpacker.eof:
        raise MalformedAnswer("wechatpay statement: the bill is too large or cut short")
    return out
