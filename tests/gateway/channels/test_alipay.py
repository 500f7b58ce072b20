"""The Alipay connector against the Alipay sandbox: real HTTP, real RSA2 signatures, no mocks.

The flows (pay, notify, query, close, refund, statement), the sandbox's misbehaviours, and
property tests for the wire codecs and signing strings."""

from __future__ import annotations

import io
import secrets
import string
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channels import alipay_wire as wire
from gateway.channels.alipay import (
    ORDER_STRING_KEY,
    AlipayConnector,
    AlipayCredentials,
    parse_notification,
)
from gateway.channels.executor import Executor
from gateway.channels.money import fen_to_yuan
from gateway.channels.sandbox.base import Sandbox
from gateway.channels.types import (
    Anomaly,
    BadNotification,
    Channel,
    ChannelRefused,
    ChannelUnavailable,
    Connector,
    PaymentOrder,
    RefundOrder,
    RefundState,
    TradeState,
)
from gateway.metrics import Registry
from tests.gateway.channels.conftest import (
    Receiver,
    SandboxFactory,
    misbehave,
    pay_in_app,
)


@dataclass
class Alipay:
    base_url: str
    sandbox: Sandbox
    connector: AlipayConnector
    credentials: dict[str, Any]


@pytest.fixture
async def alipay(start_sandbox: SandboxFactory, executor: Executor) -> Alipay:
    base_url, sandbox = await start_sandbox("alipay")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/credentials") as response:
            credentials = await response.json()
    connector = AlipayConnector(executor, AlipayCredentials.from_mapping(credentials))
    return Alipay(base_url, sandbox, connector, credentials)


def an_order(receiver: Receiver, amount_fen: int = 8888, minutes: int = 30) -> PaymentOrder:
    expires_at = datetime.now(UTC) + timedelta(minutes=minutes)
    return PaymentOrder(
        "T" + secrets.token_hex(8), amount_fen, "一卡通充值", receiver.url, expires_at
    )


async def open_in_app(base_url: str, token: str) -> int:
    """The buyer opens the order string in the app (the trade now exists) without paying."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/pay/{quote(token, safe='')}") as response:
            return response.status


async def try_to_pay(base_url: str, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/sandbox/pay", data={"token": token}) as response:
            return response.status


async def paid_order(alipay: Alipay, receiver: Receiver, amount_fen: int = 8888) -> PaymentOrder:
    order = an_order(receiver, amount_fen)
    payment = await alipay.connector.create_payment(order)
    await pay_in_app(alipay.base_url, payment.params[ORDER_STRING_KEY])
    return order


def alipay_key(sandbox: Sandbox) -> rsa.RSAPrivateKey:
    """The sandbox's own Alipay key, to sign notifications a test makes up."""
    pem = sandbox.keys("alipay", dict)["alipay_private_key_pem"]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


# ---------------------------------------------------------------------- paying
async def test_a_paid_order_string_is_notified_and_parsed_as_paid(
    alipay: Alipay, receiver: Receiver
) -> None:
    connector: Connector = alipay.connector
    order = an_order(receiver, 8888)
    payment = await connector.create_payment(order)
    assert payment.channel is Channel.ALIPAY
    await pay_in_app(alipay.base_url, payment.params[ORDER_STRING_KEY])

    [received] = await receiver.wait(1)
    assert received.content_type == wire.FORM_CONTENT_TYPE
    notification = connector.parse_notification(
        received.headers, received.body, received.content_type
    )
    assert (notification.ack.status, notification.ack.body) == (200, b"success")
    paid = notification.payment
    assert paid is not None and notification.refund is None
    assert (paid.out_trade_no, paid.state, paid.amount_fen) == (order.out_trade_no, "paid", 8888)
    assert paid.anomaly is None and paid.paid_at is not None and paid.channel_trade_no
    queried = await connector.query(order.out_trade_no)
    assert queried == paid


