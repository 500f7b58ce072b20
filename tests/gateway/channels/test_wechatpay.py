"""The WeChat Pay connector against its sandbox: real HTTP, real RSA signatures, real AES-GCM.

The sandbox speaks WeChat Pay API v3 (platform public key mode); the connector is the gateway's
side. Property tests cover the wire codecs: signing strings, the Authorization header, AEAD
resources, amounts and the trade bill.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channels import wechatpay_wire as wire
from gateway.channels.executor import Executor
from gateway.channels.money import InexactAmount
from gateway.channels.sandbox.base import Sandbox
from gateway.channels.types import (
    Ack,
    AppPayment,
    BadNotification,
    Channel,
    ChannelRefused,
    ChannelUnavailable,
    MalformedAnswer,
    PaymentOrder,
    RefundOrder,
    RefundState,
    TradeState,
)
from gateway.channels.wechatpay import WeChatPayConnector, WeChatPayCredentials
from gateway.metrics import Registry
from tests.gateway.channels.conftest import Receiver, SandboxFactory, misbehave, pay_in_app


@dataclass
class WeChat:
    base_url: str
    sandbox: Sandbox
    credentials: dict[str, Any]
    connector: WeChatPayConnector

    def with_credentials(self, executor: Executor, **changes: Any) -> WeChatPayConnector:
        mapping = {**self.credentials, **changes}
        return WeChatPayConnector(executor, WeChatPayCredentials.from_mapping(mapping))


async def fetch_credentials(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/credentials") as response:
            assert response.status == 200
            credentials: dict[str, Any] = await response.json()
            return credentials


@pytest.fixture
async def wechat(start_sandbox: SandboxFactory, executor: Executor) -> AsyncIterator[WeChat]:
    base_url, sandbox = await start_sandbox("wechatpay")
    credentials = await fetch_credentials(base_url)
    connector = WeChatPayConnector(executor, WeChatPayCredentials.from_mapping(credentials))
    yield WeChat(base_url, sandbox, credentials, connector)


def an_order(receiver: Receiver, amount_fen: int = 1234, subject: str = "一卡通充值") -> (
    PaymentOrder
):  # fmt: skip
    return PaymentOrder(
        out_trade_no="T" + secrets.token_hex(8), amount_fen=amount_fen, subject=subject,
        notify_url=receiver.url, expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )  # fmt: skip


def a_refund(order: PaymentOrder, refund_fen: int, receiver: Receiver) -> RefundOrder:
    return RefundOrder(
        out_trade_no=order.out_trade_no, out_refund_no="R" + secrets.token_hex(8),
        refund_fen=refund_fen, total_fen=order.amount_fen, reason="用户申请",
        notify_url=receiver.url,
    )  # fmt: skip


async def paid(wechat: WeChat, receiver: Receiver, order: PaymentOrder) -> AppPayment:
    payment = await wechat.connector.create_payment(order)
    await pay_in_app(wechat.base_url, payment.params["prepayid"])
    return payment


async def pay_status(base_url: str, token: str) -> int:
    """What the sandbox's pay page answers to "Pay" (200 paid, 409 refused)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/sandbox/pay", data={"token": token}) as response:
            return response.status


def today_in_china() -> date:
    return wire.bill_day(datetime.now(UTC))


