"""Refunds of top-ups: the refund row, the money leaving the wallet (or the card's pending
load) when the refund starts, and coming back if the channel refuses it.

A refund takes the money out at once (so it cannot be spent meanwhile) with a `topup_refund`
txn, and the order waits in `refunding` until the channel says: succeeded (the order is
`refunded`, `partially_refunded`, or a card's order back to `pending_load` for the rest), or
failed (a `topup_refund_failed` txn puts the money back and the order returns to where it
was). Both txns have ref `refund:<id>`, so each posts once. This module owns `topup_refunds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from gateway import db, errors
from gateway.channels.types import RefundState, RefundStatus
from gateway.ledger import AccountKind, FloorBreach, Leg, TxnKind, open_account, post
from gateway.topups import orders
from gateway.topups.orders import Order, State

REFUNDABLE = frozenset({State.CREDITED, State.PARTIALLY_REFUNDED, State.PENDING_LOAD})


@dataclass(frozen=True)
class Refund:
    id: int
    order_id: int
    out_refund_no: str
    amount_fen: int
    reason: str
    state: str
    return_state: str
    created_at: datetime


_COLUMNS = "id, order_id, out_refund_no, amount_fen, reason, state, return_state, created_at"


# The database refuses to refund a card top-up whose load may be on the chip (migration 0009).
LOAD_IN_PROGRESS = "OC031"


def refund_number(refund_id: int, at: datetime) -> str:
    """Like an order's number (`orders.trade_number`): the Beijing time, then `R` (never the
    same as an order's) and the refund id."""
    return f"{at.astimezone(orders.BEIJING):%Y%m%d%H%M%S}R{refund_id:011d}"


async def start(
    conn: asyncpg.Connection, order: Order, amount_fen: int, reason: str, first_check_s: int,
    payer: tuple[AccountKind, str] | None = None,
) -> Refund:  # fmt: skip
    """The refund row, the money out of the wallet or pending load (to the channel's
    receivable, or to `payer` for a top-up no channel paid), the order `refunding`: 422
    `topup_not_refundable` when the order or its money cannot be refunded now."""
    db.assert_in_transaction(conn)
    if order.state not in REFUNDABLE or (order.channel is None) == (payer is None):
        raise errors.TOPUP_NOT_REFUNDABLE.error(state=order.state.value)
    if not 0 < amount_fen <= order.refundable_fen:
        raise errors.TOPUP_NOT_REFUNDABLE.error(
            "More than is left to refund.", refundable_fen=order.refundable_fen
        )
    refund_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('topup_refunds', 'id'))")
    row = await conn.fetchrow(
        f"INSERT INTO topup_refunds (id, order_id, out_refund_no, amount_fen, reason, "  # noqa: S608
        "return_state, next_check_at) OVERRIDING SYSTEM VALUE "
        "VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) "
        f"RETURNING {_COLUMNS}",
        refund_id, order.id, refund_number(refund_id, datetime.now(UTC)), amount_fen, reason,
        order.state.value, float(first_check_s),
    )  # fmt: skip
    refund = Refund(**dict(row))
    holder = await orders.target_account(conn, order)
    receivable = await open_account(conn, *(payer or orders.receivable_for(order)))
    try:
        async with conn.transaction():  # a savepoint: a spent wallet refuses, nothing stays
            await post(
                conn, TxnKind.TOPUP_REFUND, [Leg(holder, -amount_fen), Leg(receivable, amount_fen)],
                ref=f"refund:{refund.id}", memo=f"refund of top-up {order.out_trade_no}",
            )  # fmt: skip
    except FloorBreach:
        raise errors.TOPUP_NOT_REFUNDABLE.error("The money was already spent.") from None
    try:
        await orders.move(conn, order, State.REFUNDING)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) != LOAD_IN_PROGRESS:
            raise
        raise errors.TOPUP_LOAD_IN_PROGRESS.error() from None
    return refund


_LOCK_BY_ID = f"SELECT {_COLUMNS} FROM topup_refunds WHERE id = $1 FOR UPDATE"  # noqa: S608


async def lock(conn: asyncpg.Connection, refund_id: int) -> Refund:
    row = await conn.fetchrow(_LOCK_BY_ID, refund_id)
    assert row is not None
    return Refund(**dict(row))


async def lock_by_number(conn: asyncpg.Connection, out_refund_no: str) -> Refund | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM topup_refunds WHERE out_refund_no = $1 FOR UPDATE",  # noqa: S608
        out_refund_no,
    )
    return None if row is None else Refund(**dict(row))


async def apply_status(conn: asyncpg.Connection, refund: Refund, status: RefundStatus) -> Refund:
    """What the channel says of the refund, applied once (a refund already decided stays)."""
    db.assert_in_transaction(conn)
    if refund.state != "refunding" or status.state not in (
        RefundState.SUCCEEDED,
        RefundState.FAILED,
    ):
        return refund
    order = await orders.lock(conn, refund.order_id)
    if status.state is RefundState.SUCCEEDED:
        await _succeeded(conn, order, refund)
        new_state = "succeeded"
    else:
        await _failed(conn, order, refund)
        new_state = "failed"
    await conn.execute(
        "UPDATE topup_refunds SET state = $2, updated_at = now() WHERE id = $1",
        refund.id, new_state,
    )  # fmt: skip
    return Refund(**{**refund.__dict__, "state": new_state})


async def _succeeded(conn: asyncpg.Connection, order: Order, refund: Refund) -> None:
    refunded = order.refunded_fen + refund.amount_fen
    left = (order.paid_fen or order.amount_fen) - refunded
    if left == 0:
        to = State.REFUNDED
    elif order.target == "card":
        to = State.PENDING_LOAD  # the rest still loads onto the card
    else:
        to = State.PARTIALLY_REFUNDED
    await orders.move(conn, order, to, refunded_fen=refunded)


async def _failed(conn: asyncpg.Connection, order: Order, refund: Refund) -> None:
    holder = await orders.target_account(conn, order)
    receivable = await open_account(conn, *orders.receivable_for(order))
    await post(
        conn, TxnKind.TOPUP_REFUND_FAILED,
        [Leg(receivable, -refund.amount_fen), Leg(holder, refund.amount_fen)],
        ref=f"refund:{refund.id}", memo=f"refund refused, top-up {order.out_trade_no}",
    )  # fmt: skip
    await orders.move(conn, order, State(refund.return_state))


_CLAIM_DUE = f"""
UPDATE topup_refunds SET checks = checks + 1,
       next_check_at = now() + make_interval(secs => least($2 * power(2, least(checks, 16)), $3))
 WHERE id IN (SELECT r.id FROM topup_refunds r JOIN topup_orders o ON o.id = r.order_id
               WHERE r.state = 'refunding' AND r.next_check_at <= now()
                 AND o.channel = ANY($4::text[])
               ORDER BY r.next_check_at LIMIT $1 FOR UPDATE OF r SKIP LOCKED)
RETURNING {_COLUMNS}
"""  # noqa: S608


async def claim_due(
    pool: asyncpg.Pool, limit: int, first_after_s: int, backoff_max_s: int, channels: list[str]
) -> list[Refund]:
    """Refunds of `channels` waiting on the channel and due for a query, claimed as orders
    are (`orders.claim_due`)."""
    rows = await pool.fetch(_CLAIM_DUE, limit, float(first_after_s), float(backoff_max_s), channels)
    return [Refund(**dict(row)) for row in rows]
