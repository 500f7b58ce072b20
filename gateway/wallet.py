"""Rider wallets: balance, statement and operator adjustments, all through the ledger.

A wallet is the rider's `rider_wallet` ledger account (owner = rider id, floor 0), opened at
sign-up. This module owns `wallet_adjustments`; it reads and posts only through
`gateway.ledger`. `Wallets` is the area's service object, built once at start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from gateway import db, errors
from gateway.context import POOL
from gateway.ledger import AccountKind, FloorBreach, Leg, TxnKind, open_account, post
from gateway.ledger.accounts import find_account
from gateway.ledger.history import Entry, entries_page, entry_of_txn

ADJUSTMENT_OWNER = "adjustments"


@dataclass(frozen=True)
class Wallet:
    account_id: int
    balance_fen: int
    floor_fen: int
    currency: str


@dataclass(frozen=True)
class Adjusted:
    adjustment_id: int
    txn_id: int
    balance_fen: int


async def wallet_of(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int) -> Wallet:
    row = await find_account(conn, AccountKind.RIDER_WALLET, str(rider_id))
    if row is None:
        raise errors.NOT_FOUND.error()
    return Wallet(row["id"], row["balance_fen"], row["floor_fen"] or 0, row["currency"].strip())


_INSERT_ADJUSTMENT = """
INSERT INTO wallet_adjustments (rider_id, amount_fen, reason, operator) VALUES ($1, $2, $3, $4)
RETURNING id
"""


async def adjust(
    conn: asyncpg.Connection, rider_id: int, amount_fen: int, reason: str, operator: str
) -> Adjusted:
    """An operator's correction of a wallet against suspense, in the caller's transaction; a
    debit below the floor is 422 `insufficient_balance`."""
    db.assert_in_transaction(conn)
    assert amount_fen != 0
    wallet = await wallet_of(conn, rider_id)
    suspense = await open_account(conn, AccountKind.SUSPENSE, ADJUSTMENT_OWNER)
    adjustment_id = await conn.fetchval(_INSERT_ADJUSTMENT, rider_id, amount_fen, reason, operator)
    try:
        posting = await post(
            conn, TxnKind.ADJUSTMENT,
            [Leg(suspense, -amount_fen), Leg(wallet.account_id, amount_fen)],
            ref=f"adjustment:{adjustment_id}", memo=f"{operator}: {reason}",
        )  # fmt: skip
    except FloorBreach:
        raise errors.INSUFFICIENT_BALANCE.error(balance_fen=wallet.balance_fen) from None
    await conn.execute(
        "UPDATE wallet_adjustments SET txn_id = $2 WHERE id = $1", adjustment_id, posting.txn_id
    )
    return Adjusted(adjustment_id, posting.txn_id, posting.balances_fen[wallet.account_id])


class Wallets:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def wallet(self, rider_id: int) -> Wallet:
        return await wallet_of(self.pool, rider_id)

    async def statement(
        self, rider_id: int, limit: int, before_entry_id: int | None
    ) -> list[Entry]:
        async with self.pool.acquire() as conn:
            wallet = await wallet_of(conn, rider_id)
            return await entries_page(conn, wallet.account_id, limit, before_entry_id)

    async def statement_entry(self, rider_id: int, txn_id: int) -> Entry:
        async with self.pool.acquire() as conn:
            wallet = await wallet_of(conn, rider_id)
            entry = await entry_of_txn(conn, wallet.account_id, txn_id)
        if entry is None:
            raise errors.NOT_FOUND.error()
        return entry

    async def adjust(
        self, conn: asyncpg.Connection, rider_id: int, amount_fen: int, reason: str, operator: str
    ) -> Adjusted:
        return await adjust(conn, rider_id, amount_fen, reason, operator)


WALLETS = web.AppKey("wallets", Wallets)


async def setup(app: web.Application) -> AsyncIterator[None]:
    app[WALLETS] = Wallets(app[POOL])
    yield
