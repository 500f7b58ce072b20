"""The top-ups area's service: orders paid through channels, their notifications, the
reconciler that asks after silent channels, refunds, and riders' linked cards.

Money flows (DESIGN.md section 7): a rider's order commits first (`created`), the channel is
asked for the payment with no transaction open (recovery points), the phone pays in the
channel's app, the channel notifies; the payment is applied in one transaction that moves the
order to `paid` and then `credited` (wallet) or `pending_load` (card) with its ledger txn.
When a channel stays silent the order keeps saying `paying` and the reconciler asks (query),
credits what was paid, and closes what expired unpaid; a payment reported after the close is
still credited. Nothing here holds a transaction across a channel call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from aiohttp import web

from gateway import errors
from gateway.channels.service import CHANNELS, Channels
from gateway.channels.types import (
    AppPayment,
    Channel,
    ChannelRefused,
    ChannelUnavailable,
    Notification,
    PaymentOrder,
    RefundOrder,
    RefundState,
    RefundStatus,
    TradeState,
    TradeStatus,
)
from gateway.config import Config
from gateway.context import AUTHENTICATORS, CONFIG, METRICS, POOL
from gateway.idempotency import Recovery
from gateway.metrics import Counter
from gateway.taps import deny_list
from gateway.topups import cards, orders, refunds
from gateway.topups.notifications import ChannelNotifications
from gateway.topups.orders import Applied, Order, State
from gateway.workers import Periodic

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 1.0
RECONCILE_BATCH_MAX = 100
RECONCILE_CONCURRENCY = 8
QUERY_BACKOFF_S_MAX = 600
SUBJECT = "OneCard top-up"


class SavedOrder(msgspec.Struct):
    """What the `order_created` phase saves: enough to build the answer on any retry."""

    id: int
    out_trade_no: str
    amount_fen: int
    expires_at: datetime
    created_at: datetime


class SavedRefund(msgspec.Struct):
    refund_id: int
    out_refund_no: str
    out_trade_no: str
    channel: str
    total_fen: int
    return_state: str
    created_at: datetime


class SavedPayment(msgspec.Struct):
    state: str
    pay: dict[str, str]
    refused: str | None = None


@dataclass(frozen=True)
class NoPayment:
    """Why the channel made no payment for an order: it closed meanwhile (expired), or the
    channel refused, with the channel's code."""

    refused_code: str | None = None


@dataclass(frozen=True)
class Created:
    order: SavedOrder
    payment: SavedPayment