async def test_query_before_opening_after_opening_and_after_paying(
    alipay: Alipay, receiver: Receiver
) -> None:
    order = an_order(receiver, 1)
    token = (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    assert (await alipay.connector.query(order.out_trade_no)).state is TradeState.NOT_FOUND
    assert await open_in_app(alipay.base_url, token) == 200
    waiting = await alipay.connector.query(order.out_trade_no)
    assert (waiting.state, waiting.amount_fen, waiting.paid_at) == (TradeState.WAITING, 1, None)
    await pay_in_app(alipay.base_url, token)
    paid = await alipay.connector.query(order.out_trade_no)
    assert (paid.state, paid.amount_fen, paid.channel_trade_no) == (
        TradeState.PAID, 1, waiting.channel_trade_no,
    )  # fmt: skip


async def test_a_trade_alipay_never_had_is_not_found(alipay: Alipay) -> None:
    status = await alipay.connector.query("NEVER-MADE")
    assert (status.out_trade_no, status.state) == ("NEVER-MADE", TradeState.NOT_FOUND)


async def test_a_closed_trade_cannot_be_paid(alipay: Alipay, receiver: Receiver) -> None:
    order = an_order(receiver)
    token = (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    with pytest.raises(ChannelRefused) as never_opened:
        await alipay.connector.close(order.out_trade_no)
    assert never_opened.value.code == wire.SUB_TRADE_NOT_EXIST
    assert await open_in_app(alipay.base_url, token) == 200
    await alipay.connector.close(order.out_trade_no)
    await alipay.connector.close(order.out_trade_no)  # closing again changes nothing
    assert (await alipay.connector.query(order.out_trade_no)).state is TradeState.CLOSED
    assert await try_to_pay(alipay.base_url, token) == 409
    assert receiver.received == []


async def test_a_paid_trade_cannot_be_closed(alipay: Alipay, receiver: Receiver) -> None:
    order = await paid_order(alipay, receiver)
    with pytest.raises(ChannelRefused) as refused:
        await alipay.connector.close(order.out_trade_no)
    assert refused.value.code == "ACQ.TRADE_STATUS_ERROR"


async def test_an_expired_order_string_cannot_be_paid(alipay: Alipay, receiver: Receiver) -> None:
    order = replace(an_order(receiver), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    token = (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    assert await try_to_pay(alipay.base_url, token) == 409


async def test_the_pay_page_checks_the_merchants_signature(
    alipay: Alipay, receiver: Receiver
) -> None:
    token = (await alipay.connector.create_payment(an_order(receiver))).params[ORDER_STRING_KEY]
    params = wire.decode_form(token)
    forged = wire.encode_form(
        {**params, "biz_content": params["biz_content"].replace("88.88", "0.01")}
    )
    assert await try_to_pay(alipay.base_url, forged) == 409
    assert await open_in_app(alipay.base_url, "not an order string") == 404
    assert alipay.sandbox.trades == {}


# ---------------------------------------------------------------------- refunds
async def test_partial_and_full_refunds_and_their_queries(
    alipay: Alipay, receiver: Receiver
) -> None:
    connector = alipay.connector
    order = await paid_order(alipay, receiver, 10_000)
    first = RefundOrder(order.out_trade_no, "R1" + order.out_trade_no, 3_000, 10_000, "退卡", "")
    done = await connector.refund(first)
    assert (done.state, done.refund_fen, done.anomaly) == (RefundState.SUCCEEDED, 3_000, None)
    again = await connector.refund(first)  # the same refund: nothing moves, the query confirms
    assert again.state is RefundState.PENDING
    queried = await connector.refund_query(order.out_trade_no, first.out_refund_no)
    assert (queried.state, queried.refund_fen) == (RefundState.SUCCEEDED, 3_000)
    too_much = replace(first, out_refund_no="R2" + order.out_trade_no, refund_fen=7_001)
    with pytest.raises(ChannelRefused) as refused:
        await connector.refund(too_much)
    assert refused.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    with pytest.raises(ChannelRefused) as discordant:
        await connector.refund(replace(first, refund_fen=2_000))
    assert discordant.value.code == "ACQ.DISCORDANT_REPEAT_REQUEST"

    rest = await connector.refund(replace(too_much, refund_fen=7_000))
    assert (rest.state, rest.refund_fen) == (RefundState.SUCCEEDED, 7_000)
    assert (await connector.query(order.out_trade_no)).state is TradeState.REFUNDED
    unknown = await connector.refund_query(order.out_trade_no, "R9" + order.out_trade_no)
    assert unknown.state is RefundState.NOT_FOUND
    assert (await connector.refund_query("NEVER-MADE", "R1")).state is RefundState.NOT_FOUND

    # Alipay tells the payment's notify URL of each refund: out_biz_no names it.
    notes = [
        connector.parse_notification(r.headers, r.body, r.content_type)
        for r in await receiver.wait(3)
    ]
    refunds = {n.refund.out_refund_no: n.payment.state for n in notes if n.refund and n.payment}
    assert refunds == {
        first.out_refund_no: TradeState.PAID, too_much.out_refund_no: TradeState.REFUNDED,
    }  # fmt: skip


async def test_an_unpaid_trade_cannot_be_refunded(alipay: Alipay, receiver: Receiver) -> None:
    order = an_order(receiver)
    token = (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    await open_in_app(alipay.base_url, token)
    with pytest.raises(ChannelRefused) as refused:
        await alipay.connector.refund(RefundOrder(order.out_trade_no, "R1", 1, 8888, "", ""))
    assert refused.value.code == "ACQ.TRADE_STATUS_ERROR"


# ---------------------------------------------------------------------- notifications
async def test_a_tampered_notification_is_refused(alipay: Alipay, receiver: Receiver) -> None:
    order = an_order(receiver)
    await misbehave(alipay.base_url, ["tampered"], order.out_trade_no)
    payment = await alipay.connector.create_payment(order)
    receiver.answer = lambda r: web.Response(text="fail")  # as a merchant does: Alipay retries
    await pay_in_app(alipay.base_url, payment.params[ORDER_STRING_KEY])
    received = await receiver.wait(2)
    for item in received:
        with pytest.raises(BadNotification):
            alipay.connector.parse_notification(item.headers, item.body, item.content_type)
    assert received[0].body == received[1].body  # the same message, sent again


async def test_a_wrong_amount_is_reported_as_the_channel_said(
    alipay: Alipay, receiver: Receiver
) -> None:
    order = an_order(receiver, 8888)
    await misbehave(alipay.base_url, ["wrong_amount"], order.out_trade_no)
    await pay_in_app(
        alipay.base_url, (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    )
    [received] = await receiver.wait(1)
    note = alipay.connector.parse_notification(
        received.headers, received.body, received.content_type
    )
    assert note.payment is not None and note.payment.amount_fen == 8889 != order.amount_fen


async def test_duplicate_stale_and_unknown_notifications_are_parsed_faithfully(
    alipay: Alipay, receiver: Receiver
) -> None:
    order = an_order(receiver)
    kinds = ["duplicate", "out_of_order", "unknown_order"]
    await misbehave(alipay.base_url, kinds, order.out_trade_no)
    await pay_in_app(
        alipay.base_url, (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    )
    notes = [
        alipay.connector.parse_notification(r.headers, r.body, r.content_type).payment
        for r in await receiver.wait(4)
    ]
    assert [(n.out_trade_no, n.state) for n in notes if n] == [
        (order.out_trade_no, TradeState.PAID),
        (order.out_trade_no, TradeState.PAID),
        (order.out_trade_no, TradeState.WAITING),
        ("UNKNOWN" + order.out_trade_no, TradeState.PAID),
    ]


async def test_without_a_notification_only_the_query_finds_the_payment(
    alipay: Alipay, receiver: Receiver
) -> None:
    order = an_order(receiver)
    await misbehave(alipay.base_url, ["no_notify"], order.out_trade_no)
    await pay_in_app(
        alipay.base_url, (await alipay.connector.create_payment(order)).params[ORDER_STRING_KEY]
    )
    with pytest.raises(TimeoutError):
        await receiver.wait(1, timeout_s=0.3)
    assert (await alipay.connector.query(order.out_trade_no)).state is TradeState.PAID


async def test_amounts_that_cannot_be_credited_are_anomalies(alipay: Alipay) -> None:
    credentials = AlipayCredentials.from_mapping(alipay.credentials)
    note = made_up_note(credentials.app_id)
    for changes, anomaly in (
        ({"total_amount": "88.888"}, Anomaly.INEXACT_AMOUNT),
        ({"total_amount": "1e3"}, Anomaly.INEXACT_AMOUNT),
        ({"trans_currency": "USD"}, Anomaly.CURRENCY),
    ):
        params = wire.notification_params(
            alipay_key(alipay.sandbox), msgspec.structs.replace(note, **changes)
        )
        body = wire.encode_form(params).encode()
        paid = parse_notification(credentials, body, wire.FORM_CONTENT_TYPE).payment
        assert paid is not None and (paid.amount_fen, paid.anomaly) == (None, anomaly)


async def test_notifications_that_are_not_alipays_are_one_opaque_failure(alipay: Alipay) -> None:
    credentials = AlipayCredentials.from_mapping(alipay.credentials)
    key = alipay_key(alipay.sandbox)
    note = made_up_note(credentials.app_id)
    good = wire.encode_form(wire.notification_params(key, note)).encode()
    assert parse_notification(credentials, good, wire.FORM_CONTENT_TYPE).payment is not None
    other_app = wire.notification_params(key, msgspec.structs.replace(note, app_id="1"))
    rsa1 = {**wire.notification_params(key, note), "sign_type": "RSA"}
    unsigned = {k: v for k, v in wire.notification_params(key, note).items() if k != "sign"}
    odd_status = wire.notification_params(key, msgspec.structs.replace(note, trade_status="X"))
    for body, content_type in (
        (good, "application/json"),
        (good + b"&x=" + b"1" * 70_000, wire.FORM_CONTENT_TYPE),
        (b"\xff\xfe", wire.FORM_CONTENT_TYPE),
        (b"sign=a&sign=b", wire.FORM_CONTENT_TYPE),
        *((wire.encode_form(p).encode(), wire.FORM_CONTENT_TYPE)
          for p in (other_app, rsa1, unsigned, odd_status)),
    ):  # fmt: skip
        with pytest.raises(BadNotification) as failure:
            parse_notification(credentials, body, content_type)
        assert str(failure.value) == "alipay notification"


def made_up_note(app_id: str) -> wire.TradeNotification:
    at = wire.format_time(datetime.now(UTC))
    return wire.TradeNotification(
        notify_time=at, notify_type=wire.NOTIFY_TYPE, notify_id="n1", app_id=app_id,
        trade_no="2024010122001400000000000001", out_trade_no="T1",
        trade_status=wire.TRADE_SUCCESS, total_amount="88.88", gmt_payment=at,
    )  # fmt: skip


# ---------------------------------------------------------------------- no answer
async def test_5xx_answers_are_retried_then_the_channel_is_unavailable(
    alipay: Alipay, receiver: Receiver
) -> None:
    order = await paid_order(alipay, receiver)
    await misbehave(alipay.base_url, ["error_5xx"], order.out_trade_no, errors=1)
    assert (await alipay.connector.query(order.out_trade_no)).state is TradeState.PAID
    await misbehave(alipay.base_url, ["error_5xx"], order.out_trade_no, errors=2)
    with pytest.raises(ChannelUnavailable):
        await alipay.connector.query(order.out_trade_no)


async def test_a_timeout_is_unavailable(alipay: Alipay, receiver: Receiver) -> None:
    order = an_order(receiver)
    await misbehave(alipay.base_url, ["timeout"], order.out_trade_no)
    async with aiohttp.ClientSession() as session:
        hasty = Executor(session, Registry(), timeout_ms=200, retries_max=1)
        connector = AlipayConnector(hasty, AlipayCredentials.from_mapping(alipay.credentials))
        with pytest.raises(ChannelUnavailable):
            await connector.refund(RefundOrder(order.out_trade_no, "R1", 1, 1, "", ""))


async def test_the_gateway_refuses_a_request_the_merchant_did_not_sign(
    alipay: Alipay, executor: Executor
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    credentials = AlipayCredentials.from_mapping(alipay.credentials)
    forger = AlipayConnector(executor, replace(credentials, app_private_key=other))
    with pytest.raises(ChannelRefused) as refused:
        await forger.query("T1")
    assert refused.value.code == "isv.invalid-signature"
    stranger = AlipayConnector(executor, replace(credentials, app_id="9021000000000001"))
    with pytest.raises(ChannelRefused) as unknown_app:
        await stranger.query("T1")
    assert unknown_app.value.code == "isv.invalid-app-id"


async def test_the_gateway_takes_parameters_from_the_query_the_body_or_both(
    alipay: Alipay,
) -> None:
    credentials = AlipayCredentials.from_mapping(alipay.credentials)
    params = wire.signed(credentials.app_private_key, {
        "app_id": credentials.app_id, "method": wire.METHOD_QUERY, "format": "JSON",
        "charset": "utf-8", "sign_type": "RSA2", "timestamp": wire.format_time(datetime.now(UTC)),
        "version": "1.0", "biz_content": '{"out_trade_no":"T1"}',
    })  # fmt: skip
    common = {k: v for k, v in params.items() if k != "biz_content"}
    url = credentials.base_url
    async with aiohttp.ClientSession() as session:
        for method, query, form in (
            ("GET", params, None),  # python-alipay-sdk
            ("POST", common, {"biz_content": params["biz_content"]}),  # Alipay's own SDKs
            ("POST", {"charset": "utf-8"}, params),  # gopay: charset in the URL as well
            ("POST", {"charset": "gbk"}, params),  # a parameter given twice, differently
        ):
            async with session.request(method, url, params=query, data=form) as response:
                members = wire.answer_members(await response.text())
            signature = members.pop("sign")[1]
            [(root, (text, answer))] = members.items()
            assert wire.rsa2_verify(credentials.alipay_public_key, text, signature)
            if query.get("charset") == "gbk":
                assert (root, answer["code"]) == (wire.ERROR_ROOT, "40002")
            else:
                assert (root, answer["sub_code"]) == (
                    "alipay_trade_query_response",
                    wire.SUB_TRADE_NOT_EXIST,
                )


async def test_an_answer_alipay_did_not_sign_is_no_answer(
    alipay: Alipay, executor: Executor
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    credentials = AlipayCredentials.from_mapping(alipay.credentials)
    trusting = AlipayConnector(executor, replace(credentials, alipay_public_key=other))
    with pytest.raises(ChannelUnavailable):
        await trusting.query("T1")


# ---------------------------------------------------------------------- statements
async def test_the_days_bill_is_downloaded_and_parsed_with_fees(
    alipay: Alipay, receiver: Receiver
) -> None:
    connector = alipay.connector
    kept = await paid_order(alipay, receiver, 8_888)
    returned = await paid_order(alipay, receiver, 10_000)
    part = RefundOrder(returned.out_trade_no, "R1" + returned.out_trade_no, 3_000, 10_000, "", "")
    await connector.refund(part)
    await connector.refund(
        replace(part, out_refund_no="R2" + returned.out_trade_no, refund_fen=7_000)
    )
    paid_at = (await connector.query(kept.out_trade_no)).paid_at
    assert paid_at is not None
    day = paid_at.astimezone(wire.BEIJING).date()

    statement = await connector.statement(day)
    assert statement.day == day
    lines = sorted((x.kind, x.out_trade_no, x.amount_fen, x.fee_fen, x.out_refund_no)
                   for x in statement.lines)  # fmt: skip
    assert lines == sorted([
        ("payment", kept.out_trade_no, 8_888, 53, None),  # 0.6 % of 88.88 = 0.53328
        ("payment", returned.out_trade_no, 10_000, 60, None),
        ("refund", returned.out_trade_no, 3_000, 18, part.out_refund_no),  # given back pro rata
        ("refund", returned.out_trade_no, 7_000, 42, "R2" + returned.out_trade_no),  # the rest
    ])  # fmt: skip
    assert all(x.channel_trade_no and x.at.tzinfo for x in statement.lines)

    with pytest.raises(ChannelRefused) as none:
        await connector.statement(day - timedelta(days=1))
    assert none.value.code == wire.SUB_BILL_NOT_EXIST
    with pytest.raises(ChannelRefused):
        await connector.statement(day + timedelta(days=2))


# ---------------------------------------------------------------------- credentials
async def test_credentials_are_checked_field_by_field(alipay: Alipay) -> None:
    good = alipay.credentials
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    other_pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    for changes, field in (
        ({"app_id": ""}, "app_id"),
        ({"app_private_key_pem": "-----BEGIN PRIVATE KEY-----"}, "app_private_key_pem"),
        ({"app_public_key_pem": other_pem}, "app_public_key_pem"),
        ({"alipay_public_key_pem": good["app_private_key_pem"]}, "alipay_public_key_pem"),
        ({"base_url": "ftp://example.com/gateway.do"}, "base_url"),
    ):
        with pytest.raises(ValueError) as bad:
            AlipayCredentials.from_mapping({**good, **changes})
        assert str(bad.value).startswith(field + ":") and "BEGIN" not in str(bad.value)
    credentials = AlipayCredentials.from_mapping({**good, "base_url": None})
    assert credentials.base_url == "https://openapi.alipay.com/gateway.do"
    assert "PRIVATE" not in repr(credentials) and "key" not in repr(credentials)


# ---------------------------------------------------------------------- wire properties
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
form_text = st.text(st.characters(codec="utf-8"), max_size=40)


@given(st.dictionaries(form_text.filter(bool), form_text, max_size=12))
def test_forms_round_trip(params: dict[str, str]) -> None:
    assert wire.decode_form(wire.encode_form(params)) == params


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12), form_text,
                       min_size=1, max_size=8), st.data())  # fmt: skip
def test_a_signature_fails_over_any_changed_byte(
    params: dict[str, str], data: st.DataObject
) -> None:
    signed = wire.signed(PRIVATE_KEY, params)
    text = wire.signing_string(signed)
    assert wire.rsa2_verify(PRIVATE_KEY.public_key(), text, signed["sign"])
    raw = text.encode()
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        changed = bytearray(raw)
        changed[at] ^= data.draw(st.integers(1, 255))
        tampered = changed.decode("utf-8", errors="replace")
        assert not wire.rsa2_verify(PRIVATE_KEY.public_key(), tampered, signed["sign"])
    assert not wire.rsa2_verify(PRIVATE_KEY.public_key(), text, wire.tampered(signed["sign"]))


@given(st.dictionaries(form_text, st.one_of(form_text, st.integers(), st.lists(form_text)),
                       max_size=6))  # fmt: skip
def test_the_signed_text_is_cut_out_of_an_answer_exactly(content: dict[str, Any]) -> None:
    text = msgspec.json.encode(content)
    body = wire.signed_answer("alipay_trade_query_response", text, "c2ln").decode()
    members = wire.answer_members(body)
    assert members["alipay_trade_query_response"] == (text.decode(), content)
    assert members["sign"] == ('"c2ln"', "c2ln")
    at = body.rindex(',"sign"')
    spaced = body[:at] + ' ,\n "sign"' + body[at + 1 + len('"sign"') :]
    assert wire.answer_members(spaced)["alipay_trade_query_response"][0] == text.decode()


@pytest.mark.parametrize(
    "body", ['{"a":1,"a":2}', '{"a":1} x', '[{"a":1}]', '{"a":NaN}', '{"a":1,}', ""]
)
def test_bodies_that_are_not_one_answer_object_are_refused(body: str) -> None:
    with pytest.raises(ValueError):
        wire.answer_members(body)


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 10**12), st.sampled_from([wire.TRADE_SUCCESS, wire.TRADE_FINISHED]))
def test_notified_amounts_cross_into_fen_exactly(amount_fen: int, status: str) -> None:
    credentials = AlipayCredentials(
        "9021000000000001", PRIVATE_KEY, PRIVATE_KEY.public_key(), "http://127.0.0.1/gateway.do"
    )
    note = replace_note(made_up_note("9021000000000001"), fen_to_yuan(amount_fen), status)
    body = wire.encode_form(wire.notification_params(PRIVATE_KEY, note)).encode()
    paid = parse_notification(credentials, body, wire.FORM_CONTENT_TYPE).payment
    assert paid is not None and (paid.amount_fen, paid.state) == (amount_fen, TradeState.PAID)


def replace_note(note: wire.TradeNotification, yuan: str, status: str) -> wire.TradeNotification:
    return msgspec.structs.replace(note, total_amount=yuan, trade_status=status)


gbk_text = st.text(
    st.characters(codec="gbk", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20
).map(lambda s: " ".join(s.split()))
at_second = st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=wire.BEIJING)
)


@st.composite
def bill_lines(draw: st.DrawFn) -> wire.BillLine:
    refund = draw(st.booleans())
    sign = -1 if refund else 1
    return wire.BillLine(
        draw(st.text(string.digits, min_size=28, max_size=28)),
        draw(st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=32)),
        wire.BILL_KIND_REFUND if refund else wire.BILL_KIND_PAYMENT, draw(gbk_text),
        draw(at_second), draw(at_second), "sbx***@sandbox.com",
        sign * draw(st.integers(0, 10**9)), -sign * draw(st.integers(0, 10**6)),
        draw(st.text(string.ascii_letters, min_size=1, max_size=20)) if refund else "",
    )  # fmt: skip


@settings(deadline=None, max_examples=40)
@given(st.lists(bill_lines(), max_size=8), st.dates())
def test_bills_round_trip(lines: list[wire.BillLine], day: date) -> None:
    data = wire.write_bill("20881234567890120156", day, lines, datetime.now(UTC))
    assert wire.read_bill(data) == lines


def test_a_bill_whose_detail_and_summary_disagree_is_refused() -> None:
    at = datetime(2024, 1, 1, 8, tzinfo=wire.BEIJING)
    line = wire.BillLine(
        "2024010122001400000000000001", "T1", wire.BILL_KIND_PAYMENT, "充值", at, at,
        "sbx***@sandbox.com", 8888, -53,
    )  # fmt: skip
    good = wire.write_bill("20881234567890120156", at.date(), [line], at)
    assert wire.read_bill(good) == [line]
    with zipfile.ZipFile(io.BytesIO(good), metadata_encoding="gbk") as archive:
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:  # names in UTF-8 with the flag: read alike
        for name, data in files.items():
            archive.writestr(name, data.replace(b"-0.53", b"-0.54") if "汇总" not in name else data)
    with pytest.raises(ValueError, match="disagree"):
        wire.read_bill(out.getvalue())
    for broken in (b"PK not a zip", good[: len(good) // 2]):
        with pytest.raises(ValueError):
            wire.read_bill(broken)
