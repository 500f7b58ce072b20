"""An account's statement: its entries, newest first, with cursor pagination."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

_PAGE = """
SELECT e.id AS entry_id, e.txn_id, e.amount_fen, e.balance_after_fen, e.created_at,
       t.kind, t.memo
FROM ledger_entries e JOIN ledger_txns t ON t.id = e.txn_id
WHERE e.account_id = $1 AND e.id < $2
ORDER BY e.id DESC
LIMIT $3
"""

_ONE = """
SELECT e.id AS entry_id, e.txn_id, e.amount_fen, e.balance_after_fen, e.created_at,
       t.kind, t.memo
FROM ledger_entries e JOIN ledger_txns t ON t.id = e.txn_id
WHERE e.account_id = $1 AND e.txn_id = $2
"""

ENTRY_ID_MAX = 2**63 - 1


@dataclass(frozen=True)
class Entry:
    entry_id: int
    txn_id: int
    kind: str
    memo: str
    amount_fen: int
    balance_after_fen: int
    created_at: datetime


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        row["entry_id"], row["txn_id"], row["kind"], row["memo"], row["amount_fen"],
        row["balance_after_fen"], row["created_at"],
    )  # fmt: skip


async def entries_page(
    conn: asyncpg.Connection, account_id: int, limit: int, before_entry_id: int | None
) -> list[Entry]:
    """Up to `limit` entries older than `before_entry_id` (all when None), newest first."""
    rows = await conn.fetch(_PAGE, account_id, before_entry_id or ENTRY_ID_MAX, limit)
    return [_entry(row) for row in rows]


async def entry_of_txn(conn: asyncpg.Connection, account_id: int, txn_id: int) -> Entry | None:
    """The account's entry in txn `txn_id`, or None when the txn did not touch the account."""
    row = await conn.fetchrow(_ONE, account_id, txn_id)
    return None if row is None else _entry(row)
