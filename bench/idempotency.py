"""Requests/s of the two Idempotency-Key modes against bare aiohttp + asyncpg routes doing the
same PostgreSQL round trips, with the same client in the same run.

(a) One transaction: `POST /v1/admin/adjustments` through the whole gateway (operator token,
    rate limit in Redis, route wrapper, validation, idempotency, wallet and ledger posting)
    against a bare route running the same statements: claim the key; then in one transaction
    the adjustment (`gateway.wallet.adjust`) and the stored answer. 9 round trips.
(b) Recovery points: a gateway route with two phases around a create at a stand-in remote
    (an aiohttp server in its own process): claim; phase `order_created` inserts an order;
    the remote create, with no transaction open; phase `order_paid` marks it paid
    `WHERE state = 'created'`; the stored answer. 10 round trips and one HTTP call, and the
    bare route makes the same ones.

Every request carries a fresh Idempotency-Key, so each one does the work (none is a replay).
Both servers use the same event loop (uvloop when installed), pool size and pool reset (none:
asyncpg's default reset would cost the bare routes one more round trip per acquire).

    python -m bench.idempotency                    the bench
    python -m bench.idempotency serve KIND PORT    one of its servers: gateway, bare, remote
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

from bench._support import (
    bare_pool,
    bench_env,
    free_port,
    scratch_database,
    server_process,
    server_urls,
)
from gateway import idempotency, wallet
from gateway.api.routing import Call, Idempotency, RouteTable
from gateway.app import create_app
from gateway.auth.principal import PrincipalKind
from gateway.config import Config
from gateway.ledger import AccountKind, open_account

SECONDS = 5.0
WARM_UP_SECONDS = 1.0
ROUNDS = 2
CONNECTIONS = 32
POOL_SIZE = 10
REMOTE_TIMEOUT_S = 5.0
RIDER_ID = 1
OPERATOR = "bench"
AMOUNT_FEN = 100
REMOTE_URL_ENV = "BENCH_REMOTE_URL"

ORDERS_TABLE = """
CREATE TABLE bench_orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    amount_fen bigint NOT NULL,
    state      text   NOT NULL,
    payment_id text
)
"""
INSERT_ORDER = "INSERT INTO bench_orders (amount_fen, state) VALUES ($1, 'created') RETURNING id"
MARK_PAID = """
UPDATE bench_orders SET state = 'paid', payment_id = $2 WHERE id = $1 AND state = 'created'
RETURNING payment_id
"""


# ---------------------------------------------------------------------- the stand-in remote
class Payment(msgspec.Struct):
    payment_id: str


def remote_app() -> web.Application:
    """Creates a payment per trade number, as a channel would; a second create returns it."""
    payments: dict[str, bytes] = {}

    async def create(request: web.Request) -> web.Response:
        trade_no = msgspec.json.decode(await request.read())["trade_no"]
        if trade_no not in payments:
            payments[trade_no] = msgspec.json.encode(Payment(uuid.uuid4().hex))
        return web.Response(body=payments[trade_no], content_type="application/json")

    app = web.Application()
    app.router.add_post("/payments", create)
    return app


async def remote_create(session: aiohttp.ClientSession, order_id: int, amount_fen: int) -> str:
    body = msgspec.json.encode({"trade_no": f"T{order_id}", "amount_fen": amount_fen})
    headers = {"Content-Type": "application/json"}
    async with session.post("/payments", data=body, headers=headers) as response:
        assert response.status == 200
        return msgspec.json.decode(await response.read(), type=Payment).payment_id


@contextlib.asynccontextmanager
async def remote_session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=REMOTE_TIMEOUT_S)
    async with aiohttp.ClientSession(os.environ[REMOTE_URL_ENV], timeout=timeout) as session:
        yield session


REMOTE = web.AppKey("bench_remote", aiohttp.ClientSession)


# ---------------------------------------------------------------- (b) the gateway's route
routes = RouteTable("bench")


class NewOrder(msgspec.Struct, forbid_unknown_fields=True):
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class Order(msgspec.Struct):
    order_id: int
    state: str
    payment_id: str


@routes.post(
    "/bench/orders", body=NewOrder, response=Order, status=201,
    principals={PrincipalKind.ADMIN}, idempotent=Idempotency.RECOVERY_POINTS,
)  # fmt: skip
async def create_order(call: Call) -> Order:
    """An order paid at the stand-in remote, in two phases."""
    amount_fen = call.body.amount_fen
    recovery, remote = call.recovery, call.app[REMOTE]
    order_id = await recovery.atomic(
        "order_created", lambda conn: conn.fetchval(INSERT_ORDER, amount_fen), int
    )
    payment_id = await recovery.call_out(
        "order_paid",
        create=lambda: remote_create(remote, order_id, amount_fen),
        query=_never_resumed,
        apply=lambda conn, paid: conn.fetchval(MARK_PAID, order_id, paid),
        as_type=str,
    )
    return Order(order_id, "paid", payment_id)


async def _never_resumed() -> str | None:
    raise AssertionError("no request of the bench resumes another's")


def gateway_app() -> web.Application:
    config = Config.from_env().replace(db_pool_size_min=POOL_SIZE, db_pool_size_max=POOL_SIZE)
    app = create_app(config, extra_routes=[routes])

    async def remote(app: web.Application) -> AsyncIterator[None]:
        async with remote_session() as session:
            app[REMOTE] = session
            yield

    app.cleanup_ctx.append(remote)
    return app


# ------------------------------------------------------------------- the bare routes
BARE_POOL = web.AppKey("bare_pool", asyncpg.Pool)
BARE_PRINCIPAL = f"admin:{OPERATOR}"
LEASE_S = float(Config.idempotency_lease_s)
TTL_S = float(Config.idempotency_ttl_s)


class Adjusted(msgspec.Struct):
    adjustment_id: int
    txn_id: int
    rider_id: int
    amount_fen: int
    balance_fen: int


async def _claim(
    pool: asyncpg.Pool, request: web.Request, raw: bytes, point: str | None
) -> uuid.UUID:
    lease = uuid.uuid4()
    digest = hashlib.sha256(raw).digest()
    key = request.headers[idempotency.HEADER]
    # The gateway's own statements (private to gateway.idempotency), so the round trips match.
    claimed = await pool.fetchrow(
        idempotency._CLAIM, BARE_PRINCIPAL, key, digest, lease, LEASE_S, TTL_S, point
    )
    assert claimed is not None
    return lease


async def bare_adjust(request: web.Request) -> web.Response:
    raw = await request.read()
    body = msgspec.json.decode(raw)
    pool = request.app[BARE_POOL]
    lease = await _claim(pool, request, raw, None)
    async with pool.acquire() as conn, conn.transaction():
        done = await wallet.adjust(
            conn, body["rider_id"], body["amount_fen"], body["reason"], OPERATOR
        )
        answer = msgspec.json.encode(
            Adjusted(done.adjustment_id, done.txn_id, body["rider_id"], body["amount_fen"],
                     done.balance_fen)
        )  # fmt: skip
        await conn.execute(
            idempotency._FINISH, BARE_PRINCIPAL, request.headers[idempotency.HEADER], lease,
            201, answer,
        )  # fmt: skip
    return web.Response(body=answer, status=201, content_type="application/json")


async def bare_order(request: web.Request) -> web.Response:
    raw = await request.read()
    amount_fen = msgspec.json.decode(raw)["amount_fen"]
    pool, key = request.app[BARE_POOL], request.headers[idempotency.HEADER]
    lease = await _claim(pool, request, raw, idempotency.STARTED)
    async with pool.acquire() as conn, conn.transaction():
        order_id = await conn.fetchval(INSERT_ORDER, amount_fen)
        await conn.execute(
            idempotency._ADVANCE, BARE_PRINCIPAL, key, lease, "order_created", str(order_id),
            LEASE_S,
        )  # fmt: skip
    payment_id = await remote_create(request.app[REMOTE], order_id, amount_fen)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchval(MARK_PAID, order_id, payment_id)
        await conn.execute(
            idempotency._ADVANCE, BARE_PRINCIPAL, key, lease, "order_paid",
            msgspec.json.encode(payment_id).decode(), LEASE_S,
        )  # fmt: skip
    answer = msgspec.json.encode(Order(order_id, "paid", payment_id))
    await pool.execute(idempotency._FINISH, BARE_PRINCIPAL, key, lease, 201, answer)
    return web.Response(body=answer, status=201, content_type="application/json")


def bare_app() -> web.Application:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await bare_pool(POOL_SIZE)
        app[BARE_POOL] = pool
        async with remote_session() as session:
            app[REMOTE] = session
            yield
        await pool.close()

    app = web.Application()
    app.router.add_post("/v1/admin/adjustments", bare_adjust)
    app.router.add_post("/bench/orders", bare_order)
    app.cleanup_ctx.append(resources)
    return app


def serve(kind: str, port: int) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    apps = {"gateway": gateway_app, "bare": bare_app, "remote": remote_app}
    web.run_app(apps[kind](), host="127.0.0.1", port=port, access_log=None, print=None)


# ------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def keyed_load(port: int, path: str, body: bytes, auth: str, seconds: float) -> Load:
    """Keep CONNECTIONS POSTs in flight for `seconds`, each with a fresh Idempotency-Key."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}"
    ).encode()
    prefix, numbers = secrets.token_hex(4), itertools.count()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at:
            key = f"{idempotency.HEADER}: {prefix}-{next(numbers)}\r\n\r\n".encode()
            started = time.perf_counter()
            writer.write(head + key + body)
            response = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line[15:]) for line in response.split(b"\r\n")
                if line[:15].lower() == b"content-length:"
            )  # fmt: skip
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(response[9:12])
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    return Load(len(latencies), elapsed, statistics.median(latencies) * 1000, statuses)


