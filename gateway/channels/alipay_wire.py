"""Alipay OpenAPI on the wire (`gateway.do`, `sign_type=RSA2`), in the channel's own names.

What both the connector (`gateway.channels.alipay`) and the sandbox
(`gateway.channels.sandbox.alipay`) read and write, so that the two can only disagree with the
published protocol, never with each other:

- signing strings: every non-empty parameter but `sign` (and `sign_type` for notifications),
  sorted by name, `k=v` joined with `&`, values as they are; SHA256withRSA, base64;
- requests: form-encoded common parameters with `biz_content` (JSON) beside them;
- answers: `{"<method with dots as underscores>_response": {...}, "sign": "..."}`, signed over
  the exact text of the answer object as it appears in the body;
- asynchronous notifications: form-encoded `trade_status_sync` messages, amounts in yuan as
  decimal strings, answered with the body `success`;
- the daily bill (`alipay.data.dataservice.bill.downloadurl.query`): a zip of GBK-encoded CSV
  files, the detail file and the summary file, with Alipay's comment lines around the tables;
- conversion of all of these into the neutral types of `gateway.channels.types`.

Pure: no I/O and no clock (times are passed in). Nothing here ever logs, and no key or
signature appears in an error message.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.channels.codec import signature_bytes
from gateway.channels.money import InexactAmount, fen_to_yuan, yuan_to_fen
from gateway.channels.types import (
    Anomaly,
    RefundState,
    RefundStatus,
    TradeState,
    TradeStatus,
)

# ---------------------------------------------------------------------- common parameters
SIGN_TYPE = "RSA2"
CHARSET = "utf-8"
FORMAT = "JSON"
VERSION = "1.0"
PRODUCT_CODE_APP = "QUICK_MSECURITY_PAY"  # alipay.trade.app.pay
NOTIFY_TYPE = "trade_status_sync"
ACK_BODY = b"success"  # anything else and Alipay notifies again
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

METHOD_APP_PAY = "alipay.trade.app.pay"
METHOD_QUERY = "alipay.trade.query"
METHOD_CLOSE = "alipay.trade.close"
METHOD_REFUND = "alipay.trade.refund"
METHOD_REFUND_QUERY = "alipay.trade.fastpay.refund.query"
METHOD_BILL_URL = "alipay.data.dataservice.bill.downloadurl.query"

CODE_SUCCESS = "10000"
CODE_UNAVAILABLE = "20000"  # 服务不可用: the outcome is unknown, ask again
CODE_MISSING = "40001"
CODE_INVALID = "40002"
CODE_BUSINESS = "40004"
MESSAGES = {
    CODE_SUCCESS: "Success",
    CODE_UNAVAILABLE: "Service Currently Unavailable",
    CODE_MISSING: "Missing Required Arguments",
    CODE_INVALID: "Invalid Arguments",
    CODE_BUSINESS: "Business Failed",
}
SUB_TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
SUB_SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"
SUB_BILL_NOT_EXIST = "isp.bill_not_exist"

TRADE_WAITING = "WAIT_BUYER_PAY"
TRADE_SUCCESS = "TRADE_SUCCESS"
TRADE_FINISHED = "TRADE_FINISHED"  # paid, and no longer refundable
TRADE_CLOSED = "TRADE_CLOSED"  # unpaid and expired or closed, or paid and refunded in full
REFUND_SUCCESS = "REFUND_SUCCESS"
CURRENCY = "CNY"

REQUEST_UNSIGNED = ("sign",)
NOTIFY_UNSIGNED = ("sign", "sign_type")
FORM_FIELDS_MAX = 100

# Alipay writes Beijing time with no zone: "2024-01-31 23:59:59".
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIME_CHARS = 19


# ---------------------------------------------------------------------- signing
def signing_string(params: Mapping[str, str], omit: Collection[str] = REQUEST_UNSIGNED) -> str:
    """Alipay's string to sign: the non-empty parameters but `omit`, sorted, `k=v&k=v`."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in omit and params[k])


