"""The official-style merchant SDK, wechatpayv3 2.0 (platform public key mode), against the WeChat
Pay sandbox, changed in one attribute only: its gateway URL (`Core._gate_way`).

Every SDK call verifies the sandbox's answer signature itself (it raises when one does not
verify), and `callback` verifies and decrypts the sandbox's notifications. The SDK is
synchronous (requests): its calls run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import zlib
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wechatpayv3 import WeChatPay, WeChatPayType

from gateway.channels import wechatpay_wire as wire
from tests.gateway.channels.conftest import Receiver, SandboxFactory, pay_in_app


async def sandbox_merchant(
    start_sandbox: SandboxFactory, receiver: Receiver, **changes: str
) -> tuple[str, WeChatPay]:
    base_url, _ = await start_sandbox("wechatpay")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/sandbox/credentials") as response:
            credentials: dict[str, Any] = {**await response.json(), **changes}
    return base_url, merchant_sdk(credentials, base_url, receiver.url)


def merchant_sdk(credentials: dict[str, Any], base_url: str, notify_url: str) -> WeChatPay:
    sdk = WeChatPay(
        wechatpay_type=WeChatPayType.APP,
        mchid=credentials["mchid"],
        private_key=credentials["merchant_private_key_pem"],
        cert_serial_no=credentials["merchant_serial_no"],
        appid=credentials["appid"],
        apiv3_key=credentials["apiv3_key"],
        notify_url=notify_url,
        public_key=credentials["platform_public_key_pem"],
        public_key_id=credentials["platform_public_key_id"],
    )
    sdk._core._gate_way = base_url  # the one change a merchant makes: where the API lives
    return sdk


def answer(result: tuple[int, Any], status: int = 200) -> dict[str, Any]:
    code, text = result
    assert code == status, text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


async def test_the_official_sdk_pays_refunds_closes_and_downloads_the_bill(
    start_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    base_url, sdk = await sandbox_merchant(start_sandbox, receiver)
    out_trade_no = "SDK" + secrets.token_hex(6)
    created = answer(
        await asyncio.to_thread(
            sdk.pay, description="一卡通充值", out_trade_no=out_trade_no, amount={"total": 990}
        )
    )
    query = answer(await asyncio.to_thread(sdk.query, out_trade_no=out_trade_no))
    assert query["trade_state"] == "NOTPAY"

    await pay_in_app(base_url, created["prepay_id"])
    [got] = await receiver.wait(1)
    notified = sdk.callback(got.headers, got.body)
    assert notified["event_type"] == "TRANSACTION.SUCCESS"
    assert notified["resource"]["trade_state"] == "SUCCESS"
    assert notified["resource"]["amount"]["total"] == 990
    query = answer(await asyncio.to_thread(sdk.query, out_trade_no=out_trade_no))
    assert query["trade_state"] == "SUCCESS"
    assert query["transaction_id"] == notified["resource"]["transaction_id"]

    refund_no = "SDKR" + secrets.token_hex(6)
    amount = {"refund": 400, "total": 990, "currency": "CNY"}
    refunded = answer(
        await asyncio.to_thread(
            sdk.refund, out_refund_no=refund_no, amount=amount, out_trade_no=out_trade_no
        )
    )
    assert refunded["status"] == "PROCESSING"
    _, got = await receiver.wait(2)
    refund_notice = sdk.callback(got.headers, got.body)
    assert refund_notice["event_type"] == "REFUND.SUCCESS"
    assert refund_notice["resource"]["out_refund_no"] == refund_no
    status = answer(await asyncio.to_thread(sdk.query_refund, out_refund_no=refund_no))
    assert (status["status"], status["amount"]["refund"]) == ("SUCCESS", 400)

    other = "SDK" + secrets.token_hex(6)
    answer(
        await asyncio.to_thread(sdk.pay, description="x", out_trade_no=other, amount={"total": 1})
    )
    code, body = await asyncio.to_thread(sdk.close, out_trade_no=other)
    assert (code, body) == (204, b"")

    bill_date = wire.bill_day(datetime.now(UTC)).isoformat()
    bill = answer(await asyncio.to_thread(sdk.trade_bill, bill_date=bill_date))
    code, packed = await asyncio.to_thread(sdk.download_bill, bill["download_url"])
    assert code == 200
    data = zlib.decompress(packed, wbits=16 + zlib.MAX_WBITS)  # tar_type GZIP, the SDK's default
    assert hashlib.sha1(data).hexdigest() == bill["hash_value"]
    rows = wire.parse_bill(data)
    assert [(r.out_trade_no, r.trade_state, r.fee_fen) for r in rows] == [
        (out_trade_no, "SUCCESS", 6),  # 0.60 % of 9.90 yuan is 5.94 fen: 6
        (out_trade_no, "REFUND", -2),  # 0.60 % of 4.00 yuan is 2.4 fen: 2 given back
    ]


async def test_the_sdk_refuses_answers_the_sandbox_did_not_sign_with_its_key(
    start_sandbox: SandboxFactory, receiver: Receiver
) -> None:
    stranger = rsa.generate_private_key(65537, 2048).public_key()
    pem = stranger.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    _, sdk = await sandbox_merchant(start_sandbox, receiver, platform_public_key_pem=pem)
    with pytest.raises(Exception, match="failed to verify the signature"):
        await asyncio.to_thread(
            sdk.pay, description="x", out_trade_no="SDK" + secrets.token_hex(6), amount={"total": 1}
        )
