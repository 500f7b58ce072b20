"""Top-up routes: riders' orders and linked cards, and the payment channels' notifications."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api import paging
from gateway.api.routing import Call, Idempotency, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.channels.types import Channel
from gateway.topups.cards import Card
from gateway.topups.notifications import NOTIFICATION
from gateway.topups.orders import Order, State
from gateway.topups.service import TOPUPS, Created

routes = RouteTable("topups")
RIDER = {PrincipalKind.RIDER}
CURSOR_KIND = "t"
AMOUNT_FEN_MAX = 10_000_000  # far above any allowed amount; the configured rule says more
Asn = Annotated[str, msgspec.Meta(pattern="^[0-9]{20}$", description="the card number, 20 digits")]
FORM = "application/x-www-form-urlencoded"


class Target(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of: `{"wallet": true}` or `{"card": ASN}`."""

    wallet: Literal[True] | None = None
    card: Asn | None = None


class NewTopup(msgspec.Struct, forbid_unknown_fields=True):
    target: Target
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=AMOUNT_FEN_MAX)]
    channel: Literal["alipay", "wechatpay", "unionpay"]


class TopupOut(msgspec.Struct):
    id: int
    status: str
    amount_fen: int
    channel: str | None
    target: Target
    pay: dict[str, str]
    expires_at: datetime
    created_at: datetime
    refunded_fen: int = 0


class TopupPage(msgspec.Struct):
    items: list[TopupOut]
    next_cursor: str | None


StateName = Literal[
    "created",
    "paying",
    "paid",
    "credited",
    "pending_load",
    "loaded",
    "closed",
    "refunding",
    "refunded",
    "partially_refunded",
    "failed",
]
assert set(StateName.__args__) == {s.value for s in State}  # type: ignore[attr-defined]


class TopupQuery(paging.PageQuery, forbid_unknown_fields=True):
    status: StateName | None = None


class NewCard(msgspec.Struct, forbid_unknown_fields=True):
    asn: Asn
    file_0015_hex: Annotated[
        str, msgspec.Meta(pattern="^[0-9a-fA-F]{60}$", description="file 0015 as read, 30 bytes")
    ]


class CardOut(msgspec.Struct):
    asn: str
    card_type: int
    valid_from: str
    valid_until: str
    balance_max_fen: int
    chip_balance_fen: int
    pending_fen: int
    linked_at: datetime | None


class CardList(msgspec.Struct):
    items: list[CardOut]


def _target(card_asn: str | None) -> Target:
    return Target(card=card_asn) if card_asn else Target(wallet=True)


def _out(order: Order) -> TopupOut:
    return TopupOut(
        order.id, order.state.value, order.amount_fen, order.channel, _target(order.card_asn),
        order.pay_params or {}, order.expires_at, order.created_at, order.refunded_fen,
    )  # fmt: skip


@routes.post(
    "/v1/topups", body=NewTopup, response=TopupOut, status=201, principals=RIDER,
    idempotent=Idempotency.RECOVERY_POINTS,
    errors=("topup_amount_not_allowed", "card_balance_ceiling", "channel_not_configured",
            "payment_channel_unavailable", "payment_channel_refused", "not_found"),
)  # fmt: skip
async def create_topup(call: Call) -> TopupOut:
    """Top up the wallet or a linked card; `pay` is what the phone hands the channel's app."""
    body: NewTopup = call.body
    if (body.target.wallet is None) == (body.target.card is None):
        raise errors.VALIDATION_FAILED.error("Name the wallet or one card.", field="target")
    created: Created = await call.app[TOPUPS].create(
        call.recovery, int(call.caller.id), Channel(body.channel), body.target.card,
        body.amount_fen,
    )  # fmt: skip
    order, payment = created.order, created.payment
    return TopupOut(
        order.id, payment.state, order.amount_fen, body.channel, body.target, payment.pay,
        order.expires_at, order.created_at,
    )  # fmt: skip


@routes.get("/v1/topups/{topup_id}", response=TopupOut, principals=RIDER)
async def get_topup(call: Call) -> TopupOut:
    """One of the rider's top-ups (anyone else's: 404)."""
    return _out(await call.app[TOPUPS].order(int(call.caller.id), call.path_int("topup_id")))