class Topups:
    def __init__(self, pool: asyncpg.Pool, config: Config, channels: Channels, outcomes: Counter):
        self.pool = pool
        self.config = config
        self.channels = channels
        self._outcomes = outcomes

    # ------------------------------------------------------------------ riders' orders
    def check_amount(self, amount_fen: int) -> None:
        c = self.config
        if not (c.topup_amount_min_fen <= amount_fen <= c.topup_amount_max_fen
                and amount_fen % c.topup_amount_step_fen == 0):  # fmt: skip
            raise errors.TOPUP_AMOUNT_NOT_ALLOWED.error(
                min_fen=c.topup_amount_min_fen, max_fen=c.topup_amount_max_fen,
                step_fen=c.topup_amount_step_fen,
            )  # fmt: skip

    async def create(
        self, recovery: Recovery, rider_id: int, channel: Channel, card_asn: str | None,
        amount_fen: int,
    ) -> Created:  # fmt: skip
        """A rider's order and what the phone hands the channel's app to pay it."""
        self.check_amount(amount_fen)
        connector = self.channels.connector(channel)
        saved = await recovery.atomic(
            "order_created",
            lambda conn: self._new_order(conn, rider_id, channel, card_asn, amount_fen),
            SavedOrder,
        )
        payment_order = PaymentOrder(
            saved.out_trade_no, saved.amount_fen, SUBJECT, self.notify_url(channel),
            saved.expires_at,
        )  # fmt: skip

        async def create_payment() -> AppPayment | NoPayment:
            if await self._order_state(saved.id) is not State.CREATED:
                return NoPayment()  # expired and closed meanwhile: no payment is made for it
            try:
                return await connector.create_payment(payment_order)
            except ChannelRefused as exc:
                return NoPayment(exc.code)
            except ChannelUnavailable:
                raise errors.PAYMENT_CHANNEL_UNAVAILABLE.error() from None

        async def query_payment() -> AppPayment | NoPayment | None:
            try:
                status = await connector.query(saved.out_trade_no)
            except ChannelUnavailable:
                raise errors.PAYMENT_CHANNEL_UNAVAILABLE.error() from None
            if status.state is TradeState.NOT_FOUND:
                return None
            # The channel has the order (the first try's answer was lost): the same create
            # again gives the same payment back, the channel keying it by our number.
            return await create_payment()

        payment = await recovery.call_out(
            "payment_created", create=create_payment, query=query_payment,
            apply=lambda conn, answer: self._payment_created(conn, saved.id, answer),
            as_type=SavedPayment,
        )  # fmt: skip
        if payment.refused is not None:
            raise errors.PAYMENT_CHANNEL_REFUSED.error(channel_code=payment.refused)
        return Created(saved, payment)

    def notify_url(self, channel: Channel) -> str:
        return f"{self.config.public_url.rstrip('/')}/v1/channels/{channel.value}/notify"

    async def _new_order(
        self, conn: asyncpg.Connection, rider_id: int, channel: Channel, card_asn: str | None,
        amount_fen: int,
    ) -> SavedOrder:  # fmt: skip
        if card_asn is not None:
            await cards.owned(conn, rider_id, card_asn)  # 404 for anyone else's card
            await orders.reserve_card_room(conn, card_asn, amount_fen)
        now = datetime.now(UTC)
        order = await orders.insert(
            conn, source="rider", rider_id=rider_id, channel=channel.value, partner_key_id=None,
            card_asn=card_asn, amount_fen=amount_fen,
            expires_at=now + timedelta(seconds=self.config.topup_ttl_s),
            next_check_at=now + timedelta(seconds=self.config.topup_query_after_s),
        )  # fmt: skip
        return SavedOrder(
            order.id, order.out_trade_no, order.amount_fen, order.expires_at, order.created_at
        )

    async def _order_state(self, order_id: int) -> State:
        order = await orders.get(self.pool, order_id)
        assert order is not None
        return order.state

    async def _payment_created(
        self, conn: asyncpg.Connection, order_id: int, answer: AppPayment | NoPayment
    ) -> SavedPayment:
        order = await orders.lock(conn, order_id)
        if isinstance(answer, NoPayment):
            if answer.refused_code is not None and order.state is State.CREATED:
                order = await orders.move(conn, order, State.FAILED)
                return SavedPayment(order.state.value, {}, answer.refused_code)
            return SavedPayment(order.state.value, {})
        if order.state is State.CREATED:
            order = await orders.move(conn, order, State.PAYING, pay_params=answer.params)
        return SavedPayment(order.state.value, answer.params)

    async def order(self, rider_id: int, order_id: int) -> Order:
        """The rider's own order; 404 for anyone else's."""
        found = await orders.get(self.pool, order_id)
        if found is None or found.rider_id != rider_id:
            raise errors.NOT_FOUND.error()
        return found

    async def orders(
        self, rider_id: int, limit: int, before_id: int | None, state: State | None
    ) -> list[Order]:
        return await orders.page(self.pool, rider_id, limit, before_id, state)

    # ------------------------------------------------------------------ refunds
    async def refund(
        self, recovery: Recovery, rider_id: int, order_id: int, amount_fen: int, reason: str
    ) -> refunds.Refund:
        """A full or partial refund through the order's channel; `refunding` until the
        channel confirms (its answer, a notification or the reconciler's query)."""
        started = await recovery.atomic(
            "refund_created",
            lambda conn: self._start_refund(conn, rider_id, order_id, amount_fen, reason),
            SavedRefund,
        )
        connector = self.channels.connector(Channel(started.channel))
        refund_order = RefundOrder(
            started.out_trade_no, started.out_refund_no, amount_fen, started.total_fen, reason,
            self.notify_url(Channel(started.channel)),
        )  # fmt: skip

        async def send() -> RefundStatus:
            try:
                return await connector.refund(refund_order)
            except ChannelRefused:  # the channel said no: the money goes back
                return RefundStatus(started.out_trade_no, started.out_refund_no, RefundState.FAILED)
            except ChannelUnavailable:
                raise errors.PAYMENT_CHANNEL_UNAVAILABLE.error() from None

        async def ask() -> RefundStatus | None:
            try:
                found = await connector.refund_query(started.out_trade_no, started.out_refund_no)
            except ChannelUnavailable:
                raise errors.PAYMENT_CHANNEL_UNAVAILABLE.error() from None
            return None if found.state is RefundState.NOT_FOUND else found

        async def apply(conn: asyncpg.Connection, status: RefundStatus) -> str:
            refund = await refunds.lock(conn, started.refund_id)
            return (await refunds.apply_status(conn, refund, status)).state

        state = await recovery.call_out("refund_sent", send, ask, apply, str)
        return refunds.Refund(
            started.refund_id, order_id, started.out_refund_no, amount_fen, reason, state,
            started.return_state, started.created_at,
        )  # fmt: skip

    async def _start_refund(
        self, conn: asyncpg.Connection, rider_id: int, order_id: int, amount_fen: int,
        reason: str,
    ) -> SavedRefund:  # fmt: skip
        order = await orders.lock_if_exists(conn, order_id)
        if order is None or order.rider_id != rider_id:
            raise errors.NOT_FOUND.error()
        refund = await refunds.start(
            conn, order, amount_fen, reason, self.config.topup_query_after_s
        )
        assert order.channel is not None
        return SavedRefund(
            refund.id, refund.out_refund_no, order.out_trade_no, order.channel,
            order.paid_fen or order.amount_fen, refund.return_state, refund.created_at,
        )  # fmt: skip

    async def refund_unloaded(self, order_id: int, reason: str) -> refunds.Refund | None:
        """The whole of a card top-up that was never loaded, back through its channel (a
        worker's refund: no rider asked, so no Idempotency-Key). None when the order is no
        longer pending load, or a load of it may be on the chip. A channel that does not answer
        leaves the refund `refunding`; the reconciler asks, and sends it again if the channel
        never heard of it."""
        async with self.pool.acquire() as conn, conn.transaction():
            order = await orders.lock(conn, order_id)
            if order.state is not State.PENDING_LOAD or order.channel is None:
                return None
            try:
                async with conn.transaction():  # a savepoint: a refusal leaves nothing behind
                    refund = await refunds.start(
                        conn, order, order.refundable_fen, reason, self.config.topup_query_after_s
                    )
            except errors.ApiError:  # a load of it under way: not now
                return None
        await self._send_refund(order, refund)
        return refund

    async def _send_refund(self, order: Order, refund: refunds.Refund) -> None:
        """Send a started refund to its channel and apply the answer. Its number is the
        channel's idempotency key for it: sending it again is harmless."""
        assert order.channel is not None
        channel = Channel(order.channel)
        try:
            status = await self.channels.connector(channel).refund(RefundOrder(
                order.out_trade_no, refund.out_refund_no, refund.amount_fen,
                order.paid_fen or order.amount_fen, refund.reason, self.notify_url(channel),
            ))  # fmt: skip
        except ChannelRefused:
            status = RefundStatus(order.out_trade_no, refund.out_refund_no, RefundState.FAILED)
        except ChannelUnavailable:
            return
        await self.apply_refund_status(status)

    async def apply_refund_status(self, status: RefundStatus) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            refund = await refunds.lock_by_number(conn, status.out_refund_no)
            if refund is not None:
                await refunds.apply_status(conn, refund, status)

    async def reconcile_refunds(self) -> int:
        due = await refunds.claim_due(
            self.pool, RECONCILE_BATCH_MAX, self.config.topup_query_after_s, QUERY_BACKOFF_S_MAX,
            [channel.value for channel in self.channels.configured],
        )  # fmt: skip
        for refund in due:
            order = await orders.get(self.pool, refund.order_id)
            assert order is not None and order.channel is not None
            connector = self.channels.connector(Channel(order.channel))
            try:
                status = await connector.refund_query(order.out_trade_no, refund.out_refund_no)
            except (ChannelUnavailable, ChannelRefused):
                continue
            if status.state is RefundState.NOT_FOUND:
                # Started but never sent (a worker stopped between the two): send it now.
                await self._send_refund(order, refund)
                continue
            await self.apply_refund_status(status)
        return len(due)

    # ------------------------------------------------------------------ notifications
    async def on_notification(self, channel: Channel, note: Notification) -> None:
        """A verified notification, applied once whatever order it comes in."""
        if note.payment is not None:
            await self.apply_status(channel, note.payment)
        if note.refund is not None:
            await self.apply_refund_status(note.refund)

    async def apply_status(self, channel: Channel, status: TradeStatus) -> Applied | None:
        """What the channel says about an order's payment, applied in one transaction; None
        for an order we never made (recorded for an operator)."""
        async with self.pool.acquire() as conn, conn.transaction():
            order = await orders.lock_by_trade_no(conn, status.out_trade_no)
            if order is None or order.channel != channel.value:
                await orders.record_exception(
                    conn, channel.value, status.out_trade_no, "unknown_order",
                    {"state": status.state.value, "amount_fen": status.amount_fen},
                )  # fmt: skip
                self._outcomes.inc((channel.value, "unknown_order"))
                return None
            applied = await orders.apply_payment(conn, order, status)
        self._outcomes.inc((channel.value, applied.value))
        return applied

    # ------------------------------------------------------------------ the reconciler
    async def reconcile_due(self) -> int:
        """Ask the channel after every open order that is due, credit what was paid, close what
        expired unpaid. Claims its orders (SKIP LOCKED), so N workers share them."""
        due = await orders.claim_due(
            self.pool, RECONCILE_BATCH_MAX, self.config.topup_query_after_s, QUERY_BACKOFF_S_MAX,
            [channel.value for channel in self.channels.configured],
        )  # fmt: skip
        # A backlog (a channel down for a while, a restart) is asked after several orders at a
        # time: one by one, an order expiring now would wait behind every query before it.
        slots = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def reconcile(order: Order) -> None:
            async with slots:
                try:
                    await self._reconcile(order)
                except (ChannelUnavailable, ChannelRefused) as exc:
                    log.info(
                        "reconcile: channel did not help",
                        extra={"order": order.id, "error": type(exc).__name__},
                    )

        async with asyncio.TaskGroup() as group:
            for order in due:
                group.create_task(reconcile(order))
        return len(due)

    async def _reconcile(self, order: Order) -> None:
        assert order.channel is not None
        channel = Channel(order.channel)
        connector = self.channels.connector(channel)
        status = await connector.query(order.out_trade_no)
        if status.state is TradeState.PAID:
            await self.apply_status(channel, status)
            return
        if status.state is TradeState.CLOSED or order.expires_at <= datetime.now(UTC):
            if status.state is TradeState.WAITING:
                await connector.close(order.out_trade_no)
            await self._close(order.id)

    async def _close(self, order_id: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            order = await orders.lock(conn, order_id)
            if order.state in orders.OPEN:
                await orders.move(conn, order, State.CLOSED)

    # ------------------------------------------------------------------ cards
    async def link_card(self, rider_id: int, asn: str, file_0015: bytes) -> cards.Card:
        read = cards.read_issuer_info(asn, file_0015, datetime.now(UTC).date())
        async with self.pool.acquire() as conn, conn.transaction():
            return await cards.link(conn, rider_id, read)

    async def cards_of(self, rider_id: int) -> list[cards.Card]:
        return await cards.of_rider(self.pool, rider_id)

    async def unlink_card(self, rider_id: int, asn: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await cards.unlink(conn, rider_id, asn)

    async def report_lost(self, rider_id: int, asn: str) -> None:
        """The card is lost: unlinked for good and on the deny list gates download."""
        async with self.pool.acquire() as conn, conn.transaction():
            await cards.mark_lost(conn, rider_id, asn)
            await deny_list.deny_card(conn, deny_list.Kind.CARD, bytes.fromhex(asn), "lost")


TOPUPS = web.AppKey("topups", Topups)


async def setup(app: web.Application) -> AsyncIterator[None]:
    outcomes = app[METRICS].counter(
        "onecard_topup_payments_total", "Payment reports applied, by outcome",
        ("channel", "outcome"),
    )  # fmt: skip
    app[TOPUPS] = Topups(app[POOL], app[CONFIG], app[CHANNELS], outcomes)
    app[AUTHENTICATORS].append(ChannelNotifications(app[CHANNELS]))
    yield


async def _reconcile(app: web.Application) -> None:
    topups = app[TOPUPS]
    while await topups.reconcile_due() == RECONCILE_BATCH_MAX:
        pass  # a backlog: keep going until it is drained
    while await topups.reconcile_refunds() == RECONCILE_BATCH_MAX:
        pass


RECONCILE = Periodic("topups-reconcile", RECONCILE_INTERVAL_S, _reconcile)
