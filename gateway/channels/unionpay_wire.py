"""UnionPay online gateway (全渠道, acp 5.1.0) on the wire: its messages in its own field
names, its form and answer codecs, its signing string and signature, the check of the signing
certificate it sends, its daily file (ZM lines in a zip) and the conversions to and from the
neutral types.

The protocol, as the published merchant interface and the official SDKs have it:

- requests and notifications are form-encoded (`application/x-www-form-urlencoded`, UTF-8);
  synchronous answers are raw `key=value&...` text (values not escaped; a value in `{}` or `[]`
  may hold `&`), read as the SDKs' `parseQString` reads it;
- `signMethod=01`, version 5.1.0: the signing string is every field but `signature`, sorted by
  name, as `k=v` joined by `&`; its SHA-256 in lowercase hex is signed with SHA256withRSA
  (PKCS#1 v1.5) and the signature is sent in base64. Requests name the merchant's certificate
  by `certId` (its serial number, decimal); answers and notifications carry UnionPay's signing
  certificate in `signPubKeyCert`, which must chain to the trusted middle and root certificates
  and name 中国银联股份有限公司 in the third `@` part of its CN;
- times are Beijing time (`yyyyMMddHHmmss`); amounts are integer fen (`txnAmt`).

Nothing here does I/O or reads a clock: time is passed in. Never logs a field, a key or a
certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from gateway.channels.codec import signature_bytes
from gateway.channels.money import InexactAmount, fen_from_text
from gateway.channels.types import (
    Anomaly,
    RefundState,
    RefundStatus,
    StatementLine,
    TradeState,
    TradeStatus,
)

# ---------------------------------------------------------------- constants of the protocol
VERSION = "5.1.0"
ENCODING = "UTF-8"
SIGN_METHOD_RSA = "01"
CURRENCY_CNY = "156"
ACCESS_TYPE_MERCHANT = "0"  # a merchant connected directly
CHANNEL_TYPE_MOBILE = "08"
BIZ_TYPE_GATEWAY = "000201"  # B2C gateway / app payments
BIZ_TYPE_DEFAULT = "000000"  # queries and file download
FILE_TYPE_DAILY = "00"

TXN_QUERY = "00"
TXN_CONSUME = "01"
TXN_REFUND = "04"  # 退货
TXN_CONSUME_UNDO = "31"  # 消费撤销: same day, full amount, for a paid consume only
TXN_FILE = "76"
TXN_SUB_DEFAULT = "00"
TXN_SUB_CONSUME = "01"
TXN_SUB_FILE = "01"

PATH_APP = "/gateway/api/appTransReq.do"
PATH_BACK = "/gateway/api/backTransReq.do"
PATH_QUERY = "/gateway/api/queryTrans.do"
PATH_FILE = "/"  # the file host's root (filedownload.95516.com)

RESP_OK = "00"
RESP_OK_DEFECT = "A6"  # 有缺陷的成功: a success all the same
RESP_UNSURE = ("03", "04", "05")  # timeout, state unknown, accepted: ask again later
RESP_FAILED = "01"
RESP_FORMAT = "10"  # 报文格式错误
RESP_BAD_SIGNATURE = "11"  # 验证签名失败
RESP_DUPLICATE = "12"  # 重复交易
RESP_MISSING = "13"  # 报文交易要素缺失
RESP_NOT_PERMITTED = "32"  # 无此交易权限
RESP_NOT_FOUND = "34"  # 查无此交易
RESP_ORIGINAL_STATE = "35"  # 原交易不存在或状态不正确
RESP_MISMATCH = "36"  # 与原交易信息不符
RESP_NO_FILE = "98"  # 文件不存在

UNIONPAY_CN_NAME = "中国银联股份有限公司"
BEIJING = timezone(timedelta(hours=8), "CST")  # China keeps no daylight saving

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
FIELDS_MAX = 100
ZIP_BYTES_MAX = 64 * 1024 * 1024  # a day's zip, inflated from `fileContent`
FILE_ENTRIES_MAX = 64
ZM_LINES_MAX = 2_000_000

_ORDER_ID = re.compile(r"^[0-9A-Za-z]{8,40}$")  # AN8..40, no "-" or "_"
_STAMP = re.compile(r"^[0-9]{14}$")
_TRACE = re.compile(r"^[0-9]{10}$")

T = TypeVar("T", bound=msgspec.Struct)


class WireError(ValueError):
    """Not a well-formed UnionPay message (shape, encoding, signature or certificate)."""


# ---------------------------------------------------------------- messages
class _Request(msgspec.Struct, kw_only=True):
    """The fields every request to the gateway carries (acp 5.1.0 common fields)."""

    version: str
    encoding: str
    certId: str
    signMethod: str
    txnType: str
    txnSubType: str
    bizType: str
    accessType: str
    merId: str
    signature: str | None = None


class AppConsumeRequest(_Request, kw_only=True):
    """消费 (txnType 01) through the app control: UnionPay answers with a `tn`."""

    channelType: str
    orderId: str
    txnTime: str
    txnAmt: str
    currencyCode: str
    backUrl: str
    payTimeout: str | None = None
    reqReserved: str | None = None


class _Answer(msgspec.Struct, kw_only=True):
    """What every synchronous answer carries: the outcome code and message, the merchant."""

    respCode: str
    respMsg: str = ""
    merId: str = ""


class AppConsumeAnswer(_Answer, kw_only=True):
    orderId: str = ""
    txnTime: str = ""
    tn: str | None = None


class QueryRequest(_Request, kw_only=True):
    """交易状态查询 (txnType 00) by orderId + txnTime: the key of the queried transaction."""

    orderId: str
    txnTime: str


class QueryAnswer(_Answer, kw_only=True):
    orderId: str = ""
    txnTime: str = ""
    origRespCode: str | None = None
    origRespMsg: str | None = None
    queryId: str | None = None
    origQryId: str | None = None
    txnAmt: str | None = None
    currencyCode: str | None = None
    traceNo: str | None = None
    traceTime: str | None = None
    settleDate: str | None = None
    reqReserved: str | None = None


class RefundRequest(_Request, kw_only=True):
    """退货 (txnType 04): a new transaction with its own orderId, naming the consume by
    `origQryId`; the outcome comes by notification to `backUrl` or by query."""

    channelType: str
    orderId: str
    txnTime: str
    txnAmt: str
    origQryId: str
    backUrl: str
    reqReserved: str | None = None


class RefundAnswer(_Answer, kw_only=True):
    orderId: str = ""
    queryId: str | None = None
    origQryId: str | None = None
    txnAmt: str | None = None


class FileRequest(_Request, kw_only=True):
    """文件传输 (txnType 76): the merchant's files of one settlement date (MMDD)."""

    settleDate: str
    txnTime: str
    fileType: str


