"""The ledger: concurrent postings stay exact, floors hold, entries never change, verify tells."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import uuid

import asyncpg
import pytest

from gateway.ledger import (
    AccountKind,
    DuplicatePosting,
    FloorBreach,
    Leg,
    TxnKind,
    UnknownAccount,
    account_balance,
    open_account,
    post,
)


async def new_account(pool: asyncpg.Pool, kind: AccountKind, floor_fen: int | None = None) -> int:
    async with pool.acquire() as conn:
        return await open_account(conn, kind, f"test-{secrets.token_hex(4)}", floor_fen)


async def transfer(
    pool: asyncpg.Pool, source: int, target: int, amount_fen: int, ref: str | None = None
) -> None:
    legs = [Leg(source, -amount_fen), Leg(target, amount_fen)]
    async with pool.acquire() as conn, conn.transaction():
        await post(conn, TxnKind.ADJUSTMENT, legs, ref=ref or f"test:{uuid.uuid4()}")


async def balances(pool: asyncpg.Pool, accounts: list[int]) -> list[int]:
    async with pool.acquire() as conn:
        return [(await account_balance(conn, a))[0] for a in accounts]


async def test_thousand_concurrent_postings_are_exact(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)  # no floor
    wallets = [await new_account(pool, AccountKind.RIDER_WALLET) for _ in range(4)]  # floor 0
    for wallet in wallets:
        await transfer(pool, channel, wallet, 50_000)
    rng = random.Random(7)
    moves = []
    for _ in range(1000):
        source, target = rng.sample(wallets, 2)
        moves.append((source, target, rng.randint(1, 300)))
    outcomes = await asyncio.gather(
        *(transfer(pool, s, t, a) for s, t, a in moves), return_exceptions=True
    )
    assert [o for o in outcomes if o is not None] == []  # 4 x 50000 fen: no floor is reached
    expected = {wallet: 50_000 for wallet in wallets}
    for source, target, amount in moves:
        expected[source] -= amount
        expected[target] += amount
    assert await balances(pool, wallets) == [expected[w] for w in wallets]
    assert sum(await balances(pool, wallets)) == 200_000


async def test_concurrent_postings_near_the_floor_never_cross_it(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    sink = await new_account(pool, AccountKind.OPERATOR_PAYABLE)
    await transfer(pool, channel, wallet, 1_000)
    outcomes = await asyncio.gather(
        *(transfer(pool, wallet, sink, 30) for _ in range(100)), return_exceptions=True
    )
    succeeded = sum(1 for o in outcomes if o is None)
    refused = [o for o in outcomes if o is not None]
    assert succeeded == 33  # 33 x 30 = 990 <= 1000 < 34 x 30
    assert all(isinstance(o, FloorBreach) and o.account_id == wallet for o in refused)
    assert await balances(pool, [wallet, sink]) == [10, 990]


async def test_a_floor_breach_writes_nothing(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    await transfer(pool, channel, wallet, 500)
    txns_before = await pool.fetchval("SELECT count(*) FROM ledger_txns")
    entries_before = await pool.fetchval("SELECT count(*) FROM ledger_entries")
    with pytest.raises(FloorBreach) as raised:
        # The wallet is the second leg: the first leg's UPDATE must be undone as well.
        await transfer(pool, channel, wallet, -501)
    assert raised.value.account_id == wallet
    assert await balances(pool, [channel, wallet]) == [-500, 500]
    assert await pool.fetchval("SELECT count(*) FROM ledger_txns") == txns_before
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == entries_before


async def test_the_same_business_event_posts_once(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    ref = f"topup:{secrets.token_hex(4)}"
    await transfer(pool, channel, wallet, 700, ref=ref)
    with pytest.raises(DuplicatePosting):
        await transfer(pool, channel, wallet, 700, ref=ref)
    assert await balances(pool, [wallet]) == [700]


async def test_an_unknown_account_is_refused(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    with pytest.raises(UnknownAccount) as raised:
        await transfer(pool, channel, 9_000_000_000, 100)
    assert raised.value.account_id == 9_000_000_000
    assert await balances(pool, [channel]) == [0]


async def test_postings_outside_a_transaction_are_a_bug(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(AssertionError):
            await post(conn, TxnKind.ADJUSTMENT, [Leg(1, -1), Leg(2, 1)], ref="test:outside")


async def test_unbalanced_postings_are_refused_by_the_database_too(pool: asyncpg.Pool) -> None:
    a = await new_account(pool, AccountKind.SUSPENSE)
    b = await new_account(pool, AccountKind.FEE_INCOME)
    async with pool.acquire() as conn:
        for accounts, amounts in (
            ([a, b], [5, -4]),
            ([a], [0]),
            ([a, a], [5, -5]),
            ([a, b], [0, 0]),
        ):
            with pytest.raises(asyncpg.PostgresError) as raised:
                async with conn.transaction():
                    await conn.fetchrow(
                        "SELECT * FROM ledger_post('t', NULL, '', $1, $2)", accounts, amounts
                    )
            assert raised.value.sqlstate == "OC001"


async def test_entries_and_txns_are_never_changed(pool: asyncpg.Pool) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    await transfer(pool, channel, wallet, 100)
    for statement in (
        "UPDATE ledger_entries SET amount_fen = amount_fen + 1 WHERE account_id = $1",
        "DELETE FROM ledger_entries WHERE account_id = $1",
        "UPDATE ledger_txns SET memo = 'x' WHERE id IN "
        "(SELECT txn_id FROM ledger_entries WHERE account_id = $1)",
        "DELETE FROM ledger_txns WHERE id IN "
        "(SELECT txn_id FROM ledger_entries WHERE account_id = $1)",
    ):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await pool.execute(statement, wallet)
        assert raised.value.sqlstate == "OC004"
    for table in ("ledger_entries", "ledger_txns"):
        with pytest.raises(asyncpg.PostgresError):
            await pool.execute(f"TRUNCATE {table} CASCADE")


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL="redis://unused:1/0")
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


async def test_ledger_verify_command_reports_a_drifted_balance(
    pool: asyncpg.Pool, database_url: str
) -> None:
    channel = await new_account(pool, AccountKind.CHANNEL_RECEIVABLE)
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    await transfer(pool, channel, wallet, 250)
    ok = await asyncio.to_thread(run_cli, database_url, "ledger", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger verify: ok" in ok.stdout
    await pool.execute("UPDATE ledger_accounts SET balance_fen = 999 WHERE id = $1", wallet)
    try:
        broken = await asyncio.to_thread(run_cli, database_url, "ledger", "verify")
    finally:
        await pool.execute("UPDATE ledger_accounts SET balance_fen = 250 WHERE id = $1", wallet)
    assert broken.returncode == 1
    assert f"account {wallet}" in broken.stdout
    assert "balance 999 fen, entries sum to 250 fen" in broken.stdout
