"""Partner top-ups: a partner pays a rider's wallet or linked card from its prepaid float.

A partner top-up is one transaction (the route's one-transaction Idempotency-Key mode): the
order (`source = 'partner'`, `created` -> `paid` -> `credited` or `pending_load`), the
`partner_topup` ledger txn (ref `topup:<id>`) from the float to the wallet or the card's
pending load, and the webhook outbox rows of the partner's subscribed endpoints. A float that
cannot pay is 422 `partner_float_insufficient` with its balance, and nothing is written.

The hot float (DESIGN.md section 5). One busy partner's float would be one ledger row that
every top-up updates and holds locked until it commits: postings of that partner would run one
at a time. So a float is LANES ledger accounts of kind `partner_float` (owners `<key id>` for
lane 0 and `<key id>/<n>`; floor 0 each), and its balance is their sum. A top-up draws from
one lane, chosen by its order id (consecutive orders take different lanes); when that lane is
short, it locks every lane (and its target, in id order, as the ledger locks) and draws the
amount from the fullest lanes, as many as it takes, or refuses with the sum. That is one SQL
function, `partner_float_draw` (migration 0008), which posts through `ledger_post` like
`gateway.ledger.post` and tries the one lane under its own savepoint: one round trip. Each
lane is an ordinary account whose balance equals its entries, so `ledger verify` stays exact,
and no lane can go below zero, so neither can the float. A funding fills the emptiest lanes
first (`pour`), which keeps the lanes even, so the spill path is rare until the float runs
low. `bench/partner_float.py` measures it.

This module owns `partner_fundings` and `partner_float_draw`; it reads `riders` by phone (a
query that belongs in `gateway.auth.riders`) and lane balances (a set-based, locking
`ledger.account_balance` that belongs in `gateway/ledger/accounts.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

import asyncpg
import msgspec

from gateway import db, errors
from gateway.auth import partners
from gateway.channels.types import RefundState, RefundStatus
from gateway.config import Config
from gateway.ledger import (
    AccountKind,
    Leg,
    TxnKind,
    accounts_of_owners,
    open_account,
    post,
)
from gateway.topups import cards, orders, refunds
from gateway.topups.orders import Order, State
from gateway.topups.service import Topups
from gateway.webhooks import outbox
from gateway.webhooks.events import EventType

LANES = 32
FUNDING_OWNER = "partner-fundings"  # the suspense account partners' money arrives in
MEMO_CHARS_MAX = 200

# What a partner's order tells its webhooks when it reaches each state.
EVENTS_OF_STATE: dict[State, EventType] = {
    State.PAID: EventType.TOPUP_PAID,
    State.CREDITED: EventType.TOPUP_CREDITED,
    State.PENDING_LOAD: EventType.TOPUP_CREDITED,
    State.LOADED: EventType.TOPUP_LOADED,
    State.REFUNDED: EventType.TOPUP_REFUNDED,
    State.PARTIALLY_REFUNDED: EventType.TOPUP_REFUNDED,
    State.CLOSED: EventType.TOPUP_CLOSED,
}


class WalletOut(msgspec.Struct):
    phone: str


class TargetOut(msgspec.Struct, omit_defaults=True):
    """Exactly one of: `{"wallet": {"phone": …}}` or `{"card": ASN}`."""

    wallet: WalletOut | None = None
    card: str | None = None


class PartnerTopup(msgspec.Struct):
    """A partner's top-up as the partner sees it (in answers and in webhook bodies)."""

    id: int
    status: str
    amount_fen: int
    target: TargetOut
    created_at: datetime
    updated_at: datetime


class _TopupData(msgspec.Struct):
    topup: PartnerTopup


def view(order: Order, phone: str | None) -> PartnerTopup:
    target = TargetOut(card=order.card_asn) if order.card_asn else TargetOut(WalletOut(phone or ""))
    return PartnerTopup(
        order.id, order.state.value, order.amount_fen, target, order.created_at, order.updated_at
    )


def lane_owner(key_id: str, lane: int) -> str:
    return key_id if lane == 0 else f"{key_id}/{lane}"


# ---------------------------------------------------------------------- the top-up
@dataclass(frozen=True)
class _Target:
    rider_id: int
    phone: str | None
    card_asn: str | None
    account_id: int


async def top_up(
    conn: asyncpg.Connection, topups: Topups, key_id: str, phone: str | None,
    card_asn: str | None, amount_fen: int,
) -> PartnerTopup:  # fmt: skip
    """The partner's top-up of the rider's wallet (by phone) or of a linked card, paid from
    its float, in the caller's transaction; 404 for an unknown phone or card (see
    `_refuse_unknown`)."""
    db.assert_in_transaction(conn)
    assert (phone is None) != (card_asn is None)
    topups.check_amount(amount_fen)
    if phone is not None:
        target = await _wallet_of(conn, phone)
    else:
        assert card_asn is not None
        target = await _card_with_room(conn, card_asn, amount_fen)
    if target is None:
        await _refuse_unknown(conn, key_id, amount_fen)
    now = datetime.now(UTC)
    paid = await orders.insert(
        conn, source="partner", rider_id=target.rider_id, channel=None, partner_key_id=key_id,
        card_asn=target.card_asn, amount_fen=amount_fen, expires_at=now, next_check_at=None,
        paid_at=now,
    )  # fmt: skip
    done = await orders.move(conn, paid, State.PENDING_LOAD if card_asn else State.CREDITED)
    await _record_events(conn, topups.config, [paid, done], phone)
    # The posting comes last: the lane stays locked only until the commit that follows.
    await _draw(conn, key_id, done, target.account_id)
    return view(done, phone)


