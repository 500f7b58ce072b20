"""The WeChat Pay sandbox: API v3 merchant routes for APP payments, platform public key mode.

A merchant's own SDK (wechatpayv3 with `public_key`/`public_key_id`) works against it unchanged
but for the base URL. It speaks `gateway.channels.wechatpay_wire`, the connector's own wire
definitions, and follows WeChat's published behaviour:

- `POST /v3/pay/transactions/app` creates the trade and answers a prepay id (a new one for each
  repeat of the same order; `ORDERPAID`, `ORDER_CLOSED` or `201 商户订单号重复` otherwise);
- `GET /v3/pay/transactions/out-trade-no/{no}?mchid=` and `GET /v3/pay/transactions/id/{id}`
  answer the transaction (`404 ORDER_NOT_EXIST` when there is none);
- `POST .../out-trade-no/{no}/close` answers 204 (also for a trade it does not know, as WeChat
  does; `ORDERPAID` for a paid one);
- `POST /v3/refund/domestic/refunds` accepts a refund (status PROCESSING), settles it at once
  and posts `REFUND.SUCCESS` to its notify_url; `GET /v3/refund/domestic/refunds/{no}` answers
  it; over-refunds are `INVALID_REQUEST 申请退款金额超过订单可退金额`;
- `GET /v3/bill/tradebill` answers a download URL and the bill's SHA1; `GET
  /v3/billdownload/file` serves the ALL/SUCCESS/REFUND trade bill (gzip on request), the one
  answer WeChat does not sign. Fees: 0.60 % per payment, rounded half up to the fen; a refund
  gives back its share, never more than the payment's fee.

Every request must carry a valid merchant signature (`401 SIGN_ERROR` otherwise); every answer
but the bill file is signed with the platform key, `Wechatpay-Serial` its public key id.
Notifications are `TRANSACTION.SUCCESS` / `REFUND.SUCCESS`, AEAD_AES_256_GCM under the APIv3
key; WeChat stops resending on 200 or 204.

Liberties a sandbox takes: notify URLs may be plain http; a day's bill is ready at once (WeChat
makes it the next morning); it keeps no nonce history; WeChat only ever notifies successes, so
the stale notification of the out-of-order misbehaviour carries `trade_state` NOTPAY. Left out:
JSAPI/H5/Native/combined payments, transaction ids in refunds' place, the fund flow bill,
`/v3/certificates` (platform public key mode needs none), refunds that fail or stay ABNORMAL.

It never logs a key; keys live in the sandbox's data directory (mode 0600).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from gateway.channels import wechatpay_wire as wire
from gateway.channels.money import InexactAmount
from gateway.channels.sandbox.base import (
    ChannelSandbox,
    Misbehaviour,
    Outgoing,
    Refund,
    Sandbox,
    Trade,
    new_number,
    now,
)

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
FEE_RATE_BP = 60  # 0.60 %, in basis points
BP_PER_UNIT = 10_000
PREPAY_VALID = timedelta(hours=2)
TRADE_VALID_DEFAULT = timedelta(days=7)  # without time_expire, a trade is payable for a week
TRADE_VALID_MIN = timedelta(minutes=1)  # an earlier time_expire is moved to one minute
BILL_URL_VALID = timedelta(minutes=5)
BILLS_KEPT_MAX = 64
REFUND_NOTIFY_DELAY_S = 0.05
DESCRIPTION_CHARS_MAX = 127
NOTIFY_URL_CHARS_MAX = 255
REASON_CHARS_MAX = 80
ATTACH_CHARS_MAX = 128
RECEIVED_ACCOUNT = "支付用户零钱"

_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_\-|*]{6,32}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
_BILL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_BILL_TYPES = ("ALL", "SUCCESS", "REFUND")
_TRADE_STATE_DESC = {
    "SUCCESS": "支付成功", "REFUND": "转入退款", "NOTPAY": "未支付", "CLOSED": "已关闭",
}  # fmt: skip
_REFUND_STATUS = {"success": "SUCCESS", "processing": "PROCESSING", "failed": "CLOSED"}

Message = TypeVar("Message", bound=msgspec.Struct)
Handler = Callable[[web.Request, bytes], web.Response]


class _Refusal(Exception):
    """An error answer in WeChat's shape: `{"code": ..., "message": ...}` with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message


