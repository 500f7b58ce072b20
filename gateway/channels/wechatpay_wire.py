"""WeChat Pay API v3 on the wire: its messages in its own field names, its signing strings, its
encrypted resources and its trade bill, and their conversion to the neutral types.

One definition for both sides: the connector (`gateway.channels.wechatpay`) and the sandbox
(`gateway.channels.sandbox.wechatpay`) build and read the same structs and strings, so the
sandbox cannot drift from what the connector expects without a test seeing it.

What it follows (WeChat Pay merchant documentation, APIv3, platform public key mode):
- request signature: `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,
  signature=..,timestamp=..,serial_no=..` over `METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`, URL
  being the path and query exactly as sent, SHA256withRSA (PKCS#1 v1.5) with the merchant key;
- answer and notification signature: `Wechatpay-Timestamp`, `Wechatpay-Nonce`,
  `Wechatpay-Signature`, `Wechatpay-Serial` (the platform public key id, `PUB_KEY_ID_...`) over
  `TIMESTAMP\\nNONCE\\nBODY\\n` with the platform key (an empty body still ends in `\\n`);
- app payment signature: `appid\\ntimestamp\\nnoncestr\\nprepayid\\n` with the merchant key;
- notification resources: AEAD_AES_256_GCM under the 32-byte APIv3 key, 12-character nonce,
  `associated_data` as given, ciphertext and tag base64 together;
- the trade bill (ALL): 27 back-quoted columns, then a summary header and one summary row;
  amounts in yuan, fees with five decimals, negative on refund rows.

It does no I/O, never logs, and holds no key: keys come in as arguments for one call.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256

from gateway.channels.codec import signature_bytes
from gateway.channels.money import InexactAmount, fen_from_text, fen_to_yuan, yuan_to_fen
from gateway.channels.types import (
    Anomaly,
    RefundState,
    RefundStatus,
    StatementLine,
    TradeState,
    TradeStatus,
)

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
AEAD_ALGORITHM = "AEAD_AES_256_GCM"
ENCRYPT_RESOURCE = "encrypt-resource"
APP_PACKAGE = "Sign=WXPay"
CURRENCY = "CNY"
APIV3_KEY_BYTES = 32
AEAD_NONCE_CHARS = 12
SIGNATURE_SKEW_S_MAX = 300  # WeChat refuses requests signed more than five minutes away
CHINA = timezone(timedelta(hours=8))  # bill days, bill times and time_expire are Beijing time

TIMESTAMP = "Wechatpay-Timestamp"
NONCE = "Wechatpay-Nonce"
SIGNATURE = "Wechatpay-Signature"
SERIAL = "Wechatpay-Serial"
SIGNATURE_TYPE = "Wechatpay-Signature-Type"

_TIMESTAMP_TEXT = re.compile(r"^[0-9]{1,12}$")
# Header values become lines of the signed string: no line breaks, nothing unprintable.
_NONCE_TEXT = re.compile(r"^[\x21-\x7e]{1,64}$")
_AUTH_PARAM = re.compile(r'^\s*([a-z_]+)="([^"]*)"\s*$')
_AUTH_PARAMS = frozenset({"mchid", "nonce_str", "signature", "timestamp", "serial_no"})


# ---------------------------------------------------------------------- messages (JSON)
# An optional amount left out (msgspec.Raw cannot be optional as `| None`): nothing raw at all.
ABSENT = msgspec.Raw()


class Amount(msgspec.Struct, omit_defaults=True):
    """`amount` of a transaction. Amounts stay raw JSON until `fen_of` reads them, so that a
    fractional or quoted amount becomes an anomaly instead of a failed decode."""

    total: msgspec.Raw
    currency: str | None = None
    payer_total: msgspec.Raw = ABSENT
    payer_currency: str | None = None


class PrepayRequest(msgspec.Struct, omit_defaults=True):
    """Body of `POST /v3/pay/transactions/app`."""

    appid: str
    mchid: str
    description: str
    out_trade_no: str
    notify_url: str
    amount: Amount
    time_expire: str | None = None
    attach: str | None = None


class PrepayAnswer(msgspec.Struct):
    prepay_id: str


class Payer(msgspec.Struct):
    openid: str


class Transaction(msgspec.Struct, omit_defaults=True):
    """A trade as `GET /v3/pay/transactions/out-trade-no/{no}` answers it; also the decrypted
    resource of a `TRANSACTION.SUCCESS` notification."""

    mchid: str
    out_trade_no: str
    trade_state: str
    trade_state_desc: str = ""
    appid: str | None = None
    transaction_id: str | None = None
    trade_type: str | None = None
    bank_type: str | None = None
    attach: str | None = None
    success_time: str | None = None
    payer: Payer | None = None
    amount: Amount | None = None


class CloseRequest(msgspec.Struct):
    mchid: str


class RefundAmountRequest(msgspec.Struct):
    refund: msgspec.Raw
    total: msgspec.Raw
    currency: str


class RefundRequest(msgspec.Struct, omit_defaults=True):
    """Body of `POST /v3/refund/domestic/refunds` (by `out_trade_no` or `transaction_id`)."""

    out_refund_no: str
    amount: RefundAmountRequest
    out_trade_no: str | None = None
    transaction_id: str | None = None
    reason: str | None = None
    notify_url: str | None = None
    funds_account: str | None = None


class RefundAmount(msgspec.Struct, omit_defaults=True):
    total: msgspec.Raw
    refund: msgspec.Raw
    payer_total: msgspec.Raw = ABSENT
    payer_refund: msgspec.Raw = ABSENT
    currency: str | None = None  # absent from refund notifications


class Refund(msgspec.Struct, omit_defaults=True):
    """A refund as the create and query APIs answer it."""

    refund_id: str
    out_refund_no: str
    transaction_id: str
    out_trade_no: str
    status: str  # SUCCESS | PROCESSING | ABNORMAL | CLOSED
    amount: RefundAmount
    create_time: str
    channel: str = "ORIGINAL"
    user_received_account: str = ""
    success_time: str | None = None
    funds_account: str | None = None


class RefundResource(msgspec.Struct, omit_defaults=True):
    """The decrypted resource of a `REFUND.*` notification."""

    mchid: str
    out_trade_no: str
    transaction_id: str
    refund_id: str
    out_refund_no: str
    refund_status: str
    amount: RefundAmount
    user_received_account: str = ""
    success_time: str | None = None


class EncryptedResource(msgspec.Struct):
    algorithm: str
    ciphertext: str
    nonce: str
    associated_data: str = ""
    original_type: str = ""


class NotifyEnvelope(msgspec.Struct):
    """A notification's body as WeChat Pay posts it to the merchant's notify_url."""

    id: str
    create_time: str
    event_type: str  # TRANSACTION.SUCCESS | REFUND.SUCCESS | REFUND.ABNORMAL | REFUND.CLOSED
    resource_type: str
    summary: str
    resource: EncryptedResource


class ErrorAnswer(msgspec.Struct):
    code: str
    message: str = ""


class TradeBillAnswer(msgspec.Struct):
    hash_type: str
    hash_value: str
    download_url: str


def encode(message: msgspec.Struct) -> bytes:
    return msgspec.json.encode(message)


def fen_raw(fen: int) -> msgspec.Raw:
    """An amount in fen as it goes on the wire: a JSON integer."""
    return msgspec.Raw(str(fen).encode())


def fen_of(raw: msgspec.Raw) -> int:
    """The fen of a raw JSON amount: a plain non-negative integer, else `InexactAmount`."""
    return fen_from_text(bytes(raw).decode("utf-8", "replace"))


def wechat_time(at: datetime) -> str:
    """RFC 3339 in Beijing time, as WeChat writes times: `2018-06-08T10:34:56+08:00`."""
    return at.astimezone(CHINA).isoformat(timespec="seconds")


def parse_time(text: str) -> datetime:
    """A WeChat RFC 3339 time; ValueError unless it carries its offset."""
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError("time without an offset")
    return at


# ---------------------------------------------------------------------- signing strings
def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What the merchant signs for a request; `url` is the path and query as sent."""
    return f"{method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def answer_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What the platform signs for an answer or a notification."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def app_pay_message(appid: str, timestamp: str, noncestr: str, prepayid: str) -> bytes:
    """What the merchant signs for the app SDK's `PayReq` (APP payment)."""
    return f"{appid}\n{timestamp}\n{noncestr}\n{prepayid}\n".encode()


