"""Rider wallets: balance, statement and operator adjustments, all through the ledger.

A wallet is the rider's `rider_wallet` ledger account (owner = rider id, floor 0), opened at
sign-up. This module reads and posts only through `gateway.ledger`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gateway import errors
from gateway.ledger import AccountKind, FloorBreach, Leg, open_account, post
from gateway.ledger.accounts import find_account
from gateway.ledger.history import Entry, entries_page, entry_of_txn

ADJUSTMENT_OWNER = "adjustments"


@dataclass(frozen=True)
class Wallet:
    account_id: int
    balance_fen: int
    floor_fen: int
    currency: str


async def wallet_of(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int) -> Wallet:
    row = await find_account(conn, AccountKind.RIDER_WALLET, str(rider_id))
    if row is None:
        raise errors.NOT_FOUND.error()
    return Wallet(row["id"], row["balance_fen"], row["floor_fen"] or 0, row["currency"].strip())


async def statement(
    conn: asyncpg.Connection, rider_id: int, limit: int, before_entry_id: int | None
) -> list[Entry]:
    wallet = await wallet_of(conn, rider_id)
    return await entries_page(conn, wallet.account_id, limit, before_entry_id)


async def statement_entry(conn: asyncpg.Connection, rider_id: int, txn_id: int) -> Entry:
    wallet = await wallet_of(conn, rider_id)
    entry = await entry_of_txn(conn, wallet.account_id, txn_id)
    if entry is None:
        raise errors.NOT_FOUND.error()
    return entry


async def adjust(
    conn: asyncpg.Connection, rider_id: int, amount_fen: int, reason: str, operator: str
) -> tuple[int, int]:
    """An operator's correction of a wallet against suspense: (txn id, new balance).

    Runs in the caller's transaction; a debit below the floor is 422 `insufficient_balance`.
    """
    assert amount_fen != 0
    wallet = await wallet_of(conn, rider_id)
    suspense = await open_account(conn, AccountKind.SUSPENSE, ADJUSTMENT_OWNER)
    try:
        posting = await post(
            conn, "adjustment", [Leg(suspense, -amount_fen), Leg(wallet.account_id, amount_fen)],
            memo=f"{operator}: {reason}",
        )  # fmt: skip
    except FloorBreach:
        raise errors.INSUFFICIENT_BALANCE.error(balance_fen=wallet.balance_fen) from None
    return posting.txn_id, posting.balances_fen[wallet.account_id]
