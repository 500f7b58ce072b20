"""The UnionPay connector against the UnionPay sandbox, over real HTTP with real crypto.

There is no official UnionPay server SDK for Python, so the protocol is pinned here by
computing signatures independently, step by step as UnionPay publishes the algorithm, and
comparing them with what the connector sends and what the sandbox answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import secrets
import urllib.parse
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channels import unionpay_wire as wire
from gateway.channels.executor import Executor
from gateway.channels.sandbox.base import Sandbox, Trade
from gateway.channels.sandbox.unionpay import fee_of
from gateway.channels.types import (
    Ack,
    BadNotification,
    Channel,
    ChannelRefused,
    ChannelUnavailable,
    PaymentOrder,
    RefundOrder,
    RefundState,
    TradeState,
)
from gateway.channels.unionpay import UnionPayConnector, UnionPayCredentials
from tests.gateway.channels.conftest import Receiver, SandboxFactory, misbehave, pay_in_app

BEIJING = timezone(timedelta(hours=8))


@dataclass
class Setup:
    base_url: str
    sandbox: Sandbox
    credentials: dict[str, Any]
    connector: UnionPayConnector


@pytest.fixture
async def union(start_sandbox: SandboxFactory, executor: Executor) -> AsyncIterator[Setup]:
    base_url, sandbox = await start_sandbox("unionpay")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/credentials") as response:
            credentials = await response.json()
    connector = UnionPayConnector(executor, UnionPayCredentials.from_mapping(credentials))
    yield Setup(base_url, sandbox, credentials, connector)


def number() -> str:
    return wire.order_number(datetime.now(UTC), secrets.token_hex(6))


def order(receiver: Receiver, amount_fen: int = 8888, expires_in_s: float = 900) -> PaymentOrder:
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in_s)
    return PaymentOrder(number(), amount_fen, "top-up", receiver.url, expires_at)


async def paid(union: Setup, receiver: Receiver, amount_fen: int) -> str:
    """A trade created, paid in the app and notified; its out_trade_no."""
    count = len(receiver.received)
    ordered = order(receiver, amount_fen)
    payment = await union.connector.create_payment(ordered)
    await pay_in_app(union.base_url, payment.params["tn"])
    await receiver.wait(count + 1)
    return ordered.out_trade_no


def parse(union: Setup, index: int, receiver: Receiver) -> Any:
    got = receiver.received[index]
    return union.connector.parse_notification(got.headers, got.body, got.content_type)


# ---------------------------------------------------------------------- the happy path
async def test_create_pay_notify_and_query(union: Setup, receiver: Receiver) -> None:
    ordered = order(receiver, 8888)
    payment = await union.connector.create_payment(ordered)
    assert payment.channel is Channel.UNIONPAY
    tn = payment.params["tn"]
    assert len(tn) == 21 and tn.isdigit() and payment.params["mode"] == "01"

    # UnionPay knows a consume once it is paid: a tn alone is no transaction.
    before = await union.connector.query(ordered.out_trade_no)
    assert before.state is TradeState.NOT_FOUND

    await pay_in_app(union.base_url, tn)
    await receiver.wait(1)
    notification = parse(union, 0, receiver)
    assert notification.ack == Ack(status=200, body=b"ok")
    status = notification.payment
    assert (status.out_trade_no, status.state, status.amount_fen, status.anomaly) == (
        ordered.out_trade_no, TradeState.PAID, 8888, None,
    )  # fmt: skip
    assert len(status.channel_trade_no) == 21
    assert abs(status.paid_at - datetime.now(UTC)) < timedelta(seconds=5)

    after = await union.connector.query(ordered.out_trade_no)
    assert (after.state, after.amount_fen, after.channel_trade_no) == (
        TradeState.PAID, 8888, status.channel_trade_no,
    )  # fmt: skip
    # Asking again for the same order (a retry) gets the same tn, not a second order.
    assert await union.connector.create_payment(ordered) == payment


async def test_unionpay_orders_expire_at_pay_timeout(union: Setup, receiver: Receiver) -> None:
    ordered = order(receiver, 500, expires_in_s=1.0)
    payment = await union.connector.create_payment(ordered)
    await union.connector.close(ordered.out_trade_no)  # not paid: nothing to refuse
    await asyncio.sleep(1.2)  # past payTimeout (whole seconds)
    async with aiohttp.ClientSession() as session:
        pay = {"token": payment.params["tn"]}
        async with session.post(f"{union.base_url}/sandbox/pay", data=pay) as response:
            assert response.status == 409
    assert union.sandbox.trades[ordered.out_trade_no].state == "closed"
    assert (await union.connector.query(ordered.out_trade_no)).state is TradeState.NOT_FOUND
    assert receiver.received == []

    out_trade_no = await paid(union, receiver, 100)
    with pytest.raises(ChannelRefused) as refused:
        await union.connector.close(out_trade_no)
    assert refused.value.code == "TRADE_PAID"


async def test_unknown_trades(union: Setup, receiver: Receiver) -> None:
    unknown = number()
    assert (await union.connector.query(unknown)).state is TradeState.NOT_FOUND
    refund = await union.connector.refund_query(unknown, number())
    assert refund.state is RefundState.NOT_FOUND
    with pytest.raises(ChannelRefused) as refused:
        await union.connector.refund(RefundOrder(unknown, number(), 1, 1, "", receiver.url))
    assert refused.value.code == wire.RESP_ORIGINAL_STATE


# ---------------------------------------------------------------------- refunds
async def test_partial_and_full_refunds(union: Setup, receiver: Receiver) -> None:
    out_trade_no = await paid(union, receiver, 1000)
    first, second = number(), number()

    pending = await union.connector.refund(
        RefundOrder(out_trade_no, first, 300, 1000, "rider asked", receiver.url)
    )
    assert (pending.state, pending.refund_fen) == (RefundState.PENDING, 300)
    await receiver.wait(2)
    notified = parse(union, 1, receiver).refund
    assert (notified.out_trade_no, notified.out_refund_no, notified.state, notified.refund_fen) == (
        out_trade_no, first, RefundState.SUCCEEDED, 300,
    )  # fmt: skip
    queried = await union.connector.refund_query(out_trade_no, first)
    assert (queried.state, queried.refund_fen) == (RefundState.SUCCEEDED, 300)

    await union.connector.refund(RefundOrder(out_trade_no, second, 700, 1000, "", receiver.url))
    with pytest.raises(ChannelRefused) as refused:
        await union.connector.refund(RefundOrder(out_trade_no, number(), 1, 1000, "", receiver.url))
    assert refused.value.code == wire.RESP_MISMATCH
    assert union.sandbox.trades[out_trade_no].state == "refunded"
    assert (await union.connector.refund_query(out_trade_no, second)).refund_fen == 700


# ---------------------------------------------------------------------- bad and odd notifications
async def test_tampered_notification_is_refused(union: Setup, receiver: Receiver) -> None:
    await misbehave(union.base_url, ["tampered"])
    await paid(union, receiver, 100)
    got = receiver.received[0]
    with pytest.raises(BadNotification):
        union.connector.parse_notification(got.headers, got.body, got.content_type)


async def test_every_kind_of_bad_input_is_one_opaque_failure(
    union: Setup, receiver: Receiver
) -> None:
    await paid(union, receiver, 100)
    got = receiver.received[0]
    fields = dict(urllib.parse.parse_qsl(got.body.decode()))
    changed = {**fields, "txnAmt": "10000"}
    bad_bodies = [
        b"", b"not a form", got.body + b"&txnAmt=1", urllib.parse.urlencode(changed).encode(),
        urllib.parse.urlencode({**fields, "signMethod": "11"}).encode(), b"\xff\xfe",
        urllib.parse.urlencode({k: v for k, v in fields.items() if k != "signature"}).encode(),
    ]  # fmt: skip
    for body in bad_bodies:
        with pytest.raises(BadNotification):
            union.connector.parse_notification({}, body, got.content_type)
    with pytest.raises(BadNotification):
        union.connector.parse_notification({}, got.body, "application/json")


async def test_wrong_amount_is_reported_as_notified(union: Setup, receiver: Receiver) -> None:
    await misbehave(union.base_url, ["wrong_amount"])
    await paid(union, receiver, 2500)
    assert parse(union, 0, receiver).payment.amount_fen == 2501


async def test_duplicate_stale_and_unknown_notifications_parse_faithfully(
    union: Setup, receiver: Receiver
) -> None:
    await misbehave(union.base_url, ["duplicate", "out_of_order", "unknown_order"])
    out_trade_no = await paid(union, receiver, 300)
    await receiver.wait(4)
    states = [parse(union, index, receiver).payment for index in range(4)]
    assert [(s.out_trade_no, s.state) for s in states] == [
        (out_trade_no, TradeState.PAID), (out_trade_no, TradeState.PAID),
        (out_trade_no, TradeState.WAITING), ("UNKNOWN" + out_trade_no, TradeState.PAID),
    ]  # fmt: skip


async def test_no_notification_only_query_finds_the_payment(
    union: Setup, receiver: Receiver
) -> None:
    await misbehave(union.base_url, ["no_notify"])
    ordered = order(receiver, 700)
    payment = await union.connector.create_payment(ordered)
    await pay_in_app(union.base_url, payment.params["tn"])
    await asyncio.sleep(0.3)
    assert receiver.received == []
    status = await union.connector.query(ordered.out_trade_no)
    assert (status.state, status.amount_fen) == (TradeState.PAID, 700)


# ---------------------------------------------------------------------- an absent channel
async def test_5xx_is_retried_then_unavailable(union: Setup, receiver: Receiver) -> None:
    await misbehave(union.base_url, ["error_5xx"], errors=1)
    await union.connector.create_payment(order(receiver))  # the executor's retry gets through
    await misbehave(union.base_url, ["error_5xx"])
    with pytest.raises(ChannelUnavailable):
        await union.connector.create_payment(order(receiver))


async def test_timeout_is_unavailable(union: Setup, receiver: Receiver) -> None:
    await misbehave(union.base_url, ["timeout"])
    with pytest.raises(ChannelUnavailable):
        await union.connector.query(number())


async def test_answers_from_an_untrusted_or_expired_certificate_are_unavailable(
    union: Setup, executor: Executor, receiver: Receiver
) -> None:
    credentials = UnionPayCredentials.from_mapping(union.credentials)
    later = UnionPayConnector(executor, credentials, now=lambda: datetime(2099, 1, 1, tzinfo=UTC))
    with pytest.raises(ChannelUnavailable):
        await later.query(number())
    await paid(union, receiver, 100)
    got = receiver.received[0]
    with pytest.raises(BadNotification):
        later.parse_notification(got.headers, got.body, got.content_type)


async def test_a_request_the_channel_cannot_verify_is_refused(
    union: Setup, executor: Executor
) -> None:
    good = UnionPayCredentials.from_mapping(union.credentials)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = UnionPayCredentials(
        good.mer_id, other_key, good.cert_id, good.trust, good.base_url, good.file_url
    )
    with pytest.raises(ChannelRefused) as refused:
        await UnionPayConnector(executor, forged).query(number())
    assert refused.value.code == wire.RESP_BAD_SIGNATURE


# ---------------------------------------------------------------------- the daily file
async def test_statement_lines_and_fees(union: Setup, receiver: Receiver) -> None:
    big = await paid(union, receiver, 10_000)
    small = await paid(union, receiver, 1_234)
    refund_no = number()
    await union.connector.refund(RefundOrder(big, refund_no, 300, 10_000, "", receiver.url))
    today = datetime.now(BEIJING).date()

    statement = await union.connector.statement(today)
    lines = {(line.kind, line.out_trade_no): line for line in statement.lines}
    assert set(lines) == {("payment", big), ("payment", small), ("refund", big)}
    assert len(statement.lines) == 3
    assert (lines["payment", big].amount_fen, lines["payment", big].fee_fen) == (10_000, 60)
    assert (lines["payment", small].amount_fen, lines["payment", small].fee_fen) == (1_234, 7)
    refund = lines["refund", big]
    assert (refund.amount_fen, refund.fee_fen, refund.out_refund_no) == (300, 2, refund_no)
    trade = union.sandbox.trades[big]
    assert trade.paid_at is not None
    assert lines["payment", big].channel_trade_no == trade.trade_no
    assert lines["payment", big].at == trade.paid_at.replace(microsecond=0)
    assert (await union.connector.statement(today - timedelta(days=2))).lines == []


async def test_a_busy_days_statement_arrives_whole(union: Setup) -> None:
    paid_at = datetime.now(UTC)
    for index in range(20_000):  # a busy day's top-ups, straight into the channel's books
        trade = Trade(
            out_trade_no=number(), trade_no=f"{index:021d}", amount_fen=100 + index,
            subject="", notify_url="http://127.0.0.1/", state="paid", created_at=paid_at,
            paid_at=paid_at, extra={"txnTime": wire.stamp(paid_at), "tn": str(index)},
        )  # fmt: skip
        union.sandbox.trades[trade.out_trade_no] = trade
    statement = await union.connector.statement(datetime.now(BEIJING).date())
    assert len(statement.lines) == 20_000


# ---------------------------------------------------------------------- the protocol, pinned
def independent_signature(fields: dict[str, str], key: rsa.RSAPrivateKey) -> str:
    """UnionPay 5.1.0, signMethod 01, as published: sort the fields but `signature` by name,
    join `k=v` with `&`, SHA-256 it, sign the lowercase hex text with SHA256withRSA."""
    text = "&".join(f"{name}={fields[name]}" for name in sorted(fields) if name != "signature")
    digest_hex = hashlib.sha256(text.encode("utf-8")).hexdigest()
    signature = key.sign(digest_hex.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def independent_check(fields: dict[str, str], root_pem: str, middle_pem: str) -> None:
    """The certificate chain (sign <- middle <- root), its owner, then the signature."""
    cert = x509.load_pem_x509_certificate(fields["signPubKeyCert"].encode())
    middle = x509.load_pem_x509_certificate(middle_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    for issued, issuer in ((cert, middle), (middle, root)):
        assert issued.issuer == issuer.subject
        rsa_key(issuer).verify(
            issued.signature, issued.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256()
        )
    [common_name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(common_name.value).split("@")[2] == "中国银联股份有限公司"
    text = "&".join(f"{name}={fields[name]}" for name in sorted(fields) if name != "signature")
    digest_hex = hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")
    signature = base64.b64decode(fields["signature"])
    rsa_key(cert).verify(signature, digest_hex, padding.PKCS1v15(), hashes.SHA256())


def rsa_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def split_answer(body: bytes) -> dict[str, str]:
    """An answer as UnionPay's SDKs split it (none of ours nests `{}` or `[]`)."""
    return dict(pair.partition("=")[::2] for pair in body.decode().split("&"))


