"""Fixtures against the real PostgreSQL and Redis.

DATABASE_URL / REDIS_URL when set (CI), otherwise embedded servers under .onecard/test-services
(never the data of a running `make run`). Each test session creates its own database and Redis
key prefix, and drops them afterwards. After every test, the ledger must verify.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import db, embedded
from gateway.api.routing import RouteTable
from gateway.app import create_app
from gateway.areas import ledger_checks
from gateway.config import Config
from gateway.ledger.verify import verify_ledger
from tests.gateway.sandboxes import gateway, make_gateway, sandboxes  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    with embedded.server_urls(
        ROOT / ".onecard" / "test-services",
        os.environ.get("DATABASE_URL", ""),
        os.environ.get("REDIS_URL", ""),
    ) as urls:
        yield urls


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str, migrated: bool) -> AsyncIterator[str]:
    """A fresh database (migrated when asked), dropped afterwards; its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(admin_dsn, name)
    try:
        if migrated:
            await db.migrate(dsn)
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    async with scratch_database(server_urls[0], "onecard_test", migrated=True) as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def config(database_url: str, server_urls: tuple[str, str]) -> AsyncIterator[Config]:
    prefix = f"test-{secrets.token_hex(6)}:"
    yield Config(
        database_url=database_url,
        redis_url=server_urls[1],
        redis_prefix=prefix,
        kek=base64.b64encode(secrets.token_bytes(32)).decode(),
        access_log=False,
        db_pool_size_max=20,
        # Every test client calls from 127.0.0.1; the per-address limit has its own test.
        rate_public_per_s=10_000,
        rate_public_burst=10_000,
        # Every gateway of the session reconciles every open order of the shared database,
        # whichever test made it: none may wait the default 30 s to ask after one.
        topup_query_after_s=1,
    )
    client = redis.Redis.from_url(server_urls[1])
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    test_pool = await asyncpg.create_pool(database_url, min_size=2, max_size=30)
    assert test_pool is not None
    yield test_pool
    await test_pool.close()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(config: Config) -> AsyncIterator[ClientFactory]:
    """Start the gateway (the real app factory) on a real socket; stop it after the test."""
    clients: list[TestClient[Any, Any]] = []

    async def start(
        extra_routes: list[RouteTable] | None = None,
        setup: Callable[[web.Application], None] | None = None,
        jobs: bool = True,
        **changes: Any,
    ) -> TestClient[Any, Any]:
        app = create_app(config.replace(**changes), extra_routes=extra_routes or [], jobs=jobs)
        if setup is not None:
            setup(app)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


@pytest.fixture(scope="session")
async def client(config: Config) -> AsyncIterator[TestClient[Any, Any]]:
    """One gateway for the whole session, for tests that need no special settings."""
    app = create_app(config)
    test_client: TestClient[Any, Any] = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


@pytest.fixture(autouse=True)
async def ledger_verifies(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Every test leaves a ledger that `onecard ledger verify` accepts."""
    yield
    async with pool.acquire() as conn:
        problems = await verify_ledger(conn, ledger_checks())
    assert problems == [], problems
