"""Idempotency-Key from a client's side: replays, reuse, races, crashes and expiry."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.ledger import AccountKind, account_balance, open_account
from tests.gateway import transfer_routes

ClientT = TestClient[Any, Any]
ADMIN = {"X-Test-Principal": "ops-1"}


@pytest.fixture
async def test_client(make_client: Any) -> ClientT:
    return await make_client(
        extra_routes=[transfer_routes.routes], setup=transfer_routes.install_authenticator
    )


@pytest.fixture
async def accounts(pool: asyncpg.Pool) -> tuple[int, int]:
    async with pool.acquire() as conn:
        source = await open_account(conn, AccountKind.SUSPENSE, f"t-{secrets.token_hex(4)}")
        target = await open_account(conn, AccountKind.RIDER_WALLET, f"t-{secrets.token_hex(4)}")
    return source, target


async def balance(pool: asyncpg.Pool, account: int) -> int:
    async with pool.acquire() as conn:
        return (await account_balance(conn, account))[0]


def headers(key: str | None, principal: str = "ops-1") -> dict[str, str]:
    result = {"X-Test-Principal": principal}
    if key is not None:
        result["Idempotency-Key"] = key
    return result


async def test_a_money_route_requires_a_key(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    body = {"source": source, "target": target, "amount_fen": 100}
    response = await test_client.post("/test/transfers", json=body, headers=headers(None))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "idempotency_key_required"
    for bad in ("", "a" * 256, "has space", "tab\tkey"):
        response = await test_client.post("/test/transfers", json=body, headers=headers(bad))
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "idempotency_key_invalid"
    assert await balance(pool, target) == 0


async def test_same_key_same_body_replays_the_stored_answer(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 250}
    first = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    first_body = await first.read()
    # Same JSON value, other key order and spacing: the same request.
    same = b'{ "amount_fen": 250, "target": %d, "source": %d }' % (target, source)
    for data in (None, same):
        again = await test_client.post(
            "/test/transfers", json=body if data is None else None, data=data,
            headers={**headers(key), "Content-Type": "application/json"},
        )  # fmt: skip
        assert again.status == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.read() == first_body
    assert await balance(pool, target) == 250


async def test_keys_belong_to_their_principal(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 10}
    for principal in ("ops-1", "ops-2"):
        response = await test_client.post(
            "/test/transfers", json=body, headers=headers(key, principal)
        )
        assert response.status == 201
        assert "Idempotent-Replayed" not in response.headers
    assert await balance(pool, target) == 20


async def test_same_key_other_body_is_422_and_changes_nothing(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 300}
    assert (
        await test_client.post("/test/transfers", json=body, headers=headers(key))
    ).status == 201
    other = {**body, "amount_fen": 301}
    response = await test_client.post("/test/transfers", json=other, headers=headers(key))
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "idempotency_key_reused"
    assert await balance(pool, target) == 300


async def test_same_key_in_flight_is_409(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 40, "hold_ms": 800}
    first = asyncio.create_task(
        test_client.post("/test/transfers", json=body, headers=headers(key))
    )
    await asyncio.sleep(0.3)
    second = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert second.status == 409
    assert (await second.json())["error"]["code"] == "idempotency_key_in_flight"
    assert second.headers["Retry-After"] == "1"
    assert (await first).status == 201
    third = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert third.status == 201 and third.headers["Idempotent-Replayed"] == "true"
    assert await balance(pool, target) == 40


async def test_identical_requests_racing_move_money_once(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 77, "hold_ms": 50}
    responses = await asyncio.gather(
        *(test_client.post("/test/transfers", json=body, headers=headers(key)) for _ in range(20))
    )
    statuses = sorted(r.status for r in responses)
    fresh = [r for r in responses if r.status == 201 and "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert set(statuses) <= {201, 409}
    assert await balance(pool, target) == 77


async def test_a_refusal_is_stored_and_replayed(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": target, "target": source, "amount_fen": 5}  # the wallet is empty
    first = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert first.status == 422
    assert (await first.json())["error"]["code"] == "insufficient_balance"
    again = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert again.status == 422 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()


async def test_a_failure_after_posting_rolls_back_and_frees_the_key(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 60, "fail_after_posting": True}
    response = await test_client.post("/test/transfers", json=body, headers=headers(key))
    assert response.status == 500
    assert await balance(pool, target) == 0  # the posting was rolled back with the failure
    fixed = {**body, "fail_after_posting": False}
    retry = await test_client.post("/test/transfers", json=fixed, headers=headers(key))
    assert retry.status == 201
    assert await balance(pool, target) == 60


async def test_an_expired_key_is_a_new_request(
    test_client: ClientT, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 15}
    assert (
        await test_client.post("/test/transfers", json=body, headers=headers(key))
    ).status == 201
    await pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", key
    )
    other = {**body, "amount_fen": 16}
    response = await test_client.post("/test/transfers", json=other, headers=headers(key))
    assert response.status == 201 and "Idempotent-Replayed" not in response.headers
    assert await balance(pool, target) == 31


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(config: Config, port: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DATABASE_URL=config.database_url,
        REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek,
        ONECARD_IDEMPOTENCY_LEASE_S="2",
        ONECARD_REDIS_PREFIX=config.redis_prefix,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.serve_with_test_routes", str(port)], env=env
    )


async def wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.1)


async def test_a_killed_gateway_never_leaves_a_key_locked_nor_credits_twice(
    config: Config, accounts: tuple[int, int], pool: asyncpg.Pool
) -> None:
    source, target = accounts
    key = secrets.token_hex(8)
    body = {"source": source, "target": target, "amount_fen": 500, "hold_ms": 1500}
    port = free_port()
    url = f"http://127.0.0.1:{port}/test/transfers"
    gateway = start_gateway(config, port)
    try:
        await wait_until_up(port)
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(session.post(url, json=body, headers=headers(key)))
            # Once the key is claimed and the posting written (not committed): kill -9.
            for _ in range(100):
                if await pool.fetchval("SELECT state FROM idempotency_keys WHERE key = $1", key):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(timeout=10)
            with pytest.raises(aiohttp.ClientError):
                await pending
    finally:
        if gateway.poll() is None:
            gateway.kill()
    assert await pool.fetchval("SELECT state FROM idempotency_keys WHERE key = $1", key) == (
        "in_flight"
    )
    assert await balance(pool, target) == 0  # never committed: nothing moved

    gateway = start_gateway(config, port)
    statuses = []
    try:
        await wait_until_up(port)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                async with session.post(url, json=body, headers=headers(key)) as response:
                    statuses.append(response.status)
                    if response.status == 201:
                        break
                await asyncio.sleep(0.2)
            async with session.post(url, json=body, headers=headers(key)) as response:
                assert response.status == 201
                assert response.headers["Idempotent-Replayed"] == "true"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=10)
    # While the dead request's lease ran, retries were told to wait; then one took the key over.
    assert statuses[-1] == 201 and set(statuses[:-1]) <= {409}
    assert await balance(pool, target) == 500