def sign(key: RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, PKCS1v15(), SHA256())).decode()


def verify(key: RSAPublicKey, message: bytes, signature: str) -> bool:
    """SHA256withRSA, PKCS#1 v1.5 (pinned: nothing in the message picks the algorithm)."""
    try:
        raw = signature_bytes(signature)
        key.verify(raw, message, PKCS1v15(), SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def timestamp_of(at: datetime) -> str:
    return str(int(at.timestamp()))


def fresh(timestamp: str, now: datetime) -> bool:
    """Whether a signed timestamp is well formed and within the allowed skew of `now`."""
    if not _TIMESTAMP_TEXT.match(timestamp):
        return False
    return abs(int(timestamp) - now.timestamp()) <= SIGNATURE_SKEW_S_MAX


def well_formed_nonce(nonce: str) -> bool:
    return bool(_NONCE_TEXT.match(nonce))


@dataclass(frozen=True)
class Authorization:
    """The parameters of a request's `Authorization` header."""

    mchid: str
    nonce_str: str
    signature: str
    timestamp: str
    serial_no: str

    def header(self) -> str:
        return (
            f'{AUTH_SCHEMA} mchid="{self.mchid}",nonce_str="{self.nonce_str}",'
            f'signature="{self.signature}",timestamp="{self.timestamp}",'
            f'serial_no="{self.serial_no}"'
        )


def parse_authorization(value: str) -> Authorization:
    """The `Authorization` header's parameters; ValueError for anything else (another schema, a
    parameter missing, repeated or unknown, a value with a quote)."""
    schema, _, rest = value.partition(" ")
    if schema != AUTH_SCHEMA:
        raise ValueError("not a WECHATPAY2-SHA256-RSA2048 authorization")
    params: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_PARAM.match(part)
        if match is None or match[1] in params:
            raise ValueError("malformed authorization parameter")
        params[match[1]] = match[2]
    if params.keys() != _AUTH_PARAMS:
        raise ValueError("authorization parameters missing or unknown")
    return Authorization(**params)


def sign_request(
    key: RSAPrivateKey, mchid: str, serial_no: str, method: str, url: str, body: bytes,
    now: datetime, nonce: str,
) -> str:  # fmt: skip
    """The `Authorization` header value for one request."""
    timestamp = timestamp_of(now)
    signature = sign(key, request_message(method, url, timestamp, nonce, body))
    return Authorization(mchid, nonce, signature, timestamp, serial_no).header()


def answer_headers(
    key: RSAPrivateKey, key_id: str, body: bytes, now: datetime, nonce: str
) -> dict[str, str]:
    """The signature headers of an answer or a notification."""
    timestamp = timestamp_of(now)
    return {
        TIMESTAMP: timestamp,
        NONCE: nonce,
        SIGNATURE: sign(key, answer_message(timestamp, nonce, body)),
        SERIAL: key_id,
        SIGNATURE_TYPE: AUTH_SCHEMA,
    }


# ---------------------------------------------------------------------- resources (AEAD)
def seal(apiv3_key: bytes, plaintext: bytes, associated_data: str, nonce: str) -> str:
    """AEAD_AES_256_GCM: base64 of ciphertext and tag, as `resource.ciphertext` carries it."""
    sealed = AESGCM(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return base64.b64encode(sealed).decode()


def open_resource(apiv3_key: bytes, resource: EncryptedResource) -> bytes:
    """The plaintext of a notification resource; ValueError for any other algorithm, a bad
    nonce, bad base64 or a tag that does not match."""
    if resource.algorithm != AEAD_ALGORITHM or len(resource.nonce) != AEAD_NONCE_CHARS:
        raise ValueError("not an AEAD_AES_256_GCM resource")
    try:
        sealed = base64.b64decode(resource.ciphertext, validate=True)
        return AESGCM(apiv3_key).decrypt(
            resource.nonce.encode(), sealed, resource.associated_data.encode()
        )
    except (binascii.Error, InvalidTag, UnicodeEncodeError) as exc:
        raise ValueError("resource does not decrypt") from exc


# ---------------------------------------------------------------------- to neutral types
# WeChat's REFUND means "a refund was made", partial ones included: the trade was paid, and only
# refund queries tell how much went back. REVOKED and PAYERROR end a trade that was never paid.
_TRADE_STATES = {
    "SUCCESS": TradeState.PAID,
    "REFUND": TradeState.PAID,
    "NOTPAY": TradeState.WAITING,
    "USERPAYING": TradeState.WAITING,
    "ACCEPT": TradeState.WAITING,
    "CLOSED": TradeState.CLOSED,
    "REVOKED": TradeState.CLOSED,
    "PAYERROR": TradeState.CLOSED,
}
# ABNORMAL: the refund is stuck (the buyer's card refused it) until the merchant handles it on
# the merchant platform; it has not failed, the money is not back with us.
_REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "PROCESSING": RefundState.PENDING,
    "ABNORMAL": RefundState.PENDING,
    "CLOSED": RefundState.FAILED,
}


def _anomaly(amounts: Iterable[msgspec.Raw], currencies: Iterable[str | None]) -> (
    Anomaly | None
):  # fmt: skip
    try:
        for raw in amounts:
            if len(raw):  # left out is fine; present (even `null`) must be whole fen
                fen_of(raw)
    except InexactAmount:
        return Anomaly.INEXACT_AMOUNT
    # A domestic merchant trades in CNY only; the field may be left out, never be another.
    if any(currency not in (None, CURRENCY) for currency in currencies):
        return Anomaly.CURRENCY
    return None


def trade_status(tx: Transaction) -> TradeStatus:
    """The neutral status of a transaction; ValueError for a state WeChat does not define or a
    paid trade without its number or time."""
    state = _TRADE_STATES.get(tx.trade_state)
    if state is None:
        raise ValueError("unknown trade_state")
    if state is not TradeState.PAID:
        return TradeStatus(tx.out_trade_no, state, channel_trade_no=tx.transaction_id)
    if tx.transaction_id is None or tx.success_time is None or tx.amount is None:
        raise ValueError("a paid transaction without transaction_id, success_time or amount")
    amount = tx.amount
    paid_at = parse_time(tx.success_time)
    anomaly = _anomaly((amount.total, amount.payer_total), (amount.currency, amount.payer_currency))
    if anomaly is not None:
        return TradeStatus(tx.out_trade_no, state, tx.transaction_id, None, paid_at, anomaly)
    return TradeStatus(tx.out_trade_no, state, tx.transaction_id, fen_of(amount.total), paid_at)


def refund_status(
    out_trade_no: str, out_refund_no: str, status: str, amount: RefundAmount
) -> RefundStatus:
    """The neutral status of a refund; ValueError for a status WeChat does not define."""
    state = _REFUND_STATES.get(status)
    if state is None:
        raise ValueError("unknown refund status")
    anomaly = _anomaly((amount.refund, amount.total, amount.payer_refund), (amount.currency,))
    if anomaly is not None:
        return RefundStatus(out_trade_no, out_refund_no, state, None, anomaly)
    return RefundStatus(out_trade_no, out_refund_no, state, fen_of(amount.refund))


# ---------------------------------------------------------------------- the trade bill
BILL_COLUMNS = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号",
    "用户标识", "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额",
    "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态",
    "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
)  # fmt: skip
BILL_SUMMARY_COLUMNS = (
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额",
    "订单总金额", "申请退款总金额",
)  # fmt: skip
BILL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
BILL_ROWS_MAX = 200_000
_BILL_FEE = re.compile(r"^(-?)([0-9]+\.[0-9]{2})(000)?$")  # five decimals, whole fen only
_BILL_FORBIDDEN = frozenset(",`\r\n")