ROUTES = {
    "adjustment": (
        "/v1/admin/adjustments",
        msgspec.json.encode({"rider_id": RIDER_ID, "amount_fen": AMOUNT_FEN, "reason": "bench"}),
    ),
    "order": ("/bench/orders", msgspec.json.encode({"amount_fen": AMOUNT_FEN})),
}


async def measure(ports: dict[str, int], auths: dict[str, str]) -> dict[str, dict[str, float]]:
    """The best of ROUNDS runs per server and route, the servers taking turns, so that a burst
    of other work on the machine does not fall on one side only."""
    rates: dict[str, dict[str, float]] = {kind: {} for kind in ports}
    for round_number in range(ROUNDS):
        for name, (path, body) in ROUTES.items():
            for kind, port in ports.items():
                if round_number == 0:
                    await keyed_load(port, path, body, auths[kind], WARM_UP_SECONDS)
                load = await keyed_load(port, path, body, auths[kind], SECONDS)
                assert set(load.statuses) == {201}, (kind, path, load.statuses)
                rates[kind][name] = max(rates[kind].get(name, 0.0), load.rate)
                print(f"  {kind:8s} POST {path:24s} {load.rate:8,.0f} req/s  "
                      f"p50 {load.p50_ms:.2f} ms", flush=True)  # fmt: skip
    return rates


