"""What `onecard ledger verify` proves of loads (DESIGN.md section 5): each card's float equals
its last known chip balance, and every completed load has its one `ota_load` txn.

Read-only; runs inside verify's REPEATABLE READ snapshot.
"""

from __future__ import annotations

import asyncpg

# Every card with a float account, or whose last known balance is not 0.
_CARDS_THAT_DIFFER = """
SELECT coalesce(c.asn, a.owner) AS asn, coalesce(c.chip_balance_fen, 0) AS chip_balance_fen,
       coalesce(a.balance_fen, 0) AS card_float_fen
FROM cards c
FULL JOIN (SELECT owner, balance_fen FROM ledger_accounts WHERE kind = 'card_float') a
       ON a.owner = c.asn
WHERE coalesce(c.chip_balance_fen, 0) IS DISTINCT FROM coalesce(a.balance_fen, 0)
ORDER BY 1
LIMIT 100
"""

_LOADS_WITHOUT_ONE_TXN = """
SELECT l.id, l.state, count(x.id) AS txns
FROM ota_loads l
LEFT JOIN ledger_txns x ON x.kind = 'ota_load' AND x.ref = 'ota:' || l.id
GROUP BY l.id
HAVING (l.state = 'completed') <> (count(x.id) = 1) OR count(x.id) > 1
ORDER BY l.id
LIMIT 100
"""


async def card_float_matches_chips(conn: asyncpg.Connection) -> list[str]:
    return [
        f"card {r['asn']}: card float {r['card_float_fen']} fen, last known chip balance "
        f"{r['chip_balance_fen']} fen"
        for r in await conn.fetch(_CARDS_THAT_DIFFER)
    ]


async def completed_loads_posted_once(conn: asyncpg.Connection) -> list[str]:
    return [
        f"load {r['id']} ({r['state']}) has {r['txns']} ota_load txn(s)"
        for r in await conn.fetch(_LOADS_WITHOUT_ONE_TXN)
    ]


LEDGER_CHECKS = (card_float_matches_chips, completed_loads_posted_once)
