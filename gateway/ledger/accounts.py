"""Ledger accounts: one per (kind, owner, currency). This module owns `ledger_accounts`."""

from __future__ import annotations

import enum

import asyncpg


class AccountKind(enum.StrEnum):
    RIDER_WALLET = "rider_wallet"  # a rider's stored value on the server; floor 0
    CARD_FLOAT = "card_float"  # money sitting on physical card chips
    PENDING_LOAD = "pending_load"  # paid card top-ups not yet on the chip
    VIRTUAL_CARD_FLOAT = "virtual_card_float"  # authorised HCE taps not yet cleared
    CHANNEL_RECEIVABLE = "channel_receivable"  # owed to us by a payment channel (per channel)
    OPERATOR_PAYABLE = "operator_payable"  # ride revenue owed to a transport operator
    PARTNER_FLOAT = "partner_float"  # a partner's prepaid float; floor 0
    FEE_INCOME = "fee_income"  # channel fees and other income
    SUSPENSE = "suspense"  # unreconciled money, waiting for an operator


# Accounts whose balance is money we hold for someone: it must never go negative.
FLOOR_ZERO_KINDS = frozenset({AccountKind.RIDER_WALLET, AccountKind.PARTNER_FLOAT})

SYSTEM_OWNER = "system"

_FIND_ID = "SELECT id FROM ledger_accounts WHERE kind = $1 AND owner = $2 AND currency = 'CNY'"
_CREATE = """
INSERT INTO ledger_accounts (kind, owner, floor_fen) VALUES ($1, $2, $3)
ON CONFLICT (kind, owner, currency) DO NOTHING
RETURNING id
"""


async def open_account(
    conn: asyncpg.Connection,
    kind: AccountKind,
    owner: str = SYSTEM_OWNER,
    floor_fen: int | None = None,
) -> int:
    """Return the id of the account (kind, owner), creating it when missing.

    The floor defaults to 0 for kinds that hold someone else's money, none otherwise.
    """
    # Read first: an existing account (the usual case, and hot ones like an operator's payable)
    # is neither written nor locked here, so postings alone take account locks, in id order.
    account_id: int | None = await conn.fetchval(_FIND_ID, kind.value, owner)
    if account_id is not None:
        return account_id
    if floor_fen is None and kind in FLOOR_ZERO_KINDS:
        floor_fen = 0
    account_id = await conn.fetchval(_CREATE, kind.value, owner, floor_fen)
    if account_id is None:  # created by a concurrent transaction meanwhile
        account_id = await conn.fetchval(_FIND_ID, kind.value, owner)
    assert account_id is not None
    return account_id


async def account_balance(conn: asyncpg.Connection, account_id: int) -> tuple[int, int | None]:
    """(balance_fen, floor_fen) of an account."""
    row = await conn.fetchrow(
        "SELECT balance_fen, floor_fen FROM ledger_accounts WHERE id = $1", account_id
    )
    if row is None:
        raise LookupError(account_id)
    return row["balance_fen"], row["floor_fen"]


async def find_account(
    conn: asyncpg.Connection | asyncpg.Pool, kind: AccountKind, owner: str
) -> asyncpg.Record | None:
    """(id, balance_fen, floor_fen, currency) of the account (kind, owner), or None."""
    return await conn.fetchrow(
        "SELECT id, balance_fen, floor_fen, currency FROM ledger_accounts "
        "WHERE kind = $1 AND owner = $2 AND currency = 'CNY'",
        kind.value,
        owner,
    )