@dataclass(frozen=True)
class BillRow:
    """One detail row of the trade bill: a payment (`trade_state` SUCCESS) or a refund (REFUND)."""

    at: datetime  # the payment's success time; the refund's acceptance time
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    trade_state: str
    bank_type: str
    settlement_fen: int  # 应结订单金额: 0 on refund rows
    refund_id: str  # "0" on payment rows
    out_refund_no: str  # "0" on payment rows
    refund_fen: int  # 退款金额
    refund_type: str  # "" on payment rows, else ORIGINAL
    refund_status: str  # "" on payment rows, else SUCCESS | PROCESSING | ...
    description: str
    attach: str
    fee_fen: int  # negative on refund rows: the fee given back
    rate: str  # "0.60%"
    total_fen: int  # 订单金额: 0 on refund rows
    refund_requested_fen: int  # 申请退款金额


def _fee_text(fee_fen: int) -> str:
    return ("-" if fee_fen < 0 else "") + fen_to_yuan(abs(fee_fen)) + "000"


def _fee_fen(text: str) -> int:
    match = _BILL_FEE.match(text)
    if match is None:
        raise InexactAmount(text)
    fen = yuan_to_fen(match[2])
    return -fen if match[1] else fen


def _row_fields(row: BillRow) -> list[str]:
    return [
        row.at.astimezone(CHINA).strftime(BILL_TIME_FORMAT), row.appid, row.mchid, "0", "",
        row.transaction_id, row.out_trade_no, row.openid, row.trade_type, row.trade_state,
        row.bank_type, CURRENCY, fen_to_yuan(row.settlement_fen), "0.00", row.refund_id,
        row.out_refund_no, fen_to_yuan(row.refund_fen), "0.00", row.refund_type,
        row.refund_status, row.description, row.attach, _fee_text(row.fee_fen), row.rate,
        fen_to_yuan(row.total_fen), fen_to_yuan(row.refund_requested_fen), "",
    ]  # fmt: skip


