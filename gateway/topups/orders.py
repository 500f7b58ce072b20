"""Top-up orders: their rows, their state machine (enforced by the database, see migration
0007) and the ledger postings that go with each transition.

Every transition that moves money posts its ledger txn in the same transaction, with ref
`topup:<id>` (or `refund:<id>`), so it can post only once. Writers take a connection inside the
caller's transaction and lock the order row first. This module owns `topup_orders`,
`topup_refunds` and `channel_exceptions`; it moves money only through `gateway.ledger`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg

from gateway import db, errors
from gateway.channels.types import TradeStatus
from gateway.ledger import AccountKind, Leg, TxnKind, open_account, post
from gateway.topups import cards


class State(enum.StrEnum):
    CREATED = "created"
    PAYING = "paying"
    PAID = "paid"
    CREDITED = "credited"
    PENDING_LOAD = "pending_load"
    LOADED = "loaded"
    CLOSED = "closed"
    REFUNDING = "refunding"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    FAILED = "failed"


# States in which the money has reached us: a payment notification changes nothing more.
SETTLED = frozenset({State.PAID, State.CREDITED, State.PENDING_LOAD, State.LOADED,
                     State.REFUNDING, State.REFUNDED, State.PARTIALLY_REFUNDED})  # fmt: skip
# States whose order is waiting on the channel: the reconciler asks after them.
OPEN = frozenset({State.CREATED, State.PAYING})


@dataclass(frozen=True)
class Order:
    id: int
    out_trade_no: str
    source: str
    rider_id: int
    partner_key_id: str | None
    channel: str | None
    target: str
    card_asn: str | None
    amount_fen: int
    state: State
    pay_params: dict[str, str] | None
    channel_trade_no: str | None
    paid_fen: int | None
    refunded_fen: int
    flag: str | None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None

    @property
    def refundable_fen(self) -> int:
        return (self.paid_fen or self.amount_fen) - self.refunded_fen


_COLUMNS = """id, out_trade_no, source, rider_id, partner_key_id, channel, target, card_asn,
amount_fen, state, pay_params, channel_trade_no, paid_fen, refunded_fen, flag, expires_at,
created_at, updated_at, paid_at"""


def _order(row: asyncpg.Record) -> Order:
    values = dict(row)
    values["state"] = State(values["state"])
    return Order(**values)


BEIJING = timezone(timedelta(hours=8))


def trade_number(order_id: int, at: datetime) -> str:
    """Our number for the order at the channel: the Beijing time it was made (UnionPay names a
    transaction by number and time, so the number keeps its time) and the order id; 26 digits,
    as every channel takes (WeChat 6-32, UnionPay 8-40 alphanumeric, Alipay up to 64)."""
    return f"{at.astimezone(BEIJING):%Y%m%d%H%M%S}{order_id:012d}"


_INSERT = f"""
INSERT INTO topup_orders (id, out_trade_no, source, rider_id, partner_key_id, channel, target,
                          card_asn, amount_fen, expires_at, next_check_at, state, paid_fen,
                          paid_at)
OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING {_COLUMNS}
"""  # noqa: S608 - our own column list


async def insert(
    conn: asyncpg.Connection, *, source: str, rider_id: int, channel: str | None,
    partner_key_id: str | None, card_asn: str | None, amount_fen: int, expires_at: datetime,
    next_check_at: datetime | None, paid_at: datetime | None = None,
) -> Order:  # fmt: skip
    """A new order, `created`; or already `paid` at `paid_at` (a partner's, paid from its
    float as it is made: the one order that starts there)."""
    db.assert_in_transaction(conn)
    assert paid_at is None or source == "partner"
    order_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('topup_orders', 'id'))")
    row = await conn.fetchrow(
        _INSERT, order_id, trade_number(order_id, datetime.now(UTC)), source, rider_id,
        partner_key_id, channel, "card" if card_asn else "wallet", card_asn, amount_fen,
        expires_at, next_check_at, State.CREATED if paid_at is None else State.PAID,
        None if paid_at is None else amount_fen, paid_at,
    )  # fmt: skip
    assert row is not None
    return _order(row)


async def get(conn: asyncpg.Connection | asyncpg.Pool, order_id: int) -> Order | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM topup_orders WHERE id = $1", order_id)  # noqa: S608
    return None if row is None else _order(row)


_LOCK_BY_ID = f"SELECT {_COLUMNS} FROM topup_orders WHERE id = $1 FOR UPDATE"  # noqa: S608


async def lock_if_exists(conn: asyncpg.Connection, order_id: int) -> Order | None:
    db.assert_in_transaction(conn)
    row = await conn.fetchrow(_LOCK_BY_ID, order_id)
    return None if row is None else _order(row)


async def lock(conn: asyncpg.Connection, order_id: int) -> Order:
    """An order known to exist, locked for the rest of the transaction."""
    order = await lock_if_exists(conn, order_id)
    assert order is not None, f"top-up {order_id} exists"
    return order


async def lock_by_trade_no(conn: asyncpg.Connection, out_trade_no: str) -> Order | None:
    db.assert_in_transaction(conn)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM topup_orders WHERE out_trade_no = $1 FOR UPDATE",  # noqa: S608
        out_trade_no,
    )
    return None if row is None else _order(row)


async def page(
    conn: asyncpg.Connection | asyncpg.Pool, rider_id: int, limit: int, before_id: int | None,
    state: State | None,
) -> list[Order]:  # fmt: skip
    """The rider's orders, newest first, older than `before_id`, in `state` when given."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM topup_orders WHERE rider_id = $1 AND id < $2 "  # noqa: S608
        "AND ($3::text IS NULL OR state = $3) ORDER BY id DESC LIMIT $4",
        rider_id, before_id or 2**63 - 1, state, limit,
    )  # fmt: skip
    return [_order(row) for row in rows]


async def reserved_fen(conn: asyncpg.Connection, card_asn: str) -> int:
    """What orders for the card will or may still load: open ones and paid ones not loaded."""
    total: int = await conn.fetchval(
        "SELECT coalesce(sum(amount_fen - refunded_fen), 0)::bigint FROM topup_orders "
        "WHERE card_asn = $1 AND flag IS NULL "
        "AND state IN ('created', 'paying', 'paid', 'pending_load', 'refunding')",
        card_asn,
    )
    return total


async def reserve_card_room(conn: asyncpg.Connection, asn: str, amount_fen: int) -> None:
    """422 `card_balance_ceiling` before anything is charged when the card cannot take it: its
    last known chip balance, what orders for it will or may still load, and this amount above
    its ceiling. Locks the card's row, so concurrent top-ups of one card are judged in turn."""
    db.assert_in_transaction(conn)
    await conn.execute("SELECT 1 FROM cards WHERE asn = $1 FOR UPDATE", asn)
    card = await cards.find(conn, asn)
    assert card is not None, "the caller found the card"
    reserved = await reserved_fen(conn, asn)
    room = max(0, card.balance_max_fen - card.chip_balance_fen - reserved)
    if amount_fen > room:
        raise errors.CARD_BALANCE_CEILING.error(
            room_fen=room, balance_max_fen=card.balance_max_fen,
            chip_balance_fen=card.chip_balance_fen, pending_fen=reserved,
        )  # fmt: skip


# Due open orders, claimed by pushing their next check out: N workers never ask twice at once.
_CLAIM_DUE = f"""
UPDATE topup_orders SET checks = checks + 1,
       next_check_at = now() + make_interval(secs => least(
           $2 * power(2, least(checks, 16)), $3,
           greatest(extract(epoch FROM expires_at - now()), $2)))
 WHERE id IN (SELECT id FROM topup_orders
               WHERE state IN ('created', 'paying') AND flag IS NULL AND next_check_at <= now()
                 AND channel = ANY($4::text[])
               ORDER BY next_check_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING {_COLUMNS}
"""  # noqa: S608 - our own column list


async def claim_due(
    pool: asyncpg.Pool, limit: int, first_after_s: int, backoff_max_s: int, channels: list[str]
) -> list[Order]:
    """Open orders of `channels` due for a query; each is pushed out (doubling, bounded, never
    past its expiry by much) in the same statement, so the claim commits at once. A process
    claims only the channels it can ask."""
    rows = await pool.fetch(_CLAIM_DUE, limit, float(first_after_s), float(backoff_max_s), channels)
    return [_order(row) for row in rows]