def _param_error(message: str = "参数错误") -> _Refusal:
    return _Refusal(400, "PARAM_ERROR", message)


# ---------------------------------------------------------------------- keys
def _pem_private(key: RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip


def _pem_public(key: RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _make_keys() -> dict[str, str]:
    """What the merchant platform issues a test merchant, and the platform's own key pair."""
    merchant = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, RSA_KEY_BITS)
    platform = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, RSA_KEY_BITS)
    alphabet = string.ascii_letters + string.digits
    return {
        "mchid": "19" + str(secrets.randbelow(10**8)).zfill(8),
        "appid": "wx" + secrets.token_hex(8),
        "merchant_serial_no": secrets.token_hex(20).upper(),
        "merchant_private_key_pem": _pem_private(merchant),
        "apiv3_key": "".join(secrets.choice(alphabet) for _ in range(wire.APIV3_KEY_BYTES)),
        "platform_public_key_id": "PUB_KEY_ID_" + secrets.token_hex(16).upper(),
        "platform_private_key_pem": _pem_private(platform),
    }


@dataclass(frozen=True)
class _Keys:
    mchid: str
    appid: str
    merchant_serial_no: str
    merchant_private_key_pem: str
    merchant_public_key: RSAPublicKey
    apiv3_key: bytes
    platform_key: RSAPrivateKey
    platform_public_key_id: str

    @classmethod
    def of(cls, stored: dict[str, str]) -> _Keys:
        merchant = serialization.load_pem_private_key(
            stored["merchant_private_key_pem"].encode(), None
        )
        platform = serialization.load_pem_private_key(
            stored["platform_private_key_pem"].encode(), None
        )
        assert isinstance(merchant, RSAPrivateKey) and isinstance(platform, RSAPrivateKey)
        return cls(
            stored["mchid"], stored["appid"], stored["merchant_serial_no"],
            stored["merchant_private_key_pem"], merchant.public_key(),
            stored["apiv3_key"].encode(), platform, stored["platform_public_key_id"],
        )  # fmt: skip


@dataclass(frozen=True)
class _Bill:
    data: bytes  # the bill file, uncompressed (its SHA1 is in the signed answer)
    gzipped: bool
    expires_at: datetime


def make(sandbox: Sandbox) -> ChannelSandbox:
    return WeChatPaySandbox(sandbox)