class FileAnswer(_Answer, kw_only=True):
    settleDate: str = ""
    fileName: str | None = None
    fileContent: str | None = None  # base64 of the zlib-deflated zip


class BackNotification(msgspec.Struct, kw_only=True):
    """后台通知 to `backUrl`: a consume (txnType 01) or a refund (04) has ended."""

    version: str
    encoding: str
    signMethod: str
    txnType: str
    txnSubType: str
    bizType: str
    accessType: str
    merId: str
    orderId: str
    txnTime: str
    respCode: str
    respMsg: str = ""
    queryId: str | None = None
    origQryId: str | None = None
    txnAmt: str | None = None
    currencyCode: str | None = None
    settleAmt: str | None = None
    settleCurrencyCode: str | None = None
    settleDate: str | None = None
    traceNo: str | None = None
    traceTime: str | None = None
    reqReserved: str | None = None


def fields_of(message: msgspec.Struct) -> dict[str, str]:
    """A message as the flat field map that is signed and sent (absent fields left out)."""
    built = msgspec.to_builtins(message)
    assert isinstance(built, dict)
    return {str(name): str(value) for name, value in built.items() if value is not None}


def message_from(fields: Mapping[str, str], kind: type[T]) -> T:
    """The fields as a `kind`; other fields are allowed (the channel adds fields freely)."""
    try:
        return msgspec.convert(dict(fields), kind, strict=True)
    except msgspec.ValidationError as exc:
        raise WireError(f"not a {kind.__name__}") from exc


