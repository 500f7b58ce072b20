"""Ledger postings per second vs a bare single-statement UPDATE loop on the same pool.

Both run CONCURRENCY tasks on one pool against `ledger_accounts` for SECONDS each. A posting is
a whole two-leg txn (BEGIN, the `ledger_post` function, COMMIT); the baseline is one autocommit
UPDATE of a balance. Target: postings/s >= 0.5 of the baseline's statements/s.
"""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg

from bench._support import report, scratch_database, server_urls
from gateway.ledger import AccountKind, Leg, open_account, post

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


async def ledger_posting(pool: asyncpg.Pool, pair: list[int]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await post(conn, "bench", [Leg(pair[0], -1), Leg(pair[1], 1)])


async def run() -> None:
    with server_urls() as (admin_dsn, _):
        async with scratch_database(admin_dsn) as dsn:
            pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY)
            assert pool is not None
            async with pool.acquire() as conn:
                accounts = [
                    await open_account(conn, AccountKind.SUSPENSE, f"bench-{n}")
                    for n in range(ACCOUNTS)
                ]
            await _for_a_while(bare_update, pool, accounts)  # warm up both paths
            bare = await _for_a_while(bare_update, pool, accounts) / SECONDS
            posted = await _for_a_while(ledger_posting, pool, accounts) / SECONDS
            async with pool.acquire() as conn:
                legs = await conn.fetchval("SELECT count(*) FROM ledger_entries")
            await pool.close()
    print(f"concurrency {CONCURRENCY}, {ACCOUNTS} accounts, {SECONDS:.0f} s each; {legs} entries")
    report("ledger postings (2-leg txn)", posted, "/s", bare, 0.5)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