_RIDER_BY_PHONE = "SELECT id, wallet_account_id FROM riders WHERE phone = $1 AND status = 'active'"


async def _wallet_of(conn: asyncpg.Connection, phone: str) -> _Target | None:
    row = await conn.fetchrow(_RIDER_BY_PHONE, phone)
    return None if row is None else _Target(row["id"], phone, None, row["wallet_account_id"])


async def _refuse_unknown(conn: asyncpg.Connection, key_id: str, amount_fen: int) -> NoReturn:
    """404 for an unknown phone or card; but when the float could not have paid, the 422 a
    known one gets: a partner learns whether a phone has an account only by paying it."""
    balance_fen = await _float_balance(conn, key_id)
    if balance_fen < amount_fen:
        raise errors.PARTNER_FLOAT_INSUFFICIENT.error(
            balance_fen=balance_fen, amount_fen=amount_fen
        )
    raise errors.NOT_FOUND.error()


async def _card_with_room(conn: asyncpg.Connection, asn: str, amount_fen: int) -> _Target | None:
    """The linked card, locked; 422 `card_balance_ceiling` when it cannot take the amount
    (as for riders' top-ups); None for a card no rider has linked."""
    await conn.execute("SELECT 1 FROM cards WHERE asn = $1 FOR UPDATE", asn)
    card = await cards.find(conn, asn)
    if card is None or card.status != "active" or card.rider_id is None:
        return None
    await orders.reserve_card_room(conn, asn, amount_fen)
    pending = await open_account(conn, AccountKind.PENDING_LOAD, asn)
    return _Target(card.rider_id, None, asn, pending)


async def _record_events(
    conn: asyncpg.Connection, config: Config, states: Sequence[Order], phone: str | None
) -> None:
    key_id = states[0].partner_key_id
    assert key_id is not None
    events = [
        (EVENTS_OF_STATE[order.state], msgspec.json.encode(_TopupData(view(order, phone))))
        for order in states
        if order.state in EVENTS_OF_STATE
    ]
    if events:
        await outbox.record(conn, key_id, states[0].id, events, config.webhook_retry_window_s)


async def order_moved(conn: asyncpg.Connection, order: Order, config: Config) -> None:
    """For the areas that move a partner's order on (loaded, refunded, closed): call it in the
    transaction of the move, with the order as moved; the partner's webhooks hear of it.
    Nothing for riders' orders."""
    db.assert_in_transaction(conn)
    if order.source != "partner":
        return
    phone = None
    if order.card_asn is None:
        phone = await conn.fetchval("SELECT phone FROM riders WHERE id = $1", order.rider_id)
    await _record_events(conn, config, [order], phone)


# ---------------------------------------------------------------------- the float's lanes
async def _lanes(conn: asyncpg.Connection, key_id: str) -> list[int]:
    """The account ids of the float's lanes that exist (none before its first funding), in
    lane order."""
    owners = [lane_owner(key_id, n) for n in range(LANES)]
    found = await accounts_of_owners(conn, AccountKind.PARTNER_FLOAT, owners)
    return [found[owner] for owner in owners if owner in found]


_BALANCES = "SELECT id, balance_fen FROM ledger_accounts WHERE id = ANY($1::bigint[]) ORDER BY id"
_LOCK_BALANCES = _BALANCES + " FOR UPDATE"


async def _balances(conn: asyncpg.Connection, account_ids: list[int], lock: bool) -> dict[int, int]:
    """account id -> balance; `lock`: locked for the transaction, in id order (as postings
    lock), so that no posting can change them before this transaction's own."""
    rows = await conn.fetch(_LOCK_BALANCES if lock else _BALANCES, account_ids)
    return {row["id"]: row["balance_fen"] for row in rows}


_DRAW = "SELECT partner_float_draw($1, $2, $3, $4, $5, $6)"
FLOAT_SHORT = "OC020"  # partner_float_draw: the float cannot pay (DETAIL: its balance)


async def _draw(conn: asyncpg.Connection, key_id: str, order: Order, target: int) -> None:
    """The `partner_topup` posting from the float's lanes to `target` (`partner_float_draw`,
    migration 0008: one lane, chosen by the order id, when it can pay; else every lane locked
    and the amount drawn from as many as it takes); 422 `partner_float_insufficient` with the
    float's balance when it cannot pay."""
    owners = [lane_owner(key_id, n) for n in range(LANES)]
    try:
        await conn.fetchval(
            _DRAW, owners, owners[order.id % LANES], target, order.amount_fen,
            f"topup:{order.id}", f"partner top-up {order.out_trade_no}",
        )  # fmt: skip
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) != FLOAT_SHORT:
            raise
        raise errors.PARTNER_FLOAT_INSUFFICIENT.error(
            balance_fen=int(getattr(exc, "detail", None) or 0), amount_fen=order.amount_fen
        ) from None