def rsa2_sign(key: rsa.RSAPrivateKey, text: str) -> str:
    signature = key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def rsa2_verify(key: rsa.RSAPublicKey, text: str, signature: str) -> bool:
    """Whether `signature` (base64) is `key`'s SHA256withRSA over `text`; never raises."""
    try:
        raw = signature_bytes(signature)
        key.verify(raw, text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, InvalidSignature):  # binascii.Error is a ValueError
        return False
    return True


def signed(
    key: rsa.RSAPrivateKey, params: Mapping[str, str], omit: Collection[str] = REQUEST_UNSIGNED
) -> dict[str, str]:
    """`params` sorted by name, with `sign` last, as the SDKs lay out an order string."""
    ordered = {k: params[k] for k in sorted(params) if params[k]}
    ordered["sign"] = rsa2_sign(key, signing_string(ordered, omit))
    return ordered


def tampered(signature: str) -> str:
    """The signature with one bit flipped: well-formed, and never valid for the same text."""
    raw = bytearray(base64.b64decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


# ---------------------------------------------------------------------- forms and times
def encode_form(params: Mapping[str, str]) -> str:
    """`k=v&...` in the given order, each value URL-encoded (UTF-8, spaces as `+`)."""
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in params.items())


def decode_form(text: str, fields_max: int = FORM_FIELDS_MAX) -> dict[str, str]:
    """The parameters of a form-encoded string; ValueError when malformed or when a name comes
    twice with different values."""
    pairs = parse_qsl(
        text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
        max_num_fields=fields_max,
    )  # fmt: skip
    params: dict[str, str] = {}
    for name, value in pairs:
        if params.setdefault(name, value) != value:
            raise ValueError(f"parameter {name!r} given twice")
    return params


def format_time(at: datetime) -> str:
    assert at.tzinfo is not None, "channel times are always zoned on our side"
    return at.astimezone(BEIJING).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """A Beijing time as Alipay writes it; ValueError otherwise."""
    if len(text) != TIME_CHARS:
        raise ValueError("not an Alipay time")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=BEIJING)


# ---------------------------------------------------------------------- answers
ERROR_ROOT = "error_response"  # the answer's name when the method itself is unknown


def answer_root(method: str) -> str:
    """`alipay.trade.query` -> `alipay_trade_query_response`."""
    return method.replace(".", "_") + "_response"


def signed_answer(root: str, content: bytes, signature: str) -> bytes:
    """The body Alipay answers with: the answer object's exact bytes, then its signature."""
    return b'{"' + root.encode() + b'":' + content + b',"sign":"' + signature.encode() + b'"}'


def answer_members(body: str) -> dict[str, tuple[str, Any]]:
    """Each top-level member of a JSON object: name -> (its value's exact text, its value).

    The signature covers the answer object's text exactly as it appears in the body, so it is
    cut out by position, never re-encoded. ValueError when the body is not one JSON object or
    names a member twice."""
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    members: dict[str, tuple[str, Any]] = {}
    at = _expect(body, _skip(body, 0), "{")
    if body[at : at + 1] == "}":
        at += 1
    else:
        while True:
            name, at = decoder.raw_decode(body, _skip(body, at))
            if not isinstance(name, str) or name in members:
                raise ValueError("bad member name")
            start = _skip(body, _expect(body, _skip(body, at), ":"))
            value, at = decoder.raw_decode(body, start)
            members[name] = (body[start:at], value)
            at = _skip(body, at)
            if body[at : at + 1] == "}":
                at += 1
                break
            at = _expect(body, at, ",")
    if _skip(body, at) != len(body):
        raise ValueError("text after the answer")
    return members


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _expect(text: str, at: int, char: str) -> int:
    if text[at : at + 1] != char:
        raise ValueError(f"expected {char!r}")
    return at + 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------------- request contents
# Alipay documents amounts as yuan strings; merchants' SDK calls often pass JSON numbers.
Amount = str | int | float


def amount_text(value: Amount) -> str:
    """An amount as decimal text (a float by its shortest repr, which is what was written)."""
    return repr(value) if isinstance(value, float) else str(value)


class AppPayContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    out_trade_no: str
    total_amount: Amount
    subject: str
    product_code: str | None = None  # PRODUCT_CODE_APP
    time_expire: str | None = None  # "yyyy-MM-dd HH:mm:ss", Beijing
    timeout_express: str | None = None  # "90m", "2h", "15d"
    body: str | None = None


class TradeQueryContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    out_trade_no: str | None = None
    trade_no: str | None = None
    query_options: list[str] | None = None


class TradeCloseContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    out_trade_no: str | None = None
    trade_no: str | None = None
    operator_id: str | None = None


class TradeRefundContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    refund_amount: Amount
    out_trade_no: str | None = None
    trade_no: str | None = None
    out_request_no: str | None = None  # required for partial refunds; default: out_trade_no
    refund_reason: str | None = None
    query_options: list[str] | None = None  # ["refund_detail_item_list"]: send_back_fee too


class RefundQueryContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    out_request_no: str
    out_trade_no: str | None = None
    trade_no: str | None = None
    query_options: list[str] | None = None  # ["gmt_refund_pay"]


class BillUrlContent(msgspec.Struct, omit_defaults=True, kw_only=True):
    bill_type: str  # "trade": the merchant's trade bill
    bill_date: str  # "yyyy-MM-dd" (a day) or "yyyy-MM" (a month)


# ---------------------------------------------------------------------- answer contents
class Answer(msgspec.Struct, omit_defaults=True, kw_only=True):
    code: str
    msg: str
    sub_code: str | None = None
    sub_msg: str | None = None


class TradeQueryAnswer(Answer, kw_only=True):
    trade_no: str | None = None
    out_trade_no: str | None = None
    buyer_logon_id: str | None = None
    trade_status: str | None = None
    total_amount: str | None = None
    trans_currency: str | None = None
    buyer_pay_amount: str | None = None
    point_amount: str | None = None
    invoice_amount: str | None = None
    send_pay_date: str | None = None
    receipt_amount: str | None = None
    buyer_user_id: str | None = None


class TradeCloseAnswer(Answer, kw_only=True):
    trade_no: str | None = None
    out_trade_no: str | None = None


class TradeRefundAnswer(Answer, kw_only=True):
    trade_no: str | None = None
    out_trade_no: str | None = None
    buyer_logon_id: str | None = None
    fund_change: str | None = None  # "Y": money moved now; "N": ask the refund query
    refund_fee: str | None = None  # refunded so far on the trade, all refunds together
    gmt_refund_pay: str | None = None
    buyer_user_id: str | None = None
    send_back_fee: str | None = None  # this refund's amount, when asked for


class RefundQueryAnswer(Answer, kw_only=True):
    trade_no: str | None = None
    out_trade_no: str | None = None
    out_request_no: str | None = None
    total_amount: str | None = None
    refund_amount: str | None = None
    refund_status: str | None = None
    gmt_refund_pay: str | None = None


class BillUrlAnswer(Answer, kw_only=True):
    bill_download_url: str | None = None


# ---------------------------------------------------------------------- notifications
class TradeNotification(msgspec.Struct, kw_only=True):
    """`trade_status_sync`: every value a string, as the form carries it (None: absent)."""

    notify_time: str
    notify_type: str
    notify_id: str
    app_id: str
    charset: str = CHARSET
    version: str = VERSION
    sign_type: str = SIGN_TYPE
    trade_no: str
    out_trade_no: str
    out_biz_no: str | None = None  # a refund's out_request_no
    buyer_id: str | None = None
    buyer_logon_id: str | None = None
    seller_id: str | None = None
    seller_email: str | None = None
    trade_status: str
    total_amount: str
    trans_currency: str | None = None
    receipt_amount: str | None = None
    invoice_amount: str | None = None
    buyer_pay_amount: str | None = None
    point_amount: str | None = None
    refund_fee: str | None = None  # refunded so far on the trade, all refunds together
    subject: str | None = None
    body: str | None = None
    gmt_create: str | None = None
    gmt_payment: str | None = None
    gmt_refund: str | None = None  # "yyyy-MM-dd HH:mm:ss.SSS"
    gmt_close: str | None = None
    fund_bill_list: str | None = None  # JSON text


