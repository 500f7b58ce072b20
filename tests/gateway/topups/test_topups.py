"""Top-ups from a rider's side, through the three channels' sandboxes over real HTTP: pay once,
credited once, never lost."""

from __future__ import annotations

import secrets
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.channels.types import Channel
from gateway.config import Config
from gateway.ledger import AccountKind, Leg, TxnKind, open_account, post
from gateway.topups.checks import orders_match_txns
from hce.apdu import IssuerInfo
from tests.gateway import identity_helpers as make
from tests.gateway.sandboxes import Sandboxes, until

ClientT = TestClient[Any, Any]
TOKEN_OF = {  # what the phone hands the channel's app, in the pay params
    Channel.ALIPAY: "order_string",
    Channel.WECHATPAY: "prepayid",
    Channel.UNIONPAY: "tn",
}


async def topup(
    gateway: ClientT, rider: make.RiderLogin, channel: Channel, amount_fen: int = 5000,
    target: dict[str, Any] | None = None, key: str | None = None,
) -> Any:  # fmt: skip
    return await gateway.post(
        "/v1/topups",
        json={"target": target or {"wallet": True}, "amount_fen": amount_fen,
              "channel": channel.value},
        headers={**rider.auth, "Idempotency-Key": key or secrets.token_hex(8)},
    )  # fmt: skip


async def pay(sandboxes: Sandboxes, channel: Channel, pay_params: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sandboxes.urls[channel]}/sandbox/pay", data={"token": pay_params[TOKEN_OF[channel]]}
        ) as response:
            assert response.status == 200, await response.text()


async def misbehave(sandboxes: Sandboxes, channel: Channel, kinds: list[str], **kw: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sandboxes.urls[channel]}/sandbox/behaviours", json={"kinds": kinds, **kw}
        ) as response:
            assert response.status == 200


async def wallet_fen(gateway: ClientT, rider: make.RiderLogin) -> int:
    return int((await (await gateway.get("/v1/wallet", headers=rider.auth)).json())["balance_fen"])


async def status_of(gateway: ClientT, rider: make.RiderLogin, topup_id: int) -> str:
    response = await gateway.get(f"/v1/topups/{topup_id}", headers=rider.auth)
    return str((await response.json())["status"])


@pytest.mark.parametrize("channel", list(TOKEN_OF))
async def test_pay_notify_credit_once(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["duplicate", "out_of_order"])
    response = await topup(gateway, rider, channel, 8800)
    assert response.status == 201, await response.text()
    order = await response.json()
    assert order["status"] == "paying" and order["target"] == {"wallet": True}
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited)
    assert await wallet_fen(gateway, rider) == 8800
    # The duplicate and the stale notification arrive too, and change nothing.
    await until(lambda: _received_all(sandboxes, channel))
    assert await wallet_fen(gateway, rider) == 8800
    txns = await pool.fetchval(
        "SELECT count(*) FROM ledger_txns WHERE kind = 'topup_paid' AND ref = $1",
        f"topup:{order['id']}",
    )
    assert txns == 1


async def _received_all(sandboxes: Sandboxes, channel: Channel) -> bool:
    return not sandboxes.states[channel]._sending


@pytest.mark.parametrize("channel", list(TOKEN_OF))
async def test_a_notification_that_never_comes_is_found_by_query(
    gateway: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["no_notify"])
    order = await (await topup(gateway, rider, channel, 2000)).json()
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited, timeout_s=20)
    assert await wallet_fen(gateway, rider) == 2000


async def test_the_same_key_gives_the_same_order_and_pays_once(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    rider = await make.rider(gateway)
    key = secrets.token_hex(8)
    first = await topup(gateway, rider, Channel.WECHATPAY, 3000, key=key)
    again = await topup(gateway, rider, Channel.WECHATPAY, 3000, key=key)
    assert first.status == again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await first.json()) == (await again.json())
    other = await topup(gateway, rider, Channel.WECHATPAY, 4000, key=key)
    assert other.status == 422
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"