# ---------------------------------------------------------------- codecs
def encode_form(fields: Mapping[str, str]) -> bytes:
    return urllib.parse.urlencode(list(fields.items())).encode("ascii")


def decode_form(body: bytes) -> dict[str, str]:
    """A form body, strictly: UTF-8, every pair `k=v`, no name twice, at most FIELDS_MAX."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
            max_num_fields=FIELDS_MAX, errors="strict",
        )  # fmt: skip
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("not a form") from exc
    return _unique(pairs)


def encode_answer(fields: Mapping[str, str]) -> bytes:
    """An answer as UnionPay sends it: `k=v&...`, values as they are."""
    for value in fields.values():
        if "&" in value and not _nested(value):
            raise ValueError("a value with '&' cannot be sent in an answer")
    return "&".join(f"{name}={value}" for name, value in fields.items()).encode("utf-8")


def decode_answer(body: bytes) -> dict[str, str]:
    """An answer read as the SDKs read it: `&` splits pairs except inside `{}` or `[]`, the
    first `=` splits a pair."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("answer is not UTF-8") from exc
    pairs: list[tuple[str, str]] = []
    start, closer = 0, ""
    for index, char in enumerate(text + "&"):
        if closer:
            closer = "" if char == closer else closer
        elif char in "{[":
            closer = "}" if char == "{" else "]"
        elif char == "&":
            name, equals, value = text[start:index].partition("=")
            if not name or not equals:
                raise WireError("answer pair without a name")
            pairs.append((name, value))
            start = index + 1
    if len(pairs) > FIELDS_MAX:
        raise WireError("too many fields")
    return _unique(pairs)


def _nested(value: str) -> bool:
    return (value[:1], value[-1:]) in (("{", "}"), ("[", "]"))


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise WireError("a field appears twice")
    return fields


# ---------------------------------------------------------------- signatures
def signing_text(fields: Mapping[str, str]) -> str:
    """Every field but `signature`, sorted by name, as `k=v` joined by `&`."""
    return "&".join(f"{name}={fields[name]}" for name in sorted(fields) if name != "signature")


def _digest_hex(fields: Mapping[str, str]) -> bytes:
    # 5.1.0 signs the hex text of the SHA-256, not the SHA-256 itself.
    return hashlib.sha256(signing_text(fields).encode("utf-8")).hexdigest().encode("ascii")


