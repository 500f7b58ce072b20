"""What `onecard ledger verify` proves of the taps: the tap store and the ledger agree.

Every accepted tap names the txn that paid it, whose ref is `<kind>:<replay key hex>` and
whose credit is the tap's fare; a refused tap names none; and every txn of a tap kind belongs
to an accepted tap. Read-only; runs inside verify's REPEATABLE READ snapshot.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from gateway.taps.ingest import QR

TAP_TXN_KINDS: Final = (QR.txn_kind.value,)

_UNPAID_OR_MISMATCHED = """
SELECT t.id, t.kind, t.status, t.txn_id, t.fare_fen, x.ref,
       (SELECT sum(e.amount_fen) FROM ledger_entries e
         WHERE e.txn_id = x.id AND e.amount_fen > 0) AS credited_fen
FROM taps t LEFT JOIN ledger_txns x ON x.id = t.txn_id
WHERE (t.status = 'accepted'
       AND (x.id IS NULL OR x.ref <> t.kind || ':' || encode(t.replay_key, 'hex')
            OR (SELECT sum(e.amount_fen) FROM ledger_entries e
                 WHERE e.txn_id = x.id AND e.amount_fen > 0) IS DISTINCT FROM t.fare_fen))
   OR (t.status = 'rejected' AND t.txn_id IS NOT NULL)
ORDER BY t.id
LIMIT 100
"""

_TXNS_WITHOUT_TAP = """
SELECT x.id, x.kind, x.ref FROM ledger_txns x
WHERE x.kind = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM taps t WHERE t.txn_id = x.id AND t.status = 'accepted')
ORDER BY x.id
LIMIT 100
"""


async def _taps_match_txns(conn: asyncpg.Connection) -> list[str]:
    problems = [
        f"tap {r['id']} ({r['kind']}, {r['status']}, {r['fare_fen']} fen) names txn "
        f"{r['txn_id']} (ref {r['ref']}, credits {r['credited_fen']} fen)"
        for r in await conn.fetch(_UNPAID_OR_MISMATCHED)
    ]
    problems += [
        f"txn {r['id']} ({r['kind']} {r['ref']}) pays no accepted tap"
        for r in await conn.fetch(_TXNS_WITHOUT_TAP, list(TAP_TXN_KINDS))
    ]
    return problems


LEDGER_CHECKS: Final = (_taps_match_txns,)
