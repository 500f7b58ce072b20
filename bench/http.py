"""Requests/s of the gateway vs a bare aiohttp app, with the same client in the same run.

Two routes: `/healthz` (no I/O) and a JSON route doing one PostgreSQL round trip. The gateway
runs its whole stack (middleware, request id, metrics, route wrapper, msgspec encoding) and its
JSON access log is off, as in production behind a log shipper that samples (turn it on with
ONECARD_ACCESS_LOG=true to measure its cost). Target: >= 0.7 of bare for both.
"""

from __future__ import annotations

import asyncio

import asyncpg

from bench._servers import POOL_SIZE
from bench._support import (
    bench_env,
    free_port,
    http_load,
    report,
    scratch_database,
    server_process,
    server_urls,
)
from gateway.ledger import AccountKind, open_account

SECONDS = 5.0
CONNECTIONS = 32


async def measure(kind: str, env: dict[str, str], account_id: int) -> dict[str, float]:
    port = free_port()
    rates = {}
    with server_process("bench._servers", [kind, str(port)], env, port):
        for name, path in (("healthz", "/healthz"), ("db", f"/bench/accounts/{account_id}")):
            await http_load(port, path, seconds=1.0, connections=CONNECTIONS)  # warm up
            result = await http_load(port, path, seconds=SECONDS, connections=CONNECTIONS)
            assert set(result.statuses) == {200}, result.statuses
            rates[name] = result.rate
            print(
                f"  {kind:8s} {path:28s} {result.rate:8,.0f} req/s  "
                f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms",
                flush=True,
            )
    return rates


async def run() -> None:
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            conn = await asyncpg.connect(dsn)
            account_id = await open_account(conn, AccountKind.SUSPENSE, "bench")
            await conn.close()
            env = bench_env(dsn, redis_url)
            print(f"{CONNECTIONS} keep-alive connections, {SECONDS:.0f} s per route, "
                  f"pool {POOL_SIZE}")  # fmt: skip
            bare = await measure("bare", env, account_id)
            gateway = await measure("gateway", env, account_id)
    report("GET /healthz", gateway["healthz"], "req/s", bare["healthz"], 0.7)
    report("GET JSON route, 1 PostgreSQL round trip", gateway["db"], "req/s", bare["db"], 0.7)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
