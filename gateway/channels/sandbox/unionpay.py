"""The UnionPay sandbox: the online gateway's merchant protocol (全渠道, acp 5.1.0) for app
payments, so that a merchant using UnionPay's own SDK works against it by changing only its
URLs (and the certificates its console hands out, which `GET /sandbox/credentials` gives).

Routes, as UnionPay publishes them (every request form-encoded and signed by the merchant's
certificate; every answer raw `k=v&...`, signed by UnionPay's signing certificate, which it
carries in `signPubKeyCert`):

- `POST /gateway/api/appTransReq.do`: 消费 (txnType 01) -> `tn` for the app control;
- `POST /gateway/api/backTransReq.do`: 退货 (04), then its notification to `backUrl`;
- `POST /gateway/api/queryTrans.do`: 交易状态查询 (00) by orderId + txnTime;
- `POST /` (the file host's root, as filedownload.95516.com serves it) and the alias
  `POST /gateway/api/fileTransReq.do`: 文件传输 (76): the day's zip with its ZM file.

What it leaves out: front (browser) payments, 消费撤销 (31) and the other back transactions
(answered 32), encrypted card fields, the other files of the daily zip (only the ZM file is
in it), settlement cut-off at 23:00 (a day here is a Beijing calendar day) and the automatic
refund of a payment made after payTimeout (here such a payment is refused outright).

Its keys (a root and a middle CA, UnionPay's signing certificate, the test merchant's
certificate) are made once and kept under the sandbox's data directory. Never logs a key.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from gateway.channels import unionpay_wire as wire
from gateway.channels.money import InexactAmount, fen_from_text
from gateway.channels.sandbox.base import (
    ChannelSandbox,
    Outgoing,
    Refund,
    Sandbox,
    Trade,
    now,
)

KEYS_NAME = "unionpay"
RSA_BITS = 2048
CA_DAYS = 20 * 365
LEAF_DAYS = 5 * 365
PFX_PASSWORD = "000000"  # noqa: S105 - the well-known one of UnionPay's test certificates
REQUEST_BYTES_MAX = 64 * 1024
FEE_PER_MILLE = 6  # the merchant's rate: 0.6 %, rounded half up to the fen
FILE_PATH_ALIAS = "/gateway/api/fileTransReq.do"
ACQ_INS_CODE = "00010000"  # UnionPay itself as the acquirer of a directly connected merchant
MCC_TRANSIT = "4111"  # local and suburban commuter passenger transport
TEST_CARD = "621626******0018"
OK_MESSAGE = "成功[0000000]"
ECHOED = ("version", "encoding", "bizType", "txnType", "txnSubType", "accessType", "merId",
          "orderId", "txnTime", "reqReserved")  # fmt: skip

M = TypeVar("M", bound=msgspec.Struct)


def make(sandbox: Sandbox) -> ChannelSandbox:
    return UnionPaySandbox(sandbox)


@dataclass(frozen=True)
class _Keys:
    mer_id: str
    stored: dict[str, str]  # the PEMs as kept on disk
    sign_key: rsa.RSAPrivateKey
    merchant_cert: x509.Certificate

    @classmethod
    def load(cls, stored: dict[str, str]) -> _Keys:
        key = serialization.load_pem_private_key(stored["sign_key_pem"].encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        cert = x509.load_pem_x509_certificate(stored["merchant_cert_pem"].encode())
        return cls(stored["mer_id"], stored, key, cert)


@dataclass
class _RefundEntry:
    """A 退货 is a transaction of its own: its orderId and txnTime name it."""

    trade: Trade
    refund: Refund
    txn_time: str
    req_reserved: str | None


class UnionPaySandbox:
    name = "unionpay"

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._keys = _Keys.load(sandbox.keys(KEYS_NAME, _make_keys))
        self._trades_by_tn: dict[str, str] = {}
        self._refunds: dict[str, _RefundEntry] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(wire.PATH_APP, self._consume),
            web.post(wire.PATH_BACK, self._back),
            web.post(wire.PATH_QUERY, self._query),
            web.post(wire.PATH_FILE, self._file),
            web.post(FILE_PATH_ALIAS, self._file),
        ]

    def credentials(self, base_url: str) -> dict[str, Any]:
        stored = self._keys.stored
        return {
            "mer_id": self._keys.mer_id,
            "cert_id": wire.cert_id(self._keys.merchant_cert),
            "merchant_private_key_pem": stored["merchant_key_pem"],
            "merchant_cert_pem": stored["merchant_cert_pem"],
            "merchant_pfx_base64": stored["merchant_pfx_base64"],  # for UnionPay's own SDKs
            "merchant_pfx_password": PFX_PASSWORD,
            "unionpay_root_cert_pem": stored["root_cert_pem"],
            "unionpay_middle_cert_pem": stored["middle_cert_pem"],
            "base_url": base_url,
            "file_url": base_url + wire.PATH_FILE,
        }

    def trade_for_token(self, token: str) -> Trade:
        out_trade_no = self._trades_by_tn.get(token)
        trade = self._sandbox.trades.get(out_trade_no or "")
        if trade is None:
            raise ValueError("no order has this tn")
        _expire(trade)
        return trade

    def payment_notification(self, trade: Trade, amount_fen: int, tamper: bool) -> Outgoing:
        at = trade.paid_at or trade.created_at
        fields = {
            **self._notice_header(wire.TXN_CONSUME, wire.TXN_SUB_CONSUME),
            "orderId": trade.out_trade_no, "txnTime": trade.extra["txnTime"],
            # A stale notice (out of order) speaks of the moment before the payment.
            "respCode": wire.RESP_OK if trade.paid_at else "05",
            "respMsg": OK_MESSAGE if trade.paid_at else "交易已受理，请稍后查询",
            "queryId": trade.trade_no, "traceNo": _trace_no(trade.trade_no),
            **_amounts(amount_fen, at), **_reserved(trade.extra.get("reqReserved")),
        }  # fmt: skip
        return self._outgoing(trade.notify_url, fields, tamper)

    def is_ack(self, status: int, body: bytes) -> bool:
        return status == 200  # UnionPay reads the status only

    # ------------------------------------------------------------------ 消费
    async def _consume(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, wire.AppConsumeRequest)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        fields, consume = accepted
        try:
            amount_fen, pay_timeout = _check_consume(consume)
        except (wire.WireError, InexactAmount):
            return self._answer(fields, wire.RESP_FORMAT, "报文格式错误")
        if self._sandbox.refuses_create(consume.orderId):
            return self._answer(fields, wire.RESP_NOT_PERMITTED, "无此交易权限")
        trade = self._sandbox.trades.get(consume.orderId)
        if trade is None:
            trade = self._new_trade(consume, amount_fen, pay_timeout)
        elif (trade.extra["txnTime"], trade.amount_fen) != (consume.txnTime, amount_fen):
            return self._answer(fields, wire.RESP_DUPLICATE, "重复交易")
        # The same order asked again gets the same tn: the merchant's retry is harmless.
        return self._answer(fields, wire.RESP_OK, OK_MESSAGE, tn=trade.extra["tn"])

    def _new_trade(
        self, consume: wire.AppConsumeRequest, amount_fen: int, pay_timeout: datetime | None
    ) -> Trade:
        tn = wire.stamp(now()) + _digits(7)
        trade = Trade(
            out_trade_no=consume.orderId, trade_no=_query_id(), amount_fen=amount_fen,
            subject=f"UnionPay {consume.orderId}", notify_url=consume.backUrl, state="waiting",
            created_at=now(), expires_at=pay_timeout,
            extra={"txnTime": consume.txnTime, "tn": tn, **_reserved(consume.reqReserved)},
        )  # fmt: skip
        self._sandbox.trades[trade.out_trade_no] = trade
        self._trades_by_tn[tn] = trade.out_trade_no
        return trade

    # ------------------------------------------------------------------ 退货
    async def _back(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, wire.RefundRequest)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        fields, back = accepted
        if (back.txnType, back.txnSubType) != (wire.TXN_REFUND, wire.TXN_SUB_DEFAULT):
            return self._answer(fields, wire.RESP_NOT_PERMITTED, "无此交易权限")
        try:
            amount_fen = _check_refund(back)
        except (wire.WireError, InexactAmount):
            return self._answer(fields, wire.RESP_FORMAT, "报文格式错误")
        entry = self._refunds.get(back.orderId)
        if entry is None:
            refused = self._refusal(back, amount_fen)
            if refused is not None:
                return self._answer(fields, *refused)
            entry = self._new_refund(back, amount_fen)
        elif (entry.txn_time, entry.refund.amount_fen, entry.trade.trade_no) != (
            back.txnTime, amount_fen, back.origQryId,
        ):  # fmt: skip
            return self._answer(fields, wire.RESP_DUPLICATE, "重复交易")
        return self._answer(
            fields, wire.RESP_OK, OK_MESSAGE, queryId=entry.refund.refund_no,
            origQryId=entry.trade.trade_no, txnAmt=back.txnAmt,
        )  # fmt: skip

    def _refusal(self, back: wire.RefundRequest, amount_fen: int) -> tuple[str, str] | None:
        trade = self._paid_trade(back.origQryId)
        if trade is None:
            return wire.RESP_ORIGINAL_STATE, "原交易不存在或状态不正确"
        if trade.refunded_fen + amount_fen > trade.amount_fen:
            return wire.RESP_MISMATCH, "与原交易信息不符"
        return None

    def _new_refund(self, back: wire.RefundRequest, amount_fen: int) -> _RefundEntry:
        trade = self._paid_trade(back.origQryId)
        assert trade is not None, "checked by _refusal"
        refund = Refund(
            out_refund_no=back.orderId, refund_no=_query_id(), amount_fen=amount_fen,
            state="success", created_at=now(), notify_url=back.backUrl,
        )  # fmt: skip
        trade.refunds[refund.out_refund_no] = refund
        if trade.refunded_fen == trade.amount_fen:
            trade.state = "refunded"
        entry = _RefundEntry(trade, refund, back.txnTime, back.reqReserved)
        self._refunds[refund.out_refund_no] = entry
        self._sandbox.send_later([self._refund_notification(entry)])
        return entry

    def _paid_trade(self, query_id: str) -> Trade | None:
        for trade in self._sandbox.trades.values():
            if trade.trade_no == query_id and trade.paid_at is not None:
                return trade
        return None

    def _refund_notification(self, entry: _RefundEntry) -> Outgoing:
        refund = entry.refund
        fields = {
            **self._notice_header(wire.TXN_REFUND, wire.TXN_SUB_DEFAULT),
            "orderId": refund.out_refund_no, "txnTime": entry.txn_time,
            "respCode": wire.RESP_OK, "respMsg": OK_MESSAGE, "queryId": refund.refund_no,
            "origQryId": entry.trade.trade_no, "traceNo": _trace_no(refund.refund_no),
            **_amounts(refund.amount_fen, refund.created_at), **_reserved(entry.req_reserved),
        }  # fmt: skip
        assert refund.notify_url is not None
        return self._outgoing(refund.notify_url, fields, tamper=False)

    # ------------------------------------------------------------------ 交易状态查询
    async def _query(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, wire.QueryRequest)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        fields, query = accepted
        entry = self._refunds.get(query.orderId)
        if entry is not None and entry.txn_time == query.txnTime:
            return self._found(fields, entry.refund.refund_no, entry.refund.amount_fen,
                               entry.refund.created_at, entry.req_reserved,
                               origQryId=entry.trade.trade_no)  # fmt: skip
        trade = self._sandbox.trades.get(query.orderId)
        if trade is not None:
            _expire(trade)
        if trade is None or trade.extra["txnTime"] != query.txnTime or trade.paid_at is None:
            # UnionPay knows a consume once it is paid; a tn alone is no transaction.
            return self._answer(fields, wire.RESP_NOT_FOUND, "查无此交易")
        return self._found(fields, trade.trade_no, trade.amount_fen, trade.paid_at,
                           trade.extra.get("reqReserved"))  # fmt: skip

    def _found(
        self, fields: dict[str, str], query_id: str, amount_fen: int, at: datetime,
        req_reserved: str | None, **extra: str,
    ) -> web.Response:  # fmt: skip
        return self._answer(
            fields, wire.RESP_OK, OK_MESSAGE, origRespCode=wire.RESP_OK, origRespMsg=OK_MESSAGE,
            queryId=query_id, traceNo=_trace_no(query_id), **_amounts(amount_fen, at),
            **_reserved(req_reserved), **extra,
        )  # fmt: skip

    # ------------------------------------------------------------------ 文件传输
    async def _file(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, wire.FileRequest)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        fields, ask = accepted
        if (ask.txnType, ask.fileType) != (wire.TXN_FILE, wire.FILE_TYPE_DAILY):
            return self._answer(fields, wire.RESP_NOT_PERMITTED, "无此交易权限")
        day = _settle_day(ask.settleDate, wire.beijing_day(now()))
        if day is None:
            return self._answer(fields, wire.RESP_NO_FILE, "文件不存在")
        mer_id = self._keys.mer_id
        content = wire.pack_file_content({wire.zm_file_name(day, mer_id): self._zm_file(day)})
        return self._answer(
            fields, wire.RESP_OK, OK_MESSAGE, settleDate=ask.settleDate, fileType=ask.fileType,
            fileName=wire.zip_name(day, mer_id), fileContent=content,
        )  # fmt: skip

    def _zm_file(self, day: date) -> bytes:
        lines: list[tuple[datetime, bytes]] = []
        for trade in self._sandbox.trades.values():
            if trade.paid_at is not None and wire.beijing_day(trade.paid_at) == day:
                lines.append((trade.paid_at, wire.encode_zm_line(self._zm_consume(trade))))
            for refund in trade.refunds.values():
                if refund.state == "success" and wire.beijing_day(refund.created_at) == day:
                    line = wire.encode_zm_line(self._zm_refund(trade, refund))
                    lines.append((refund.created_at, line))
        return b"".join(line for _, line in sorted(lines, key=lambda pair: pair[0]))

    def _zm_consume(self, trade: Trade) -> dict[str, str]:
        assert trade.paid_at is not None
        fee_fen = fee_of(trade.amount_fen)
        return {
            **self._zm_common(trade.amount_fen), "tradeNo": wire.TRADE_CODE_CONSUME,
            "traceNo": _trace_no(trade.trade_no), "txnTime": wire.trace_stamp(trade.paid_at),
            "queryId": trade.trade_no, "orderId": trade.out_trade_no,
            "merCharge": wire.signed_amount(fee_fen, credit=False),
            "settleAmt": wire.signed_amount(trade.amount_fen, credit=True),
            "txnType": wire.TXN_CONSUME, "txnSubType": wire.TXN_SUB_CONSUME,
            "settleNetAmt": wire.signed_amount(trade.amount_fen - fee_fen, credit=True),
        }  # fmt: skip

    def _zm_refund(self, trade: Trade, refund: Refund) -> dict[str, str]:
        assert trade.paid_at is not None
        fee_fen = fee_of(refund.amount_fen)  # the fee of the refunded part comes back
        return {
            **self._zm_common(refund.amount_fen), "tradeNo": wire.TRADE_CODE_REFUND,
            "traceNo": _trace_no(refund.refund_no), "txnTime": wire.trace_stamp(refund.created_at),
            "queryId": refund.refund_no, "orderId": refund.out_refund_no,
            "origTraceNo": _trace_no(trade.trade_no),
            "origTxnTime": wire.trace_stamp(trade.paid_at),
            "merCharge": wire.signed_amount(fee_fen, credit=True),
            "settleAmt": wire.signed_amount(refund.amount_fen, credit=False),
            "txnType": wire.TXN_REFUND, "txnSubType": wire.TXN_SUB_DEFAULT,
            "origQryId": trade.trade_no, "origOrderId": trade.out_trade_no,
            "settleNetAmt": wire.signed_amount(refund.amount_fen - fee_fen, credit=False),
        }  # fmt: skip

    def _zm_common(self, amount_fen: int) -> dict[str, str]:
        return {
            "acqInsCode": ACQ_INS_CODE, "sendInsCode": ACQ_INS_CODE, "payCardNo": TEST_CARD,
            "txnAmt": f"{amount_fen:012d}", "merCatCode": MCC_TRANSIT,
            "termType": wire.CHANNEL_TYPE_MOBILE, "payCardType": "01",
            "bizType": wire.BIZ_TYPE_GATEWAY, "accType": "01", "merId": self._keys.mer_id,
        }  # fmt: skip

    # ------------------------------------------------------------------ the exchange
    async def _accept(
        self, request: web.Request, kind: type[M]
    ) -> tuple[dict[str, str], M] | web.StreamResponse:
        """A merchant's request, read, gated (misbehaviours) and verified; or the answer."""
        body = await request.read()  # aiohttp refuses bodies over its client_max_size
        if len(body) > REQUEST_BYTES_MAX:
            return web.Response(status=413, text="too large")
        try:
            fields = wire.decode_form(body)
        except wire.WireError:
            return self._answer({}, wire.RESP_FORMAT, "报文格式错误")
        gate = await self._sandbox.api_gate(fields.get("orderId"))
        if gate is not None:
            return gate
        if not self._merchant_signed(fields):
            return self._answer(fields, wire.RESP_BAD_SIGNATURE, "验证签名失败")
        try:
            return fields, wire.message_from(fields, kind)
        except wire.WireError:
            return self._answer(fields, wire.RESP_MISSING, "报文交易要素缺失")

    def _merchant_signed(self, fields: dict[str, str]) -> bool:
        cert = self._keys.merchant_cert
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        return (
            fields.get("version") == wire.VERSION
            and fields.get("signMethod") == wire.SIGN_METHOD_RSA
            and fields.get("merId") == self._keys.mer_id
            and fields.get("certId") == wire.cert_id(cert)
            and wire.signature_valid(fields, key)
        )

    def _answer(
        self, request: dict[str, str], code: str, message: str, **extra: str
    ) -> web.Response:
        echoed = {name: request[name] for name in ECHOED if _sendable(request.get(name))}
        fields = {
            **echoed, "version": wire.VERSION, "encoding": wire.ENCODING,
            "signMethod": wire.SIGN_METHOD_RSA, "respCode": code, "respMsg": message, **extra,
            "signPubKeyCert": self._keys.stored["sign_cert_pem"],
        }  # fmt: skip
        signed = wire.sign(dict(sorted(fields.items())), self._keys.sign_key)
        return web.Response(
            body=wire.encode_answer(signed), content_type="text/plain", charset="utf-8"
        )

    def _notice_header(self, txn_type: str, txn_sub_type: str) -> dict[str, str]:
        return {
            "version": wire.VERSION, "encoding": wire.ENCODING,
            "signMethod": wire.SIGN_METHOD_RSA, "txnType": txn_type,
            "txnSubType": txn_sub_type, "bizType": wire.BIZ_TYPE_GATEWAY,
            "accessType": wire.ACCESS_TYPE_MERCHANT, "merId": self._keys.mer_id,
            "signPubKeyCert": self._keys.stored["sign_cert_pem"],
        }  # fmt: skip

    def _outgoing(self, url: str, fields: dict[str, str], tamper: bool) -> Outgoing:
        signed = wire.sign(dict(sorted(fields.items())), self._keys.sign_key)
        if tamper:
            signature = bytearray(base64.b64decode(signed["signature"]))
            signature[0] ^= 0x01
            signed["signature"] = base64.b64encode(bytes(signature)).decode("ascii")
        return Outgoing(url, wire.encode_form(signed), {"Content-Type": wire.FORM_CONTENT_TYPE})


