"""One hot partner float taking 10,000 concurrent top-ups: postings/s, against a baseline of the
same top-ups with nothing hot, in the same run.

    .venv/bin/python -m bench.partner_float

A scratch database, RIDERS riders, and TOPUPS top-ups of AMOUNT_FEN each started at once (the
pool lets POOL_SIZE run at a time). Each top-up does what `POST /v1/partner/topups` does in the
database, with the same statements: claim the Idempotency-Key; then one transaction with
`gateway.topups.partners.top_up` (rider by phone, the order made paid, then credited, the
webhook outbox, the `partner_topup` posting from the float) and the stored answer. No HTTP: the
figure is what the hot row allows, not what one gateway process's HTTP and signature checks
allow (`bench.idempotency` measures those).

Runs, each TOPUPS top-ups:
- one lane: the straightforward posting, every top-up updating the float's one row;
- lanes: the float as `partners.LANES` lane accounts (how the gateway runs);
- nothing hot: the same top-ups with each concurrent connection drawing from a float of its
  own (one lane each): what the hot float would reach if it cost nothing;
- bare: the same 10 round trips as plain SQL on a bare pool (claim; BEGIN; rider by phone;
  nextval; insert; one update of the order; an insert of no rows, as the outbox of a
  partner with no webhooks; one update of a balance row of the connection's own; the stored
  answer; COMMIT), no triggers, no ledger function, no domain code: the limit of the round
  trips themselves on this machine. The ratio printed is to this baseline.
Target: the lanes run >= TARGET_PER_S postings/s. After the runs `ledger verify` must be clean,
every float must hold what it was funded less what it paid, and no lane may be below zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import msgspec

from bench._support import scratch_database, server_urls
from gateway import db, idempotency
from gateway.areas import ledger_checks
from gateway.auth import partners as partner_keys
from gateway.auth import riders
from gateway.config import Config
from gateway.keystore import Keystore
from gateway.ledger.verify import verify_ledger
from gateway.metrics import Registry
from gateway.topups import partners
from gateway.topups.service import Topups

TOPUPS = 10_000
RIDERS = 1_000
POOL_SIZE = 32
AMOUNT_FEN = 1_000
TARGET_PER_S = 1_000
SETUP_CONCURRENCY = 16
LEASE_S = float(Config.idempotency_lease_s)
TTL_S = float(Config.idempotency_ttl_s)
_keys = itertools.count()


@contextlib.contextmanager
def lanes_of(count: int) -> Iterator[None]:
    """Floats funded and drawn meanwhile have `count` lanes (1: the straightforward float)."""
    before = partners.LANES
    partners.LANES = count
    try:
        yield
    finally:
        partners.LANES = before


async def _riders(pool: asyncpg.Pool) -> list[str]:
    phones = [f"+86136{n:08d}" for n in range(RIDERS)]

    async def make(phone: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await riders.create(conn, phone, "bench-no-login")

    for start in range(0, RIDERS, SETUP_CONCURRENCY):
        await asyncio.gather(*(make(p) for p in phones[start : start + SETUP_CONCURRENCY]))
    return phones


async def _partner(pool: asyncpg.Pool, keystore: Keystore, amount_fen: int) -> str:
    async with pool.acquire() as conn:
        partner, _ = await partner_keys.create(conn, keystore, "Bench Bank")
        async with conn.transaction():
            await partners.fund(conn, partner.key_id, amount_fen, "bench", "bench funding")
    return partner.key_id


async def top_up(pool: asyncpg.Pool, topups: Topups, key_id: str, phone: str) -> None:
    """What the route does in the database: claim, then the top-up and its stored answer."""
    principal, key = f"partner:{key_id}", f"bench-{next(_keys)}"
    digest = hashlib.sha256(key.encode()).digest()
    lease = uuid.uuid4()
    claimed = await pool.fetchrow(
        idempotency._CLAIM, principal, key, digest, lease, LEASE_S, TTL_S, None
    )
    assert claimed is not None
    async with pool.acquire() as conn, conn.transaction():
        answer = await partners.top_up(conn, topups, key_id, phone, None, AMOUNT_FEN)
        await conn.execute(
            idempotency._FINISH, principal, key, lease, 201, msgspec.json.encode(answer)
        )


async def _timed(work: list[Callable[[], Awaitable[None]]]) -> float:
    """All of `work` started at once; postings per second."""
    started = time.perf_counter()
    await asyncio.gather(*(w() for w in work))
    return len(work) / (time.perf_counter() - started)


async def _hot(pool: asyncpg.Pool, keystore: Keystore, topups: Topups, phones: list[str]) -> float:
    key_id = await _partner(pool, keystore, TOPUPS * AMOUNT_FEN)
    work = [(lambda n=n: top_up(pool, topups, key_id, phones[n % RIDERS])) for n in range(TOPUPS)]
    rate = await _timed(work)
    assert await partners.float_balance(pool, key_id) == 0, "the float paid exactly all"
    return rate


async def _cold(pool: asyncpg.Pool, keystore: Keystore, topups: Topups, phones: list[str]) -> float:
    """Each of POOL_SIZE workers draws from its own float: the same work, nothing hot."""
    per_worker = TOPUPS // POOL_SIZE
    key_ids = [await _partner(pool, keystore, per_worker * AMOUNT_FEN) for _ in range(POOL_SIZE)]

    async def worker(w: int) -> None:
        for n in range(per_worker):
            await top_up(pool, topups, key_ids[w], phones[(w * per_worker + n) % RIDERS])

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(POOL_SIZE)))
    return per_worker * POOL_SIZE / (time.perf_counter() - started)


_BARE_TABLES = """
CREATE TABLE bench_keys (key text PRIMARY KEY, answer bytea);
CREATE TABLE bench_orders (id bigint PRIMARY KEY, amount_fen bigint NOT NULL, state text NOT NULL);
CREATE SEQUENCE bench_order_ids;
CREATE TABLE bench_events (order_id bigint NOT NULL, type text NOT NULL);
CREATE TABLE bench_balances (id integer PRIMARY KEY, balance_fen bigint NOT NULL);
INSERT INTO bench_balances SELECT g, 1000000000 FROM generate_series(0, 255) g;
"""


async def bare_top_up(pool: asyncpg.Pool, lane: int, phone: str) -> None:
    """The round trips of a top-up as plain statements (see the module docstring)."""
    key = f"bare-{next(_keys)}"
    await pool.execute("INSERT INTO bench_keys (key) VALUES ($1)", key)
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow("SELECT id, wallet_account_id FROM riders WHERE phone = $1", phone)
        order_id = await conn.fetchval("SELECT nextval('bench_order_ids')")
        await conn.execute(
            "INSERT INTO bench_orders (id, amount_fen, state) VALUES ($1, $2, 'paid')",
            order_id, AMOUNT_FEN,
        )  # fmt: skip
        await conn.execute("UPDATE bench_orders SET state = 'credited' WHERE id = $1", order_id)
        await conn.execute("INSERT INTO bench_events SELECT $1, 'topup.paid' WHERE false", order_id)
        await conn.execute(
            "UPDATE bench_balances SET balance_fen = balance_fen - $2 WHERE id = $1",
            lane, AMOUNT_FEN,
        )  # fmt: skip
        await conn.execute("UPDATE bench_keys SET answer = $2 WHERE key = $1", key, b"{}")


async def _bare(dsn: str, phones: list[str]) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    assert pool is not None
    try:
        await pool.execute(_BARE_TABLES)
        per_worker = TOPUPS // POOL_SIZE

        async def worker(w: int) -> None:
            for n in range(per_worker):
                await bare_top_up(pool, w, phones[(w * per_worker + n) % RIDERS])

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(POOL_SIZE)))
        return per_worker * POOL_SIZE / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _check(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        problems = await verify_ledger(conn, ledger_checks())
        negative = await conn.fetchval(
            "SELECT count(*) FROM ledger_accounts WHERE kind = 'partner_float' AND balance_fen < 0"
        )
    return problems + ([f"{negative} float lanes below zero"] if negative else [])


async def run() -> None:
    with server_urls() as (admin_dsn, _):
        async with scratch_database(admin_dsn) as dsn:
            config = Config(db_pool_size_min=POOL_SIZE, db_pool_size_max=POOL_SIZE)
            pool = await db.create_pool(config, dsn)
            keystore = Keystore(secrets.token_bytes(32))
            outcomes = Registry().counter("bench_outcomes", "unused", ("outcome",))
            topups = Topups(pool, config, None, outcomes)  # type: ignore[arg-type]
            phones = await _riders(pool)
            try:
                with lanes_of(1):  # a warm-up, then the straightforward float
                    await _cold(pool, keystore, topups, phones)
                    one_lane = await _hot(pool, keystore, topups, phones)
                    cold = await _cold(pool, keystore, topups, phones)
                laned = await _hot(pool, keystore, topups, phones)
                bare = await _bare(dsn, phones)
                problems = await _check(pool)
            finally:
                await pool.close()
    _report(one_lane, laned, cold, bare, problems)


def _report(one_lane: float, laned: float, cold: float, bare: float, problems: list[str]) -> None:
    print(f"{TOPUPS:,} concurrent top-ups of {AMOUNT_FEN} fen, {RIDERS:,} riders, pool "
          f"{POOL_SIZE}; each: Idempotency-Key claim, one transaction (order, outbox, "
          f"posting), stored answer")  # fmt: skip
    rows = [
        ("bare: the same round trips, plain SQL (baseline)", bare),
        ("nothing hot: a float per connection", cold),
        ("one hot float, one row (straightforward)", one_lane),
        (f"one hot float, {partners.LANES} lanes", laned),
    ]
    for name, rate in rows:
        print(f"{name:<50} {rate:>7,.0f} postings/s  {rate / bare:.2f} x bare  "
              f"{rate / cold:.2f} x nothing hot")  # fmt: skip
    verdict = "met" if laned >= TARGET_PER_S else "MISSED"
    print(f"target: {partners.LANES} lanes >= {TARGET_PER_S:,} postings/s: {verdict}")
    print("ledger verify after the runs: " + ("clean" if not problems else "; ".join(problems)))
    assert not problems, problems


def main() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.run(run())
        return
    asyncio.run(run())


if __name__ == "__main__":
    main()