def _summary_fields(rows: list[BillRow]) -> list[str]:
    return [
        str(len(rows)),
        fen_to_yuan(sum(r.settlement_fen for r in rows)),
        fen_to_yuan(sum(r.refund_fen for r in rows)),
        "0.00",
        _fee_text(sum(r.fee_fen for r in rows)),
        fen_to_yuan(sum(r.total_fen for r in rows)),
        fen_to_yuan(sum(r.refund_requested_fen for r in rows)),
    ]


def format_bill(rows: list[BillRow]) -> bytes:
    """The bill file (UTF-8) with its header, back-quoted rows, summary header and summary."""
    lines = [",".join(BILL_COLUMNS)]
    for row in rows:
        fields = _row_fields(row)
        assert not any(_BILL_FORBIDDEN & set(f) for f in fields), "the sandbox cleans free text"
        lines.append(",".join("`" + f for f in fields))
    lines.append(",".join(BILL_SUMMARY_COLUMNS))
    lines.append(",".join("`" + f for f in _summary_fields(rows)))
    return ("\n".join(lines) + "\n").encode()


def _unquote(line: str, count: int) -> list[str]:
    fields = line.split(",")
    if len(fields) != count or not all(f.startswith("`") for f in fields):
        raise ValueError("a bill line with other columns")
    return [f[1:] for f in fields]