def notification_params(
    key: rsa.RSAPrivateKey, note: TradeNotification, tamper: bool = False
) -> dict[str, str]:
    """The notification's form parameters, signed by Alipay's key (or made not to verify)."""
    fields: dict[str, str | None] = msgspec.to_builtins(note)
    params = signed(key, {k: v for k, v in fields.items() if v is not None}, NOTIFY_UNSIGNED)
    if tamper:
        params["sign"] = tampered(params["sign"])
    return params


def notification_verifies(key: rsa.RSAPublicKey, params: Mapping[str, str]) -> bool:
    """Whether the form is signed by `key` with RSA2 (the only algorithm accepted)."""
    if params.get("sign_type", SIGN_TYPE) != SIGN_TYPE:
        return False
    return rsa2_verify(key, signing_string(params, NOTIFY_UNSIGNED), params.get("sign", ""))


# ---------------------------------------------------------------------- to neutral types
_STATES = {
    TRADE_WAITING: TradeState.WAITING,
    TRADE_SUCCESS: TradeState.PAID,
    TRADE_FINISHED: TradeState.PAID,
    TRADE_CLOSED: TradeState.CLOSED,
}


def trade_state(trade_status: str, was_paid: bool) -> TradeState:
    """TRADE_CLOSED after a payment means refunded in full; ValueError for an unknown one."""
    state = _STATES.get(trade_status)
    if state is None:
        raise ValueError("unknown trade_status")
    if state is TradeState.CLOSED and was_paid:
        return TradeState.REFUNDED
    return state


def amount_fen(text: str, currency: str | None) -> tuple[int | None, Anomaly | None]:
    """An amount the channel states, in fen, or the reason it cannot be credited."""
    if currency not in (None, CURRENCY):
        return None, Anomaly.CURRENCY
    try:
        return yuan_to_fen(text), None
    except InexactAmount:
        return None, Anomaly.INEXACT_AMOUNT


def queried_trade(answer: TradeQueryAnswer, out_trade_no: str) -> TradeStatus:
    """A successful `alipay.trade.query` answer; ValueError when it is not one."""
    if answer.trade_status is None or answer.total_amount is None:
        raise ValueError("not an answer about a trade")
    if answer.out_trade_no not in (None, out_trade_no):
        raise ValueError("not an answer about this trade")
    paid_at = parse_time(answer.send_pay_date) if answer.send_pay_date else None
    fen, anomaly = amount_fen(answer.total_amount, answer.trans_currency)
    return TradeStatus(
        out_trade_no, trade_state(answer.trade_status, paid_at is not None), answer.trade_no,
        fen, paid_at, anomaly,
    )  # fmt: skip


def notified_trade(note: TradeNotification) -> TradeStatus:
    """The trade a notification speaks of; ValueError when it is not well-formed."""
    if note.notify_type != NOTIFY_TYPE:
        raise ValueError("not a trade notification")
    paid_at = parse_time(note.gmt_payment) if note.gmt_payment else None
    fen, anomaly = amount_fen(note.total_amount, note.trans_currency)
    state = trade_state(note.trade_status, paid_at is not None or note.refund_fee is not None)
    return TradeStatus(note.out_trade_no, state, note.trade_no, fen, paid_at, anomaly)


def notified_refund(note: TradeNotification) -> RefundStatus | None:
    """The refund a notification reports (Alipay names it by `out_biz_no`), if any.

    Alipay states only the trade's `refund_fee`, the sum of all its refunds so far, never this
    refund's own amount: `refund_fen` stays None, and the refund query gives it."""
    if note.out_biz_no is None or note.refund_fee is None:
        return None
    return RefundStatus(note.out_trade_no, note.out_biz_no, RefundState.SUCCEEDED)