@routes.get("/v1/topups", query=TopupQuery, response=TopupPage, principals=RIDER)
async def list_topups(call: Call) -> TopupPage:
    """The rider's top-ups, newest first, optionally in one `status`."""
    query: TopupQuery = call.query
    found = await call.app[TOPUPS].orders(
        int(call.caller.id), query.limit + 1, paging.cursor_in(CURSOR_KIND, query.cursor),
        State(query.status) if query.status else None,
    )  # fmt: skip
    shown, cursor = paging.page(found, query.limit, CURSOR_KIND, lambda o: o.id)
    return TopupPage([_out(o) for o in shown], cursor)


def _card_out(card: Card) -> CardOut:
    return CardOut(
        card.asn, card.card_type, card.valid_from.isoformat(), card.valid_until.isoformat(),
        card.balance_max_fen, card.chip_balance_fen, card.pending_fen, card.linked_at,
    )  # fmt: skip


@routes.post(
    "/v1/cards", body=NewCard, response=CardOut, status=201, principals=RIDER,
    errors=("card_unreadable", "card_linked_elsewhere"),
)  # fmt: skip
async def link_card(call: Call) -> CardOut:
    """Link a physical card, proven by the file 0015 the phone read from it."""
    body: NewCard = call.body
    card = await call.app[TOPUPS].link_card(
        int(call.caller.id), body.asn, bytes.fromhex(body.file_0015_hex)
    )
    return _card_out(card)


@routes.get("/v1/cards", response=CardList, principals=RIDER)
async def list_cards(call: Call) -> CardList:
    """The rider's linked cards with their last known balances."""
    return CardList([_card_out(c) for c in await call.app[TOPUPS].cards_of(int(call.caller.id))])


@routes.delete("/v1/cards/{asn}", status=204, principals=RIDER)
async def unlink_card(call: Call) -> web.Response:
    """Unlink one of the rider's cards."""
    await call.app[TOPUPS].unlink_card(int(call.caller.id), call.path("asn"))
    return web.Response(status=204)


@routes.post("/v1/cards/{asn}/report-lost", status=204, principals=RIDER)
async def report_card_lost(call: Call) -> web.Response:
    """The card is lost: unlinked for good, and gates refuse it from their next deny list."""
    await call.app[TOPUPS].report_lost(int(call.caller.id), call.path("asn"))
    return web.Response(status=204)


class NewRefund(msgspec.Struct, forbid_unknown_fields=True):
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=AMOUNT_FEN_MAX)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RefundOut(msgspec.Struct):
    id: int
    topup_id: int
    amount_fen: int
    reason: str
    status: str  # refunding | succeeded | failed
    created_at: datetime


@routes.post(
    "/v1/topups/{topup_id}/refunds", body=NewRefund, response=RefundOut, status=201,
    principals=RIDER, idempotent=Idempotency.RECOVERY_POINTS,
    errors=("topup_not_refundable", "topup_load_in_progress", "payment_channel_unavailable",
            "not_found"),
)  # fmt: skip
async def refund_topup(call: Call) -> RefundOut:
    """Refund a top-up in full or in part, through the channel it was paid with."""
    body: NewRefund = call.body
    refund = await call.app[TOPUPS].refund(
        call.recovery, int(call.caller.id), call.path_int("topup_id"), body.amount_fen,
        body.reason,
    )  # fmt: skip
    return RefundOut(
        refund.id, refund.order_id, refund.amount_fen, refund.reason, refund.state,
        refund.created_at,
    )  # fmt: skip


@routes.post(
    "/v1/channels/{channel}/notify", principals={PrincipalKind.CHANNEL}, raw_body=True,
    accepts=(FORM, "application/json"), content_type="text/plain",
)  # fmt: skip
async def channel_notification(call: Call) -> web.Response:
    """A payment channel's notification, verified by its signature; answered as it expects."""
    note = call.request[NOTIFICATION]
    await call.app[TOPUPS].on_notification(Channel(call.caller.id), note)
    ack = note.ack
    return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)