def sign(fields: Mapping[str, str], key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The fields with their `signature` (base64 SHA256withRSA over the hex digest)."""
    signature = key.sign(_digest_hex(fields), padding.PKCS1v15(), hashes.SHA256())
    return {**fields, "signature": base64.b64encode(signature).decode("ascii")}


def signature_valid(fields: Mapping[str, str], key: rsa.RSAPublicKey) -> bool:
    try:
        signature = signature_bytes(fields.get("signature", ""))
        key.verify(signature, _digest_hex(fields), padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class Trust:
    """UnionPay's root and middle certificates, as its console hands them to a merchant."""

    root: x509.Certificate
    middle: x509.Certificate

    @classmethod
    def from_pems(cls, root_pem: str, middle_pem: str) -> Trust:
        try:
            root = x509.load_pem_x509_certificate(root_pem.encode("ascii"))
            middle = x509.load_pem_x509_certificate(middle_pem.encode("ascii"))
            middle.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError("the middle certificate is not issued by the root") from exc
        for cert in (root, middle):
            if not _is_ca(cert):
                raise ValueError("a trusted certificate is not a CA")
        return cls(root, middle)


def signing_key(cert_pem: str, trust: Trust, now: datetime) -> rsa.RSAPublicKey:
    """The key of a `signPubKeyCert`, once it is shown to be UnionPay's: issued by the
    trusted middle certificate (itself issued by the root), all three valid at `now`, and
    naming UnionPay in its CN. `WireError` otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        cert.verify_directly_issued_by(trust.middle)
        trust.middle.verify_directly_issued_by(trust.root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise WireError("signing certificate not issued by the trusted root") from exc
    for each in (cert, trust.middle, trust.root):
        if not each.not_valid_before_utc <= now <= each.not_valid_after_utc:
            raise WireError("a certificate is not valid now")
    if identity(cert) != UNIONPAY_CN_NAME:
        raise WireError("signing certificate is not UnionPay's")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WireError("signing certificate has no RSA key")
    return key


def identity(cert: x509.Certificate) -> str | None:
    """The owner named in a CFCA-style CN `041@<id>@<owner>@<seq>` (its third part)."""
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        parts = str(attribute.value).split("@")
        if len(parts) > 2:
            return parts[2]
    return None


def cert_id(cert: x509.Certificate) -> str:
    """How a request names the merchant's signing certificate: its serial, in decimal."""
    return str(cert.serial_number)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# ---------------------------------------------------------------- times and numbers
def stamp(at: datetime) -> str:
    """`txnTime`, `payTimeout`: Beijing time, yyyyMMddHHmmss."""
    return at.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def parse_stamp(text: str) -> datetime:
    if not _STAMP.match(text):
        raise WireError("not a yyyyMMddHHmmss time")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    except ValueError as exc:
        raise WireError("not a yyyyMMddHHmmss time") from exc


def trace_stamp(at: datetime) -> str:
    """`traceTime` and the daily file's times: Beijing time, MMddHHmmss (no year)."""
    return at.astimezone(BEIJING).strftime("%m%d%H%M%S")


def from_trace(text: str, near: datetime) -> datetime:
    """A year-less MMddHHmmss, in the year that puts it nearest to `near`."""
    if not _TRACE.match(text):
        raise WireError("not a MMddHHmmss time")
    month, day = int(text[0:2]), int(text[2:4])
    hour, minute, second = int(text[4:6]), int(text[6:8]), int(text[8:10])
    candidates = []
    for year in (near.year - 1, near.year, near.year + 1):
        try:
            candidates.append(datetime(year, month, day, hour, minute, second, tzinfo=BEIJING))
        except ValueError:
            continue  # 29 February of a common year, or no such date at all
    if not candidates:
        raise WireError("not a MMddHHmmss time")
    return min(candidates, key=lambda at: abs(at - near))


def beijing_day(at: datetime) -> date:
    return at.astimezone(BEIJING).date()


def order_number(at: datetime, suffix: str) -> str:
    """A number for UnionPay's `orderId` that also keeps its `txnTime`: the Beijing time it
    was made, then an alphanumeric suffix (at most 26 characters)."""
    number = stamp(at) + suffix
    if not _ORDER_ID.match(number):
        raise ValueError("an order number is 8 to 40 letters and digits")
    return number


def txn_time_of(number: str) -> str:
    """The `txnTime` kept in an order number made by `order_number`.

    UnionPay names a transaction by merId + orderId + txnTime, and a query must give the
    txnTime the transaction was sent with; the neutral `query(out_trade_no)` has only the
    number, so the number carries the time (a convention of this gateway's numbers)."""
    if not _ORDER_ID.match(number) or len(number) < 14:
        raise ValueError("not an order number made by order_number()")
    try:
        parse_stamp(number[:14])
    except WireError as exc:
        raise ValueError("not an order number made by order_number()") from exc
    return number[:14]


# ---------------------------------------------------------------- to the neutral types
def is_success(code: str | None) -> bool:
    return code in (RESP_OK, RESP_OK_DEFECT)


def amount_of(txn_amt: str | None, currency_code: str | None) -> tuple[int | None, Anomaly | None]:
    """What the channel says was paid, in fen; an anomaly instead of a guess."""
    if currency_code != CURRENCY_CNY:
        return None, Anomaly.CURRENCY
    try:
        return fen_from_text(txn_amt or ""), None
    except InexactAmount:
        return None, Anomaly.INEXACT_AMOUNT


def paid_at(trace_time: str | None, txn_time: str) -> datetime | None:
    """When it was paid: `traceTime` has no year, the order's `txnTime` gives it."""
    if trace_time is None:
        return None
    try:
        return from_trace(trace_time, parse_stamp(txn_time))
    except WireError:
        return None


def trade_status_from_query(out_trade_no: str, answer: QueryAnswer) -> TradeStatus:
    """A consume that the query found (`respCode` 00)."""
    if not is_success(answer.origRespCode):
        # Not (yet) paid: a failed or unfinished attempt; the buyer may pay until payTimeout.
        return TradeStatus(out_trade_no, TradeState.WAITING, channel_trade_no=answer.queryId)
    amount_fen, anomaly = amount_of(answer.txnAmt, answer.currencyCode)
    return TradeStatus(
        out_trade_no, TradeState.PAID, channel_trade_no=answer.queryId, amount_fen=amount_fen,
        paid_at=paid_at(answer.traceTime, answer.txnTime), anomaly=anomaly,
    )  # fmt: skip


def trade_status_from_notification(notification: BackNotification) -> TradeStatus:
    if not is_success(notification.respCode):
        return TradeStatus(
            notification.orderId, TradeState.WAITING, channel_trade_no=notification.queryId
        )
    amount_fen, anomaly = amount_of(notification.txnAmt, notification.currencyCode)
    return TradeStatus(
        notification.orderId, TradeState.PAID, channel_trade_no=notification.queryId,
        amount_fen=amount_fen, paid_at=paid_at(notification.traceTime, notification.txnTime),
        anomaly=anomaly,
    )  # fmt: skip


def refund_state(code: str | None) -> RefundState:
    if is_success(code):
        return RefundState.SUCCEEDED
    if code in RESP_UNSURE:
        return RefundState.PENDING
    return RefundState.FAILED


def refund_status(
    out_trade_no: str, out_refund_no: str, code: str | None, txn_amt: str | None
) -> RefundStatus:
    """A refund's state; its amount in fen (a refund is always in the consume's currency,
    so only the amount's form can be wrong)."""
    try:
        refund_fen, anomaly = fen_from_text(txn_amt or ""), None
    except InexactAmount:
        refund_fen, anomaly = None, Anomaly.INEXACT_AMOUNT
    return RefundStatus(
        out_trade_no, out_refund_no, refund_state(code), refund_fen=refund_fen, anomaly=anomaly
    )


# ---------------------------------------------------------------- the daily file
# One line of the ZM file (全渠道商户一般交易明细, INN<yyMMdd>88ZM_<merId>): fixed widths in
# bytes (GBK), one space between fields, CRLF after each line.
ZM_FIELDS: tuple[tuple[str, int], ...] = (
    ("tradeNo", 3), ("acqInsCode", 11), ("sendInsCode", 11), ("traceNo", 6), ("txnTime", 10),
    ("payCardNo", 19), ("txnAmt", 12), ("merCatCode", 4), ("termType", 2), ("queryId", 21),
    ("oldPayType", 2), ("orderId", 32), ("payCardType", 2), ("origTraceNo", 6),
    ("origTxnTime", 10), ("merCharge", 13), ("settleAmt", 13), ("payType", 4),
    ("groupMerCode", 15), ("txnType", 2), ("txnSubType", 2), ("bizType", 6), ("accType", 2),
    ("billType", 4), ("billNo", 32), ("interactMode", 1), ("origQryId", 21), ("merId", 15),
    ("accountType", 1), ("subMerId", 15), ("subMerAbbr", 32), ("subMerAccountAmt", 13),
    ("settleNetAmt", 13), ("termId", 8), ("merReserved", 32), ("discountAmt", 13),
    ("invoiceAmt", 13), ("insAdditionCharge", 12), ("installmentNum", 2), ("tradeMedia", 1),
    ("origOrderId", 32), ("reserved", 98),
)  # fmt: skip
ZM_LINE_BYTES = sum(width for _, width in ZM_FIELDS) + len(ZM_FIELDS) - 1
TRADE_CODE_CONSUME = "S22"
TRADE_CODE_REFUND = "S30"
_FILE_CHARSET = "gbk"


def zm_file_name(day: date, mer_id: str) -> str:
    return f"INN{day:%y%m%d}88ZM_{mer_id}"


def zip_name(day: date, mer_id: str) -> str:
    return f"{mer_id}_{day:%Y%m%d}.zip"


def encode_zm_line(values: Mapping[str, str]) -> bytes:
    cells = []
    for name, width in ZM_FIELDS:
        cell = values.get(name, "").encode(_FILE_CHARSET)
        if len(cell) > width:
            raise ValueError(f"{name} is wider than {width} bytes")
        cells.append(cell.ljust(width))
    return b" ".join(cells) + b"\r\n"


def decode_zm_line(line: bytes) -> dict[str, str]:
    line = line.rstrip(b"\r\n")
    if len(line) > ZM_LINE_BYTES:
        raise WireError("ZM line too long")
    line = line.ljust(ZM_LINE_BYTES)  # trailing blanks may have been cut
    values, start = {}, 0
    for name, width in ZM_FIELDS:
        try:
            values[name] = line[start : start + width].decode(_FILE_CHARSET).strip()
        except UnicodeDecodeError as exc:
            raise WireError(f"{name} is not GBK") from exc
        start += width + 1
    return values


def signed_amount(fen: int, credit: bool) -> str:
    """A file amount: C (credit to the merchant) or D (debit) and 12 digits of fen."""
    return ("C" if credit else "D") + f"{fen:012d}"


def amount_of_signed(text: str) -> int:
    if len(text) != 13 or text[0] not in "CD" or not text[1:].isdigit():
        raise WireError("not a C/D amount")
    return int(text[1:])


def pack_file_content(files: Mapping[str, bytes]) -> str:
    """`fileContent`: the zip of the day's files, deflated (zlib), in base64."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")


def zm_lines(text: str) -> Iterator[bytes]:
    """The lines of the ZM files in a `fileContent`. The zip stays compressed in memory and
    is read line by line; every size is bounded (no zip bombs)."""
    try:
        inflater = zlib.decompressobj()
        archive_bytes = inflater.decompress(base64.b64decode(text, validate=True), ZIP_BYTES_MAX)
        if inflater.unconsumed_tail:
            raise WireError("file too large")
        with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
            entries = [entry for entry in archive.infolist() if is_zm_file(entry.filename)]
            if len(archive.infolist()) > FILE_ENTRIES_MAX:
                raise WireError("too many files")
            count = 0
            for entry in entries:
                with archive.open(entry) as file:
                    # A line longer than a ZM line is read only that far, then refused.
                    for line in iter(lambda: file.readline(ZM_LINE_BYTES + 3), b""):
                        count += 1
                        if count > ZM_LINES_MAX or len(line) > ZM_LINE_BYTES + 2:
                            raise WireError("file too large")
                        yield line
    except (binascii.Error, zlib.error, zipfile.BadZipFile, EOFError) as exc:
        raise WireError("not a UnionPay file") from exc


def is_zm_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("INN") and "ZM_" in base


def statement_line(values: Mapping[str, str], day: date) -> StatementLine | None:
    """A consume or refund of the ZM file; None for any other kind of line."""
    kind = {TXN_CONSUME: "payment", TXN_REFUND: "refund"}.get(values.get("txnType", ""))
    if kind is None:
        return None
    amount = values.get("txnAmt", "")
    if len(amount) != 12 or not amount.isdigit():
        raise WireError("txnAmt is not 12 digits")
    near = datetime(day.year, day.month, day.day, 12, tzinfo=BEIJING)
    refund = kind == "refund"
    return StatementLine(
        kind=kind,
        out_trade_no=values.get("origOrderId", "") if refund else values.get("orderId", ""),
        channel_trade_no=values.get("queryId", ""),
        amount_fen=int(amount),
        fee_fen=amount_of_signed(values.get("merCharge", "")),
        at=from_trace(values.get("txnTime", ""), near),
        out_refund_no=values.get("orderId") if refund else None,
    )
