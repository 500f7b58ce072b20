"""What `onecard ledger verify` proves of top-ups: orders and the ledger agree.

Every order whose money reached us (paid and after) has exactly one `topup_paid` or
`partner_topup` txn with ref `topup:<id>` crediting its amount; no other order has one; and
every such txn belongs to an order. Read-only; runs inside verify's REPEATABLE READ snapshot.
"""

from __future__ import annotations

import asyncpg

_MISMATCHED = """
SELECT o.id, o.state, o.amount_fen, count(x.id) AS txns,
       (SELECT sum(e.amount_fen) FROM ledger_entries e
         WHERE e.txn_id = min(x.id) AND e.amount_fen > 0) AS credited_fen
FROM topup_orders o
LEFT JOIN ledger_txns x ON x.kind IN ('topup_paid', 'partner_topup')
                       AND x.ref = 'topup:' || o.id
GROUP BY o.id
HAVING (o.state IN ('paid', 'credited', 'pending_load', 'loaded', 'refunding', 'refunded',
                    'partially_refunded')
        AND (count(x.id) <> 1
             OR (SELECT sum(e.amount_fen) FROM ledger_entries e
                  WHERE e.txn_id = min(x.id) AND e.amount_fen > 0)
                IS DISTINCT FROM o.amount_fen))
    OR (o.state IN ('created', 'paying', 'closed', 'failed') AND count(x.id) <> 0)
ORDER BY o.id
LIMIT 100
"""

_TXNS_WITHOUT_ORDER = """
SELECT x.id, x.kind, x.ref FROM ledger_txns x
WHERE x.kind IN ('topup_paid', 'partner_topup')
  AND NOT EXISTS (SELECT 1 FROM topup_orders o WHERE x.ref = 'topup:' || o.id)
ORDER BY x.id
LIMIT 100
"""


async def orders_match_txns(conn: asyncpg.Connection) -> list[str]:
    problems = [
        f"top-up {r['id']} ({r['state']}, {r['amount_fen']} fen) has {r['txns']} payment "
        f"txn(s) crediting {r['credited_fen']} fen"
        for r in await conn.fetch(_MISMATCHED)
    ]
    problems += [
        f"txn {r['id']} ({r['kind']} {r['ref']}) pays no top-up"
        for r in await conn.fetch(_TXNS_WITHOUT_ORDER)
    ]
    return problems


LEDGER_CHECKS = (orders_match_txns,)