class WeChatPaySandbox:
    name = "wechatpay"

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._keys = _Keys.of(sandbox.keys("wechatpay", _make_keys))
        self._prepays: dict[str, tuple[str, datetime]] = {}  # id -> (out_trade_no, issued at)
        self._bills: dict[str, _Bill] = {}  # download token -> bill

    # ------------------------------------------------------------------ ChannelSandbox
    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v3/pay/transactions/app", self._prepay),
            web.get("/v3/pay/transactions/out-trade-no/{out_trade_no}", self._query),
            web.get("/v3/pay/transactions/id/{transaction_id}", self._query_by_id),
            web.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", self._close),
            web.post("/v3/refund/domestic/refunds", self._refund),
            web.get("/v3/refund/domestic/refunds/{out_refund_no}", self._refund_query),
            web.get("/v3/bill/tradebill", self._trade_bill),
            web.get("/v3/billdownload/file", self._download_bill),
        ]

    def credentials(self, base_url: str) -> dict[str, Any]:
        k = self._keys
        return {
            "mchid": k.mchid, "appid": k.appid, "merchant_serial_no": k.merchant_serial_no,
            "merchant_private_key_pem": k.merchant_private_key_pem,
            "apiv3_key": k.apiv3_key.decode(),
            "platform_public_key_id": k.platform_public_key_id,
            "platform_public_key_pem": _pem_public(k.platform_key.public_key()),
            "base_url": base_url,
        }  # fmt: skip

    def trade_for_token(self, token: str) -> Trade:
        """The trade of a prepay id, or of the app payment parameters (`appid=...&sign=...`,
        whose signature the WeChat app checks as it opens the payment)."""
        prepay_id = self._verified_app_params(token) if "prepayid=" in token else token
        issued = self._prepays.get(prepay_id)
        if issued is None:
            raise ValueError("no such prepay_id")
        out_trade_no, issued_at = issued
        if now() - issued_at > PREPAY_VALID:
            raise ValueError("the prepay_id has expired")
        trade = self._sandbox.trades[out_trade_no]
        self._expire(trade)
        return trade

    def _verified_app_params(self, token: str) -> str:
        k = self._keys
        params = dict(parse_qsl(token, keep_blank_values=True))
        try:
            message = wire.app_pay_message(
                params["appid"], params["timestamp"], params["noncestr"], params["prepayid"]
            )
            signed = wire.verify(k.merchant_public_key, message, params["sign"])
        except KeyError as exc:
            raise ValueError("incomplete app payment parameters") from exc
        if not (signed and params["appid"] == k.appid and params.get("partnerid") == k.mchid
                and params.get("package") == wire.APP_PACKAGE):  # fmt: skip
            raise ValueError("the app payment parameters do not verify")
        return params["prepayid"]

    def payment_notification(self, trade: Trade, amount_fen: int, tamper: bool) -> Outgoing:
        resource = wire.encode(self._transaction(trade, amount_fen))
        return self._outgoing(
            trade.notify_url, "TRANSACTION.SUCCESS", "支付成功", "transaction", resource, tamper
        )

    def is_ack(self, status: int, body: bytes) -> bool:
        return status in (200, 204)

    # ------------------------------------------------------------------ serving
    async def _serve(self, request: web.Request, hint: str | None, handle: Handler) -> (
        web.Response
    ):  # fmt: skip
        """Misbehave as configured, check the merchant's signature, then answer signed."""
        body = await request.read()
        gated = await self._sandbox.api_gate(hint)
        if gated is not None:
            return gated
        try:
            self._authenticate(request, body)
            return handle(request, body)
        except _Refusal as refusal:
            error = wire.ErrorAnswer(refusal.code, refusal.message)
            return self._answer(refusal.status, wire.encode(error))

    def _authenticate(self, request: web.Request, body: bytes) -> None:
        try:
            auth = wire.parse_authorization(request.headers.get("Authorization", ""))
        except ValueError:
            raise _Refusal(401, "SIGN_ERROR", "Http头Authorization值格式错误") from None
        k = self._keys
        if not (
            auth.mchid == k.mchid  # ids, not secrets: the signature is the check
            and auth.serial_no.upper() == k.merchant_serial_no
            and wire.fresh(auth.timestamp, now())
            and wire.well_formed_nonce(auth.nonce_str)
            and wire.verify(
                k.merchant_public_key,
                wire.request_message(
                    request.method, request.raw_path, auth.timestamp, auth.nonce_str, body
                ),
                auth.signature,
            )
        ):
            raise _Refusal(401, "SIGN_ERROR", "错误的签名,验签失败")

    def _answer(self, status: int, body: bytes = b"") -> web.Response:
        k = self._keys
        headers = wire.answer_headers(
            k.platform_key, k.platform_public_key_id, body, now(), secrets.token_hex(16).upper()
        )
        headers["Request-ID"] = str(uuid.uuid4())
        if not body:
            return web.Response(status=status, headers=headers)
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json",
            charset="utf-8",
        )  # fmt: skip

    def _json(self, message: msgspec.Struct) -> web.Response:
        return self._answer(200, wire.encode(message))

    # ------------------------------------------------------------------ routes
    async def _prepay(self, request: web.Request) -> web.Response:
        return await self._serve(request, await _body_hint(request), self._answer_prepay)

    async def _query(self, request: web.Request) -> web.Response:
        out_trade_no = request.match_info["out_trade_no"]
        return await self._serve(request, out_trade_no, self._answer_query)

    async def _query_by_id(self, request: web.Request) -> web.Response:
        trade = self._paid_trade(request.match_info["transaction_id"])
        hint = trade.out_trade_no if trade else None
        return await self._serve(request, hint, self._answer_query_by_id)

    async def _close(self, request: web.Request) -> web.Response:
        out_trade_no = request.match_info["out_trade_no"]
        return await self._serve(request, out_trade_no, self._answer_close)

    async def _refund(self, request: web.Request) -> web.Response:
        return await self._serve(request, await _body_hint(request), self._answer_refund)

    async def _refund_query(self, request: web.Request) -> web.Response:
        found = self._find_refund(request.match_info["out_refund_no"])
        hint = found[0].out_trade_no if found else None
        return await self._serve(request, hint, self._answer_refund_query)

    async def _trade_bill(self, request: web.Request) -> web.Response:
        return await self._serve(request, None, self._answer_trade_bill)

    async def _download_bill(self, request: web.Request) -> web.Response:
        return await self._serve(request, None, self._answer_download)

    # ------------------------------------------------------------------ payments
    def _answer_prepay(self, request: web.Request, body: bytes) -> web.Response:
        order = _decode(body, wire.PrepayRequest)
        self._check_merchant(order.mchid, order.appid)
        amount_fen = _amount(order.amount.total)
        _check_order(order)
        if self._sandbox.refuses_create(order.out_trade_no):
            raise _Refusal(403, "NO_AUTH", "商户无此接口权限")
        trade = self._sandbox.trades.get(order.out_trade_no)
        if trade is None:
            trade = self._new_trade(order, amount_fen)
        else:
            self._check_repeat(trade, order, amount_fen)
        prepay_id = "wx" + now().astimezone(wire.CHINA).strftime("%Y%m%d%H%M%S")
        prepay_id += secrets.token_hex(11)
        self._prepays[prepay_id] = (trade.out_trade_no, now())
        return self._json(wire.PrepayAnswer(prepay_id))

    def _new_trade(self, order: wire.PrepayRequest, amount_fen: int) -> Trade:
        created_at = now()
        expires_at = created_at + TRADE_VALID_DEFAULT
        if order.time_expire is not None:
            expires_at = max(_time(order.time_expire), created_at + TRADE_VALID_MIN)
        trade = Trade(
            order.out_trade_no, new_number("4200"), amount_fen, order.description,
            order.notify_url, "waiting", created_at, expires_at,
            extra={"appid": order.appid, "attach": order.attach or ""},
        )  # fmt: skip
        self._sandbox.trades[trade.out_trade_no] = trade
        return trade

    def _check_repeat(self, trade: Trade, order: wire.PrepayRequest, amount_fen: int) -> None:
        """A repeat of the same order gets a new prepay id; anything else is refused."""
        self._expire(trade)
        if trade.state in ("paid", "refunded"):
            raise _Refusal(400, "ORDERPAID", "该订单已支付")
        if trade.state == "closed":
            raise _Refusal(400, "ORDER_CLOSED", "订单已关闭")
        if (trade.amount_fen, trade.subject, trade.notify_url) != (
            amount_fen, order.description, order.notify_url,
        ):  # fmt: skip
            raise _Refusal(400, "INVALID_REQUEST", "201 商户订单号重复")

    def _answer_query(self, request: web.Request, body: bytes) -> web.Response:
        self._check_mchid_param(request)
        trade = self._sandbox.trades.get(request.match_info["out_trade_no"])
        if trade is None:
            raise _Refusal(404, "ORDER_NOT_EXIST", "订单不存在")
        self._expire(trade)
        return self._json(self._transaction(trade, trade.amount_fen))

    def _answer_query_by_id(self, request: web.Request, body: bytes) -> web.Response:
        self._check_mchid_param(request)
        trade = self._paid_trade(request.match_info["transaction_id"])
        if trade is None:
            raise _Refusal(404, "ORDER_NOT_EXIST", "订单不存在")
        return self._json(self._transaction(trade, trade.amount_fen))

    def _answer_close(self, request: web.Request, body: bytes) -> web.Response:
        self._check_merchant(_decode(body, wire.CloseRequest).mchid)
        trade = self._sandbox.trades.get(request.match_info["out_trade_no"])
        if trade is not None:
            self._expire(trade)
            if trade.state in ("paid", "refunded"):
                raise _Refusal(400, "ORDERPAID", "订单已支付")
            trade.state = "closed"
        return self._answer(204)

    def _transaction(self, trade: Trade, amount_fen: int) -> wire.Transaction:
        """The transaction as WeChat shows it; paid-only fields appear once it is paid."""
        state = _trade_state(trade)
        paid_at = trade.paid_at if state in ("SUCCESS", "REFUND") else None
        paid = paid_at is not None
        total = wire.fen_raw(amount_fen)
        return wire.Transaction(
            mchid=self._keys.mchid, out_trade_no=trade.out_trade_no, trade_state=state,
            trade_state_desc=_TRADE_STATE_DESC[state], appid=trade.extra.get("appid"),
            attach=trade.extra.get("attach") or None,
            transaction_id=trade.trade_no if paid else None,
            trade_type="APP" if paid else None, bank_type="OTHERS" if paid else None,
            success_time=wire.wechat_time(paid_at) if paid_at is not None else None,
            payer=wire.Payer(_openid(trade)) if paid else None,
            amount=wire.Amount(
                total=total, currency=wire.CURRENCY, payer_total=total if paid else wire.ABSENT,
                payer_currency=wire.CURRENCY if paid else None,
            ),
        )  # fmt: skip

    def _paid_trade(self, transaction_id: str) -> Trade | None:
        for trade in self._sandbox.trades.values():
            if trade.trade_no == transaction_id and trade.paid_at is not None:
                return trade
        return None

    def _expire(self, trade: Trade) -> None:
        """An unpaid trade past its time_expire is closed, as WeChat closes it."""
        if trade.state == "waiting" and trade.expires_at and now() >= trade.expires_at:
            trade.state = "closed"

    def _check_merchant(self, mchid: str, appid: str | None = None) -> None:
        if mchid != self._keys.mchid:
            raise _Refusal(400, "MCH_NOT_EXISTS", "商户号不存在")
        if appid is not None and appid != self._keys.appid:
            raise _Refusal(400, "APPID_MCHID_NOT_MATCH", "AppID和mch_id不匹配")

    def _check_mchid_param(self, request: web.Request) -> None:
        mchid = request.query.get("mchid")
        if mchid is None:
            raise _param_error("输入源“/mchid”映射到值字段“直连商户号”字符串规则校验失败")
        self._check_merchant(mchid)

    # ------------------------------------------------------------------ refunds
    def _answer_refund(self, request: web.Request, body: bytes) -> web.Response:
        order = _decode(body, wire.RefundRequest)
        trade = self._refund_trade(order)
        refund_fen, total_fen = _amount(order.amount.refund), _amount(order.amount.total)
        _check_refund(order)
        found = self._find_refund(order.out_refund_no)
        if found is not None:
            return self._repeat_refund(trade, found, refund_fen)
        if total_fen != trade.amount_fen:
            raise _Refusal(400, "INVALID_REQUEST", "订单金额与原订单金额不一致")
        if trade.state not in ("paid", "refunded"):
            raise _Refusal(400, "INVALID_REQUEST", "订单未支付,不能发起退款")
        if refund_fen > trade.amount_fen - trade.refunded_fen:
            raise _Refusal(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        # The buyer's balance takes a refund at once: it is settled now and answered as
        # accepted (PROCESSING), as the create answer says; a query then shows SUCCESS.
        refund = Refund(
            order.out_refund_no, new_number("50300"), refund_fen, "success", now(),
            order.notify_url,
        )  # fmt: skip
        trade.refunds[refund.out_refund_no] = refund
        if trade.refunded_fen == trade.amount_fen:
            trade.state = "refunded"
        self._notify_refund(trade, refund)
        return self._json(self._refund_view(trade, refund, "PROCESSING"))

    def _repeat_refund(self, trade: Trade, found: tuple[Trade, Refund], refund_fen: int) -> (
        web.Response
    ):  # fmt: skip
        """The same out_refund_no again refunds once: the same refund, or a refusal."""
        owner, refund = found
        if owner is not trade or refund.amount_fen != refund_fen:
            raise _Refusal(400, "INVALID_REQUEST", "退款单号已存在,请求参数与原退款单不一致")
        return self._json(self._refund_view(trade, refund))

    def _refund_trade(self, order: wire.RefundRequest) -> Trade:
        if order.out_trade_no is not None:
            trade = self._sandbox.trades.get(order.out_trade_no)
        elif order.transaction_id is not None:
            trade = self._paid_trade(order.transaction_id)
        else:
            raise _param_error("transaction_id和out_trade_no必须二选一进行传参")
        if trade is None:
            raise _Refusal(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        return trade

    def _answer_refund_query(self, request: web.Request, body: bytes) -> web.Response:
        found = self._find_refund(request.match_info["out_refund_no"])
        if found is None:
            raise _Refusal(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return self._json(self._refund_view(*found))

    def _find_refund(self, out_refund_no: str) -> tuple[Trade, Refund] | None:
        for trade in self._sandbox.trades.values():
            refund = trade.refunds.get(out_refund_no)
            if refund is not None:
                return trade, refund
        return None

    def _refund_view(self, trade: Trade, refund: Refund, status: str | None = None) -> (
        wire.Refund
    ):  # fmt: skip
        status = status or _REFUND_STATUS[refund.state]
        return wire.Refund(
            refund_id=refund.refund_no, out_refund_no=refund.out_refund_no,
            transaction_id=trade.trade_no, out_trade_no=trade.out_trade_no, status=status,
            amount=self._refund_amount(trade, refund, with_currency=True),
            create_time=wire.wechat_time(refund.created_at),
            user_received_account=RECEIVED_ACCOUNT, funds_account="AVAILABLE",
            success_time=wire.wechat_time(refund.created_at) if status == "SUCCESS" else None,
        )  # fmt: skip

    def _refund_amount(self, trade: Trade, refund: Refund, with_currency: bool) -> (
        wire.RefundAmount
    ):  # fmt: skip
        total, amount = wire.fen_raw(trade.amount_fen), wire.fen_raw(refund.amount_fen)
        return wire.RefundAmount(
            total=total, refund=amount, payer_total=total, payer_refund=amount,
            currency=wire.CURRENCY if with_currency else None,
        )  # fmt: skip

    def _notify_refund(self, trade: Trade, refund: Refund) -> None:
        """`REFUND.SUCCESS` to the refund's notify_url (none given: none sent)."""
        behaviour = self._sandbox.behaviour(trade.out_trade_no)
        if refund.notify_url is None or Misbehaviour.NO_NOTIFY in behaviour.kinds:
            return
        resource = wire.RefundResource(
            mchid=self._keys.mchid, out_trade_no=trade.out_trade_no,
            transaction_id=trade.trade_no, refund_id=refund.refund_no,
            out_refund_no=refund.out_refund_no, refund_status="SUCCESS",
            amount=self._refund_amount(trade, refund, with_currency=False),
            user_received_account=RECEIVED_ACCOUNT,
            success_time=wire.wechat_time(refund.created_at),
        )  # fmt: skip
        outgoing = self._outgoing(
            refund.notify_url, "REFUND.SUCCESS", "退款成功", "refund", wire.encode(resource),
            Misbehaviour.TAMPERED in behaviour.kinds,
        )  # fmt: skip
        self._sandbox.send_later([outgoing], REFUND_NOTIFY_DELAY_S)

    # ------------------------------------------------------------------ notifications
    def _outgoing(
        self, url: str, event_type: str, summary: str, original_type: str, plaintext: bytes,
        tamper: bool,
    ) -> Outgoing:  # fmt: skip
        """A signed notification; tampered: its body changed after signing, as a forger would."""
        k = self._keys
        nonce = "".join(secrets.choice(string.ascii_letters + string.digits)
                        for _ in range(wire.AEAD_NONCE_CHARS))  # fmt: skip
        resource = wire.EncryptedResource(
            wire.AEAD_ALGORITHM, wire.seal(k.apiv3_key, plaintext, original_type, nonce), nonce,
            associated_data=original_type, original_type=original_type,
        )  # fmt: skip
        envelope = wire.NotifyEnvelope(
            str(uuid.uuid4()), wire.wechat_time(now()), event_type, wire.ENCRYPT_RESOURCE,
            summary, resource,
        )  # fmt: skip
        body = wire.encode(envelope)
        headers = wire.answer_headers(
            k.platform_key, k.platform_public_key_id, body, now(), secrets.token_hex(16).upper()
        )
        headers["Content-Type"] = "application/json"
        if tamper:
            body = wire.encode(msgspec.structs.replace(envelope, summary=summary + "!"))
        return Outgoing(url, body, headers)

    # ------------------------------------------------------------------ bills
    def _answer_trade_bill(self, request: web.Request, body: bytes) -> web.Response:
        day = _bill_date(request.query.get("bill_date", ""))
        bill_type = request.query.get("bill_type", "ALL")
        tar_type = request.query.get("tar_type")
        if bill_type not in _BILL_TYPES or tar_type not in (None, "GZIP"):
            raise _param_error()
        rows = [row for row in self._bill_rows(day) if _in_bill(row, bill_type)]
        if not rows:
            raise _Refusal(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
        data = wire.format_bill(rows)
        token = secrets.token_urlsafe(24)
        self._keep_bill(token, _Bill(data, tar_type == "GZIP", now() + BILL_URL_VALID))
        origin = f"{request.scheme}://{request.host}"
        return self._json(
            wire.TradeBillAnswer(
                hash_type="SHA1",
                hash_value=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                download_url=f"{origin}/v3/billdownload/file?token={token}",
            )
        )

    def _keep_bill(self, token: str, bill: _Bill) -> None:
        for old in [t for t, b in self._bills.items() if b.expires_at <= now()]:
            del self._bills[old]
        while len(self._bills) >= BILLS_KEPT_MAX:
            del self._bills[next(iter(self._bills))]
        self._bills[token] = bill

    def _answer_download(self, request: web.Request, body: bytes) -> web.Response:
        bill = self._bills.get(request.query.get("token", ""))
        if bill is None or bill.expires_at <= now():
            raise _Refusal(400, "INVALID_REQUEST", "账单下载地址已失效,请重新申请")
        data = gzip.compress(bill.data, mtime=0) if bill.gzipped else bill.data
        return web.Response(body=data, content_type="application/octet-stream")  # unsigned

    def _bill_rows(self, day: date) -> list[wire.BillRow]:
        """The day's payments (by success time) and refunds (by acceptance time), in order."""
        rows: list[wire.BillRow] = []
        for trade in self._sandbox.trades.values():
            if trade.paid_at is None:
                continue
            fee_left = _fee(trade.amount_fen)
            if wire.bill_day(trade.paid_at) == day:
                rows.append(self._payment_row(trade, fee_left))
            for refund in sorted(trade.refunds.values(), key=lambda r: r.created_at):
                if refund.state == "failed":
                    continue
                fee_back = min(_fee(refund.amount_fen), fee_left)
                fee_left -= fee_back
                if wire.bill_day(refund.created_at) == day:
                    rows.append(self._refund_row(trade, refund, fee_back))
        return sorted(rows, key=lambda row: row.at)

    def _payment_row(self, trade: Trade, fee_fen: int) -> wire.BillRow:
        assert trade.paid_at is not None
        return wire.BillRow(
            at=trade.paid_at, appid=trade.extra.get("appid", ""), mchid=self._keys.mchid,
            transaction_id=trade.trade_no, out_trade_no=trade.out_trade_no,
            openid=_openid(trade), trade_type="APP", trade_state="SUCCESS", bank_type="OTHERS",
            settlement_fen=trade.amount_fen, refund_id="0", out_refund_no="0", refund_fen=0,
            refund_type="", refund_status="", description=_bill_text(trade.subject),
            attach=_bill_text(trade.extra.get("attach", "")), fee_fen=fee_fen, rate=_RATE,
            total_fen=trade.amount_fen, refund_requested_fen=0,
        )  # fmt: skip

    def _refund_row(self, trade: Trade, refund: Refund, fee_back_fen: int) -> wire.BillRow:
        return wire.BillRow(
            at=refund.created_at, appid=trade.extra.get("appid", ""), mchid=self._keys.mchid,
            transaction_id=trade.trade_no, out_trade_no=trade.out_trade_no,
            openid=_openid(trade), trade_type="APP", trade_state="REFUND", bank_type="OTHERS",
            settlement_fen=0, refund_id=refund.refund_no, out_refund_no=refund.out_refund_no,
            refund_fen=refund.amount_fen, refund_type="ORIGINAL",
            refund_status=_REFUND_STATUS[refund.state], description=_bill_text(trade.subject),
            attach=_bill_text(trade.extra.get("attach", "")), fee_fen=-fee_back_fen,
            rate=_RATE, total_fen=0, refund_requested_fen=refund.amount_fen,
        )  # fmt: skip


# ---------------------------------------------------------------------- helpers
_RATE = f"{FEE_RATE_BP // 100}.{FEE_RATE_BP % 100:02d}%"


def _fee(amount_fen: int) -> int:
    """The channel's fee on an amount, rounded half up to the fen (四舍五入)."""
    return (amount_fen * FEE_RATE_BP + BP_PER_UNIT // 2) // BP_PER_UNIT


def _in_bill(row: wire.BillRow, bill_type: str) -> bool:
    return bill_type == "ALL" or (row.trade_state == "SUCCESS") == (bill_type == "SUCCESS")


def _bill_text(text: str) -> str:
    """Free text as the bill can hold it: no separator, back quote or line break."""
    return "".join(" " if ch in ",`\r\n" else ch for ch in text)


def _openid(trade: Trade) -> str:
    """The buyer's stable id under the trade's app (WeChat's openid: per app, per user)."""
    digest = hashlib.sha256(f"{trade.extra.get('appid')}:{trade.payer}".encode()).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode()[:27]


def _trade_state(trade: Trade) -> str:
    if trade.state == "waiting":
        return "NOTPAY"
    if trade.state == "closed":
        return "CLOSED"
    return "REFUND" if trade.refunds else "SUCCESS"


async def _body_hint(request: web.Request) -> str | None:
    """The out_trade_no a body names, read loosely, for misbehaviours set per trade."""
    try:
        value = msgspec.json.decode(await request.read()).get("out_trade_no")
    except (msgspec.DecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _decode(body: bytes, kind: type[Message]) -> Message:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise _param_error(f"参数错误: {exc}") from exc


def _amount(raw: msgspec.Raw) -> int:
    try:
        fen = wire.fen_of(raw)
    except InexactAmount:
        raise _param_error("金额必须为整数,单位为分") from None
    if fen <= 0:
        raise _param_error("金额必须大于0")
    return fen


def _time(text: str) -> datetime:
    try:
        return wire.parse_time(text)
    except ValueError:
        raise _param_error("time_expire 不是 rfc3339 格式") from None


def _check_order(order: wire.PrepayRequest) -> None:
    if order.amount.currency not in (None, wire.CURRENCY):
        raise _param_error("境内商户号仅支持人民币")
    if not _OUT_TRADE_NO.match(order.out_trade_no):
        raise _param_error("out_trade_no 格式错误")
    if not 0 < len(order.description) <= DESCRIPTION_CHARS_MAX:
        raise _param_error("description 长度错误")
    if len(order.attach or "") > ATTACH_CHARS_MAX:
        raise _param_error("attach 长度错误")
    _check_notify_url(order.notify_url)


def _check_refund(order: wire.RefundRequest) -> None:
    if order.amount.currency != wire.CURRENCY:
        raise _param_error("境内商户号仅支持人民币")
    if not _OUT_REFUND_NO.match(order.out_refund_no):
        raise _param_error("out_refund_no 格式错误")
    if len(order.reason or "") > REASON_CHARS_MAX:
        raise _param_error("reason 长度错误")
    if order.notify_url is not None:
        _check_notify_url(order.notify_url)


def _check_notify_url(url: str) -> None:
    """A full URL without a query string (the sandbox also takes plain http)."""
    if not url.startswith(("https://", "http://")) or "?" in url or len(url) > NOTIFY_URL_CHARS_MAX:
        raise _param_error("notify_url 格式错误")


def _bill_date(text: str) -> date:
    if not _BILL_DATE.match(text):
        raise _param_error("bill_date 格式错误")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise _param_error("bill_date 格式错误") from None
    if day > wire.bill_day(now()):
        raise _param_error("bill_date 不能晚于今天")
    return day
