"""Authenticated requests/s: a rider's `GET /v1/wallet` (JWT verify + rate limit in Redis + one
PostgreSQL read) against the bare aiohttp + asyncpg endpoint of bench/http.py (one PostgreSQL
read, no auth), with the same client in the same run. Target: >= 0.6 of bare.

Also reported: what a partner signature costs, as partner-signed `GET /v1/whoami` (HMAC check,
nonce SET NX and rate limit in Redis) against the same route called by a rider, and both
against unauthenticated `GET /healthz`. Rate limits are raised out of the way: the bench
measures their Redis round trip, not their refusals.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time

import aiohttp
import asyncpg

from bench._support import (
    bench_env,
    free_port,
    http_load,
    report,
    scratch_database,
    server_process,
    server_urls,
)
from gateway.auth import partners
from gateway.auth.signatures import sign_partner_request
from gateway.keystore import Keystore
from gateway.ledger import AccountKind, open_account

SECONDS = 5.0
CONNECTIONS = 32
PASSWORD = "bench rider password"


async def _rider_token(port: int) -> str:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        body = {"phone": "+8613900000001", "password": PASSWORD}
        async with session.post("/v1/riders", json=body) as response:
            assert response.status == 201, await response.text()
        async with session.post("/v1/sessions", json=body) as response:
            assert response.status == 201, await response.text()
            token: str = (await response.json())["access_token"]
            return token


async def _signed_load(port: int, key_id: str, secret: str) -> tuple[float, float]:
    """Partner-signed GET /v1/whoami; a fresh nonce (and so signature) per request."""
    counter = itertools.count()
    done: list[float] = []
    stop_at = time.perf_counter() + SECONDS

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at:
            headers = sign_partner_request(
                key_id, secret, "GET", "/v1/whoami", nonce=f"n{next(counter)}"
            )
            lines = ["GET /v1/whoami HTTP/1.1", "Host: 127.0.0.1"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            started = time.perf_counter()
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head[9:12] == b"200", head
            length = next(
                int(line[15:]) for line in head.split(b"\r\n")
                if line[:15].lower() == b"content-length:"
            )  # fmt: skip
            await reader.readexactly(length)
            done.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return len(done) / (time.perf_counter() - started), sorted(done)[len(done) // 2] * 1000


async def run() -> None:
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            conn = await asyncpg.connect(dsn)
            account_id = await open_account(conn, AccountKind.SUSPENSE, "bench")
            env = bench_env(dsn, redis_url)
            for kind in ("RIDER", "PARTNER"):
                env[f"ONECARD_RATE_{kind}_PER_S"] = env[f"ONECARD_RATE_{kind}_BURST"] = "1000000"
            partner, secret = await partners.create(
                conn, Keystore(base64.b64decode(env["ONECARD_KEK"])), "Bench Bank"
            )
            await conn.close()
            port = free_port()
            with server_process("bench._servers", ["bare", str(port)], env, port):
                await http_load(port, f"/bench/accounts/{account_id}", 1.0, CONNECTIONS)
                bare = await http_load(port, f"/bench/accounts/{account_id}", SECONDS, CONNECTIONS)
            port = free_port()
            with server_process("bench._servers", ["gateway", str(port)], env, port):
                auth = {"Authorization": f"Bearer {await _rider_token(port)}"}
                await http_load(port, "/v1/wallet", 1.0, CONNECTIONS, auth)
                wallet = await http_load(port, "/v1/wallet", SECONDS, CONNECTIONS, auth)
                assert set(wallet.statuses) == {200}, wallet.statuses
                rider_whoami = await http_load(port, "/v1/whoami", SECONDS, CONNECTIONS, auth)
                healthz = await http_load(port, "/healthz", SECONDS, CONNECTIONS)
                signed_rate, signed_p50 = await _signed_load(port, partner.key_id, secret)
    print(f"{CONNECTIONS} keep-alive connections, {SECONDS:.0f} s each")
    for name, rate, p50 in (
        ("bare GET one account", bare.rate, bare.p50_ms),
        ("rider GET /v1/wallet", wallet.rate, wallet.p50_ms),
        ("rider GET /v1/whoami", rider_whoami.rate, rider_whoami.p50_ms),
        ("partner GET /v1/whoami", signed_rate, signed_p50),
        ("unauthenticated /healthz", healthz.rate, healthz.p50_ms),
    ):
        print(f"  {name:26s} {rate:8,.0f} req/s  p50 {p50:.2f} ms")
    report("authenticated GET /v1/wallet vs bare", wallet.rate, "req/s", bare.rate, 0.6)
    per_request_us = (1 / signed_rate - 1 / healthz.rate) * 1e6
    print(
        f"partner signature overhead: {signed_rate / healthz.rate:.2f} of unauthenticated "
        f"/healthz ({per_request_us:.0f} us more server time per request); "
        f"{signed_rate / rider_whoami.rate:.2f} of the same route with a rider token"
    )  # fmt: skip


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