# ---------------------------------------------------------------------- paying
async def test_a_paid_order_is_notified_and_queried_with_its_exact_fen(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = an_order(receiver, amount_fen=8888)
    payment = await wechat.connector.create_payment(order)
    assert payment.channel is Channel.WECHATPAY
    assert payment.params["package"] == "Sign=WXPay"
    assert payment.params["partnerid"] == wechat.credentials["mchid"]

    before = await wechat.connector.query(order.out_trade_no)
    assert before.state is TradeState.WAITING and before.amount_fen is None

    await pay_in_app(wechat.base_url, payment.params["prepayid"])
    [got] = await receiver.wait(1)
    notification = wechat.connector.parse_notification(got.headers, got.body, got.content_type)
    assert notification.ack == Ack(status=204)
    status = notification.payment
    assert status is not None and notification.refund is None
    assert status.out_trade_no == order.out_trade_no
    assert (status.state, status.amount_fen, status.anomaly) == (TradeState.PAID, 8888, None)
    assert status.channel_trade_no and status.paid_at is not None

    assert await wechat.connector.query(order.out_trade_no) == status


async def test_app_parameters_carry_the_signature_the_wechat_app_checks(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = an_order(receiver)
    params = (await wechat.connector.create_payment(order)).params
    assert set(params) == {"appid", "partnerid", "prepayid", "package", "noncestr",
                           "timestamp", "sign"}  # fmt: skip
    merchant = serialization.load_pem_private_key(
        wechat.credentials["merchant_private_key_pem"].encode(), None
    )
    assert isinstance(merchant, rsa.RSAPrivateKey)
    message = wire.app_pay_message(
        params["appid"], params["timestamp"], params["noncestr"], params["prepayid"]
    )
    assert wire.verify(merchant.public_key(), message, params["sign"])

    forged = urllib.parse.urlencode({**params, "timestamp": str(int(params["timestamp"]) + 1)})
    assert await pay_status(wechat.base_url, forged) == 409
    assert await pay_status(wechat.base_url, urllib.parse.urlencode(params)) == 200
    assert (await wechat.connector.query(order.out_trade_no)).state is TradeState.PAID


async def test_a_repeated_create_gets_a_new_prepay_id_and_a_changed_one_is_refused(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = an_order(receiver)
    first = await wechat.connector.create_payment(order)
    again = await wechat.connector.create_payment(order)
    assert first.params["prepayid"] != again.params["prepayid"]
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.create_payment(replace(order, amount_fen=order.amount_fen + 1))
    assert refused.value.code == "INVALID_REQUEST"

    await pay_in_app(wechat.base_url, first.params["prepayid"])
    assert await pay_status(wechat.base_url, again.params["prepayid"]) == 409  # paid once
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.create_payment(order)
    assert refused.value.code == "ORDERPAID"


async def test_a_closed_order_cannot_be_paid_and_a_paid_one_cannot_be_closed(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = an_order(receiver)
    payment = await wechat.connector.create_payment(order)
    await wechat.connector.close(order.out_trade_no)
    await wechat.connector.close(order.out_trade_no)  # closing twice is fine
    assert (await wechat.connector.query(order.out_trade_no)).state is TradeState.CLOSED
    assert await pay_status(wechat.base_url, payment.params["prepayid"]) == 409
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.create_payment(order)
    assert refused.value.code == "ORDER_CLOSED"

    other = an_order(receiver)
    await paid(wechat, receiver, other)
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.close(other.out_trade_no)
    assert refused.value.code == "ORDERPAID"


async def test_an_order_number_with_every_allowed_character_is_signed_as_sent(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = replace(an_order(receiver), out_trade_no="Ab9_-|*" + secrets.token_hex(4))
    await wechat.connector.create_payment(order)
    assert (await wechat.connector.query(order.out_trade_no)).state is TradeState.WAITING
    await wechat.connector.close(order.out_trade_no)


async def test_what_the_channel_never_saw_is_not_found(wechat: WeChat, receiver: Receiver) -> None:
    assert (await wechat.connector.query("NEVER-MADE")).state is TradeState.NOT_FOUND
    refund = await wechat.connector.refund_query("NEVER-MADE", "NEVER-REFUNDED")
    assert refund.state is RefundState.NOT_FOUND
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.refund(a_refund(an_order(receiver), 1, receiver))
    assert refused.value.code == "RESOURCE_NOT_EXISTS"


# ---------------------------------------------------------------------- refunds
async def test_partial_and_full_refunds_with_their_notifications(
    wechat: WeChat, receiver: Receiver
) -> None:
    order = an_order(receiver, amount_fen=1000)
    await paid(wechat, receiver, order)
    first = a_refund(order, 300, receiver)
    accepted = await wechat.connector.refund(first)
    assert (accepted.state, accepted.refund_fen) == (RefundState.PENDING, 300)

    _, got = await receiver.wait(2)
    notified = wechat.connector.parse_notification(got.headers, got.body, got.content_type)
    assert notified.payment is None and notified.refund is not None
    assert notified.refund.out_refund_no == first.out_refund_no
    assert (notified.refund.state, notified.refund.refund_fen) == (RefundState.SUCCEEDED, 300)
    done = await wechat.connector.refund_query(order.out_trade_no, first.out_refund_no)
    assert done == notified.refund
    assert await wechat.connector.refund(first) == done  # the same refund number refunds once

    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.refund(a_refund(order, 701, receiver))
    assert refused.value.code == "INVALID_REQUEST"
    rest = await wechat.connector.refund(a_refund(order, 700, receiver))
    assert (rest.state, rest.refund_fen) == (RefundState.PENDING, 700)
    # WeChat's REFUND trade state: the trade was paid; refund queries tell the rest.
    assert (await wechat.connector.query(order.out_trade_no)).state is TradeState.PAID


async def test_an_unpaid_order_cannot_be_refunded(wechat: WeChat, receiver: Receiver) -> None:
    order = an_order(receiver)
    await wechat.connector.create_payment(order)
    with pytest.raises(ChannelRefused) as refused:
        await wechat.connector.refund(a_refund(order, 1, receiver))
    assert refused.value.code == "INVALID_REQUEST"


# ---------------------------------------------------------------------- notifications
async def test_a_tampered_notification_is_refused(wechat: WeChat, receiver: Receiver) -> None:
    await misbehave(wechat.base_url, ["tampered"])
    await paid(wechat, receiver, an_order(receiver))
    [got] = await receiver.wait(1)
    with pytest.raises(BadNotification):
        wechat.connector.parse_notification(got.headers, got.body, got.content_type)


async def test_every_kind_of_bad_notification_is_one_opaque_failure(
    wechat: WeChat, receiver: Receiver, executor: Executor
) -> None:
    await paid(wechat, receiver, an_order(receiver))
    [got] = await receiver.wait(1)
    headers, body = got.headers, got.body
    wechat.connector.parse_notification(headers, body, got.content_type)  # genuine

    def replaced(name: str, value: str | None) -> dict[str, str]:
        kept = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        return kept if value is None else {**kept, name: value}

    as_json = "application/json"
    cases: list[tuple[dict[str, str], bytes, str]] = [
        (headers, body.replace(b'"summary":"', b'"summary":"x'), as_json),
        (headers, body + b" ", as_json),
        (headers, body, "text/plain"),
        (headers, b"", as_json),
        (headers, b"{" * 100_000, as_json),
        (replaced("Wechatpay-Serial", "PUB_KEY_ID_OTHER"), body, as_json),
        (replaced("Wechatpay-Timestamp", "1"), body, as_json),
        (replaced("Wechatpay-Nonce", "a\nb"), body, as_json),
        (replaced("Wechatpay-Signature", "bm90IGEgc2lnbmF0dXJl"), body, as_json),
        (replaced("Wechatpay-Signature-Type", "SM2"), body, as_json),
        *[
            (replaced(name, None), body, as_json)
            for name in ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                         "Wechatpay-Serial")
        ],
    ]  # fmt: skip
    for bad_headers, bad_body, content_type in cases:
        with pytest.raises(BadNotification):
            wechat.connector.parse_notification(bad_headers, bad_body, content_type)

    other_key = secrets.token_urlsafe(24)[:32]
    wrong_key = wechat.with_credentials(executor, apiv3_key=other_key)
    with pytest.raises(BadNotification):
        wrong_key.parse_notification(headers, body, got.content_type)
    later = WeChatPayConnector(
        executor, WeChatPayCredentials.from_mapping(wechat.credentials),
        clock=lambda: datetime.now(UTC) + timedelta(minutes=6),
    )  # fmt: skip
    with pytest.raises(BadNotification):  # a replay after the allowed skew
        later.parse_notification(headers, body, got.content_type)


async def test_a_wrong_amount_is_reported_as_the_channel_said_it(
    wechat: WeChat, receiver: Receiver
) -> None:
    await misbehave(wechat.base_url, ["wrong_amount"])
    order = an_order(receiver, amount_fen=500)
    await paid(wechat, receiver, order)
    [got] = await receiver.wait(1)
    status = wechat.connector.parse_notification(got.headers, got.body, got.content_type)
    assert status.payment is not None and status.payment.amount_fen == 501


async def test_duplicate_stale_and_unknown_notifications_are_parsed_faithfully(
    wechat: WeChat, receiver: Receiver
) -> None:
    await misbehave(wechat.base_url, ["duplicate", "out_of_order", "unknown_order"])
    order = an_order(receiver)
    await paid(wechat, receiver, order)
    got = await receiver.wait(4)
    parsed = [
        wechat.connector.parse_notification(g.headers, g.body, g.content_type).payment for g in got
    ]
    assert [(p.out_trade_no, p.state) for p in parsed if p] == [
        (order.out_trade_no, TradeState.PAID),
        (order.out_trade_no, TradeState.PAID),
        (order.out_trade_no, TradeState.WAITING),
        ("UNKNOWN" + order.out_trade_no, TradeState.PAID),
    ]


async def test_without_a_notification_only_a_query_finds_the_payment(
    wechat: WeChat, receiver: Receiver
) -> None:
    await misbehave(wechat.base_url, ["no_notify"])
    order = an_order(receiver)
    await paid(wechat, receiver, order)
    with pytest.raises(TimeoutError):
        await receiver.wait(1, timeout_s=0.5)
    assert (await wechat.connector.query(order.out_trade_no)).state is TradeState.PAID


# ---------------------------------------------------------------------- failures
async def test_5xx_and_silence_are_unavailable(wechat: WeChat, receiver: Receiver) -> None:
    order = an_order(receiver)
    await wechat.connector.create_payment(order)
    await misbehave(wechat.base_url, ["error_5xx"], order.out_trade_no)
    with pytest.raises(ChannelUnavailable):
        await wechat.connector.query(order.out_trade_no)

    await misbehave(wechat.base_url, ["timeout"], order.out_trade_no)
    async with aiohttp.ClientSession() as session:
        impatient = Executor(session, Registry(), timeout_ms=300, retries_max=1)
        connector = wechat.with_credentials(impatient)
        with pytest.raises(ChannelUnavailable):
            await connector.query(order.out_trade_no)


async def test_a_request_with_a_bad_signature_is_refused_in_wechats_shape(
    wechat: WeChat, executor: Executor
) -> None:
    other = rsa.generate_private_key(65537, 2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    with pytest.raises(ChannelRefused) as refused:
        await wechat.with_credentials(executor, merchant_private_key_pem=pem).query("T000001")
    assert refused.value.code == "SIGN_ERROR"

    async with aiohttp.ClientSession() as session:
        url = f"{wechat.base_url}/v3/pay/transactions/out-trade-no/T000001?mchid=1"
        async with session.get(url) as response:
            assert response.status == 401
            assert json.loads(await response.read())["code"] == "SIGN_ERROR"
            assert (
                response.headers["Wechatpay-Serial"] == wechat.credentials["platform_public_key_id"]
            )


async def test_an_answer_signed_with_another_key_is_not_trusted(
    wechat: WeChat, executor: Executor
) -> None:
    other = rsa.generate_private_key(65537, 2048).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    connector = wechat.with_credentials(executor, platform_public_key_pem=pem)
    with pytest.raises(MalformedAnswer):
        await connector.query("T000001")


# ---------------------------------------------------------------------- statements
async def test_the_days_bill_is_downloaded_and_read_with_fees(
    wechat: WeChat, receiver: Receiver
) -> None:
    big, tiny = an_order(receiver, amount_fen=10_000), an_order(receiver, amount_fen=1)
    unpaid = an_order(receiver, amount_fen=777)
    await paid(wechat, receiver, big)
    await paid(wechat, receiver, tiny)
    await wechat.connector.create_payment(unpaid)
    refund = a_refund(big, 5_001, receiver)
    await wechat.connector.refund(refund)

    statement = await wechat.connector.statement(today_in_china())
    assert statement.day == today_in_china()
    lines = {(line.kind, line.out_trade_no): line for line in statement.lines}
    assert set(lines) == {("payment", big.out_trade_no), ("payment", tiny.out_trade_no),
                          ("refund", big.out_trade_no)}  # fmt: skip
    payment = lines["payment", big.out_trade_no]
    assert (payment.amount_fen, payment.fee_fen) == (10_000, 60)  # 0.60 %
    assert lines["payment", tiny.out_trade_no].fee_fen == 0  # 0.006 fen rounds to none
    back = lines["refund", big.out_trade_no]
    assert (back.amount_fen, back.fee_fen, back.out_refund_no) == (5_001, 30, refund.out_refund_no)
    assert back.channel_trade_no == payment.channel_trade_no

    empty = await wechat.connector.statement(today_in_china() - timedelta(days=30))
    assert empty.lines == []


# ---------------------------------------------------------------------- credentials
def test_credentials_name_the_bad_field_and_never_print_a_key() -> None:
    key = rsa.generate_private_key(65537, 2048)
    mapping = {
        "mchid": "1900000109", "appid": "wxd678efh567hg6787",
        "merchant_serial_no": "444F4864EA9B34415",
        "merchant_private_key_pem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "apiv3_key": "a" * 32, "platform_public_key_id": "PUB_KEY_ID_0114232134912410",
        "platform_public_key_pem": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    }  # fmt: skip
    credentials = WeChatPayCredentials.from_mapping(mapping)
    assert credentials.base_url == "https://api.mch.weixin.qq.com"
    assert "aaaa" not in repr(credentials) and "PRIVATE" not in repr(credentials)
    for name, bad in [("apiv3_key", "short"), ("mchid", "19x"), ("merchant_private_key_pem", "-"),
                      ("platform_public_key_id", "KEY"), ("base_url", "ftp://x"),
                      ("platform_public_key_pem", None)]:  # fmt: skip
        with pytest.raises(ValueError, match=name) as raised:
            WeChatPayCredentials.from_mapping({**mapping, name: bad})
        assert "a" * 32 not in str(raised.value)


# ---------------------------------------------------------------------- wire properties
@functools.cache
def a_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def changed_somewhere(data: bytes, index: int, delta: int) -> bytes:
    at = index % len(data)
    return data[:at] + bytes([(data[at] + delta) % 256]) + data[at + 1 :]


printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST"]),
    url=printable.map(lambda s: "/v3/" + s),
    timestamp=st.integers(0, 10**10).map(str),
    nonce=printable,
    body=st.binary(max_size=200),
    index=st.integers(0, 10_000),
    delta=st.integers(1, 255),
)
def test_a_signature_over_any_changed_byte_fails(
    method: str, url: str, timestamp: str, nonce: str, body: bytes, index: int, delta: int
) -> None:
    key = a_key()
    for message in (
        wire.request_message(method, url, timestamp, nonce, body),
        wire.answer_message(timestamp, nonce, body),
    ):
        signature = wire.sign(key, message)
        assert wire.verify(key.public_key(), message, signature)
        assert not wire.verify(
            key.public_key(), changed_somewhere(message, index, delta), signature
        )


header_text = printable.filter(lambda s: '"' not in s and "," not in s)


@given(
    mchid=st.from_regex(r"[0-9]{1,32}", fullmatch=True),
    nonce=header_text,
    signature=st.binary(min_size=1, max_size=300).map(lambda b: base64.b64encode(b).decode()),
    timestamp=st.integers(0, 10**10).map(str),
    serial=st.from_regex(r"[0-9A-F]{1,40}", fullmatch=True),
)
def test_the_authorization_header_round_trips(
    mchid: str, nonce: str, signature: str, timestamp: str, serial: str
) -> None:
    auth = wire.Authorization(mchid, nonce, signature, timestamp, serial)
    header = auth.header()
    assert wire.parse_authorization(header) == auth
    broken = [
        header.replace("WECHATPAY2", "WECHATPAY3"),
        header + ',mchid="1"',
        header.replace('serial_no="', 'serial="'),
    ]
    for value in broken:
        with pytest.raises(ValueError):
            wire.parse_authorization(value)


@given(plaintext=st.binary(max_size=500), associated=st.sampled_from(["transaction", "refund", ""]),
       index=st.integers(0, 10_000), delta=st.integers(1, 255))  # fmt: skip
def test_resources_open_only_as_sealed(
    plaintext: bytes, associated: str, index: int, delta: int
) -> None:
    key = secrets.token_bytes(32)
    nonce = "abcdefghijkl"
    sealed = wire.seal(key, plaintext, associated, nonce)
    resource = wire.EncryptedResource(wire.AEAD_ALGORITHM, sealed, nonce, associated)
    assert wire.open_resource(key, resource) == plaintext
    raw = base64.b64decode(sealed)
    tampered = base64.b64encode(changed_somewhere(raw, index, delta)).decode()
    for bad in (replace_struct(resource, ciphertext=tampered),
                replace_struct(resource, associated_data=associated + "x"),
                replace_struct(resource, nonce="abcdefghijkm"),
                replace_struct(resource, algorithm="AEAD_SM4_GCM")):  # fmt: skip
        with pytest.raises(ValueError):
            wire.open_resource(key, bad)


def replace_struct(struct: wire.EncryptedResource, **changes: str) -> wire.EncryptedResource:
    return msgspec.structs.replace(struct, **changes)


@given(st.integers(0, 10**15 - 1))
def test_amounts_in_fen_round_trip(fen: int) -> None:
    assert wire.fen_of(wire.fen_raw(fen)) == fen


@pytest.mark.parametrize("raw", [b"100.5", b'"100"', b"-1", b"1e3", b"01", b"true", b"null"])
def test_an_amount_that_is_not_whole_fen_is_an_anomaly(raw: bytes) -> None:
    with pytest.raises(InexactAmount):
        wire.fen_of(msgspec.Raw(raw))
    tx = wire.Transaction(
        mchid="1", out_trade_no="T1", trade_state="SUCCESS", transaction_id="4200",
        success_time="2024-01-16T22:43:59+08:00", amount=wire.Amount(msgspec.Raw(raw), "CNY"),
    )  # fmt: skip
    status = wire.trade_status(tx)
    assert (status.state, status.amount_fen, status.anomaly) == (TradeState.PAID, None,
                                                                  "inexact_amount")  # fmt: skip
    foreign = msgspec.structs.replace(tx, amount=wire.Amount(wire.fen_raw(100), "USD"))
    assert wire.trade_status(foreign).anomaly == "currency"


bill_text = st.text(
    st.characters(blacklist_characters=",`\r\n", blacklist_categories=("Cs", "Zl", "Zp", "Cc")),
    max_size=20,
)
bill_times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(wire.CHINA)
).map(lambda at: at.replace(microsecond=0))
fen = st.integers(0, 10**9)


@st.composite
def bill_rows(draw: Callable[..., Any]) -> wire.BillRow:
    refund = draw(st.booleans())
    return wire.BillRow(
        at=draw(bill_times), appid=draw(bill_text), mchid=draw(bill_text),
        transaction_id=draw(bill_text), out_trade_no=draw(bill_text), openid=draw(bill_text),
        trade_type="APP", trade_state="REFUND" if refund else "SUCCESS", bank_type="OTHERS",
        settlement_fen=draw(fen), refund_id=draw(bill_text), out_refund_no=draw(bill_text),
        refund_fen=draw(fen), refund_type="ORIGINAL" if refund else "",
        refund_status="SUCCESS" if refund else "", description=draw(bill_text),
        attach=draw(bill_text), fee_fen=draw(st.integers(-(10**6), 10**6)), rate="0.60%",
        total_fen=draw(fen), refund_requested_fen=draw(fen),
    )  # fmt: skip


@settings(max_examples=60)
@given(st.lists(bill_rows(), max_size=8), st.integers(0, 10_000), st.integers(1, 9))
def test_the_trade_bill_round_trips_and_checks_its_summary(
    rows: list[wire.BillRow], index: int, delta: int
) -> None:
    data = wire.format_bill(rows)
    assert wire.parse_bill(data) == rows
    assert wire.parse_bill("\ufeff".encode() + data) == rows  # as spreadsheet exports save it
    lines = data.decode().splitlines()
    _count, *rest = lines[-1].split(",")
    miscounted = "\n".join([*lines[:-1], ",".join([f"`{len(rows) + delta}", *rest])])
    with pytest.raises(ValueError):
        wire.parse_bill(miscounted.encode())
    for row in rows:
        line = wire.statement_line(row)
        refund = row.trade_state == "REFUND"
        assert line.kind == ("refund" if refund else "payment")
        assert line.amount_fen == (row.refund_requested_fen if refund else row.total_fen)
        assert line.fee_fen == (-row.fee_fen if refund else row.fee_fen)


def test_a_bill_with_a_fee_below_the_fen_is_refused() -> None:
    row = wire.BillRow(
        at=datetime(2024, 1, 16, 22, 43, 59, tzinfo=wire.CHINA), appid="wx", mchid="19",
        transaction_id="4200", out_trade_no="T1", openid="o", trade_type="APP",
        trade_state="SUCCESS", bank_type="OTHERS", settlement_fen=100, refund_id="0",
        out_refund_no="0", refund_fen=0, refund_type="", refund_status="", description="d",
        attach="", fee_fen=1, rate="0.60%", total_fen=100, refund_requested_fen=0,
    )  # fmt: skip
    data = wire.format_bill([row])
    assert b"`0.01000" in data
    with pytest.raises(InexactAmount):
        wire.parse_bill(data.replace(b"`0.01000", b"`0.00600"))