async def move(conn: asyncpg.Connection, order: Order, to: State, **columns: Any) -> Order:
    """The order in state `to` (and the given columns); the database refuses a transition the
    state machine does not list."""
    db.assert_in_transaction(conn)
    names = ["state", *columns]
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    row = await conn.fetchrow(
        f"UPDATE topup_orders SET {assignments} WHERE id = $1 RETURNING {_COLUMNS}",  # noqa: S608
        order.id, to.value, *columns.values(),
    )  # fmt: skip
    assert row is not None
    return _order(row)


async def flag(conn: asyncpg.Connection, order: Order, why: str, detail: dict[str, Any]) -> None:
    """Never credited: an operator looks at it (and clearing lists it)."""
    db.assert_in_transaction(conn)
    await conn.execute(
        "UPDATE topup_orders SET flag = $2 WHERE id = $1 AND flag IS NULL", order.id, why
    )
    await record_exception(conn, order.channel or "", order.out_trade_no, why, detail)


async def record_exception(
    conn: asyncpg.Connection | asyncpg.Pool, channel: str, out_trade_no: str, kind: str,
    detail: dict[str, Any],
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO channel_exceptions (channel, out_trade_no, kind, detail) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        channel, out_trade_no, kind, detail,
    )  # fmt: skip


AMOUNT_DIFFERS = "amount_differs"  # beside the channel's own anomalies (inexact, currency)


class Applied(enum.StrEnum):
    CREDITED = "credited"  # this payment was credited now
    ALREADY = "already"  # credited before (a duplicate or late notification)
    FLAGGED = "flagged"  # not credited: an operator looks at it
    NOT_PAID = "not_paid"  # the channel says it is not paid (yet)


async def apply_payment(conn: asyncpg.Connection, order: Order, status: TradeStatus) -> Applied:
    """What the channel said about a payment, applied to the locked order: paid and credited
    (to the wallet, or pending load for a card) with its ledger txn, exactly once."""
    db.assert_in_transaction(conn)
    if status.state.value != "paid":
        return Applied.NOT_PAID
    if order.state in SETTLED:
        return Applied.ALREADY
    wrong = status.anomaly or (AMOUNT_DIFFERS if status.amount_fen != order.amount_fen else None)
    if wrong is not None:
        detail = {"order_fen": order.amount_fen, "channel_fen": status.amount_fen}
        await flag(conn, order, wrong, detail)
        return Applied.FLAGGED
    paid = await move(
        conn, order, State.PAID, paid_fen=status.amount_fen,
        channel_trade_no=status.channel_trade_no, paid_at=status.paid_at or datetime.now(UTC),
    )  # fmt: skip
    await credit(conn, paid, TxnKind.TOPUP_PAID, receivable_for(paid))
    return Applied.CREDITED


def receivable_for(order: Order) -> tuple[AccountKind, str]:
    assert order.channel is not None
    return AccountKind.CHANNEL_RECEIVABLE, order.channel


async def target_account(conn: asyncpg.Connection, order: Order) -> int:
    if order.target == "card":
        assert order.card_asn is not None
        return await open_account(conn, AccountKind.PENDING_LOAD, order.card_asn)
    return await open_account(conn, AccountKind.RIDER_WALLET, str(order.rider_id))


async def credit(
    conn: asyncpg.Connection, order: Order, kind: TxnKind, source: tuple[AccountKind, str]
) -> Order:
    """A paid order's money onto its target: the wallet (credited) or the card's pending load
    (pending_load, until the OTA area loads it)."""
    source_id = await open_account(conn, *source)
    target = await target_account(conn, order)
    await post(
        conn, kind, [Leg(source_id, -order.amount_fen), Leg(target, order.amount_fen)],
        ref=f"topup:{order.id}", memo=f"top-up {order.out_trade_no}",
    )  # fmt: skip
    return await move(conn, order, State.PENDING_LOAD if order.target == "card" else State.CREDITED)
