"""The UnionPay connector: the online gateway's merchant protocol (全渠道, acp 5.1.0, app
payments) behind the neutral `Connector`.

- create: 消费 (txnType 01) on `appTransReq.do`; the phone hands the answer's `tn` to the
  UnionPay app control;
- query: 交易状态查询 (00) on `queryTrans.do` by orderId + txnTime. UnionPay knows a consume
  only once the buyer has paid: until then (and after an unpaid order's payTimeout) it answers
  34 (no such transaction), which is NOT_FOUND here;
- close: UnionPay has no close for an unpaid consume (消费撤销, txnType 31, undoes a *paid*
  one, same day, in full: a refund by another name). An unpaid order ends at its `payTimeout`,
  which create sets from `PaymentOrder.expires_at`: UnionPay takes no payment for it after
  that (one made all the same is refunded by UnionPay, unnotified). So close only makes sure
  the trade is not paid;
- refund: 退货 (04) on `backTransReq.do`, naming the consume by its queryId (`origQryId`,
  found by a query first) and carrying our trade number in `reqReserved`, which UnionPay
  echoes in the refund's notification; refund query is a query of the refund's own orderId;
- statement: 文件传输 (76) on the file host: the day's zip, whose ZM file has one line per
  consume or refund with its fee;
- notifications: form posts to `backUrl`, signed with UnionPay's certificate; answered HTTP 200.

UnionPay names every transaction by merId + orderId + txnTime (the Beijing time it was sent)
and a query must give both, but the neutral `query(out_trade_no)` has only the number. So the
numbers carry the time: trade and refund numbers for UnionPay start with it, as
`unionpay_wire.order_number` makes them (`txn_time_of` reads it back; ValueError otherwise).

Every answer and notification is verified (certificate chain to the trusted root, then the
signature) before anything in it is read. Never logs a field, a key or a certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels import unionpay_wire as wire
from gateway.channels.executor import Executor, HttpCall
from gateway.channels.types import (
    Ack,
    AppPayment,
    BadNotification,
    Channel,
    ChannelError,
    ChannelRefused,
    ChannelUnavailable,
    Notification,
    PaymentOrder,
    RefundOrder,
    RefundState,
    RefundStatus,
    Statement,
    TradeState,
    TradeStatus,
)

PRODUCTION_BASE_URL = "https://gateway.95516.com"
PRODUCTION_FILE_URL = "https://filedownload.95516.com/"
APP_MODE_PRODUCTION = "00"  # what the app control's startPay takes: 00 production, 01 test
APP_MODE_TEST = "01"
NOTIFICATION_BYTES_MAX = 64 * 1024
ACK = Ack(status=200, body=b"ok")  # UnionPay takes HTTP 200 as received, whatever the body
_FORM = "application/x-www-form-urlencoded"

AnswerT = TypeVar("AnswerT", bound=msgspec.Struct)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class UnionPayCredentials:
    """What UnionPay's console gives a merchant: its merId, its signing key and certificate
    (in a PFX there; PEM here), and the root and middle certificates that UnionPay's signing
    certificates chain to. Its repr names the merchant only."""

    def __init__(
        self, mer_id: str, signing_key: rsa.RSAPrivateKey, cert_id: str, trust: wire.Trust,
        base_url: str = PRODUCTION_BASE_URL, file_url: str = PRODUCTION_FILE_URL,
    ) -> None:  # fmt: skip
        self.mer_id = mer_id
        self.signing_key = signing_key
        self.cert_id = cert_id
        self.trust = trust
        self.base_url = base_url.rstrip("/")
        self.file_url = file_url

    def __repr__(self) -> str:
        return f"UnionPayCredentials(mer_id={self.mer_id!r})"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> UnionPayCredentials:
        """From what `GET /sandbox/credentials` returns (and an operator imports from the
        console in the same shape). ValueError names a bad key, never its value."""
        mer_id = _text(mapping, "mer_id")
        if not (len(mer_id) == 15 and mer_id.isascii() and mer_id.isalnum()):
            raise ValueError("mer_id is 15 letters and digits")
        key, cert = _key_and_cert(mapping)
        cert_id = wire.cert_id(cert)
        if str(mapping.get("cert_id", cert_id)) != cert_id:
            raise ValueError("cert_id is not the serial of merchant_cert_pem")
        trust = wire.Trust.from_pems(
            _text(mapping, "unionpay_root_cert_pem"), _text(mapping, "unionpay_middle_cert_pem")
        )
        base_url = str(mapping.get("base_url") or PRODUCTION_BASE_URL)
        file_url = str(mapping.get("file_url") or PRODUCTION_FILE_URL)
        for name, url in (("base_url", base_url), ("file_url", file_url)):
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{name} is not an http(s) URL")
        return cls(mer_id, key, cert_id, trust, base_url, file_url)


def _text(mapping: Mapping[str, Any], name: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing")
    return value


def _key_and_cert(mapping: Mapping[str, Any]) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(
            _text(mapping, "merchant_private_key_pem").encode("ascii"), password=None
        )
    except (ValueError, TypeError):
        raise ValueError("merchant_private_key_pem is not a PEM private key") from None
    try:
        cert = x509.load_pem_x509_certificate(_text(mapping, "merchant_cert_pem").encode("ascii"))
    except ValueError:
        raise ValueError("merchant_cert_pem is not a PEM certificate") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
        raise ValueError("merchant_private_key_pem is not the key of merchant_cert_pem")
    return key, cert


class UnionPayConnector:
    channel = Channel.UNIONPAY

    def __init__(
        self, executor: Executor, credentials: UnionPayCredentials,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:  # fmt: skip
        self._executor = executor
        self._credentials = credentials
        self._now = now
        production = credentials.base_url == PRODUCTION_BASE_URL
        self._app_mode = APP_MODE_PRODUCTION if production else APP_MODE_TEST

    # ------------------------------------------------------------------ payments
    async def create_payment(self, order: PaymentOrder) -> AppPayment:
        assert order.amount_fen > 0, "an order is for a positive amount"
        request = wire.AppConsumeRequest(
            **self._header(wire.TXN_CONSUME, wire.TXN_SUB_CONSUME, wire.BIZ_TYPE_GATEWAY),
            channelType=wire.CHANNEL_TYPE_MOBILE, orderId=order.out_trade_no,
            txnTime=wire.txn_time_of(order.out_trade_no), txnAmt=str(order.amount_fen),
            currencyCode=wire.CURRENCY_CNY, backUrl=order.notify_url,
            payTimeout=wire.stamp(order.expires_at),
        )  # fmt: skip
        url = self._credentials.base_url + wire.PATH_APP
        answer = await self._call("create", url, request, wire.AppConsumeAnswer)
        if answer.respCode != wire.RESP_OK or not answer.tn:
            raise ChannelRefused(answer.respCode, answer.respMsg)
        return AppPayment(Channel.UNIONPAY, {"tn": answer.tn, "mode": self._app_mode})

    async def query(self, out_trade_no: str) -> TradeStatus:
        answer = await self._query("query", out_trade_no)
        if answer is None:
            return TradeStatus(out_trade_no, TradeState.NOT_FOUND)
        return wire.trade_status_from_query(out_trade_no, answer)

    async def close(self, out_trade_no: str) -> None:
        """UnionPay has no close: the unpaid order expires at its payTimeout. A paid trade
        cannot be closed (refund it)."""
        status = await self.query(out_trade_no)
        if status.state in (TradeState.PAID, TradeState.REFUNDED):
            raise ChannelRefused("TRADE_PAID", "a paid consume is refunded, not closed")

    # ------------------------------------------------------------------ refunds
    async def refund(self, order: RefundOrder) -> RefundStatus:
        assert 0 < order.refund_fen <= order.total_fen, "a refund is of part of a payment"
        paid = await self.query(order.out_trade_no)
        if paid.state is not TradeState.PAID or not paid.channel_trade_no:
            raise ChannelRefused(wire.RESP_ORIGINAL_STATE, "no paid consume to refund")
        request = wire.RefundRequest(
            **self._header(wire.TXN_REFUND, wire.TXN_SUB_DEFAULT, wire.BIZ_TYPE_GATEWAY),
            channelType=wire.CHANNEL_TYPE_MOBILE, orderId=order.out_refund_no,
            txnTime=wire.txn_time_of(order.out_refund_no), txnAmt=str(order.refund_fen),
            origQryId=paid.channel_trade_no, backUrl=order.notify_url,
            reqReserved=order.out_trade_no,  # echoed in the refund's notification
        )  # fmt: skip
        url = self._credentials.base_url + wire.PATH_BACK
        answer = await self._call("refund", url, request, wire.RefundAnswer)
        accepted = wire.is_success(answer.respCode) or answer.respCode in wire.RESP_UNSURE
        if not accepted:
            raise ChannelRefused(answer.respCode, answer.respMsg)
        # Accepted: the outcome comes by notification or refund query.
        return RefundStatus(
            order.out_trade_no, order.out_refund_no, RefundState.PENDING, order.refund_fen
        )

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        answer = await self._query("refund_query", out_refund_no)
        if answer is None:
            return RefundStatus(out_trade_no, out_refund_no, RefundState.NOT_FOUND)
        return wire.refund_status(out_trade_no, out_refund_no, answer.origRespCode, answer.txnAmt)

    async def _query(self, operation: str, order_id: str) -> wire.QueryAnswer | None:
        """The transaction `order_id` names; None when UnionPay has none (34)."""
        request = wire.QueryRequest(
            **self._header(wire.TXN_QUERY, wire.TXN_SUB_DEFAULT, wire.BIZ_TYPE_DEFAULT),
            orderId=order_id, txnTime=wire.txn_time_of(order_id),
        )  # fmt: skip
        url = self._credentials.base_url + wire.PATH_QUERY
        answer = await self._call(operation, url, request, wire.QueryAnswer)
        if answer.respCode == wire.RESP_NOT_FOUND:
            return None
        if answer.respCode in wire.RESP_UNSURE:
            raise ChannelUnavailable(f"unionpay {operation}: try again later")
        if answer.respCode != wire.RESP_OK:
            raise ChannelRefused(answer.respCode, answer.respMsg)
        if answer.orderId != order_id:
            raise ChannelUnavailable(f"unionpay {operation}: answer for another transaction")
        return answer

    # ------------------------------------------------------------------ statement
    async def statement(self, day: date) -> Statement:
        request = wire.FileRequest(
            **self._header(wire.TXN_FILE, wire.TXN_SUB_FILE, wire.BIZ_TYPE_DEFAULT),
            settleDate=f"{day:%m%d}", txnTime=wire.stamp(self._now()),
            fileType=wire.FILE_TYPE_DAILY,
        )  # fmt: skip
        answer = await self._call("statement", self._credentials.file_url, request, wire.FileAnswer)
        if answer.respCode != wire.RESP_OK or answer.fileContent is None:
            raise ChannelRefused(answer.respCode, answer.respMsg)
        try:
            lines = [
                line
                for raw in wire.zm_lines(answer.fileContent) if raw.strip()
                for line in [wire.statement_line(wire.decode_zm_line(raw), day)] if line
            ]  # fmt: skip
        except wire.WireError as exc:
            raise ChannelError(f"unionpay statement: {exc}") from None
        return Statement(day, lines)

    # ------------------------------------------------------------------ notifications
    def parse_notification(
        self, headers: dict[str, str], body: bytes, content_type: str
    ) -> Notification:
        """A verified 后台通知 and its answer; `BadNotification` for anything else."""
        try:
            notification = self._verified_notification(body, content_type)
        except wire.WireError:
            raise BadNotification("not a UnionPay notification") from None
        if notification.txnType == wire.TXN_CONSUME:
            return Notification(ACK, payment=wire.trade_status_from_notification(notification))
        if notification.txnType == wire.TXN_REFUND:
            refund = wire.refund_status(
                notification.reqReserved or "", notification.orderId, notification.respCode,
                notification.txnAmt,
            )  # fmt: skip
            return Notification(ACK, refund=refund)
        return Notification(ACK)  # a genuine notice of a kind this gateway does not use

    def _verified_notification(self, body: bytes, content_type: str) -> wire.BackNotification:
        if content_type.split(";")[0].strip().lower() != _FORM:
            raise wire.WireError("not a form")
        if len(body) > NOTIFICATION_BYTES_MAX:
            raise wire.WireError("too large")
        fields = wire.decode_form(body)
        self._verify(fields)
        notification = wire.message_from(fields, wire.BackNotification)
        if notification.merId != self._credentials.mer_id:
            raise wire.WireError("for another merchant")
        return notification

    # ------------------------------------------------------------------ the exchange
    def _header(self, txn_type: str, txn_sub_type: str, biz_type: str) -> dict[str, str]:
        return {
            "version": wire.VERSION, "encoding": wire.ENCODING,
            "certId": self._credentials.cert_id, "signMethod": wire.SIGN_METHOD_RSA,
            "txnType": txn_type, "txnSubType": txn_sub_type, "bizType": biz_type,
            "accessType": wire.ACCESS_TYPE_MERCHANT, "merId": self._credentials.mer_id,
        }  # fmt: skip

    async def _call(
        self, operation: str, url: str, request: msgspec.Struct, kind: type[AnswerT]
    ) -> AnswerT:
        fields = wire.sign(wire.fields_of(request), self._credentials.signing_key)
        call = HttpCall(
            operation, "POST", url, {"Content-Type": wire.FORM_CONTENT_TYPE},
            wire.encode_form(fields),
        )  # fmt: skip
        answer = await self._executor.send(self.channel.value, call)
        if answer.status != 200:
            raise ChannelRefused(f"HTTP_{answer.status}", "not an answer of the gateway")
        try:
            answer_fields = wire.decode_answer(answer.body)
            self._verify(answer_fields)
            return wire.message_from(answer_fields, kind)
        except wire.WireError:
            # Nothing in an answer that is not UnionPay's can be believed: the outcome is
            # unknown, as if no answer had come.
            raise ChannelUnavailable(f"unionpay {operation}: unverifiable answer") from None

    def _verify(self, fields: Mapping[str, str]) -> None:
        """Pinned: version 5.1.0, signMethod 01, a certificate UnionPay's root vouches for."""
        pinned = (wire.VERSION, wire.SIGN_METHOD_RSA)
        if (fields.get("version"), fields.get("signMethod")) != pinned:
            raise wire.WireError("not a 5.1.0 RSA message")
        certificate = fields.get("signPubKeyCert", "")
        key = wire.signing_key(certificate, self._credentials.trust, self._now())
        if not wire.signature_valid(fields, key):
            raise wire.WireError("bad signature")