def merchant_key(credentials: dict[str, Any]) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(credentials["merchant_private_key_pem"].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A stand-in gateway that records what is posted to it and answers 500."""
    bodies: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post(wire.PATH_QUERY, record)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), bodies
    await server.close()


async def test_the_connector_signs_as_unionpay_publishes(
    union: Setup, executor: Executor, recorder: tuple[str, list[bytes]]
) -> None:
    url, bodies = recorder
    credentials = UnionPayCredentials.from_mapping({**union.credentials, "base_url": url})
    out_trade_no = number()
    with pytest.raises(ChannelUnavailable):
        await UnionPayConnector(executor, credentials).query(out_trade_no)
    sent = dict(urllib.parse.parse_qsl(bodies[0].decode(), strict_parsing=True))
    assert {k: sent[k] for k in ("version", "signMethod", "txnType", "orderId", "txnTime")} == {
        "version": "5.1.0", "signMethod": "01", "txnType": "00", "orderId": out_trade_no,
        "txnTime": out_trade_no[:14],
    }  # fmt: skip
    merchant_cert = x509.load_pem_x509_certificate(union.credentials["merchant_cert_pem"].encode())
    assert sent["certId"] == str(merchant_cert.serial_number)
    # PKCS#1 v1.5 is deterministic: the same key over the same text gives the same bytes.
    assert sent["signature"] == independent_signature(sent, merchant_key(union.credentials))


async def test_a_merchant_signing_by_hand_is_answered_as_unionpay_answers(
    union: Setup, receiver: Receiver
) -> None:
    """What a merchant using UnionPay's SDK sends, built by hand; the answer checked by hand."""
    out_trade_no = await paid(union, receiver, 4321)
    credentials = union.credentials
    today = datetime.now(BEIJING)
    requests = [
        (wire.PATH_QUERY, {"txnType": "00", "txnSubType": "00", "bizType": "000000",
                           "orderId": out_trade_no, "txnTime": out_trade_no[:14]}),
        (wire.PATH_FILE, {"txnType": "76", "txnSubType": "01", "bizType": "000000",
                          "settleDate": f"{today:%m%d}", "txnTime": f"{today:%Y%m%d%H%M%S}",
                          "fileType": "00"}),
    ]  # fmt: skip
    answers = []
    async with aiohttp.ClientSession() as session:
        for path, specific in requests:
            fields = {
                "version": "5.1.0", "encoding": "UTF-8", "signMethod": "01", "accessType": "0",
                "merId": credentials["mer_id"], "certId": credentials["cert_id"], **specific,
            }  # fmt: skip
            fields["signature"] = independent_signature(fields, merchant_key(credentials))
            async with session.post(union.base_url + path, data=fields) as response:
                assert response.status == 200
                answers.append(split_answer(await response.read()))
    for answer in answers:
        assert answer["respCode"] == "00"
        independent_check(
            answer, credentials["unionpay_root_cert_pem"], credentials["unionpay_middle_cert_pem"]
        )
    query, file = answers
    assert (query["origRespCode"], query["txnAmt"]) == ("00", "4321")
    assert query["orderId"] == out_trade_no
    check_zm_file(file, credentials["mer_id"], today.date(), out_trade_no)


def check_zm_file(answer: dict[str, str], mer_id: str, day: date, out_trade_no: str) -> None:
    """The zip, read by hand: deflated, base64, one ZM file of fixed-width GBK lines."""
    assert answer["fileName"] == f"{mer_id}_{day:%Y%m%d}.zip"
    archive = zipfile.ZipFile(io.BytesIO(zlib.decompress(base64.b64decode(answer["fileContent"]))))
    [name] = archive.namelist()
    assert name == f"INN{day:%y%m%d}88ZM_{mer_id}"
    [line] = archive.read(name).split(b"\r\n")[:-1]
    assert len(line) == 607
    assert line[0:3] == b"S22"
    assert line[66:78] == b"000000004321"  # txnAmt: 12 digits of fen
    assert line[112:144].rstrip() == out_trade_no.encode()  # orderId
    assert line[166:179] == b"D%012d" % fee_of(4321)  # merCharge: the fee, debited
    assert line[215:217] == b"01"  # txnType


async def test_a_certificate_not_issued_by_the_trusted_root_is_refused(
    union: Setup, receiver: Receiver
) -> None:
    await paid(union, receiver, 100)
    fields = dict(urllib.parse.parse_qsl(receiver.received[0].body.decode()))
    foreign_key, foreign_pem = foreign_unionpay_certificate()
    forged = {**fields, "signPubKeyCert": foreign_pem}
    forged["signature"] = independent_signature(forged, foreign_key)
    body = urllib.parse.urlencode(forged).encode()
    with pytest.raises(BadNotification):
        union.connector.parse_notification({}, body, "application/x-www-form-urlencoded")
    # The forgery is well signed by its own key: it is the chain that refuses it.
    assert wire.signature_valid(forged, foreign_key.public_key())


def foreign_unionpay_certificate() -> tuple[rsa.RSAPrivateKey, str]:
    """A root, a middle and a signing certificate that names UnionPay: not ours to trust."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    names = ["FORGED ROOT", "FORGED OCA1", "041@Z1@中国银联股份有限公司@00000001"]
    issuer_name, issuer_key, cert = None, keys[0], None
    for key, common_name in zip(keys, names, strict=True):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = datetime.now(UTC) - timedelta(days=1)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=key is not keys[2], path_length=None), True)
            .sign(issuer_key, hashes.SHA256())
        )  # fmt: skip
        issuer_name, issuer_key = subject, key
    assert cert is not None
    return keys[2], cert.public_bytes(serialization.Encoding.PEM).decode()


# ---------------------------------------------------------------------- credentials
async def test_credentials_from_the_console_mapping(union: Setup) -> None:
    credentials = UnionPayCredentials.from_mapping(union.credentials)
    assert credentials.base_url == union.base_url and credentials.file_url == union.base_url + "/"
    assert "PRIVATE" not in repr(credentials) and credentials.mer_id in repr(credentials)
    broken: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
        lambda m: {**m, "mer_id": "12"},
        lambda m: {**m, "cert_id": "1"},
        lambda m: {k: v for k, v in m.items() if k != "unionpay_middle_cert_pem"},
        lambda m: {**m, "unionpay_root_cert_pem": m["unionpay_middle_cert_pem"]},
        lambda m: {**m, "merchant_private_key_pem": "-----BEGIN PRIVATE KEY-----\nAA==\n"},
        lambda m: {**m, "base_url": "ftp://example"},
    ]
    for change in broken:
        with pytest.raises(ValueError) as error:
            UnionPayCredentials.from_mapping(change(union.credentials))
        assert "BEGIN" not in str(error.value)
    defaults = {k: v for k, v in union.credentials.items() if k not in ("base_url", "file_url")}
    production = UnionPayCredentials.from_mapping(defaults)
    assert production.base_url == "https://gateway.95516.com"


# ---------------------------------------------------------------------- codecs, by property
NAMES = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12)
FIELDS = st.dictionaries(NAMES, st.text(max_size=40), max_size=12)
PLAIN = st.text(st.characters(exclude_characters="&{}[]", exclude_categories=["Cs"]))
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@given(FIELDS)
def test_form_round_trip(fields: dict[str, str]) -> None:
    assert wire.decode_form(wire.encode_form(fields)) == fields


@given(st.dictionaries(NAMES, PLAIN, min_size=1, max_size=12))
def test_answer_round_trip(fields: dict[str, str]) -> None:
    assert wire.decode_answer(wire.encode_answer(fields)) == fields


@settings(max_examples=40, deadline=None)
@given(FIELDS.filter(bool), st.data())
def test_a_signature_over_any_changed_byte_fails(fields: dict[str, str], data: Any) -> None:
    signed = wire.sign(fields, SIGNING_KEY)
    assert wire.signature_valid(signed, SIGNING_KEY.public_key())
    name = data.draw(st.sampled_from(sorted(signed)))
    value = signed[name]
    position = data.draw(st.integers(0, len(value)))
    changed = data.draw(st.characters(exclude_categories=["Cs"]))
    mutated = value[:position] + changed + value[position + 1 :]
    if mutated != value:
        assert not wire.signature_valid({**signed, name: mutated}, SIGNING_KEY.public_key())
    if name != "signature":
        renamed = {**{k: v for k, v in signed.items() if k != name}, name + "x": value}
        assert not wire.signature_valid(renamed, SIGNING_KEY.public_key())
    assert not wire.signature_valid({**signed, "added": ""}, SIGNING_KEY.public_key())


def test_answers_split_as_the_sdks_split_them() -> None:
    body = b"a={x=1&y=2}&b=[p&q]&c=d=e&signPubKeyCert=-----BEGIN CERTIFICATE-----\nAB+/=="
    assert wire.decode_answer(body) == {
        "a": "{x=1&y=2}", "b": "[p&q]", "c": "d=e",
        "signPubKeyCert": "-----BEGIN CERTIFICATE-----\nAB+/==",
    }  # fmt: skip
    for bad in (b"", b"=1", b"a=1&&b=2", b"a=1&a=2", b"novalue", b"\xff=1"):
        with pytest.raises(wire.WireError):
            wire.decode_answer(bad)


ZM_VALUES = st.fixed_dictionaries(
    {
        "orderId": st.text("0123456789abcdefXYZ", min_size=8, max_size=32),
        "txnAmt": st.integers(0, 10**12 - 1).map(lambda fen: f"{fen:012d}"),
        "merCharge": st.builds(wire.signed_amount, st.integers(0, 10**12 - 1), st.booleans()),
        "subMerAbbr": st.text("地铁公交一卡通ab12", max_size=16),  # GBK: two bytes a character
    }
)


@given(ZM_VALUES)
def test_zm_line_round_trip(values: dict[str, str]) -> None:
    line = wire.encode_zm_line(values)
    assert len(line) == wire.ZM_LINE_BYTES + 2
    decoded = wire.decode_zm_line(line)
    assert {name: decoded[name] for name in values} == values


@given(st.datetimes(datetime(2001, 1, 1), datetime(2099, 1, 1), timezones=st.just(BEIJING)))
def test_times_round_trip(at: datetime) -> None:
    at = at.replace(microsecond=0)
    assert wire.parse_stamp(wire.stamp(at)) == at
    assert wire.from_trace(wire.trace_stamp(at), at + timedelta(days=100)) == at
    number = wire.order_number(at, "abc123")
    assert wire.txn_time_of(number) == wire.stamp(at)
