"""Top-ups when channels misbehave: notifications late, forged, for orders we never made, or
never coming; queries failing; orders expiring. The order's status stays honest and every paid
order is credited once."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.channels.types import Channel
from gateway.topups import orders
from gateway.topups.orders import State
from tests.gateway import identity_helpers as make
from tests.gateway.sandboxes import GatewayFactory, Sandboxes, until
from tests.gateway.topups.test_topups import misbehave, pay, status_of, topup, wallet_fen

ClientT = TestClient[Any, Any]


@pytest.fixture
async def quick_expiry(make_gateway: GatewayFactory) -> ClientT:
    """A gateway whose top-ups expire after 2 s unpaid."""
    return await make_gateway(topup_ttl_s=2)


@pytest.mark.parametrize("channel", [Channel.ALIPAY, Channel.WECHATPAY])
async def test_an_unpaid_order_is_closed_at_expiry_and_paying_it_then_is_refused(
    quick_expiry: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(quick_expiry)
    order = await (await topup(quick_expiry, rider, channel, 1000)).json()

    async def closed() -> bool:
        return await status_of(quick_expiry, rider, order["id"]) == "closed"

    await until(closed, timeout_s=20)
    with pytest.raises(AssertionError):  # the channel's app refuses an expired, closed order
        await pay(sandboxes, channel, order["pay"])
    assert await wallet_fen(quick_expiry, rider) == 0


async def test_a_payment_reported_after_the_close_is_still_credited(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    """The order was closed on our side (the reconciler saw it unpaid at expiry) while the
    buyer's payment went through at the channel: the late notification is credited, never
    dropped."""
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, Channel.WECHATPAY, 3000)).json()
    async with pool.acquire() as conn, conn.transaction():
        await orders.move(conn, await orders.lock(conn, order["id"]), State.CLOSED)
    await misbehave(sandboxes, Channel.WECHATPAY, ["late"], late_s=1)
    await pay(sandboxes, Channel.WECHATPAY, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited)
    assert await wallet_fen(gateway, rider) == 3000


ALL = [Channel.ALIPAY, Channel.WECHATPAY, Channel.UNIONPAY]


@pytest.mark.parametrize("channel", ALL)
async def test_a_forged_notification_is_refused_and_the_query_finds_the_payment(
    gateway: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["tampered"])
    order = await (await topup(gateway, rider, channel, 4000)).json()
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited, timeout_s=20)
    assert await wallet_fen(gateway, rider) == 4000
    metrics = await (await gateway.get("/metrics")).text()
    assert 'route="/v1/channels/{channel}/notify",status="401"' in metrics


@pytest.mark.parametrize("channel", ALL)
async def test_a_notification_for_an_order_we_never_made_is_kept_for_an_operator(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["unknown_order"])
    order = await (await topup(gateway, rider, channel, 2000)).json()
    await pay(sandboxes, channel, order["pay"])

    async def recorded() -> bool:
        found = await pool.fetchval(
            "SELECT count(*) FROM channel_exceptions WHERE channel = $1 "
            "AND kind = 'unknown_order' AND out_trade_no LIKE 'UNKNOWN%'",
            channel.value,
        )
        return bool(found)

    await until(recorded)
    # The real order is credited, once, beside it.
    assert await wallet_fen(gateway, rider) == 2000


async def test_queries_that_fail_leave_the_order_paying_until_the_channel_answers(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, Channel.UNIONPAY, ["no_notify"])
    order = await (await topup(gateway, rider, Channel.UNIONPAY, 2000)).json()
    await pay(sandboxes, Channel.UNIONPAY, order["pay"])
    await misbehave(sandboxes, Channel.UNIONPAY, ["no_notify", "error_5xx"], errors=6)

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    # While the channel fails its queries the order says `paying`, never `failed`.
    assert await status_of(gateway, rider, order["id"]) == "paying"
    await until(credited, timeout_s=30)
    assert await wallet_fen(gateway, rider) == 2000


async def test_one_payment_reported_by_notification_and_query_at_once_credits_once(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    riders = [await make.rider(gateway) for _ in range(5)]
    created = [
        await (await topup(gateway, r, Channel.WECHATPAY, 1000, key=secrets.token_hex(8))).json()
        for r in riders
    ]
    await misbehave(sandboxes, Channel.WECHATPAY, ["duplicate", "late"], late_s=1.5)
    for order in created:
        await pay(sandboxes, Channel.WECHATPAY, order["pay"])

    async def all_credited() -> bool:
        states = [
            await status_of(gateway, r, o["id"]) for r, o in zip(riders, created, strict=True)
        ]
        return states == ["credited"] * len(created)

    await until(all_credited, timeout_s=20)
    for rider in riders:
        assert await wallet_fen(gateway, rider) == 1000
    refs = [f"topup:{o['id']}" for o in created]
    count = await pool.fetchval(
        "SELECT count(*) FROM ledger_txns WHERE kind = 'topup_paid' AND ref = ANY($1)", refs
    )
    assert count == len(created)


@pytest.mark.parametrize("channel", ALL)
async def test_a_wrong_amount_is_flagged_and_never_credited(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    order = await (await topup(gateway, rider, channel, 5000)).json()
    await misbehave(sandboxes, channel, ["wrong_amount"])
    await pay(sandboxes, channel, order["pay"])

    async def flagged() -> bool:
        found = await pool.fetchval("SELECT flag FROM topup_orders WHERE id = $1", order["id"])
        return found == "amount_differs"

    await until(flagged)
    assert await status_of(gateway, rider, order["id"]) == "paying"
    assert await wallet_fen(gateway, rider) == 0


@pytest.mark.parametrize("channel", ALL)
async def test_a_late_notification_is_credited_once(
    gateway: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["late", "duplicate"], late_s=2)
    order = await (await topup(gateway, rider, channel, 3000)).json()
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(gateway, rider, order["id"]) == "credited"

    await until(credited)
    await until(lambda: _quiet(sandboxes, channel))
    assert await wallet_fen(gateway, rider) == 3000


async def _quiet(sandboxes: Sandboxes, channel: Channel) -> bool:
    return not sandboxes.states[channel]._sending


@pytest.fixture
async def impatient(make_gateway: GatewayFactory) -> ClientT:
    """A gateway that waits 500 ms for a channel, and retries once."""
    return await make_gateway(channel_timeout_ms=500, channel_retries_max=1)


@pytest.mark.parametrize("channel", [Channel.WECHATPAY, Channel.UNIONPAY])
async def test_a_channel_that_times_out_at_create_is_503_and_the_retry_asks_first(
    impatient: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    rider = await make.rider(impatient)
    await misbehave(sandboxes, channel, ["slow"], slow_ms=1500)
    key = secrets.token_hex(8)
    failed = await topup(impatient, rider, channel, 2000, key=key)
    assert failed.status == 503
    assert (await failed.json())["error"]["code"] == "payment_channel_unavailable"
    sandboxes.states[channel].behaviours.clear()
    retried = await topup(impatient, rider, channel, 2000, key=key)
    assert retried.status == 201, await retried.text()
    order = await retried.json()
    await pay(sandboxes, channel, order["pay"])

    async def credited() -> bool:
        return await status_of(impatient, rider, order["id"]) == "credited"

    await until(credited)
    assert await wallet_fen(impatient, rider) == 2000


async def test_a_channel_over_its_rate_gets_429_and_its_retry_is_credited_once(
    make_gateway: GatewayFactory, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    """A channel's notifications are limited in the gateway's process (no Redis round trip):
    the duplicate that comes at once is refused with 429, the channel sends it again later."""
    gateway = await make_gateway(rate_channel_per_s=1, rate_channel_burst=1)
    rider = await make.rider(gateway)
    await misbehave(sandboxes, Channel.ALIPAY, ["duplicate"])
    order = await (await topup(gateway, rider, Channel.ALIPAY, 2000)).json()
    await pay(sandboxes, Channel.ALIPAY, order["pay"])

    async def all_acknowledged() -> bool:
        return not sandboxes.states[Channel.ALIPAY]._sending

    await until(all_acknowledged, timeout_s=30)
    metrics = await (await gateway.get("/metrics")).text()
    assert 'onecard_rate_limited_total{kind="channel"}' in metrics
    assert await status_of(gateway, rider, order["id"]) == "credited"
    assert await wallet_fen(gateway, rider) == 2000
    txns = await pool.fetchval(
        "SELECT count(*) FROM ledger_txns WHERE kind = 'topup_paid' AND ref = $1",
        f"topup:{order['id']}",
    )
    assert txns == 1


@pytest.mark.parametrize("channel", [Channel.WECHATPAY, Channel.UNIONPAY])
async def test_a_channel_that_refuses_the_create_fails_the_order_and_charges_nothing(
    gateway: ClientT, sandboxes: Sandboxes, channel: Channel
) -> None:
    """WeChat Pay and UnionPay are asked to create the payment (Alipay's order string is signed
    by the merchant alone, so Alipay can only refuse in its app)."""
    rider = await make.rider(gateway)
    await misbehave(sandboxes, channel, ["refuse"])
    key = secrets.token_hex(8)
    refused = await topup(gateway, rider, channel, 3000, key=key)
    assert refused.status == 422, await refused.text()
    error = (await refused.json())["error"]
    assert error["code"] == "payment_channel_refused"
    assert error["details"]["channel_code"] == {Channel.WECHATPAY: "NO_AUTH",
                                                Channel.UNIONPAY: "32"}[channel]  # fmt: skip
    listed = await (await gateway.get("/v1/topups", headers=rider.auth)).json()
    assert [item["status"] for item in listed["items"]] == ["failed"]
    # The retry with the same key gets the same answer; nothing new is created or charged.
    again = await topup(gateway, rider, channel, 3000, key=key)
    assert again.status == 422 and await again.json() == await refused.json()
    listed = await (await gateway.get("/v1/topups", headers=rider.auth)).json()
    assert len(listed["items"]) == 1
    assert await wallet_fen(gateway, rider) == 0