async def test_a_silent_channel_at_create_is_503_and_the_retry_resumes(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, Channel.WECHATPAY, ["error_5xx"], errors=3)
    key = secrets.token_hex(8)
    failed = await topup(gateway, rider, Channel.WECHATPAY, 3000, key=key)
    assert failed.status == 503
    assert (await failed.json())["error"]["code"] == "payment_channel_unavailable"
    retried = await topup(gateway, rider, Channel.WECHATPAY, 3000, key=key)
    assert retried.status == 201, await retried.text()
    order = await retried.json()
    assert order["status"] == "paying"
    listed = await (await gateway.get("/v1/topups", headers=rider.auth)).json()
    assert [item["id"] for item in listed["items"]] == [order["id"]]


async def test_a_tampered_notification_is_refused(gateway: ClientT, sandboxes: Sandboxes) -> None:
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, Channel.ALIPAY, 5000)).json()
    body = urllib.parse.urlencode(
        {"out_trade_no": "x", "trade_status": "TRADE_SUCCESS", "total_amount": "50.00",
         "sign_type": "RSA2", "sign": "AAAA"}
    )  # fmt: skip
    response = await gateway.post(
        "/v1/channels/alipay/notify", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "bad_signature"
    assert await status_of(gateway, rider, order["id"]) == "paying"


async def test_amounts_are_checked_before_anything_is_charged(gateway: ClientT) -> None:
    rider = await make.rider(gateway)
    for amount in (999, 1050, 100_100):
        response = await topup(gateway, rider, Channel.ALIPAY, amount)
        assert response.status == 422
        assert (await response.json())["error"]["code"] == "topup_amount_not_allowed"
    response = await topup(
        gateway, rider, Channel.ALIPAY, 5000, target={"wallet": True, "card": "1" * 20}
    )
    assert response.status == 400
    listed = await (await gateway.get("/v1/topups", headers=rider.auth)).json()
    assert listed["items"] == []


def card_file(asn: str, card_type: int = 1) -> str:
    today = datetime.now(UTC).date()
    info = IssuerInfo(
        bytes.fromhex("3100000000000000"), 1, 1, bytes.fromhex(asn),
        bytes.fromhex(f"{today - timedelta(days=365):%Y%m%d}"),
        bytes.fromhex(f"{today + timedelta(days=365 * 5):%Y%m%d}"), card_type, 0,
    )  # fmt: skip
    return info.to_bytes().hex()


async def test_a_card_top_up_above_the_ceiling_is_refused_with_the_room_left(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    rider = await make.rider(gateway)
    asn = f"{secrets.randbelow(10**20):020d}"
    linked = await gateway.post(
        "/v1/cards", json={"asn": asn, "file_0015_hex": card_file(asn)}, headers=rider.auth
    )
    assert linked.status == 201, await linked.text()
    first = await topup(gateway, rider, Channel.UNIONPAY, 60_000, target={"card": asn})
    assert first.status == 201, await first.text()
    refused = await topup(gateway, rider, Channel.UNIONPAY, 50_000, target={"card": asn})
    assert refused.status == 422
    error = (await refused.json())["error"]
    assert error["code"] == "card_balance_ceiling" and error["details"]["room_fen"] == 40_000
    await pay(sandboxes, Channel.UNIONPAY, (await first.json())["pay"])

    async def pending() -> bool:
        return await status_of(gateway, rider, (await first.json())["id"]) == "pending_load"

    await until(pending)
    cards = await (await gateway.get("/v1/cards", headers=rider.auth)).json()
    assert cards["items"][0]["pending_fen"] == 60_000
    # Another rider cannot link it, nor top it up.
    other = await make.rider(gateway)
    taken = await gateway.post(
        "/v1/cards", json={"asn": asn, "file_0015_hex": card_file(asn)}, headers=other.auth
    )
    assert taken.status == 409
    response = await topup(gateway, other, Channel.UNIONPAY, 1000, target={"card": asn})
    assert response.status == 404


async def test_bad_card_data_is_refused(gateway: ClientT) -> None:
    rider = await make.rider(gateway)
    asn = f"{secrets.randbelow(10**20):020d}"
    other_asn = f"{secrets.randbelow(10**20):020d}"
    for body in (
        {"asn": asn, "file_0015_hex": card_file(other_asn)},  # another card's file
        {"asn": asn, "file_0015_hex": card_file(asn, card_type=0x80)},  # a virtual card
        {"asn": asn, "file_0015_hex": "00" * 30},
    ):
        response = await gateway.post("/v1/cards", json=body, headers=rider.auth)
        assert response.status == 400, body
        assert (await response.json())["error"]["code"] == "card_unreadable"
    listed = await (await gateway.get("/v1/cards", headers=rider.auth)).json()
    assert listed["items"] == []


@pytest.mark.parametrize("channel", list(TOKEN_OF))
async def test_refund_partial_then_full(
    gateway: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, channel, 5000)).json()
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited)
    headers = {**rider.auth, "Idempotency-Key": secrets.token_hex(8)}
    part = await gateway.post(
        f"/v1/topups/{order['id']}/refunds", json={"amount_fen": 2000, "reason": "changed mind"},
        headers=headers,
    )  # fmt: skip
    assert part.status == 201, await part.text()
    assert await wallet_fen(gateway, rider) == 3000

    async def settled(expected: str) -> bool:
        return await status_of(gateway, rider, order["id"]) == expected

    await until(lambda: settled("partially_refunded"), timeout_s=20)
    rest = await gateway.post(
        f"/v1/topups/{order['id']}/refunds", json={"amount_fen": 3000, "reason": "all of it"},
        headers={**rider.auth, "Idempotency-Key": secrets.token_hex(8)},
    )  # fmt: skip
    assert rest.status == 201, await rest.text()
    await until(lambda: settled("refunded"), timeout_s=20)
    assert await wallet_fen(gateway, rider) == 0
    too_much = await gateway.post(
        f"/v1/topups/{order['id']}/refunds", json={"amount_fen": 100, "reason": "more"},
        headers={**rider.auth, "Idempotency-Key": secrets.token_hex(8)},
    )  # fmt: skip
    assert too_much.status == 422
    assert (await too_much.json())["error"]["code"] == "topup_not_refundable"


