"""Recovery points from a client's side, against real PostgreSQL and a real stand-in channel.

Whatever point a request fails or its gateway dies at, retries with the same key end in exactly
one order row in its final state, exactly one payment at the channel, no second create for one
trade number, and the same answer on every later retry.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.context import POOL
from tests.gateway import recovery_routes
from tests.gateway.serve_recovery_routes import CHANNEL_URL_ENV
from tests.gateway.stand_in_channel import KNOB_HEADER, StandInChannel
from tests.gateway.test_idempotency import free_port, wait_until_up

ClientT = TestClient[Any, Any]
PRINCIPAL = "ops-1"
AMOUNT_FEN = 1_200
DECLINED_FEN = 200_000  # above the stand-in channel's limit
TIMEOUT_MS = 500  # the in-process gateway's channel timeout
SUBPROCESS_LEASE_S = 2
RETRY_S_MAX = 15.0

# The key's recovery point once a request died at each point of the route.
POINT_AFTER = {
    "before_order": "started",
    "after_order": "order_created",
    "before_create": "order_created",
    "after_create": "order_created",
    "after_paid": "order_paid",
}
# What reached the channel for the order, over the failed request and its retry. A retry that
# resumed from `order_created` asks before it creates; one resumed past `order_paid` calls
# nothing; one that found nothing committed (`started`) starts afresh.
SEEN = {
    "before_order": ["create"],
    "after_order": ["query:none", "create"],
    "before_create": ["query:none", "create"],
    "after_create": ["create", "query"],
    "after_paid": ["create"],
}


@pytest.fixture(scope="session")
async def orders_table(pool: asyncpg.Pool) -> None:
    await pool.execute(recovery_routes.ORDERS_TABLE)


@pytest.fixture
async def channel() -> AsyncIterator[StandInChannel]:
    stand_in = StandInChannel()
    await stand_in.start()
    yield stand_in
    await stand_in.close()


@pytest.fixture
async def test_client(make_client: Any, channel: StandInChannel, orders_table: None) -> ClientT:
    # No background jobs: they share the pool, and these tests count the connections in use
    # while a request calls out.
    client: ClientT = await make_client(
        extra_routes=[recovery_routes.routes],
        setup=lambda app: recovery_routes.install(app, channel.url, timeout_ms=TIMEOUT_MS),
        jobs=False,
    )
    return client


def new_key() -> str:
    return f"rp-{secrets.token_hex(8)}"


def headers(key: str, knobs: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Test-Principal": PRINCIPAL, "Idempotency-Key": key, **(knobs or {})}


async def post(
    client: ClientT, key: str, amount_fen: int = AMOUNT_FEN, knobs: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    response = await client.post(
        "/test/orders", json={"amount_fen": amount_fen}, headers=headers(key, knobs)
    )
    return response.status, await response.read(), response.headers


async def orders_of(pool: asyncpg.Pool, key: str) -> list[asyncpg.Record]:
    orders: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, state, payment_id FROM test_orders WHERE principal = $1 AND idem_key = $2",
        f"admin:{PRINCIPAL}", key,
    )  # fmt: skip
    return orders


async def key_row(pool: asyncpg.Pool, key: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT state, recovery_point, lease_token, locked_until <= now() AS lapsed "
        "FROM idempotency_keys WHERE principal = $1 AND key = $2",
        f"admin:{PRINCIPAL}", key,
    )  # fmt: skip


async def one_effect(
    pool: asyncpg.Pool, channel: StandInChannel, key: str, state: str = "paid"
) -> str:
    """One order in `state`, one payment for it at the channel; its trade number."""
    orders = await orders_of(pool, key)
    assert len(orders) == 1, orders
    trade_no = f"T{orders[0]['id']}"
    assert orders[0]["state"] == state
    assert channel.creates(trade_no) == 1, channel.seen[trade_no]
    assert orders[0]["payment_id"] == channel.payments[trade_no]["payment_id"]
    assert (await key_row(pool, key) or {}).get("state") == "done"
    return trade_no


# ------------------------------------------------------------------ in one process
async def test_an_order_is_created_paid_and_replayed(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    status, body, answer_headers = await post(test_client, key)
    assert status == 201 and "Idempotent-Replayed" not in answer_headers
    trade_no = await one_effect(pool, channel, key)
    again = await post(test_client, key)
    assert again[0] == 201 and again[1] == body and again[2]["Idempotent-Replayed"] == "true"
    assert channel.seen[trade_no] == ["create"]
    assert (await key_row(pool, key) or {}).get("recovery_point") == "order_paid"


async def test_no_transaction_nor_connection_is_held_while_calling_out(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    assert test_client.app is not None
    gateway_pool = test_client.app[POOL]
    key = new_key()
    request = asyncio.create_task(post(test_client, key, knobs={KNOB_HEADER: "slow:300"}))
    await asyncio.wait_for(channel.create_received.wait(), 5)
    assert gateway_pool.get_size() - gateway_pool.get_idle_size() == 0
    in_transaction = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'onecard-gateway' AND state LIKE 'idle in transaction%'"
    )
    assert in_transaction == 0
    # The key and the order committed before the call, and neither is locked during it.
    async with pool.acquire() as conn, conn.transaction():
        point = await conn.fetchval(
            "SELECT recovery_point FROM idempotency_keys WHERE key = $1 FOR UPDATE NOWAIT", key
        )
        state = await conn.fetchval(
            "SELECT state FROM test_orders WHERE idem_key = $1 FOR UPDATE NOWAIT", key
        )
    assert (point, state) == ("order_created", "created")
    assert (await request)[0] == 201
    await one_effect(pool, channel, key)


async def test_same_key_other_body_is_422(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    assert (await post(test_client, key))[0] == 201
    status, body, _ = await post(test_client, key, amount_fen=AMOUNT_FEN + 1)
    assert status == 422 and b"idempotency_key_reused" in body
    await one_effect(pool, channel, key)


async def test_an_expired_key_starts_afresh_with_no_recovery_point(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    assert (await post(test_client, key))[0] == 201
    await pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", key
    )
    status, body, answer_headers = await post(test_client, key, amount_fen=AMOUNT_FEN + 1)
    assert status == 201 and "Idempotent-Replayed" not in answer_headers
    orders = await orders_of(pool, key)
    assert len(orders) == 2 and {o["state"] for o in orders} == {"paid"}
    assert f'"order_id":{max(o["id"] for o in orders)}'.encode() in body


async def test_same_key_in_flight_is_409(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    first = asyncio.create_task(post(test_client, key, knobs={KNOB_HEADER: "slow:300"}))
    await asyncio.wait_for(channel.create_received.wait(), 5)
    status, body, answer_headers = await post(test_client, key)
    assert status == 409 and b"idempotency_key_in_flight" in body
    assert answer_headers["Retry-After"] == "1"
    assert (await first)[0] == 201
    again = await post(test_client, key)
    assert again[0] == 201 and again[2]["Idempotent-Replayed"] == "true"
    await one_effect(pool, channel, key)


async def test_a_live_request_keeps_its_key_past_its_lease(
    make_client: Any, channel: StandInChannel, pool: asyncpg.Pool, orders_table: None
) -> None:
    client = await make_client(
        extra_routes=[recovery_routes.routes],
        setup=lambda app: recovery_routes.install(app, channel.url),
        idempotency_lease_s=1,
    )
    key = new_key()
    first = asyncio.create_task(post(client, key, knobs={"X-Test-Hold-At": "after_order:1800"}))
    for wait_s in (1.3, 0.4):  # both beyond one lease since the claim
        await asyncio.sleep(wait_s)
        assert (await post(client, key))[0] == 409
    assert (await first)[0] == 201
    await one_effect(pool, channel, key)


async def test_a_request_whose_lease_was_taken_over_cannot_advance(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    """The first request's lease lapses right after its create (as if it had hung there); a
    retry takes the key over, finds the payment by asking, and answers. The first cannot
    commit its next phase: 409, and the retry's answer is the one kept."""
    key = new_key()
    hold = {"X-Test-Hold-At": "after_create:600"}
    first = asyncio.create_task(post(test_client, key, knobs=hold))
    await asyncio.wait_for(channel.create_received.wait(), 5)
    await pool.execute(
        "UPDATE idempotency_keys SET locked_until = now() - interval '1 second' WHERE key = $1",
        key,
    )
    status, body, _ = await post(test_client, key)
    assert status == 201
    late_status, late_body, _ = await first
    assert late_status == 409 and b"idempotency_key_in_flight" in late_body
    again = await post(test_client, key)
    assert again[1] == body and again[2]["Idempotent-Replayed"] == "true"
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == ["create", "query"]