def admin_token(env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "gateway.cli", "admin", "create-token", "--role", "admin",
               "--name", OPERATOR, "--ttl", "1h"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(ORDERS_TABLE)
        await open_account(conn, AccountKind.RIDER_WALLET, str(RIDER_ID))
    finally:
        await conn.close()


async def run() -> None:
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            await prepare(dsn)
            env = bench_env(dsn, redis_url)
            # Raised out of the way: the bench measures the limiter's Redis round trip only.
            env["ONECARD_RATE_ADMIN_PER_S"] = env["ONECARD_RATE_ADMIN_BURST"] = "1000000"
            auth = f"Authorization: Bearer {admin_token(env)}\r\n"
            remote_port = free_port()
            env[REMOTE_URL_ENV] = f"http://127.0.0.1:{remote_port}"
            print(f"{CONNECTIONS} keep-alive connections, {SECONDS:.0f} s per run, best of "
                  f"{ROUNDS}, pool {POOL_SIZE}, a fresh Idempotency-Key per request")  # fmt: skip
            ports = {"bare": free_port(), "gateway": free_port()}
            with contextlib.ExitStack() as servers:
                for kind, port in [("remote", remote_port), *ports.items()]:
                    servers.enter_context(
                        server_process("bench.idempotency", ["serve", kind, str(port)], env, port)
                    )
                rates = await measure(ports, {"bare": "", "gateway": auth})
    for name, title in (
        ("adjustment", "(a) one transaction: POST /v1/admin/adjustments, 9 round trips"),
        ("order", "(b) recovery points: 2 phases around 1 remote call, 10 round trips"),
    ):
        value, baseline = rates["gateway"][name], rates["bare"][name]
        print(f"{title}: gateway {value:,.0f} req/s; bare aiohttp + asyncpg {baseline:,.0f} "
              f"req/s; ratio {value / baseline:.2f}", flush=True)  # fmt: skip


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