# ---------------------------------------------------------------------- checks and numbers
def _check_consume(consume: wire.AppConsumeRequest) -> tuple[int, datetime | None]:
    expected = (wire.TXN_CONSUME, wire.TXN_SUB_CONSUME, wire.BIZ_TYPE_GATEWAY, wire.CURRENCY_CNY)
    if (consume.txnType, consume.txnSubType, consume.bizType, consume.currencyCode) != expected:
        raise wire.WireError("not an app consume")
    wire.parse_stamp(consume.txnTime)
    amount_fen = fen_from_text(consume.txnAmt)
    if amount_fen <= 0 or not consume.backUrl.startswith(("http://", "https://")):
        raise wire.WireError("no amount or no backUrl")
    _check_order_id(consume.orderId)
    return amount_fen, wire.parse_stamp(consume.payTimeout) if consume.payTimeout else None


def _check_refund(back: wire.RefundRequest) -> int:
    wire.parse_stamp(back.txnTime)
    _check_order_id(back.orderId)
    amount_fen = fen_from_text(back.txnAmt)
    if amount_fen <= 0 or not back.backUrl.startswith(("http://", "https://")):
        raise wire.WireError("no amount or no backUrl")
    return amount_fen


def _check_order_id(order_id: str) -> None:
    if not (8 <= len(order_id) <= 40 and order_id.isascii() and order_id.isalnum()):
        raise wire.WireError("orderId is 8 to 40 letters and digits")