async def test_spent_money_is_not_refunded(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, Channel.ALIPAY, 5000)).json()
    await pay(sandboxes, Channel.ALIPAY, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited)
    await make.fund(gateway, pool, config, rider.id, -4000)  # the rider spent most of it
    refused = await gateway.post(
        f"/v1/topups/{order['id']}/refunds", json={"amount_fen": 5000, "reason": "all"},
        headers={**rider.auth, "Idempotency-Key": secrets.token_hex(8)},
    )  # fmt: skip
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "topup_not_refundable"
    assert await wallet_fen(gateway, rider) == 1000
    assert await status_of(gateway, rider, order["id"]) == "credited"


async def test_other_riders_see_nothing(gateway: ClientT, sandboxes: Sandboxes) -> None:
    rider, other = await make.rider(gateway), await make.rider(gateway)
    order = await (await topup(gateway, rider, Channel.ALIPAY, 5000)).json()
    assert (await gateway.get(f"/v1/topups/{order['id']}", headers=other.auth)).status == 404
    refund = await gateway.post(
        f"/v1/topups/{order['id']}/refunds", json={"amount_fen": 100, "reason": "mine?"},
        headers={**other.auth, "Idempotency-Key": secrets.token_hex(8)},
    )  # fmt: skip
    assert refund.status == 404


async def test_ledger_verify_catches_a_payment_txn_for_an_unpaid_order(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, Channel.ALIPAY, 5000)).json()
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            assert await orders_match_txns(conn) == []
            wallet = await open_account(conn, AccountKind.RIDER_WALLET, str(rider.id))
            receivable = await open_account(conn, AccountKind.CHANNEL_RECEIVABLE, "alipay")
            await post(
                conn, TxnKind.TOPUP_PAID, [Leg(receivable, -5000), Leg(wallet, 5000)],
                ref=f"topup:{order['id']}",
            )  # fmt: skip
            problems = await orders_match_txns(conn)
            assert any(p.startswith(f"top-up {order['id']} (paying") for p in problems), problems
        finally:
            await transaction.rollback()
