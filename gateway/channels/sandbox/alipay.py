"""The Alipay sandbox: Alipay's OpenAPI gateway (`gateway.do`, RSA2) for one test merchant.

A merchant's official SDK works against it unchanged but for the gateway URL:

- `GET|POST /gateway.do`: common parameters in the query string, the form body or both;
  the merchant's signature is checked on every call (sorted non-empty parameters without
  `sign`), and every answer is signed with the sandbox's own Alipay key over the exact text of
  the answer object. Methods: `alipay.trade.query`, `alipay.trade.close`,
  `alipay.trade.refund`, `alipay.trade.fastpay.refund.query`,
  `alipay.data.dataservice.bill.downloadurl.query`; errors in Alipay's envelope
  (code/msg/sub_code/sub_msg: 40001, 40002 `isv.*`, 40004 `ACQ.*`);
- `alipay.trade.app.pay` has no server call: the pay page takes the order string the phone
  was handed, checks the merchant's signature over it, and creates the trade (as Alipay does
  when the buyer opens it in the app) honouring `time_expire` / `timeout_express`;
- notifications: form-encoded `trade_status_sync`, signed without `sign` and `sign_type`,
  sent again until the merchant answers `success`; one on payment, one on each refund (to
  the payment's notify URL, with `out_biz_no` and the trade's `refund_fee`);
- `GET /downloadBillFile.resource`: the day's trade bill behind a link that works for 30 s,
  a zip of the GBK detail and summary CSV files, with a 0.6 % fee on payments (rounded half
  up to the fen) given back pro rata on refunds.

Left out: RSA (SHA1) and certificate-mode signing, GBK requests, encrypted `biz_content`,
`app_auth_token`, other methods and other bill types, month bills, notifications of closes.
Unlike Alipay, today's bill is served at once (tests reconcile the day they pay).

Trades live in memory; keys are made once and kept under the data directory. Never logs a
key, a signature or a body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import date, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels import alipay_wire as wire
from gateway.channels.money import InexactAmount, fen_to_yuan, yuan_to_fen
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
REQUEST_BYTES_MAX = 64 * 1024
FEE_RATE_BASIS_POINTS = 60  # 0.6 %
BASIS_POINTS = 10_000
BILL_LINK_TTL_MS = 30_000  # Alipay's bill links work for 30 seconds
TIMEOUT_DEFAULT = timedelta(days=15)  # an order string with neither time_expire nor timeout
SELLER_EMAIL = "merchant@sandbox.alipaydev.com"
BUYER_LOGON_ID = "sbx***@sandbox.com"
BILL_ACCOUNT_SUFFIX = "0156"  # bills name the account as the seller's PID followed by this
_TIMEOUT_EXPRESS = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_TIMEOUT_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}

_TRADE_STATUS = {
    "waiting": wire.TRADE_WAITING,
    "paid": wire.TRADE_SUCCESS,
    "closed": wire.TRADE_CLOSED,
    "refunded": wire.TRADE_CLOSED,
}
C = TypeVar("C", bound=msgspec.Struct)


class _Refusal(Exception):
    """An answer in Alipay's error envelope."""

    def __init__(self, code: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.answer = wire.Answer(
            code=code, msg=wire.MESSAGES[code], sub_code=sub_code, sub_msg=sub_msg
        )


def _refuse(code: str, sub_code: str, sub_msg: str) -> NoReturn:
    raise _Refusal(code, sub_code, sub_msg)


def _invalid_parameter() -> NoReturn:
    _refuse(wire.CODE_BUSINESS, "ACQ.INVALID_PARAMETER", "参数无效")


def _make_keys() -> dict[str, str]:
    """What Alipay's sandbox console issues: ids, the merchant's key pair, Alipay's key pair,
    and the secret the bill links are signed with."""

    def digits(count: int) -> str:
        return str(secrets.randbelow(10**count)).zfill(count)

    def pair() -> tuple[str, str]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private.decode(), public.decode()

    app_private, app_public = pair()
    alipay_private, alipay_public = pair()
    return {
        "app_id": "9021000" + digits(9), "pid": "2088" + digits(12),
        "buyer_id": "2088" + digits(12), "app_private_key_pem": app_private,
        "app_public_key_pem": app_public, "alipay_private_key_pem": alipay_private,
        "alipay_public_key_pem": alipay_public, "bill_link_secret": secrets.token_hex(32),
    }  # fmt: skip


class AlipaySandbox:
    name = "alipay"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._keys = sandbox.keys("alipay", _make_keys)
        self._app_id = self._keys["app_id"]
        self._pid = self._keys["pid"]
        self._buyer_id = self._keys["buyer_id"]
        alipay_key = serialization.load_pem_private_key(
            self._keys["alipay_private_key_pem"].encode(), password=None
        )
        app_key = serialization.load_pem_public_key(self._keys["app_public_key_pem"].encode())
        assert isinstance(alipay_key, rsa.RSAPrivateKey) and isinstance(app_key, rsa.RSAPublicKey)
        self._alipay_key = alipay_key
        self._app_key = app_key
        self._bill_link_secret = bytes.fromhex(self._keys["bill_link_secret"])
        self._methods = {
            wire.METHOD_QUERY: self._query,
            wire.METHOD_CLOSE: self._close,
            wire.METHOD_REFUND: self._refund,
            wire.METHOD_REFUND_QUERY: self._refund_query,
            wire.METHOD_BILL_URL: self._bill_url,
        }

    # ------------------------------------------------------------------ ChannelSandbox
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/gateway.do", self._gateway),
            web.post("/gateway.do", self._gateway),
            web.get("/downloadBillFile.resource", self._download_bill),
        ]

    def credentials(self, base_url: str) -> dict[str, Any]:
        keys = ("app_id", "app_private_key_pem", "app_public_key_pem", "alipay_public_key_pem")
        return {**{k: self._keys[k] for k in keys}, "base_url": f"{base_url}/gateway.do"}

    def trade_for_token(self, token: str) -> Trade:
        """The trade of an `alipay.trade.app.pay` order string, created on first sight."""
        params = self._order_params(token)
        try:
            content = msgspec.json.decode(params.get("biz_content", ""), type=wire.AppPayContent)
            amount_fen = yuan_to_fen(wire.amount_text(content.total_amount))
        except (msgspec.DecodeError, InexactAmount):
            raise ValueError("the order string's biz_content is not Alipay's") from None
        if amount_fen <= 0:
            raise ValueError("the order string's total_amount is not positive")
        at = now()
        trade = self.sandbox.trades.get(content.out_trade_no)
        if trade is None:
            trade = self._new_trade(content, amount_fen, params.get("notify_url", ""), at)
        elif (trade.amount_fen, trade.subject) != (amount_fen, content.subject):
            raise ValueError("ACQ.CONTEXT_INCONSISTENT: the trade was made with other values")
        _expire(trade, at)
        return trade

    def payment_notification(self, trade: Trade, amount_fen: int, tamper: bool) -> Outgoing:
        return self._outgoing(trade.notify_url, self._note(trade, amount_fen), tamper)

    def is_ack(self, status: int, body: bytes) -> bool:
        return status == 200 and body.strip() == wire.ACK_BODY

    # ------------------------------------------------------------------ order strings
    def _order_params(self, token: str) -> dict[str, str]:
        try:
            params = wire.decode_form(token)
        except ValueError:
            raise ValueError("not an Alipay order string") from None
        if params.get("method") != wire.METHOD_APP_PAY:
            raise ValueError("not an alipay.trade.app.pay order string")
        if params.get("app_id") != self._app_id:
            raise ValueError("an order string of another app")
        if params.get("sign_type") != wire.SIGN_TYPE or not self._signed_by_merchant(params):
            raise ValueError("the merchant's signature does not verify")
        return params

    def _signed_by_merchant(self, params: dict[str, str]) -> bool:
        return wire.rsa2_verify(self._app_key, wire.signing_string(params), params.get("sign", ""))

    def _new_trade(
        self, content: wire.AppPayContent, amount_fen: int, notify_url: str, at: datetime
    ) -> Trade:
        expires_at = _expiry(content, at)
        if expires_at <= at:
            raise ValueError("the order string has expired")
        trade_no = f"{at.astimezone(wire.BEIJING):%Y%m%d}22001{secrets.randbelow(10**15):015d}"
        trade = Trade(
            content.out_trade_no, trade_no, amount_fen, content.subject, notify_url,
            "waiting", at, expires_at, extra={"app_id": self._app_id},
        )  # fmt: skip
        self.sandbox.trades[trade.out_trade_no] = trade
        return trade

    # ------------------------------------------------------------------ the gateway
    async def _gateway(self, request: web.Request) -> web.Response:
        try:
            params: dict[str, str] | None = await _request_params(request)
        except ValueError:
            params = None
        gated = await self.sandbox.api_gate(_out_trade_no(params))
        if gated is not None:
            return gated
        method = (params or {}).get("method", "")
        root = wire.answer_root(method) if method in self._methods else wire.ERROR_ROOT
        try:
            if params is None:
                _refuse(wire.CODE_INVALID, "isv.invalid-parameter", "参数无效")
            self._check(params)
            answer = self._methods[method](params.get("biz_content", ""), _origin(request))
        except _Refusal as refusal:
            answer = refusal.answer
        content = msgspec.json.encode(answer)
        signature = wire.rsa2_sign(self._alipay_key, content.decode("utf-8"))
        body = wire.signed_answer(root, content, signature)
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    def _check(self, params: dict[str, str]) -> None:
        """The gateway's checks of the common parameters, in Alipay's order."""
        missing, invalid = wire.CODE_MISSING, wire.CODE_INVALID
        method = params.get("method")
        if not method:
            _refuse(missing, "isv.missing-method", "缺少方法名参数")
        if method not in self._methods:
            _refuse(invalid, "isv.invalid-method", "不存在的方法名")
        for name, sub_code, sub_msg in _REQUIRED:
            if not params.get(name):
                _refuse(missing, sub_code, sub_msg)
        if params["app_id"] != self._app_id:
            _refuse(invalid, "isv.invalid-app-id", "无效的AppID参数")
        if params["sign_type"] != wire.SIGN_TYPE:
            _refuse(invalid, "isv.invalid-signature-type", "无效的签名类型")
        if params.get("charset", wire.CHARSET).lower() != wire.CHARSET:
            _refuse(invalid, "isv.invalid-charset", "字符集错误")
        if params.get("format", wire.FORMAT).upper() != wire.FORMAT:
            _refuse(invalid, "isv.invalid-format", "无效的数据格式")
        try:
            wire.parse_time(params["timestamp"])
        except ValueError:
            _refuse(invalid, "isv.invalid-timestamp", "非法的时间戳参数")
        if not self._signed_by_merchant(params):
            _refuse(invalid, "isv.invalid-signature", "验签出错")

    def _find(self, out_trade_no: str | None, trade_no: str | None) -> Trade:
        """A trade by Alipay's number (which wins when both are given) or by the merchant's."""
        if trade_no:
            trades = self.sandbox.trades.values()
            trade = next((t for t in trades if t.trade_no == trade_no), None)
        elif out_trade_no:
            trade = self.sandbox.trades.get(out_trade_no)
        else:
            _invalid_parameter()
        if trade is None:
            _refuse(wire.CODE_BUSINESS, wire.SUB_TRADE_NOT_EXIST, "交易不存在")
        _expire(trade, now())
        return trade

    # ------------------------------------------------------------------ methods
    def _query(self, biz_content: str, origin: str) -> wire.Answer:
        content = _content(biz_content, wire.TradeQueryContent)
        trade = self._find(content.out_trade_no, content.trade_no)
        paid = trade.paid_at is not None
        paid_yuan = fen_to_yuan(trade.amount_fen if paid else 0)
        return wire.TradeQueryAnswer(
            code=wire.CODE_SUCCESS, msg=wire.MESSAGES[wire.CODE_SUCCESS],
            trade_no=trade.trade_no, out_trade_no=trade.out_trade_no,
            buyer_logon_id=BUYER_LOGON_ID if paid else None,
            trade_status=_TRADE_STATUS[trade.state], total_amount=fen_to_yuan(trade.amount_fen),
            buyer_pay_amount=paid_yuan, point_amount="0.00", invoice_amount=paid_yuan,
            send_pay_date=wire.format_time(trade.paid_at) if trade.paid_at else None,
            receipt_amount=paid_yuan, buyer_user_id=self._buyer_id if paid else None,
        )  # fmt: skip

    def _close(self, biz_content: str, origin: str) -> wire.Answer:
        content = _content(biz_content, wire.TradeCloseContent)
        trade = self._find(content.out_trade_no, content.trade_no)
        if trade.state not in ("waiting", "closed"):
            _refuse(wire.CODE_BUSINESS, "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.state = "closed"
        return wire.TradeCloseAnswer(
            code=wire.CODE_SUCCESS, msg=wire.MESSAGES[wire.CODE_SUCCESS],
            trade_no=trade.trade_no, out_trade_no=trade.out_trade_no,
        )  # fmt: skip

    def _refund(self, biz_content: str, origin: str) -> wire.Answer:
        content = _content(biz_content, wire.TradeRefundContent)
        trade = self._find(content.out_trade_no, content.trade_no)
        try:
            amount_fen = yuan_to_fen(wire.amount_text(content.refund_amount))
        except InexactAmount:
            _invalid_parameter()
        out_request_no = content.out_request_no or trade.out_trade_no
        refund = trade.refunds.get(out_request_no)
        if refund is not None:  # the same refund asked again: nothing moves
            if refund.amount_fen != amount_fen:
                _refuse(wire.CODE_BUSINESS, "ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求")
            return self._refund_answer(trade, refund, content, fund_change="N")
        refund = self._new_refund(trade, out_request_no, amount_fen)
        self._notify_refund(trade, refund)
        return self._refund_answer(trade, refund, content, fund_change="Y")

    def _new_refund(self, trade: Trade, out_request_no: str, amount_fen: int) -> Refund:
        if trade.state != "paid":
            _refuse(wire.CODE_BUSINESS, "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if amount_fen <= 0:
            _refuse(wire.CODE_BUSINESS, "ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效")
        if trade.refunded_fen + amount_fen > trade.amount_fen:
            _refuse(wire.CODE_BUSINESS, "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        refund = Refund(
            out_request_no, new_number(), amount_fen, "success", now(), trade.notify_url
        )
        trade.refunds[out_request_no] = refund
        if trade.refunded_fen == trade.amount_fen:
            trade.state = "refunded"
        return refund

    def _refund_answer(
        self, trade: Trade, refund: Refund, content: wire.TradeRefundContent, fund_change: str
    ) -> wire.Answer:
        detail = "refund_detail_item_list" in (content.query_options or [])
        return wire.TradeRefundAnswer(
            code=wire.CODE_SUCCESS, msg=wire.MESSAGES[wire.CODE_SUCCESS],
            trade_no=trade.trade_no, out_trade_no=trade.out_trade_no,
            buyer_logon_id=BUYER_LOGON_ID, fund_change=fund_change,
            refund_fee=fen_to_yuan(trade.refunded_fen),
            gmt_refund_pay=wire.format_time(refund.created_at), buyer_user_id=self._buyer_id,
            send_back_fee=fen_to_yuan(refund.amount_fen) if detail else None,
        )  # fmt: skip

    def _refund_query(self, biz_content: str, origin: str) -> wire.Answer:
        content = _content(biz_content, wire.RefundQueryContent)
        trade = self._find(content.out_trade_no, content.trade_no)
        refund = trade.refunds.get(content.out_request_no)
        success = wire.MESSAGES[wire.CODE_SUCCESS]
        if refund is None or refund.state != "success":  # Alipay: success, with no refund data
            return wire.RefundQueryAnswer(code=wire.CODE_SUCCESS, msg=success)
        with_time = "gmt_refund_pay" in (content.query_options or [])
        return wire.RefundQueryAnswer(
            code=wire.CODE_SUCCESS, msg=success, trade_no=trade.trade_no,
            out_trade_no=trade.out_trade_no, out_request_no=refund.out_refund_no,
            total_amount=fen_to_yuan(trade.amount_fen),
            refund_amount=fen_to_yuan(refund.amount_fen), refund_status=wire.REFUND_SUCCESS,
            gmt_refund_pay=wire.format_time(refund.created_at) if with_time else None,
        )  # fmt: skip

    def _bill_url(self, biz_content: str, origin: str) -> wire.Answer:
        content = _content(biz_content, wire.BillUrlContent)
        day = _bill_day(content)
        if day is None or day > now().astimezone(wire.BEIJING).date():
            _refuse(wire.CODE_BUSINESS, "invalid_arguments", "参数不合法")
        if not self._bill_lines(day):
            _refuse(wire.CODE_BUSINESS, wire.SUB_BILL_NOT_EXIST, "账单不存在")
        return wire.BillUrlAnswer(
            code=wire.CODE_SUCCESS,
            msg=wire.MESSAGES[wire.CODE_SUCCESS],
            bill_download_url=self._bill_link(origin, day),
        )

    # ------------------------------------------------------------------ notifications
    def _note(self, trade: Trade, amount_fen: int) -> wire.TradeNotification:
        paid = trade.paid_at is not None
        yuan = fen_to_yuan(amount_fen)
        paid_yuan = yuan if paid else None
        bills = [{"amount": yuan, "fundChannel": "ALIPAYACCOUNT"}]
        return wire.TradeNotification(
            notify_time=wire.format_time(now()), notify_type=wire.NOTIFY_TYPE,
            notify_id=secrets.token_hex(16), app_id=trade.extra.get("app_id", self._app_id),
            trade_no=trade.trade_no, out_trade_no=trade.out_trade_no,
            buyer_id=self._buyer_id if paid else None,
            buyer_logon_id=BUYER_LOGON_ID if paid else None, seller_id=self._pid,
            seller_email=SELLER_EMAIL, trade_status=_TRADE_STATUS[trade.state],
            total_amount=yuan, receipt_amount=paid_yuan, invoice_amount=paid_yuan,
            buyer_pay_amount=paid_yuan, point_amount="0.00" if paid else None,
            subject=trade.subject, gmt_create=wire.format_time(trade.created_at),
            gmt_payment=wire.format_time(trade.paid_at) if trade.paid_at else None,
            fund_bill_list=json.dumps(bills, separators=(",", ":")) if paid else None,
        )  # fmt: skip

    def _notify_refund(self, trade: Trade, refund: Refund) -> None:
        """Alipay tells the payment's notify URL of each refund: the trade's new status, the
        refund's request number, and the trade's refunds so far."""
        behaviour = self.sandbox.behaviour(trade.out_trade_no)
        if Misbehaviour.NO_NOTIFY in behaviour.kinds or not trade.notify_url:
            return
        refunded_at = refund.created_at.astimezone(wire.BEIJING)
        note = msgspec.structs.replace(
            self._note(trade, trade.amount_fen), out_biz_no=refund.out_refund_no,
            refund_fee=fen_to_yuan(trade.refunded_fen),
            gmt_refund=f"{wire.format_time(refunded_at)}.{refunded_at.microsecond // 1000:03d}",
            gmt_close=wire.format_time(refunded_at) if trade.state == "refunded" else None,
        )  # fmt: skip
        tamper = Misbehaviour.TAMPERED in behaviour.kinds
        self.sandbox.send_later([self._outgoing(trade.notify_url, note, tamper)])

    def _outgoing(self, url: str, note: wire.TradeNotification, tamper: bool) -> Outgoing:
        params = wire.notification_params(self._alipay_key, note, tamper)
        content_type = f"{wire.FORM_CONTENT_TYPE}; charset={wire.CHARSET}"
        return Outgoing(
            url, wire.encode_form(params).encode("ascii"), {"Content-Type": content_type}
        )

    # ------------------------------------------------------------------ the daily bill
    @property
    def _bill_account(self) -> str:
        return self._pid + BILL_ACCOUNT_SUFFIX

    def _bill_link(self, origin: str, day: date) -> str:
        zip_name = wire.bill_names(self._bill_account, day)[0]
        fields = {
            "bizType": "trade", "userId": self._bill_account, "fileType": "csv.zip",
            "bizDates": f"{day:%Y%m%d}", "downloadFileName": zip_name,
            "fileId": f"/trade/{self._bill_account}/{day:%Y%m%d}.csv.zip",
            "timestamp": str(int(now().timestamp() * 1000)),
        }  # fmt: skip
        fields["token"] = self._link_token(fields)
        return f"{origin}/downloadBillFile.resource?{wire.encode_form(fields)}"

    def _link_token(self, fields: dict[str, str]) -> str:
        message = wire.encode_form({k: v for k, v in fields.items() if k != "token"})
        return hmac.new(self._bill_link_secret, message.encode(), hashlib.sha256).hexdigest()

    async def _download_bill(self, request: web.Request) -> web.Response:
        names = ("bizType", "userId", "fileType", "bizDates", "downloadFileName", "fileId")
        query = request.rel_url.query
        fields = {name: query.get(name, "") for name in (*names, "timestamp", "token")}
        expected = self._link_token(fields)
        try:
            age_ms = now().timestamp() * 1000 - int(fields["timestamp"])
            day = datetime.strptime(fields["bizDates"], "%Y%m%d").date()
        except ValueError:
            return web.Response(status=404, text="no such bill")
        if (
            not hmac.compare_digest(fields["token"], expected)
            or not 0 <= age_ms <= BILL_LINK_TTL_MS
        ):
            return web.Response(status=404, text="this link has expired or was never given")
        body = wire.write_bill(self._bill_account, day, self._bill_lines(day), now())
        disposition = f'attachment; filename="{fields["downloadFileName"]}"'
        return web.Response(
            body=body, content_type="application/oct-stream",
            headers={"Content-Disposition": disposition},
        )  # fmt: skip

    def _bill_lines(self, day: date) -> list[wire.BillLine]:
        """The day's payments and refunds (by Beijing date), with their fees."""
        lines: list[wire.BillLine] = []
        for trade in self.sandbox.trades.values():
            if trade.paid_at is None:
                continue
            fee_fen, fees_back = _fees(trade)
            if _beijing_day(trade.paid_at) == day:
                lines.append(self._bill_line(trade, trade.amount_fen, -fee_fen, trade.paid_at))
            for refund in trade.refunds.values():
                if refund.state == "success" and _beijing_day(refund.created_at) == day:
                    back = fees_back[refund.out_refund_no]
                    lines.append(
                        self._bill_line(trade, -refund.amount_fen, back, refund.created_at,
                                        refund.out_refund_no)
                    )  # fmt: skip
        return sorted(lines, key=lambda line: line.finished_at)

    def _bill_line(
        self, trade: Trade, amount_fen: int, fee_fen: int, at: datetime, out_request_no: str = ""
    ) -> wire.BillLine:
        kind = wire.BILL_KIND_REFUND if out_request_no else wire.BILL_KIND_PAYMENT
        return wire.BillLine(
            trade.trade_no, trade.out_trade_no, kind, trade.subject, trade.created_at, at,
            BUYER_LOGON_ID, amount_fen, fee_fen, out_request_no,
        )  # fmt: skip


_REQUIRED = (
    ("app_id", "isv.missing-app-id", "缺少AppID参数"),
    ("sign", "isv.missing-signature", "缺少签名参数"),
    ("sign_type", "isv.missing-signature-type", "缺少签名类型参数"),
    ("timestamp", "isv.missing-timestamp", "缺少时间戳参数"),
    ("version", "isv.missing-version", "缺少版本参数"),
)


async def _request_params(request: web.Request) -> dict[str, str]:
    """The parameters of a gateway call: the query string's and the form body's together."""
    if (request.content_length or 0) > REQUEST_BYTES_MAX:
        raise ValueError("too large")
    params = wire.decode_form(request.rel_url.raw_query_string)
    if request.method == "POST" and request.body_exists:
        for name, value in (await request.post()).items():
            if not isinstance(value, str) or params.setdefault(name, value) != value:
                raise ValueError(f"parameter {name!r} is a file or given twice")
    return params


def _out_trade_no(params: dict[str, str] | None) -> str | None:
    """The trade a call is about, for per-trade misbehaviours (before any check)."""
    try:
        content = json.loads((params or {}).get("biz_content", ""))
    except ValueError:
        return None
    found = content.get("out_trade_no") if isinstance(content, dict) else None
    return found if isinstance(found, str) else None


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _content(biz_content: str, kind: type[C]) -> C:
    try:
        return msgspec.json.decode(biz_content, type=kind)
    except msgspec.DecodeError:
        _invalid_parameter()


def _expiry(content: wire.AppPayContent, at: datetime) -> datetime:
    """When an unpaid trade closes: `time_expire`, else `timeout_express` from now."""
    if content.time_expire:
        return wire.parse_time(content.time_expire)
    if not content.timeout_express:
        return at + TIMEOUT_DEFAULT
    match = _TIMEOUT_EXPRESS.match(content.timeout_express)
    if match is None:
        raise ValueError("timeout_express is not Alipay's (1m to 15d)")
    return at + int(match[1]) * _TIMEOUT_UNITS[match[2]]


def _expire(trade: Trade, at: datetime) -> None:
    """Alipay closes an unpaid trade when its time is up."""
    if trade.state == "waiting" and trade.expires_at is not None and at >= trade.expires_at:
        trade.state = "closed"


def _bill_day(content: wire.BillUrlContent) -> date | None:
    if content.bill_type != "trade" or len(content.bill_date) != len("yyyy-MM-dd"):
        return None
    try:
        return date.fromisoformat(content.bill_date)
    except ValueError:
        return None


def _beijing_day(at: datetime) -> date:
    return at.astimezone(wire.BEIJING).date()


def _fee(amount_fen: int) -> int:
    """Alipay's fee on an amount, rounded half up to the fen."""
    return (amount_fen * FEE_RATE_BASIS_POINTS + BASIS_POINTS // 2) // BASIS_POINTS


def _fees(trade: Trade) -> tuple[int, dict[str, int]]:
    """The payment's fee, and the part of it each refund gives back: pro rata, never more than
    is left, and all that is left once the trade is refunded in full."""
    fee_fen = _fee(trade.amount_fen)
    left_fen, back = fee_fen, {}
    refunds = sorted(trade.refunds.values(), key=lambda r: r.created_at)
    for count, refund in enumerate(refunds, start=1):
        in_full = count == len(refunds) and trade.refunded_fen == trade.amount_fen
        share = left_fen if in_full else min(left_fen, _fee(refund.amount_fen))
        back[refund.out_refund_no] = share
        left_fen -= share
    return fee_fen, back


def make(sandbox: Sandbox) -> ChannelSandbox:
    return AlipaySandbox(sandbox)