def _bill_row(fields: list[str]) -> BillRow:
    at = datetime.strptime(fields[0], BILL_TIME_FORMAT).replace(tzinfo=CHINA)
    if fields[11] != CURRENCY:
        raise ValueError("a bill row in another currency")
    return BillRow(
        at=at, appid=fields[1], mchid=fields[2], transaction_id=fields[5],
        out_trade_no=fields[6], openid=fields[7], trade_type=fields[8], trade_state=fields[9],
        bank_type=fields[10], settlement_fen=yuan_to_fen(fields[12]), refund_id=fields[14],
        out_refund_no=fields[15], refund_fen=yuan_to_fen(fields[16]), refund_type=fields[18],
        refund_status=fields[19], description=fields[20], attach=fields[21],
        fee_fen=_fee_fen(fields[22]), rate=fields[23], total_fen=yuan_to_fen(fields[24]),
        refund_requested_fen=yuan_to_fen(fields[25]),
    )  # fmt: skip


def parse_bill(data: bytes) -> list[BillRow]:
    """The detail rows of a bill file, checked against its summary row; ValueError (or its
    subclass InexactAmount) for anything that is not such a file."""
    lines = data.decode("utf-8").removeprefix("\ufeff").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 3 or tuple(lines[0].split(",")) != BILL_COLUMNS:
        raise ValueError("not a trade bill")
    if tuple(lines[-2].split(",")) != BILL_SUMMARY_COLUMNS or len(lines) - 3 > BILL_ROWS_MAX:
        raise ValueError("a trade bill without its summary")
    rows = [_bill_row(_unquote(line, len(BILL_COLUMNS))) for line in lines[1:-2]]
    _check_summary(_unquote(lines[-1], len(BILL_SUMMARY_COLUMNS)), rows)
    return rows


def _check_summary(summary: list[str], rows: list[BillRow]) -> None:
    """The summary row must count the rows and add up their amounts (compared as numbers)."""
    count, settlement, refund, _voucher, fee, total, requested = summary
    figures = (
        fen_from_text(count), yuan_to_fen(settlement), yuan_to_fen(refund), _fee_fen(fee),
        yuan_to_fen(total), yuan_to_fen(requested),
    )  # fmt: skip
    expected = (
        len(rows), sum(r.settlement_fen for r in rows), sum(r.refund_fen for r in rows),
        sum(r.fee_fen for r in rows), sum(r.total_fen for r in rows),
        sum(r.refund_requested_fen for r in rows),
    )  # fmt: skip
    if figures != expected:
        raise ValueError("the bill's rows do not add up to its summary")


def statement_line(row: BillRow) -> StatementLine:
    """A bill row as a neutral statement line; the fee of a refund line is the fee given back."""
    if row.trade_state == "SUCCESS":
        return StatementLine(
            "payment", row.out_trade_no, row.transaction_id, row.total_fen, row.fee_fen, row.at
        )
    if row.trade_state == "REFUND":
        return StatementLine(
            "refund", row.out_trade_no, row.transaction_id, row.refund_requested_fen,
            -row.fee_fen, row.at, row.out_refund_no,
        )  # fmt: skip
    raise ValueError("a bill row neither a payment nor a refund")


def bill_day(at: datetime) -> date:
    """The bill a moment belongs to: WeChat cuts days at midnight Beijing time."""
    return at.astimezone(CHINA).date()
