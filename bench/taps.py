"""QR ride upload throughput: rides/s through `POST /v1/qr/rides`, as a ratio to raw
`cryptography` P-256 verifications/s measured in the same run.

    .venv/bin/python -m bench.taps

A scratch database, the real gateway in a subprocess (`bench._servers gateway`, one worker),
one terminal, RIDERS funded riders each with a QR certificate and a phone making offline codes.
Every batch is RIDERS rides, one by each rider (so each ride is re-verified, replay-checked and
debited from its own wallet), uploaded by the gate in one request, one batch after another.

Figures:
- the first batch alone: every certificate is new to the gateway's certificate cache, so each
  ride costs two ECDSA verifications and a device key decode;
- rides/s over the next BATCHES_MEASURED batches (certificates cached: one verification a ride),
  total rides over total wall time, and the best batch; target >= 5,000 rides/s;
- raw P-256 verify/s (CPU time of one core, best of several rounds): one verification a ride is
  the limit a gateway worker cannot beat, so rides/s over it is the share of a core left to
  everything else (replay check, SQL, HTTP, JSON).

Before the set-based ingest (`gateway/qr_codes/rides.py`: one transaction, a deny-list read, a
wallet read, an insert, a `ledger_post` and an update per ride, one Redis round trip per ride)
this machine (2 cores, PostgreSQL 15, Redis 7 on loopback) measured BEFORE_RIDES_PER_S rides/s
with this bench (580-620), 0.037 x raw verify, in runs interleaved with the runs of the new
code. The figure is printed beside today's; it means something on that machine only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._support import bench_env, free_port, scratch_database, server_process, server_urls
from bench.qr import _raw_pass
from gateway.auth import riders, terminals
from gateway.auth.signatures import sign_terminal_request
from gateway.keystore import Keystore
from gateway.qr_codes.certificates import issue
from gateway.qr_codes.issuer_keys import IssuerKeys
from gateway.wallet import adjust
from qr.format import encode_text
from qr.phone import Phone, generate_device_key
from qr.signing import encode_public_key

RIDERS = 1_000
BATCHES_MEASURED = 8
FARE_FEN = 100
FUNDING_FEN = 100_000
RAW_ROUNDS = 7
TARGET_RIDES_PER_S = 5_000
BEFORE_RIDES_PER_S = 600  # see the module docstring
OPERATOR = "bench-metro"
SETUP_CONCURRENCY = 16
UPLOAD_PATH = "/v1/qr/rides"


@dataclass(frozen=True)
class Gate:
    terminal_id: str
    private: Ed25519PrivateKey

    def post_headers(self, body: bytes) -> dict[str, str]:
        headers = sign_terminal_request(self.terminal_id, self.private, "POST", UPLOAD_PATH, body)
        return {**headers, "Content-Type": "application/json"}


async def _rider(pool: asyncpg.Pool, keys: IssuerKeys, n: int, now: int) -> Phone:
    """A rider with a funded wallet and a certified device, made through the domain code
    (no password hashing: nothing here logs in)."""
    async with pool.acquire() as conn, conn.transaction():
        rider = await riders.create(conn, f"+86137{n:08d}", "bench-no-login")
        await adjust(conn, rider.id, FUNDING_FEN, "bench funding", "bench")
    device = generate_device_key()
    issued = await issue(
        pool, keys, rider.id, encode_public_key(device.public_key()), 24 * 3600, 2000, now
    )
    return Phone(issued.certificate, device)


async def _setup(dsn: str, kek: str, now: int) -> tuple[asyncpg.Pool, list[Phone], Gate]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=SETUP_CONCURRENCY)
    assert pool is not None
    keys = IssuerKeys(Keystore(base64.b64decode(kek)), pool)
    await keys.load()
    phones: list[Phone] = []
    for start in range(0, RIDERS, SETUP_CONCURRENCY):
        stop = min(start + SETUP_CONCURRENCY, RIDERS)
        phones += await asyncio.gather(*(_rider(pool, keys, n, now) for n in range(start, stop)))
    async with pool.acquire() as conn:
        made, private = await terminals.register(conn, secrets.token_hex(6).upper(), OPERATOR)
    assert private is not None
    return pool, phones, Gate(made.id, private)


def _batch(phones: list[Phone], now: int) -> bytes:
    """One ride by each rider, all tapped now; a phone's counter makes every code new."""
    rides = [
        {"code": encode_text(p.make_code(now)), "fare_fen": FARE_FEN, "tapped_at": now}
        for p in phones
    ]
    return json.dumps({"rides": rides}).encode()


