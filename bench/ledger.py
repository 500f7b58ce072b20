"""Ledger postings per second vs a bare single-statement UPDATE loop on the same pool.

Both run CONCURRENCY tasks on one pool against `ledger_accounts` for SECONDS each. A posting is
a whole two-leg txn (BEGIN, the `ledger_post` function, COMMIT); the baseline is one autocommit
UPDATE of a balance. Target: postings/s >= 0.5 of the baseline's statements/s.

Also printed: what a posting costs where it is used, beside its cause in one transaction
(BEGIN, a business row, the posting, COMMIT against BEGIN, the business row, COMMIT).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import asyncpg

from bench._support import report, scratch_database, server_urls
from gateway import db
from gateway.config import Config
from gateway.ledger import AccountKind, Leg, TxnKind, open_account, post

SECONDS = 5.0
CONCURRENCY = 16
ACCOUNTS = 64


async def _for_a_while(work: object, pool: asyncpg.Pool, accounts: list[int]) -> int:
    done = 0
    stop_at = time.perf_counter() + SECONDS

    async def worker(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            await work(pool, rng.sample(accounts, 2))  # type: ignore[operator]
            done += 1

    await asyncio.gather(*(worker(n) for n in range(CONCURRENCY)))
    return done


async def bare_update(pool: asyncpg.Pool, pair: list[int]) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE ledger_accounts SET balance_fen = balance_fen + $1 WHERE id = $2", 1, pair[0]
        )


async def bare_two_updates(pool: asyncpg.Pool, pair: list[int]) -> None:
    """A 2-leg move done bare: one autocommit UPDATE per leg, no txn, no entries, no floor."""
    async with pool.acquire() as conn:
        for account, amount in ((pair[0], -1), (pair[1], 1)):
            await conn.execute(
                "UPDATE ledger_accounts SET balance_fen = balance_fen + $1 WHERE id = $2",
                amount, account,
            )  # fmt: skip


_refs = itertools.count()


def _ref() -> str:
    """Every posting names its event; here, a number unique in the run's scratch database."""
    return f"bench:{next(_refs)}"


async def ledger_posting(pool: asyncpg.Pool, pair: list[int]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await post(conn, TxnKind.ADJUSTMENT, [Leg(pair[0], -1), Leg(pair[1], 1)], ref=_ref())


async def posting_statement_alone(pool: asyncpg.Pool, pair: list[int]) -> None:
    """The `ledger_post` statement with no transaction around it: what the function itself
    costs. Not how the gateway posts (always beside a cause, inside its transaction)."""
    async with pool.acquire() as conn:
        await conn.fetchrow(
            "SELECT txn_id FROM ledger_post('adjustment', $3, '', $1, $2)", pair, [-1, 1], _ref()
        )


async def business_row_only(pool: asyncpg.Pool, pair: list[int]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_BUSINESS_ROW, pair[0] * 131 + pair[1])


async def business_row_and_posting(pool: asyncpg.Pool, pair: list[int]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_BUSINESS_ROW, pair[0] * 131 + pair[1])
        await post(conn, TxnKind.ADJUSTMENT, [Leg(pair[0], -1), Leg(pair[1], 1)], ref=_ref())


# A stand-in for the business row a posting sits beside: an order marked paid.
_ORDERS = """
CREATE TABLE bench_orders (id bigint PRIMARY KEY, paid_at timestamptz);
INSERT INTO bench_orders SELECT g, NULL FROM generate_series(1, 10000) g;
"""
_BUSINESS_ROW = "UPDATE bench_orders SET paid_at = now() WHERE id = $1 % 10000 + 1"


async def run() -> None:
    with server_urls() as (admin_dsn, _):
        async with scratch_database(admin_dsn) as dsn:
            # The gateway's own pool (its settings, its connection reset), for both loops.
            pool = await db.create_pool(
                Config(db_pool_size_min=CONCURRENCY, db_pool_size_max=CONCURRENCY), dsn
            )
            async with pool.acquire() as conn:
                await conn.execute(_ORDERS)
                accounts = [
                    await open_account(conn, AccountKind.SUSPENSE, f"bench-{n}")
                    for n in range(ACCOUNTS)
                ]
            await _for_a_while(bare_update, pool, accounts)  # warm up both paths
            bare = await _for_a_while(bare_update, pool, accounts) / SECONDS
            bare_moves = await _for_a_while(bare_two_updates, pool, accounts) / SECONDS
            statement = await _for_a_while(posting_statement_alone, pool, accounts) / SECONDS
            posted = await _for_a_while(ledger_posting, pool, accounts) / SECONDS
            alone = await _for_a_while(business_row_only, pool, accounts) / SECONDS
            beside = await _for_a_while(business_row_and_posting, pool, accounts) / SECONDS
            async with pool.acquire() as conn:
                legs = await conn.fetchval("SELECT count(*) FROM ledger_entries")
            await pool.close()
    print(f"concurrency {CONCURRENCY}, {ACCOUNTS} accounts, {SECONDS:.0f} s each; {legs} entries")
    report("ledger postings (2-leg txn) vs single UPDATEs", posted, "/s", bare, 0.5)
    print(
        f"ledger postings vs the same 2-leg move as two bare UPDATEs: {posted:,.0f} vs "
        f"{bare_moves:,.0f} /s ({posted / bare_moves:.2f})"
    )
    print(
        f"the ledger_post statement alone, no transaction around it: {statement:,.0f} /s "
        f"({statement / bare:.2f} of single UPDATEs): the rest is BEGIN and COMMIT"
    )
    print(
        f"what a posting adds to its cause's transaction: {beside:,.0f} business txns/s with "
        f"a posting vs {alone:,.0f} without ({beside / alone:.2f})"
    )


def _event_loop_run(coroutine: Any) -> None:
    """uvloop when installed, as the gateway runs: the client side costs less on both paths."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def main() -> None:
    _event_loop_run(run())


if __name__ == "__main__":
    main()