def refunded(answer: TradeRefundAnswer, out_trade_no: str, out_request_no: str) -> RefundStatus:
    """A successful `alipay.trade.refund` answer. `fund_change=Y` is a refund made now; `N`
    (a repeated request, say) is confirmed only by the refund query."""
    if answer.out_trade_no not in (None, out_trade_no):
        raise ValueError("not an answer about this trade")
    if answer.fund_change != "Y":
        return RefundStatus(out_trade_no, out_request_no, RefundState.PENDING)
    if answer.send_back_fee is None:  # given only when asked for
        return RefundStatus(out_trade_no, out_request_no, RefundState.SUCCEEDED)
    fen, anomaly = amount_fen(answer.send_back_fee, None)
    return RefundStatus(out_trade_no, out_request_no, RefundState.SUCCEEDED, fen, anomaly)


def queried_refund(
    answer: RefundQueryAnswer, out_trade_no: str, out_request_no: str
) -> RefundStatus:
    """A successful refund query: with no refund data, Alipay has no such refund."""
    if answer.refund_amount is None:
        return RefundStatus(out_trade_no, out_request_no, RefundState.NOT_FOUND)
    if answer.out_request_no not in (None, out_request_no):
        raise ValueError("not an answer about this refund")
    fen, anomaly = amount_fen(answer.refund_amount, None)
    done = answer.refund_status in (None, REFUND_SUCCESS)
    state = RefundState.SUCCEEDED if done else RefundState.PENDING
    return RefundStatus(out_trade_no, out_request_no, state, fen, anomaly)


# ---------------------------------------------------------------------- the daily bill
BILL_KIND_PAYMENT = "交易"
BILL_KIND_REFUND = "退款"
DETAIL_TITLE = "#支付宝业务明细查询"
SUMMARY_TITLE = "#支付宝业务汇总查询"
DETAIL_BEGIN = "#" + "-" * 41 + "业务明细列表" + "-" * 40
DETAIL_END = "#" + "-" * 41 + "业务明细列表结束" + "-" * 36
SUMMARY_BEGIN = "#" + "-" * 41 + "业务汇总列表" + "-" * 40
SUMMARY_END = "#" + "-" * 40 + "业务汇总列表结束" + "-" * 37
DETAIL_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
    "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
    "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）",
    "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
    "分润（元）", "备注",
)  # fmt: skip
# Alipay ends these cells with a tab, so that a spreadsheet keeps long numbers as text.
_TAB_CELLS = frozenset({0, 1, 2, 6, 7, 8, 9, 10, 19, 21})
SUMMARY_COLUMNS = (
    "门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）",
    "商家实收（元）", "支付宝优惠（元）", "商家优惠（元）", "卡消费金额（元）", "服务费（元）",
    "分润（元）", "实收净额（元）",
)  # fmt: skip
SUMMARY_TOTAL = "合计"
BILL_ENCODING = "gbk"
BILL_FILES_MAX = 8
BILL_FILE_BYTES_MAX = 64 * 1024 * 1024
_ZIP_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class BillLine:
    """One line of the detail file. Amounts are signed as Alipay prints them: a refund's amount
    is negative; a fee charged is negative, a fee given back (on a refund) positive."""

    trade_no: str
    out_trade_no: str
    kind: str  # BILL_KIND_PAYMENT | BILL_KIND_REFUND
    subject: str
    created_at: datetime
    finished_at: datetime
    counterparty: str
    amount_fen: int
    fee_fen: int
    out_request_no: str = ""


def bill_names(account: str, day: date) -> tuple[str, str, str]:
    """The zip's name, the detail file's and the summary file's, as Alipay names them."""
    stem = f"{account}_{day:%Y%m%d}"
    return f"{stem}.csv.zip", f"{stem}_业务明细.csv", f"{stem}_业务明细(汇总).csv"


def signed_yuan(fen: int) -> str:
    return ("-" if fen < 0 else "") + fen_to_yuan(abs(fen))


def signed_fen(text: str) -> int:
    """`"-0.53"` -> -53; InexactAmount for anything but a signed plain decimal."""
    negative = text.startswith("-")
    fen = yuan_to_fen(text[1:] if negative else text)
    return -fen if negative else fen