async def _float_balance(conn: asyncpg.Connection, key_id: str) -> int:
    lanes = await _lanes(conn, key_id)
    return sum((await _balances(conn, lanes, lock=False)).values())


async def float_balance(pool: asyncpg.Pool, key_id: str) -> int:
    """The float's balance: the sum of its lanes."""
    async with pool.acquire() as conn:
        return await _float_balance(conn, key_id)


async def get(conn: asyncpg.Connection | asyncpg.Pool, key_id: str, order_id: int) -> PartnerTopup:
    """The partner's own top-up; 404 for any other order."""
    order = await orders.get(conn, order_id)
    if order is None or order.partner_key_id != key_id:
        raise errors.NOT_FOUND.error()
    phone = None
    if order.card_asn is None:
        phone = await conn.fetchval("SELECT phone FROM riders WHERE id = $1", order.rider_id)
    return view(order, phone)


# ---------------------------------------------------------------------- funding
@dataclass(frozen=True)
class Funded:
    funding_id: int
    txn_id: int
    balance_fen: int


def pour(balances: Sequence[int], amount_fen: int) -> list[int]:
    """How much of `amount_fen` each lane gets so that the lanes end as even as they can: the
    emptiest are filled first (water-filling), to a common level where the money reaches."""
    assert amount_fen > 0 and balances
    order = sorted(range(len(balances)), key=lambda i: balances[i])
    filled = 0  # how many of the emptiest lanes rise to the level
    level_total = amount_fen
    for count in range(1, len(order) + 1):
        level_total = amount_fen + sum(balances[i] for i in order[:count])
        if count == len(order) or level_total // count <= balances[order[count]]:
            filled = count
            break
    level, extra = divmod(level_total, filled)
    gifts = [0] * len(balances)
    for rank, i in enumerate(order[:filled]):
        gifts[i] = level - balances[i] + (1 if rank < extra else 0)
    assert sum(gifts) == amount_fen and min(gifts) >= 0
    return gifts


_INSERT_FUNDING = """
INSERT INTO partner_fundings (partner_key_id, amount_fen, operator, memo) VALUES ($1, $2, $3, $4)
RETURNING id
"""


async def fund(
    conn: asyncpg.Connection, key_id: str, amount_fen: int, operator: str, memo: str
) -> Funded:
    """An operator puts money into the partner's float (`onecard partners fund`): the audit
    row in `partner_fundings` and its `partner_funding` txn from suspense (ref
    `partner-funding:<id>`), in the caller's transaction. LookupError: no such partner."""
    db.assert_in_transaction(conn)
    assert amount_fen > 0 and len(memo) <= MEMO_CHARS_MAX
    if await partners.find(conn, key_id) is None:
        raise LookupError(key_id)
    lanes = [
        await open_account(conn, AccountKind.PARTNER_FLOAT, lane_owner(key_id, n))
        for n in range(LANES)
    ]
    suspense = await open_account(conn, AccountKind.SUSPENSE, FUNDING_OWNER)
    balances = await _balances(conn, lanes, lock=True)
    gifts = pour([balances[lane] for lane in lanes], amount_fen)
    funding_id = await conn.fetchval(_INSERT_FUNDING, key_id, amount_fen, operator, memo)
    legs = [Leg(lane, gift) for lane, gift in zip(lanes, gifts, strict=True) if gift > 0]
    posting = await post(
        conn, TxnKind.PARTNER_FUNDING, [Leg(suspense, -amount_fen), *legs],
        ref=f"partner-funding:{funding_id}", memo=f"{operator}: {memo}" if memo else operator,
    )  # fmt: skip
    return Funded(funding_id, posting.txn_id, sum(balances.values()) + amount_fen)


async def refund_unloaded(conn: asyncpg.Connection, order_id: int, reason: str, config: Config) -> (
    bool
):  # fmt: skip
    """A partner's card top-up never loaded: its whole amount back to the float (lane 0) at
    once, the order `refunded`, the partner told by webhook. False when the order is no longer
    waiting to be loaded, or a load of it may be on the chip."""
    db.assert_in_transaction(conn)
    order = await orders.lock(conn, order_id)
    if order.state is not State.PENDING_LOAD or order.partner_key_id is None:
        return False
    payer = (AccountKind.PARTNER_FLOAT, lane_owner(order.partner_key_id, 0))
    try:
        async with conn.transaction():  # a savepoint: a load under way refuses, nothing stays
            refund = await refunds.start(conn, order, order.refundable_fen, reason, 0, payer)
    except errors.ApiError:
        return False
    succeeded = RefundStatus(order.out_trade_no, refund.out_refund_no, RefundState.SUCCEEDED)
    await refunds.apply_status(conn, refund, succeeded)
    await order_moved(conn, await orders.lock(conn, order_id), config)
    return True
