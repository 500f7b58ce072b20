"""`onecard ledger verify`: prove the ledger is whole.

Checks that every txn has two or more entries summing to zero and that every account's balance
equals the sum of its entries. Areas declare their own invariants (card float equals the sum
of last known chip balances, once cards exist) in `gateway/areas.py`, and the callers pass
them all in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import asyncpg

Check = Callable[[asyncpg.Connection], Awaitable[list[str]]]

_UNBALANCED_TXNS = """
SELECT t.id, t.kind, t.ref, coalesce(sum(e.amount_fen), 0) AS total, count(e.id) AS legs
FROM ledger_txns t LEFT JOIN ledger_entries e ON e.txn_id = t.id
GROUP BY t.id
HAVING coalesce(sum(e.amount_fen), 0) <> 0 OR count(e.id) < 2
ORDER BY t.id
LIMIT 100
"""

_DRIFTED_ACCOUNTS = """
SELECT a.id, a.kind, a.owner, a.balance_fen, coalesce(s.total, 0) AS entries_fen
FROM ledger_accounts a
LEFT JOIN (SELECT account_id, sum(amount_fen) AS total FROM ledger_entries GROUP BY account_id) s
       ON s.account_id = a.id
WHERE a.balance_fen <> coalesce(s.total, 0)
ORDER BY a.id
LIMIT 100
"""

_ORPHAN_ENTRIES = """
SELECT e.id, e.account_id FROM ledger_entries e
LEFT JOIN ledger_accounts a ON a.id = e.account_id
WHERE a.id IS NULL
ORDER BY e.id
LIMIT 100
"""


async def _txns_balance(conn: asyncpg.Connection) -> list[str]:
    return [
        f"txn {r['id']} ({r['kind']} {r['ref']}): {r['legs']} entries summing to {r['total']} fen"
        for r in await conn.fetch(_UNBALANCED_TXNS)
    ]


async def _accounts_match_entries(conn: asyncpg.Connection) -> list[str]:
    return [
        f"account {r['id']} ({r['kind']} {r['owner']}): balance {r['balance_fen']} fen, "
        f"entries sum to {r['entries_fen']} fen"
        for r in await conn.fetch(_DRIFTED_ACCOUNTS)
    ]


async def _entries_have_accounts(conn: asyncpg.Connection) -> list[str]:
    return [
        f"entry {r['id']} names account {r['account_id']}, which does not exist"
        for r in await conn.fetch(_ORPHAN_ENTRIES)
    ]


CHECKS: tuple[Check, ...] = (_txns_balance, _accounts_match_entries, _entries_have_accounts)


async def verify_ledger(conn: asyncpg.Connection, checks: Iterable[Check] = CHECKS) -> list[str]:
    """Every problem found, as a line for a person; empty when the ledger is whole.

    Runs in one REPEATABLE READ snapshot so that postings committing meanwhile cannot make a
    whole ledger look broken.
    """
    problems: list[str] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for check in checks:
            problems.extend(await check(conn))
    return problems