async def test_identical_requests_racing_pay_once(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    answers = await asyncio.gather(
        *(post(test_client, key, knobs={KNOB_HEADER: "slow:100"}) for _ in range(12))
    )
    fresh = [a for a in answers if a[0] == 201 and "Idempotent-Replayed" not in a[2]]
    assert len(fresh) == 1
    assert {a[0] for a in answers} <= {201, 409}
    assert {a[1] for a in answers if a[0] == 201} == {fresh[0][1]}
    await one_effect(pool, channel, key)


async def test_a_declined_payment_is_recorded_stored_and_replayed(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    status, body, _ = await post(test_client, key, amount_fen=DECLINED_FEN)
    assert status == 422 and b"insufficient_balance" in body
    again = await post(test_client, key, amount_fen=DECLINED_FEN)
    assert again[0] == 422 and again[1] == body and again[2]["Idempotent-Replayed"] == "true"
    await one_effect(pool, channel, key, state="declined")


async def test_a_failure_before_any_phase_releases_the_key(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    status, body, _ = await post(test_client, key, knobs={"X-Test-Fail-At": "before_order"})
    assert status == 500 and b"internal_error" in body
    assert await key_row(pool, key) is None  # nothing happened: the key is free again
    assert await orders_of(pool, key) == []
    assert (await post(test_client, key, amount_fen=AMOUNT_FEN + 1))[0] == 201
    await one_effect(pool, channel, key)


@pytest.mark.parametrize("point", list(POINT_AFTER))
async def test_a_retry_resumes_after_a_failure_at_any_point(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool, point: str
) -> None:
    key = new_key()
    status, _, _ = await post(test_client, key, knobs={"X-Test-Fail-At": point})
    assert status == 500
    if point != "before_order":
        row = await key_row(pool, key)
        assert row is not None and row["state"] == "in_flight"
        assert row["recovery_point"] == POINT_AFTER[point]
        # The lease is given up at once: the retry resumes without waiting for it to run out.
        assert row["lease_token"] is None and row["lapsed"]
        # A key with committed phases belongs to its request.
        assert (await post(test_client, key, amount_fen=AMOUNT_FEN + 1))[0] == 422
    status, body, _ = await post(test_client, key)
    assert status == 201
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == SEEN[point]
    assert (await post(test_client, key))[1] == body


async def test_a_channel_5xx_is_asked_about_before_creating_again(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    status, body, _ = await post(test_client, key, knobs={KNOB_HEADER: "fail"})
    assert status == 503 and b"service_unavailable" in body
    assert [o["state"] for o in await orders_of(pool, key)] == ["created"]
    assert (await post(test_client, key))[0] == 201
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == ["create:failed", "query:none", "create"]


async def test_a_channel_that_creates_then_drops_the_connection(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    assert (await post(test_client, key, knobs={KNOB_HEADER: "drop"}))[0] == 503
    assert (await post(test_client, key))[0] == 201
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == ["create", "query"]


async def test_a_channel_timeout_leaves_the_outcome_unknown_until_asked(
    test_client: ClientT, channel: StandInChannel, pool: asyncpg.Pool
) -> None:
    key = new_key()
    started = time.monotonic()
    status, _, _ = await post(test_client, key, knobs={KNOB_HEADER: f"slow:{2 * TIMEOUT_MS}"})
    assert status == 503 and time.monotonic() - started < 2 * TIMEOUT_MS / 1000
    # Unknown: the order is `created`, the key still at `order_created`, the channel busy.
    [order] = await orders_of(pool, key)
    assert order["state"] == "created"
    assert (await key_row(pool, key) or {}).get("recovery_point") == "order_created"
    await asyncio.wait_for(channel.applied[f"T{order['id']}"].wait(), 5)
    assert (await post(test_client, key))[0] == 201
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == ["create", "query"]


# ------------------------------------------------------------ gateways in subprocesses
def start_gateway(config: Config, port: int, channel_url: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DATABASE_URL=config.database_url,
        REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek,
        ONECARD_REDIS_PREFIX=config.redis_prefix,
        ONECARD_IDEMPOTENCY_LEASE_S=str(SUBPROCESS_LEASE_S),
        ONECARD_ACCESS_LOG="false",
        **{CHANNEL_URL_ENV: channel_url},
    )
    command = [sys.executable, "-m", "tests.gateway.serve_recovery_routes", str(port)]
    return subprocess.Popen(command, env=env)


async def stop(gateway: subprocess.Popen[bytes]) -> None:
    if gateway.poll() is None:
        gateway.send_signal(signal.SIGTERM)
        await asyncio.to_thread(gateway.wait, 10)


async def post_to(
    port: int, key: str, knobs: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/test/orders",
            json={"amount_fen": AMOUNT_FEN},
            headers=headers(key, knobs),
        ) as response,
    ):
        return response.status, await response.read(), response.headers


async def retry_until_answered(port: int, key: str) -> tuple[int, bytes]:
    """Retry as a client would: while the dead request's lease runs, the answer is 409."""
    deadline = time.monotonic() + RETRY_S_MAX
    while True:
        status, body, _ = await post_to(port, key)
        if status != 409:
            return status, body
        assert time.monotonic() < deadline, "the key was never taken over"
        await asyncio.sleep(0.2)


async def wait_for_point(pool: asyncpg.Pool, key: str, point: str) -> None:
    deadline = time.monotonic() + RETRY_S_MAX
    while (await key_row(pool, key) or {}).get("recovery_point") != point:
        assert time.monotonic() < deadline, f"the key never reached {point}"
        await asyncio.sleep(0.05)


async def kill_at_then_retry(
    config: Config, channel: StandInChannel, pool: asyncpg.Pool, point: str
) -> None:
    key, port = new_key(), free_port()
    gateway = start_gateway(config, port, channel.url)
    try:
        await wait_until_up(port)
        with pytest.raises(aiohttp.ClientError):
            await post_to(port, key, knobs={"X-Test-Die-At": point})
        assert await asyncio.to_thread(gateway.wait, 10) == -signal.SIGKILL
    finally:
        if gateway.poll() is None:
            gateway.kill()
    row = await key_row(pool, key)
    assert row is not None and row["state"] == "in_flight", point
    assert row["recovery_point"] == POINT_AFTER[point], point

    gateway = start_gateway(config, port, channel.url)
    try:
        await wait_until_up(port)
        status, body = await retry_until_answered(port, key)
        assert status == 201, (point, body)
        again = await post_to(port, key)
        assert again[:2] == (201, body) and again[2]["Idempotent-Replayed"] == "true", point
    finally:
        await stop(gateway)
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == SEEN[point], point


async def test_a_gateway_killed_between_any_two_recovery_points_pays_once(
    config: Config, channel: StandInChannel, pool: asyncpg.Pool, orders_table: None
) -> None:
    # One gateway per point, all at once: the lease each retry waits out runs in parallel.
    await asyncio.gather(*(kill_at_then_retry(config, channel, pool, p) for p in POINT_AFTER))


async def test_a_stalled_request_whose_key_was_taken_over_calls_nothing(
    config: Config, channel: StandInChannel, pool: asyncpg.Pool, orders_table: None
) -> None:
    """A gateway hangs (its event loop blocked) after the order committed; its lease lapses and
    a retry on another gateway takes the key over and pays. When the hung one wakes up, it
    finds its lease gone before calling out: it answers 409 and calls nothing."""
    key, ports = new_key(), (free_port(), free_port())
    gateways = [start_gateway(config, port, channel.url) for port in ports]
    try:
        await asyncio.gather(*(wait_until_up(port) for port in ports))
        stall_ms = (SUBPROCESS_LEASE_S + 2) * 1000
        hung = asyncio.create_task(
            post_to(ports[0], key, knobs={"X-Test-Stall-At": f"after_order:{stall_ms}"})
        )
        await wait_for_point(pool, key, "order_created")
        status, _ = await retry_until_answered(ports[1], key)
        assert status == 201
        status, body, _ = await hung
        assert status == 409 and b"idempotency_key_in_flight" in body
    finally:
        await asyncio.gather(*(stop(gateway) for gateway in gateways))
    trade_no = await one_effect(pool, channel, key)
    assert channel.seen[trade_no] == ["query:none", "create"]
