"""The webhook outbox in PostgreSQL: events written in the transaction of the state change that
caused them, one delivery per subscribed endpoint, claimed by the delivery job, and the log of
every attempt.

`record(...)` runs inside the caller's transaction, so an event exists exactly when its change
committed. The job claims due deliveries (`FOR UPDATE SKIP LOCKED`, committed at once by
pushing `next_attempt_at` out and setting a lease), sends with no transaction open, then
records the attempt and the next state in a new transaction guarded by the lease. A process
that dies mid-send leaves a claim that falls due again: delivery is at least once.
This module owns `webhook_events`, `webhook_deliveries` and `webhook_attempts`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway import db
from gateway.webhooks.events import EventType

RETRY_MAX_S = 3600  # the back-off doubles up to this
REDELIVER_MAX = 1_000  # deliveries one redeliver request re-queues at most
REDELIVER_AGE_MAX_S = 7 * 24 * 3600  # events older than this are not redelivered
ERROR_CHARS_MAX = 200
RETENTION_S = 30 * 24 * 3600  # finished events, their deliveries and their log are kept this long
PURGE_BATCH_MAX = 1_000

_RECORD = """
WITH subscribed AS (
    SELECT id, events FROM webhook_endpoints WHERE partner_key_id = $1 AND status = 'active'
), made AS (
    INSERT INTO webhook_events (partner_key_id, type, topup_id, data)
    SELECT $1, u.type, $2, u.data FROM unnest($3::text[], $4::bytea[]) AS u(type, data)
     WHERE EXISTS (SELECT 1 FROM subscribed s WHERE u.type = ANY (s.events))
    RETURNING id, type, created_at
)
INSERT INTO webhook_deliveries (event_id, endpoint_id, give_up_at)
SELECT m.id, s.id, m.created_at + make_interval(secs => $5)
  FROM made m JOIN subscribed s ON m.type = ANY (s.events)