async def _upload(session: aiohttp.ClientSession, gate: Gate, body: bytes) -> float:
    """Seconds one batch took, wall time; every ride must be accepted."""
    started = time.perf_counter()
    async with session.post(UPLOAD_PATH, data=body, headers=gate.post_headers(body)) as response:
        answer = await response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, answer[:500]
    results = json.loads(answer)["results"]
    refused = [r for r in results if r["status"] != "accepted"]
    assert len(results) == RIDERS and not refused, refused[:3]
    return elapsed


async def _payable_fen(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval(
        "SELECT balance_fen FROM ledger_accounts WHERE kind = 'operator_payable' AND owner = $1",
        OPERATOR,
    )
    return int(value or 0)


async def _run() -> tuple[float, list[float]]:
    """(seconds of the cold first batch, seconds of each measured batch)."""
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            env = bench_env(dsn, redis_url)
            env.update(ONECARD_LOG_LEVEL="ERROR")
            port = free_port()
            with server_process("bench._servers", ["gateway", str(port)], env, port):
                now = int(time.time())
                pool, phones, gate = await _setup(dsn, env["ONECARD_KEK"], now)
                try:
                    now = int(time.time())
                    bodies = [_batch(phones, now) for _ in range(1 + BATCHES_MEASURED)]
                    base = f"http://127.0.0.1:{port}"
                    async with aiohttp.ClientSession(base) as session:
                        cold = await _upload(session, gate, bodies[0])
                        warm = [await _upload(session, gate, body) for body in bodies[1:]]
                    uploaded = len(bodies) * RIDERS * FARE_FEN
                    assert await _payable_fen(pool) == uploaded, "every fare debited once"
                finally:
                    await pool.close()
    return cold, warm


def _raw_verify_per_s() -> float:
    run = _raw_pass()
    return 1 / min(run() for _ in range(RAW_ROUNDS))


def bench_ride_upload() -> None:
    raw_before = _raw_verify_per_s()
    cold_s, warm_s = asyncio.run(_run())
    raw = max(raw_before, _raw_verify_per_s())
    rate = RIDERS * len(warm_s) / sum(warm_s)
    best = RIDERS / min(warm_s)
    cold = RIDERS / cold_s
    print(f"{RIDERS:,} rides a batch, one per rider, one gate, one gateway worker", flush=True)
    print(f"{'raw cryptography P-256 verify':<44} {raw:>8,.0f} /s", flush=True)
    print(f"{'first batch, every certificate new':<44} {cold:>8,.0f} rides/s  "
          f"{cold / raw:5.3f} x raw")  # fmt: skip
    verdict = "met" if rate >= TARGET_RIDES_PER_S else "MISSED"
    print(f"{f'{BATCHES_MEASURED} batches, certificates cached':<44} {rate:>8,.0f} rides/s  "
          f"{rate / raw:5.3f} x raw  target >= {TARGET_RIDES_PER_S:,}: {verdict}")  # fmt: skip
    print(f"{'best batch':<44} {best:>8,.0f} rides/s  {best / raw:5.3f} x raw")
    before = BEFORE_RIDES_PER_S
    print(f"{'recorded before the set-based ingest':<44} {before:>8,.0f} rides/s  "
          f"{before / raw:5.3f} x raw  (now {rate / before:.1f} x that)", flush=True)  # fmt: skip


def main() -> None:
    bench_ride_upload()


if __name__ == "__main__":
    main()
