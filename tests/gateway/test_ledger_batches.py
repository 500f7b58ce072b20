"""Set-based postings (`ledger.post_batch`): judged in order against running balances, one
update per account, exact entries, all or nothing on errors, no deadlock between batches."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import (
    AccountKind,
    DuplicatePosting,
    Leg,
    Transfer,
    TxnKind,
    UnknownAccount,
    open_account,
    post,
    post_batch,
    reserve_txn_ids,
)

# Not a tap kind: `ledger verify` checks every tap kind's txn against its tap.
KIND = TxnKind.ADJUSTMENT


async def new_account(pool: asyncpg.Pool, kind: AccountKind, floor_fen: int | None = None) -> int:
    async with pool.acquire() as conn:
        return await open_account(conn, kind, f"batch-{secrets.token_hex(4)}", floor_fen)


async def fund(pool: asyncpg.Pool, account: int, amount_fen: int) -> None:
    source = await new_account(pool, AccountKind.SUSPENSE)
    async with pool.acquire() as conn, conn.transaction():
        legs = [Leg(source, -amount_fen), Leg(account, amount_fen)]
        await post(conn, KIND, legs, ref=f"test:{uuid.uuid4()}")


async def balances(pool: asyncpg.Pool, accounts: list[int]) -> list[int]:
    rows = await pool.fetch(
        "SELECT id, balance_fen FROM ledger_accounts WHERE id = ANY($1)", accounts
    )
    found = {row["id"]: row["balance_fen"] for row in rows}
    return [found[a] for a in accounts]


def ref() -> str:
    return f"test:{uuid.uuid4()}"


async def test_postings_are_judged_in_order_and_the_hot_account_gets_running_balances(
    pool: asyncpg.Pool,
) -> None:
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    other = await new_account(pool, AccountKind.RIDER_WALLET)
    payable = await new_account(pool, AccountKind.OPERATOR_PAYABLE)
    await fund(pool, wallet, 500)
    await fund(pool, other, 100)
    transfers = [
        Transfer(wallet, payable, 300, ref()),
        Transfer(wallet, payable, 300, ref()),  # 200 left: refused
        Transfer(other, payable, 100, ref()),
        Transfer(wallet, payable, 150, ref()),  # still fits
        Transfer(other, payable, 1, ref()),  # other is empty now
    ]
    async with pool.acquire() as conn, conn.transaction():
        txn_ids = await post_batch(conn, KIND, transfers, memo="batch")
    assert [t is not None for t in txn_ids] == [True, False, True, True, False]
    assert await balances(pool, [wallet, other, payable]) == [50, 0, 550]
    rows = await pool.fetch(
        "SELECT t.id, t.ref, t.memo, e.account_id, e.amount_fen, e.balance_after_fen "
        "FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id "
        "WHERE t.id = ANY($1) ORDER BY t.id, e.amount_fen",
        [t for t in txn_ids if t is not None],
    )
    assert [(r["account_id"], r["amount_fen"], r["balance_after_fen"]) for r in rows] == [
        (wallet, -300, 200), (payable, 300, 300),
        (other, -100, 0), (payable, 100, 400),
        (wallet, -150, 50), (payable, 150, 550),
    ]  # fmt: skip
    assert [r["ref"] for r in rows[::2]] == [transfers[i].ref for i in (0, 2, 3)]
    assert {r["memo"] for r in rows} == {"batch"}


async def test_credits_earlier_in_a_batch_pay_for_debits_later(pool: asyncpg.Pool) -> None:
    a, b, c = [await new_account(pool, AccountKind.RIDER_WALLET) for _ in range(3)]
    await fund(pool, a, 100)
    transfers = [Transfer(b, c, 50, ref()), Transfer(a, b, 100, ref()), Transfer(b, c, 50, ref())]
    async with pool.acquire() as conn, conn.transaction():
        txn_ids = await post_batch(conn, KIND, transfers)
    assert [t is not None for t in txn_ids] == [False, True, True]
    assert await balances(pool, [a, b, c]) == [0, 50, 50]


async def test_reserved_ids_name_the_txns_and_ids_never_drawn_are_refused(
    pool: asyncpg.Pool,
) -> None:
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    payable = await new_account(pool, AccountKind.OPERATOR_PAYABLE)
    await fund(pool, wallet, 100)
    async with pool.acquire() as conn, conn.transaction():
        ids = await reserve_txn_ids(conn, 2)
        transfers = [
            Transfer(wallet, payable, 60, ref(), ids[0]),
            Transfer(wallet, payable, 60, ref(), ids[1]),
        ]
        assert await post_batch(conn, KIND, transfers) == [ids[0], None]
    async with pool.acquire() as conn, conn.transaction():
        future = (await reserve_txn_ids(conn, 1))[0] + 1_000_000
        with pytest.raises(asyncpg.PostgresError) as refused:
            await post_batch(conn, KIND, [Transfer(wallet, payable, 1, ref(), future)])
    assert getattr(refused.value, "sqlstate", None) == "OC001"
    assert await balances(pool, [wallet, payable]) == [40, 60]


async def test_a_batch_fails_whole_on_an_unknown_account_or_a_posted_ref(
    pool: asyncpg.Pool,
) -> None:
    wallet = await new_account(pool, AccountKind.RIDER_WALLET)
    payable = await new_account(pool, AccountKind.OPERATOR_PAYABLE)
    await fund(pool, wallet, 100)
    posted = ref()
    async with pool.acquire() as conn, conn.transaction():
        await post_batch(conn, KIND, [Transfer(wallet, payable, 10, posted)])
    for bad, error in (
        (Transfer(wallet, 10**15, 10, ref()), UnknownAccount),
        (Transfer(wallet, payable, 10, posted), DuplicatePosting),
    ):
        with pytest.raises(error):
            async with pool.acquire() as conn, conn.transaction():
                await post_batch(conn, KIND, [Transfer(wallet, payable, 5, ref()), bad])
    assert await balances(pool, [wallet, payable]) == [90, 10]


async def test_batches_over_the_same_accounts_in_opposite_orders_never_deadlock(
    pool: asyncpg.Pool,
) -> None:
    wallets = [await new_account(pool, AccountKind.RIDER_WALLET) for _ in range(30)]
    payable = await new_account(pool, AccountKind.OPERATOR_PAYABLE)
    for wallet in wallets:
        await fund(pool, wallet, 1000)

    async def batch(order: list[int]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            transfers = [Transfer(w, payable, 10, ref()) for w in order]
            assert None not in await post_batch(conn, KIND, transfers)
            await asyncio.sleep(0.01)  # hold the locks a while

    for _ in range(5):
        await asyncio.wait_for(asyncio.gather(batch(wallets), batch(wallets[::-1])), 30)
    assert await balances(pool, wallets) == [900] * 30
    assert (await balances(pool, [payable]))[0] == 30 * 100


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    starts=st.lists(st.integers(0, 300), min_size=3, max_size=3),
    moves=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 200)).filter(
            lambda m: m[0] != m[1]
        ),
        max_size=30,
    ),
)
async def test_random_batches_match_a_model_of_running_balances(
    pool: asyncpg.Pool, starts: list[int], moves: list[tuple[int, int, int]]
) -> None:
    """Three wallets (floor 0) and a suspense account (no floor): every posting is judged like
    the model judges it, and balances end where the model's do."""
    accounts = [await new_account(pool, AccountKind.RIDER_WALLET) for _ in range(3)]
    accounts.append(await new_account(pool, AccountKind.SUSPENSE))
    for account, start in zip(accounts, starts, strict=False):
        if start:
            await fund(pool, account, start)
    model = [*starts, 0]
    before = await balances(pool, accounts)
    assert before[:3] == starts
    model[3] = before[3]
    expected = []
    for source, target, amount in moves:
        fits = source == 3 or model[source] >= amount
        expected.append(fits)
        if fits:
            model[source] -= amount
            model[target] += amount
    transfers = [Transfer(accounts[s], accounts[t], a, ref()) for s, t, a in moves]
    async with pool.acquire() as conn, conn.transaction():
        txn_ids = await post_batch(conn, KIND, transfers)
    assert [t is not None for t in txn_ids] == expected
    assert await balances(pool, accounts) == model