def write_bill(account: str, day: date, lines: Sequence[BillLine], exported_at: datetime) -> bytes:
    """The zip Alipay serves for a day's trade bill: the detail and the summary, in GBK."""
    _, detail_name, summary_name = bill_names(account, day)
    detail = _detail_text(account, day, lines, exported_at)
    summary = _summary_text(account, day, lines, exported_at)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in ((detail_name, detail), (summary_name, summary)):
            info = _GbkNamed(name, date_time=exported_at.astimezone(BEIJING).timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text.encode(BILL_ENCODING, errors="replace"))
    return out.getvalue()


class _GbkNamed(zipfile.ZipInfo):
    """Alipay's zips name their files in GBK without the UTF-8 flag (as Windows tools do);
    Python would write UTF-8 with the flag, so the name's encoding is chosen here."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode(BILL_ENCODING), self.flag_bits & ~_ZIP_UTF8_FLAG


def _heading(title: str, account: str, day: date) -> list[str]:
    def stamp(d: date) -> str:
        return f"{d:%Y}年{d:%m}月{d:%d}日 00:00:00"

    return [
        title,
        f"#账号：[{account}]",
        f"#起始日期：[{stamp(day)}]   终止日期：[{stamp(day + timedelta(days=1))}]",
    ]


def _exported(at: datetime) -> str:
    at = at.astimezone(BEIJING)
    return f"#导出时间：[{at:%Y}年{at:%m}月{at:%d}日 {at:%H:%M:%S}]"


def _csv_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().splitlines()


def _detail_row(line: BillLine) -> list[str]:
    amount = signed_yuan(line.amount_fen)
    zero = "0.00"
    cells = [
        line.trade_no, line.out_trade_no, line.kind, _one_line(line.subject),
        format_time(line.created_at), format_time(line.finished_at), "", "", "", "",
        line.counterparty, amount, amount, zero, zero, zero, zero, zero, "", zero, zero,
        line.out_request_no, signed_yuan(line.fee_fen), zero, _one_line(line.subject),
    ]  # fmt: skip
    return [cell + "\t" if i in _TAB_CELLS else cell for i, cell in enumerate(cells)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _detail_text(account: str, day: date, lines: Sequence[BillLine], exported_at: datetime) -> str:
    payments = [x for x in lines if x.kind == BILL_KIND_PAYMENT]
    refunds = [x for x in lines if x.kind == BILL_KIND_REFUND]
    paid = signed_yuan(sum(x.amount_fen for x in payments))
    returned = signed_yuan(sum(x.amount_fen for x in refunds))
    text = [
        *_heading(DETAIL_TITLE, account, day),
        DETAIL_BEGIN,
        *_csv_rows([DETAIL_COLUMNS, *(_detail_row(x) for x in lines)]),
        DETAIL_END,
        f"#交易合计：{len(payments)}笔，商家实收共{paid}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收退款共{returned}元，商家优惠退款共0.00元",
        _exported(exported_at),
    ]
    return "\r\n".join(text) + "\r\n"


def _summary_text(account: str, day: date, lines: Sequence[BillLine], exported_at: datetime) -> str:
    amount_fen = sum(x.amount_fen for x in lines)
    fee_fen = sum(x.fee_fen for x in lines)
    count = sum(x.kind == BILL_KIND_PAYMENT for x in lines)
    total = [
        "", SUMMARY_TOTAL, str(count), str(len(lines) - count), signed_yuan(amount_fen),
        signed_yuan(amount_fen), "0.00", "0.00", "0.00", signed_yuan(fee_fen), "0.00",
        signed_yuan(amount_fen + fee_fen),
    ]  # fmt: skip
    text = [
        *_heading(SUMMARY_TITLE, account, day),
        SUMMARY_BEGIN,
        *_csv_rows([SUMMARY_COLUMNS, total]),
        SUMMARY_END,
        _exported(exported_at),
    ]
    return "\r\n".join(text) + "\r\n"


def read_bill(data: bytes) -> list[BillLine]:
    """The detail lines of a bill zip, checked against its summary; ValueError when the zip,
    the files or their tables are not Alipay's (InexactAmount for a bad amount)."""
    detail, summary = _bill_files(data)
    lines = [_bill_line(row) for row in _table(detail, DETAIL_BEGIN, DETAIL_END)]
    _check_summary(lines, _table(summary, SUMMARY_BEGIN, SUMMARY_END))
    return lines