def _sendable(value: str | None) -> bool:
    return value is not None and "&" not in value


def _reserved(req_reserved: str | None) -> dict[str, str]:
    return {"reqReserved": req_reserved} if _sendable(req_reserved) and req_reserved else {}


def _amounts(amount_fen: int, at: datetime) -> dict[str, str]:
    return {
        "txnAmt": str(amount_fen), "currencyCode": wire.CURRENCY_CNY,
        "settleAmt": str(amount_fen), "settleCurrencyCode": wire.CURRENCY_CNY,
        "traceTime": wire.trace_stamp(at), "settleDate": f"{wire.beijing_day(at):%m%d}",
    }  # fmt: skip


def _expire(trade: Trade) -> None:
    """An unpaid order ends at its payTimeout."""
    if trade.state == "waiting" and trade.expires_at is not None and now() >= trade.expires_at:
        trade.state = "closed"


def _settle_day(mmdd: str, today: date) -> date | None:
    """The latest day not after today with this month and day."""
    if len(mmdd) != 4 or not mmdd.isdigit():
        return None
    for year in (today.year, today.year - 1):
        try:
            day = date(year, int(mmdd[:2]), int(mmdd[2:]))
        except ValueError:
            continue
        if day <= today:
            return day
    return None


def fee_of(amount_fen: int) -> int:
    """The channel's fee on an amount: FEE_PER_MILLE, half up to the fen."""
    return (amount_fen * FEE_PER_MILLE + 500) // 1000


