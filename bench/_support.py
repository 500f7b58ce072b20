"""What the benchmarks share: a scratch database, server processes, a lean HTTP load client.

The load client is a few lines of asyncio on keep-alive connections (one request in flight per
connection), so it costs far less per request than either server and the ratio it reports is
the servers', not the client's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web

from gateway import db, embedded

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def server_urls() -> Iterator[tuple[str, str]]:
    """DATABASE_URL / REDIS_URL, or embedded servers under .onecard/bench-services."""
    with embedded.server_urls(
        ROOT / ".onecard" / "bench-services",
        os.environ.get("DATABASE_URL", ""),
        os.environ.get("REDIS_URL", ""),
    ) as urls:
        yield urls


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database, dropped afterwards."""
    name = f"onecard_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urllib.parse.urlunsplit(urllib.parse.urlsplit(admin_dsn)._replace(path="/" + name))
    try:
        await db.migrate(dsn)
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_env(database_url: str, redis_url: str) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        ONECARD_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
        ONECARD_ACCESS_LOG="false",
        ONECARD_LOG_LEVEL="WARNING",
        ONECARD_REDIS_PREFIX=f"bench-{secrets.token_hex(4)}:",
    )


@contextlib.contextmanager
def server_process(
    module: str, args: list[str], env: dict[str, str], port: int
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-m", module, *args], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _one_connection(
    port: int, request: bytes, stop_at: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def http_load(
    port: int,
    path: str,
    seconds: float = 5.0,
    connections: int = 32,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes = b"",
) -> LoadResult:
    """Keep `connections` requests in flight for `seconds`; `method` `path` (GET by default),
    the same `headers` and `body` every time."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method != "GET" or body:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_one_connection(port, request, stop_at, latencies, statuses) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        len(latencies),
        elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        statuses,
    )


def report(name: str, value: float, unit: str, baseline: float, target: float) -> None:
    ratio = value / baseline if baseline else float("nan")
    verdict = "meets" if ratio >= target else "BELOW"
    print(
        f"{name}: {value:,.0f} {unit}; baseline {baseline:,.0f} {unit}; "
        f"ratio {ratio:.2f} ({verdict} target {target:.2f})",
        flush=True,
    )


PROFILE_ENV = "BENCH_PROFILE"


def run_server(app: web.Application, kind: str, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (on uvloop when it is installed); with BENCH_PROFILE=FILE
    its CPU time is profiled into FILE.`kind`."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    profile = os.environ.get(PROFILE_ENV)
    with _profiled(f"{profile}.{kind}" if profile else None):
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


@contextlib.contextmanager
def _profiled(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU time: waits and other processes left out
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release, as the gateway's pool (gateway/db.py)."""


async def bare_pool(size: int) -> asyncpg.Pool:
    """A bare app's pool of `size` connections to DATABASE_URL, reset as the gateway's is
    (not at all), so that both pay the same per request."""
    pool = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=size, max_size=size, reset=_keep_session
    )
    assert pool is not None
    return pool
