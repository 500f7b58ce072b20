"""A gateway with its three channel sandboxes, over real sockets: the channels' credentials
imported the way `onecard channels import --from-sandbox` does, and notify URLs pointing at the
gateway's own port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.channels import credentials
from gateway.channels.sandbox import run
from gateway.channels.sandbox.base import Sandbox
from gateway.channels.types import Channel
from gateway.config import Config
from gateway.keystore import Keystore, load_kek

CHANNELS = (Channel.ALIPAY, Channel.WECHATPAY, Channel.UNIONPAY)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sandboxes:
    urls: dict[Channel, str]
    states: dict[Channel, Sandbox]


@pytest.fixture(scope="session")
async def sandboxes(
    tmp_path_factory: pytest.TempPathFactory, pool: asyncpg.Pool, config: Config
) -> AsyncIterator[Sandboxes]:
    data_dir: Path = tmp_path_factory.mktemp("sandboxes")
    servers, urls, states = [], {}, {}
    for channel in CHANNELS:
        app = run.application(channel.value, data_dir)
        server = TestServer(app, port=free_port())
        await server.start_server()
        servers.append(server)
        urls[channel] = str(server.make_url("")).rstrip("/")
        states[channel] = app[run.SANDBOX]
    keystore = Keystore(load_kek(config))
    async with aiohttp.ClientSession() as session, pool.acquire() as conn:
        for channel, url in urls.items():
            async with session.get(f"{url}/sandbox/credentials") as response:
                found = await response.json()
            async with conn.transaction():
                await credentials.store(conn, keystore, channel, found)
    yield Sandboxes(urls, states)
    for server in servers:
        await server.close()


GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_gateway(sandboxes: Sandboxes, config: Config) -> AsyncIterator[GatewayFactory]:
    """`await make_gateway(**settings)`: the gateway on a port known in advance, so channels can
    notify it, its jobs quick; the sandboxes behave again afterwards."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**changes: Any) -> TestClient[Any, Any]:
        port = free_port()
        app = create_app(
            config.replace(
                **{"public_url": f"http://127.0.0.1:{port}", "topup_query_after_s": 1, **changes}
            )
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app, port=port))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for sandbox in sandboxes.states.values():
        sandbox.behaviours.clear()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()


POLL_S = 0.05


async def until(predicate: Any, timeout_s: float = 15.0) -> None:
    """Wait for an async predicate to hold (notifications and jobs take their time)."""
    for _ in range(int(timeout_s / POLL_S)):
        if await predicate():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not within {timeout_s} s")
