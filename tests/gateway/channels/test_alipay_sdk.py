"""A merchant using python-alipay-sdk (`alipay.AliPay`) talks to the Alipay sandbox unchanged
but for the gateway URL: its order strings pay, its calls verify the sandbox's signatures, and
its `verify` accepts the sandbox's notifications.

The SDK has no constructor option for the gateway URL, only the instance attribute `_gateway`
that `debug=` chooses between Alipay's production and sandbox gateways: that is its base URL.
Its calls are blocking (`urlopen`), so they run in a thread beside the sandbox's event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
from alipay import AliPay, AliPayException
from alipay.exceptions import AliPayValidationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.channels import alipay_wire as wire
from gateway.channels.alipay import AlipayConnector, AlipayCredentials
from gateway.channels.executor import Executor
from gateway.channels.types import TradeState
from tests.gateway.channels.conftest import Receiver, SandboxFactory, pay_in_app


@dataclass
class Merchant:
    base_url: str
    credentials: dict[str, Any]
    client: Any  # alipay.AliPay: the SDK is untyped


def sdk_client(credentials: dict[str, Any], notify_url: str, alipay_public_key: str = "") -> Any:
    client = AliPay(
        appid=credentials["app_id"], app_notify_url=notify_url,
        app_private_key_string=credentials["app_private_key_pem"],
        alipay_public_key_string=alipay_public_key or credentials["alipay_public_key_pem"],
        sign_type="RSA2",
    )  # fmt: skip
    client._gateway = credentials["base_url"]
    return client


@pytest.fixture
async def merchant(start_sandbox: SandboxFactory, receiver: Receiver) -> Merchant:
    base_url, _ = await start_sandbox("alipay")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/credentials") as response:
            credentials = await response.json()
    return Merchant(base_url, credentials, sdk_client(credentials, receiver.url))


async def sdk(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(call, *args, **kwargs)


async def paid_by_sdk(merchant: Merchant, total_amount: Any = "88.88") -> str:
    out_trade_no = "S" + secrets.token_hex(8)
    order_string = merchant.client.api_alipay_trade_app_pay(
        subject="一卡通充值", out_trade_no=out_trade_no, total_amount=total_amount
    )
    await pay_in_app(merchant.base_url, order_string)
    return out_trade_no


async def test_an_sdk_order_string_pays_and_the_sdk_verifies_the_notification(
    merchant: Merchant, receiver: Receiver, executor: Executor
) -> None:
    out_trade_no = await paid_by_sdk(merchant)
    [received] = await receiver.wait(1)
    data = dict(parse_qsl(received.body.decode(), keep_blank_values=True))
    signature = data.pop("sign")
    assert data["trade_status"] == "TRADE_SUCCESS" and data["total_amount"] == "88.88"
    assert merchant.client.verify(dict(data), signature)
    assert not merchant.client.verify({**data, "total_amount": "88.89"}, signature)
    # Our connector reads the same notification of an SDK-made order alike.
    connector = AlipayConnector(executor, AlipayCredentials.from_mapping(merchant.credentials))
    note = connector.parse_notification(received.headers, received.body, received.content_type)
    assert note.payment is not None
    assert (note.payment.out_trade_no, note.payment.amount_fen) == (out_trade_no, 8888)


async def test_client_api_order_strings_with_number_amounts_pay(
    merchant: Merchant, receiver: Receiver
) -> None:
    out_trade_no = "S" + secrets.token_hex(8)
    biz_content = {
        "subject": "充值", "out_trade_no": out_trade_no, "total_amount": 0.01,
        "product_code": wire.PRODUCT_CODE_APP, "timeout_express": "30m",
    }  # fmt: skip
    order_string = merchant.client.client_api(
        "alipay.trade.app.pay", biz_content=biz_content, notify_url=receiver.url
    )
    await pay_in_app(merchant.base_url, order_string)
    answer = await sdk(merchant.client.api_alipay_trade_query, out_trade_no=out_trade_no)
    assert (answer["trade_status"], answer["total_amount"]) == ("TRADE_SUCCESS", "0.01")


async def test_query_refund_refund_query_and_close_through_the_sdk(merchant: Merchant) -> None:
    client = merchant.client
    out_trade_no = await paid_by_sdk(merchant)
    answer = await sdk(client.api_alipay_trade_query, out_trade_no=out_trade_no)
    assert (answer["code"], answer["trade_status"]) == ("10000", "TRADE_SUCCESS")
    trade_no = answer["trade_no"]

    refund = await sdk(
        client.api_alipay_trade_refund, refund_amount="10.00", out_trade_no=out_trade_no,
        out_request_no="R1",
    )  # fmt: skip
    assert (refund["code"], refund["fund_change"], refund["refund_fee"]) == ("10000", "Y", "10.00")
    queried = await sdk(
        client.api_alipay_trade_fastpay_refund_query, "R1", out_trade_no=out_trade_no
    )
    assert (queried["refund_amount"], queried["refund_status"]) == ("10.00", "REFUND_SUCCESS")
    by_trade_no = await sdk(client.api_alipay_trade_fastpay_refund_query, "R1", trade_no=trade_no)
    assert by_trade_no["out_request_no"] == "R1"

    unknown = await sdk(client.api_alipay_trade_query, out_trade_no="NEVER-MADE")
    assert (unknown["code"], unknown["sub_code"]) == ("40004", "ACQ.TRADE_NOT_EXIST")

    other = "S" + secrets.token_hex(8)
    order_string = client.api_alipay_trade_app_pay(
        subject="充值", out_trade_no=other, total_amount="1.00"
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{merchant.base_url}/sandbox/pay", data={"token": order_string + "&x=1"}
        ) as refused:  # a changed order string is refused, and makes no trade
            assert refused.status == 409
    never_opened = await sdk(client.api_alipay_trade_close, out_trade_no=other)
    assert never_opened["sub_code"] == "ACQ.TRADE_NOT_EXIST"


async def test_close_through_the_sdk(merchant: Merchant, executor: Executor) -> None:
    out_trade_no = "S" + secrets.token_hex(8)
    order_string = merchant.client.api_alipay_trade_app_pay(
        subject="充值", out_trade_no=out_trade_no, total_amount="1.00"
    )
    connector = AlipayConnector(executor, AlipayCredentials.from_mapping(merchant.credentials))
    async with aiohttp.ClientSession() as session:  # the buyer opens it, and does not pay
        async with session.get(
            f"{merchant.base_url}/sandbox/pay/{quote(order_string, safe='')}"
        ) as opened:
            assert opened.status == 200
    closed = await sdk(merchant.client.api_alipay_trade_close, out_trade_no=out_trade_no)
    assert (closed["code"], closed["out_trade_no"]) == ("10000", out_trade_no)
    assert (await connector.query(out_trade_no)).state is TradeState.CLOSED


async def test_the_bill_through_the_sdk(merchant: Merchant) -> None:
    await paid_by_sdk(merchant, "100.00")
    day = datetime.now(UTC).astimezone(wire.BEIJING).date()
    answer = await sdk(
        merchant.client.server_api, wire.METHOD_BILL_URL,
        biz_content={"bill_type": "trade", "bill_date": day.isoformat()},
    )  # fmt: skip
    url = answer["bill_download_url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            lines = wire.read_bill(await response.read())
        async with session.get(url.replace("token=", "token=0")) as forged:
            assert forged.status == 404
    assert [(x.kind, x.amount_fen, x.fee_fen) for x in lines] == [
        (wire.BILL_KIND_PAYMENT, 10_000, -60)
    ]


async def test_the_sdk_refuses_answers_the_sandbox_did_not_sign(
    merchant: Merchant, receiver: Receiver
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    distrustful = sdk_client(merchant.credentials, receiver.url, alipay_public_key=pem)
    with pytest.raises(AliPayValidationError):
        await sdk(distrustful.api_alipay_trade_query, out_trade_no="NEVER-MADE")
    # A merchant signing with a key Alipay does not know is refused in Alipay's envelope.
    stranger = AliPay(
        appid=merchant.credentials["app_id"], app_notify_url=receiver.url,
        app_private_key_string=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.NoEncryption()).decode(),
        alipay_public_key_string=merchant.credentials["alipay_public_key_pem"], sign_type="RSA2",
    )  # fmt: skip
    stranger._gateway = merchant.credentials["base_url"]
    refused = await sdk(stranger.api_alipay_trade_query, out_trade_no="NEVER-MADE")
    assert (refused["code"], refused["sub_code"]) == ("40002", "isv.invalid-signature")
    with pytest.raises(AliPayException):
        await sdk(stranger.server_api, "alipay.trade.no.such.method")