def _digits(count: int) -> str:
    return str(secrets.randbelow(10**count)).zfill(count)


def _query_id() -> str:
    """A queryId: 21 digits, as UnionPay's."""
    return wire.stamp(now())[2:] + _digits(9)


def _trace_no(query_id: str) -> str:
    return query_id[-6:]


# ---------------------------------------------------------------------- keys
def _make_keys() -> dict[str, str]:
    """A root and a middle CA (CFCA's place), UnionPay's signing certificate and the test
    merchant's certificate, all as a developer console would hand them out."""
    root_key, middle_key, sign_key, merchant_key = (_rsa() for _ in range(4))
    root = _certificate("CFCA SANDBOX ROOT", None, root_key, root_key, ca=True)
    middle = _certificate("CFCA SANDBOX OCA1", root, middle_key, root_key, ca=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    sign = _certificate(f"041@Z{stamp}@{wire.UNIONPAY_CN_NAME}@00000001", middle, sign_key,
                        middle_key, ca=False)  # fmt: skip
    mer_id = "777290058" + _digits(6)
    merchant = _certificate(f"041@Z{stamp}@{mer_id}@00000001", middle, merchant_key,
                            middle_key, ca=False)  # fmt: skip
    return {
        "mer_id": mer_id,
        "root_cert_pem": _pem(root),
        "middle_cert_pem": _pem(middle),
        "sign_key_pem": _key_pem(sign_key),
        "sign_cert_pem": _pem(sign),
        "merchant_key_pem": _key_pem(merchant_key),
        "merchant_cert_pem": _pem(merchant),
        "merchant_pfx_base64": _pfx(merchant_key, merchant),
    }


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _certificate(
    common_name: str, issuer: x509.Certificate | None, key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey, ca: bool,
) -> x509.Certificate:  # fmt: skip
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CFCA SANDBOX"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])  # fmt: skip
    start = datetime.now(UTC) - timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        # An 11-digit serial, like UnionPay's certIds.
        .serial_number(10**10 + secrets.randbelow(9 * 10**10))
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=CA_DAYS if ca else LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(ca), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=not ca, key_encipherment=not ca,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")  # fmt: skip


def _pfx(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> str:
    # 3DES and SHA-1: the PFX form that UnionPay's older SDKs (Java 8, pyOpenSSL) still read.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())  # noqa: S303 - the MAC of a PFX, for old readers
        .build(PFX_PASSWORD.encode())
    )
    pfx = pkcs12.serialize_key_and_certificates(b"sandbox", key, cert, None, encryption)
    return base64.b64encode(pfx).decode("ascii")
