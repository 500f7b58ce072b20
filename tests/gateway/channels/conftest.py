"""Fixtures for connector tests: a channel's sandbox on a real socket, the shared executor,
and a merchant-side receiver that records the notifications the sandbox sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.channels.executor import Executor
from gateway.channels.sandbox import run
from gateway.channels.sandbox.base import Sandbox
from gateway.metrics import Registry


@dataclass
class Received:
    """A notification as it reached the merchant: exact bytes and headers."""

    body: bytes
    headers: dict[str, str]
    content_type: str


@dataclass
class Receiver:
    """The merchant's notify URL. `answer` decides the HTTP answer to each notification."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], web.Response] = lambda r: web.Response(text="success")
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, count: int = 1, timeout_s: float = 10.0) -> list[Received]:
        """Until at least `count` notifications arrived; all of them."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()

    async def notify(request: web.Request) -> web.Response:
        item = Received(await request.read(), dict(request.headers), request.content_type)
        got.received.append(item)
        got._arrived.set()
        return got.answer(item)

    app = web.Application()
    app.router.add_post("/notify", notify)
    server = TestServer(app)
    await server.start_server()
    got.url = str(server.make_url("/notify"))
    yield got
    await server.close()


SandboxFactory = Callable[[str], Awaitable[tuple[str, Sandbox]]]


@pytest.fixture
async def start_sandbox(tmp_path: Path) -> AsyncIterator[SandboxFactory]:
    """`await start_sandbox("alipay")` -> (base URL, the sandbox's state), on a real socket."""
    servers: list[TestServer] = []

    async def start(channel: str) -> tuple[str, Sandbox]:
        app = run.application(channel, tmp_path)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        sandbox: Sandbox = app[run.SANDBOX]
        return str(server.make_url("")).rstrip("/"), sandbox

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    """The gateway's executor, with short timeouts so tests of silence stay short."""
    async with aiohttp.ClientSession() as session:
        yield Executor(session, Registry(), timeout_ms=2_000, retries_max=1)


async def pay_in_app(base_url: str, token: str) -> str:
    """Press "Pay" on the sandbox's pay page for what the gateway handed the phone."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/sandbox/pay", data={"token": token}) as response:
            text = await response.text()
            assert response.status == 200, text
            return text


async def misbehave(base_url: str, kinds: list[str], out_trade_no: str | None = None,
                    **options: Any) -> None:  # fmt: skip
    async with aiohttp.ClientSession() as session:
        body = {"kinds": kinds, "out_trade_no": out_trade_no, **options}
        async with session.post(f"{base_url}/sandbox/behaviours", json=body) as response:
            assert response.status == 200