"""


async def record(
    conn: asyncpg.Connection,
    partner_key_id: str,
    topup_id: int,
    events: Sequence[tuple[EventType, bytes]],
    window_s: int,
) -> int:
    """The events (type, the top-up's JSON) of one change of a partner's top-up, each with a
    delivery to every active endpoint of the partner that subscribes to it, in one statement;
    an event no endpoint wants is not kept. The number of deliveries queued."""
    db.assert_in_transaction(conn)
    status = await conn.execute(
        _RECORD, partner_key_id, topup_id, [t.value for t, _ in events], [d for _, d in events],
        float(window_s),
    )  # fmt: skip
    return int(status.split()[-1])


@dataclass(frozen=True)
class Due:
    """A claimed delivery and what its attempt needs."""

    id: int
    lease: uuid.UUID
    event_id: int
    event_type: str
    event_created_at: datetime
    data: bytes
    endpoint_id: int
    url: str
    endpoint_active: bool


_CLAIM = """
UPDATE webhook_deliveries d
   SET attempts = d.attempts + 1, lease = $2,
       next_attempt_at = now() + make_interval(secs => $3)
  FROM webhook_events e, webhook_endpoints p
 WHERE d.id IN (SELECT id FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
   AND e.id = d.event_id AND p.id = d.endpoint_id
RETURNING d.id, d.event_id, e.type, e.created_at, e.data, d.endpoint_id, p.url,
          p.status = 'active' AS active
"""


async def claim_due(pool: asyncpg.Pool, limit: int, hold_s: float) -> list[Due]:
    """Up to `limit` due deliveries, claimed for `hold_s` seconds (longer than an attempt can
    take): N job runners never send one at the same time, and one that dies lets it fall due."""
    lease = uuid.uuid4()
    rows = await pool.fetch(_CLAIM, limit, lease, hold_s)
    return [
        Due(r["id"], lease, r["event_id"], r["type"], r["created_at"], bytes(r["data"]),
            r["endpoint_id"], r["url"], r["active"])
        for r in rows
    ]  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: delivered (a 2xx), or why not."""

    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


# The outcome of the holder's attempt: delivered; given up when its time is over; else due
# again after the back-off (doubling, bounded, never past the time to give up).
_FINISH = """
WITH done AS (
    UPDATE webhook_deliveries
       SET state = CASE WHEN $3 THEN 'delivered' WHEN now() >= give_up_at THEN 'failed'
                        ELSE 'pending' END,
           next_attempt_at = least(give_up_at, now() + make_interval(
               secs => least($6 * power(2, least(backoff_step, 30)), $7))),
           backoff_step = backoff_step + CASE WHEN $3 THEN 0 ELSE 1 END,
           lease = NULL, last_status = $4, last_error = $5,
           delivered_at = CASE WHEN $3 THEN now() END
     WHERE id = $1 AND lease = $2 AND state = 'pending'
    RETURNING id, state
)
INSERT INTO webhook_attempts (delivery_id, duration_ms, status_code, error, outcome)
SELECT id, $8, $4, $5, CASE state WHEN 'delivered' THEN 'delivered'
                                  WHEN 'failed' THEN 'gave_up' ELSE 'retry' END
  FROM done
RETURNING outcome
"""


async def finish(pool: asyncpg.Pool, due: Due, attempt: Attempt, retry_first_s: int) -> str | None:
    """Log the attempt and move the delivery on, if this claim still holds it (a redeliver
    meanwhile takes it back); its outcome (`delivered`, `retry`, `gave_up`) or None."""
    error = None if attempt.error is None else attempt.error[:ERROR_CHARS_MAX]
    async with pool.acquire() as conn, conn.transaction():
        outcome: str | None = await conn.fetchval(
            _FINISH, due.id, due.lease, attempt.delivered, attempt.status_code, error,
            float(retry_first_s), float(RETRY_MAX_S), attempt.duration_ms,
        )  # fmt: skip
    return outcome


async def cancel(conn: asyncpg.Connection | asyncpg.Pool, delivery_id: int) -> None:
    """A claimed delivery whose endpoint was deleted meanwhile: never sent."""
    await conn.execute(
        "UPDATE webhook_deliveries SET state = 'cancelled', lease = NULL "
        "WHERE id = $1 AND state = 'pending'",
        delivery_id,
    )


async def cancel_endpoint(conn: asyncpg.Connection, endpoint_id: int) -> None:
    db.assert_in_transaction(conn)
    await conn.execute(
        "UPDATE webhook_deliveries SET state = 'cancelled', lease = NULL "
        "WHERE endpoint_id = $1 AND state = 'pending'",
        endpoint_id,
    )


# Re-queue with a fresh window and back-off: every delivery of the endpoint not delivered
# ($2 NULL), or that one event's (even if delivered: the partner lost it).
_REDELIVER = """
UPDATE webhook_deliveries
   SET state = 'pending', lease = NULL, backoff_step = 0, next_attempt_at = now(),
       give_up_at = now() + make_interval(secs => $3), delivered_at = NULL
 WHERE id IN (SELECT d.id FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
               WHERE d.endpoint_id = $1
                 AND ($2::bigint IS NULL AND d.state IN ('pending', 'failed')
                      OR d.event_id = $2 AND d.state <> 'cancelled')
                 AND e.created_at > now() - make_interval(secs => $4)
               ORDER BY d.id DESC LIMIT $5 FOR UPDATE OF d)
"""


async def redeliver(
    conn: asyncpg.Connection, endpoint_id: int, event_id: int | None, window_s: int
) -> int:
    """Deliveries re-queued (due now, a new `window_s` to succeed); see `_REDELIVER`."""
    db.assert_in_transaction(conn)
    status = await conn.execute(
        _REDELIVER, endpoint_id, event_id, float(window_s), float(REDELIVER_AGE_MAX_S),
        REDELIVER_MAX,
    )  # fmt: skip
    return int(status.split()[-1])


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: int
    event_type: str
    topup_id: int
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


_PAGE = """
SELECT d.id, d.event_id, e.type AS event_type, e.topup_id, d.state, d.attempts, d.last_status,
       d.last_error, CASE WHEN d.state = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.delivered_at, d.created_at
  FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
 WHERE d.endpoint_id = $1 AND d.id < $2
 ORDER BY d.id DESC LIMIT $3
"""


async def page(
    conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: int, limit: int, before_id: int | None
) -> list[Delivery]:
    """The endpoint's deliveries, newest first, older than `before_id`."""
    rows = await conn.fetch(_PAGE, endpoint_id, before_id or 2**63 - 1, limit)
    return [Delivery(**dict(row)) for row in rows]


async def attempts_of(conn: asyncpg.Connection | asyncpg.Pool, delivery_id: int) -> list[Attempt]:
    """The delivery log of one delivery, oldest first."""
    rows = await conn.fetch(
        "SELECT duration_ms, status_code, error FROM webhook_attempts "
        "WHERE delivery_id = $1 ORDER BY id",
        delivery_id,
    )
    return [Attempt(**dict(row)) for row in rows]


async def event_exists(conn: asyncpg.Connection, partner_key_id: str, event_id: int) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM webhook_events WHERE id = $1 AND partner_key_id = $2",
        event_id, partner_key_id,
    )  # fmt: skip
    return found is not None


# Old events none of whose deliveries is pending, with their deliveries and log: one batch.
# (The foreign keys are checked at the end of the statement, when all three are gone.)
_PURGE = """
WITH old AS (
    SELECT e.id FROM webhook_events e
     WHERE e.created_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                        WHERE d.event_id = e.id AND d.state = 'pending')
     ORDER BY e.id LIMIT $2 FOR UPDATE SKIP LOCKED
), deliveries AS (
    SELECT d.id FROM webhook_deliveries d JOIN old ON d.event_id = old.id
), attempts AS (
    DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM deliveries)
), gone AS (
    DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM deliveries)
)
DELETE FROM webhook_events WHERE id IN (SELECT id FROM old)
"""


async def purge(pool: asyncpg.Pool, older_than_s: int = RETENTION_S) -> int:
    """Delete finished events older than `older_than_s`, PURGE_BATCH_MAX at a time, until
    none is left; how many."""
    purged = 0
    while True:
        status = await pool.execute(_PURGE, float(older_than_s), PURGE_BATCH_MAX)
        deleted = int(status.split()[-1])
        purged += deleted
        if deleted < PURGE_BATCH_MAX:
            return purged