def _bill_files(data: bytes) -> tuple[str, str]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data), metadata_encoding=BILL_ENCODING)
    except zipfile.BadZipFile as exc:
        raise ValueError("not a zip") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > BILL_FILES_MAX:
            raise ValueError("too many files in the bill")
        detail = [i for i in infos if i.filename.endswith("_业务明细.csv")]
        summary = [i for i in infos if i.filename.endswith("_业务明细(汇总).csv")]
        if len(detail) != 1 or len(summary) != 1:
            raise ValueError("the bill has no detail file or no summary file")
        return _bill_text(archive, detail[0]), _bill_text(archive, summary[0])


def _bill_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    if info.file_size > BILL_FILE_BYTES_MAX:
        raise ValueError("bill file too large")
    with archive.open(info) as file:
        raw = file.read(BILL_FILE_BYTES_MAX + 1)  # the size stated may lie
    if len(raw) > BILL_FILE_BYTES_MAX:
        raise ValueError("bill file too large")
    return raw.decode(BILL_ENCODING)  # strict: a wrong encoding is not Alipay's bill


def _table(text: str, begin: str, end: str) -> list[dict[str, str]]:
    """The rows between `begin` and `end`, by column name, cells without Alipay's padding."""
    lines = text.splitlines()
    first, last = lines.index(begin) + 1, lines.index(end)
    rows = list(csv.reader(lines[first:last]))
    if not rows:
        raise ValueError("a table with no header")
    header = [cell.strip() for cell in rows[0]]
    table = []
    for row in rows[1:]:
        if len(row) != len(header):
            raise ValueError("a row that does not fit the header")
        table.append({name: cell.strip() for name, cell in zip(header, row, strict=True)})
    return table


def _bill_line(row: dict[str, str]) -> BillLine:
    try:
        kind = row["业务类型"]
        amount, fee = signed_fen(row["订单金额（元）"]), signed_fen(row["服务费（元）"])
        line = BillLine(
            row["支付宝交易号"], row["商户订单号"], kind, row["商品名称"],
            parse_time(row["创建时间"]), parse_time(row["完成时间"]), row["对方账户"], amount, fee,
            row["退款批次号/请求号"],
        )  # fmt: skip
    except KeyError as exc:
        raise ValueError("a detail column is missing") from exc
    # A payment is received and charged a fee; a refund is paid back and gets fee back.
    sign = {BILL_KIND_PAYMENT: 1, BILL_KIND_REFUND: -1}.get(kind)
    if sign is None or amount * sign < 0 or fee * sign > 0:
        raise ValueError("a detail line of unknown kind or sign")
    return line


def _check_summary(lines: Sequence[BillLine], summary: list[dict[str, str]]) -> None:
    totals = [row for row in summary if SUMMARY_TOTAL in (row.get("门店编号"), row.get("门店名称"))]
    if len(totals) != 1:
        raise ValueError("the summary has no total")
    total = totals[0]
    payments = sum(x.kind == BILL_KIND_PAYMENT for x in lines)
    try:
        stated = (
            int(total["交易订单总笔数"]), int(total["退款订单总笔数"]),
            signed_fen(total["订单金额（元）"]), signed_fen(total["服务费（元）"]),
        )  # fmt: skip
    except KeyError as exc:
        raise ValueError("a summary column is missing") from exc
    counted = (
        payments, len(lines) - payments, sum(x.amount_fen for x in lines),
        sum(x.fee_fen for x in lines),
    )  # fmt: skip
    if stated != counted:
        raise ValueError("the detail and the summary disagree")
