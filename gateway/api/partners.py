"""Partner routes: top-ups from the partner's float, and the partner's webhooks.

Two route tables: `routes` (partner top-ups, in the top-ups area) and `webhook_routes` (in the
webhooks area). Every route is signed by a partner; a partner sees only its own top-ups and
endpoints (anyone else's: 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api import paging
from gateway.api.riders import Phone
from gateway.api.routing import Call, RouteTable
from gateway.api.topups import AMOUNT_FEN_MAX, Asn
from gateway.auth.principal import PrincipalKind
from gateway.context import POOL
from gateway.topups import partners
from gateway.topups.partners import PartnerTopup
from gateway.topups.service import TOPUPS
from gateway.webhooks.addresses import URL_CHARS_MAX
from gateway.webhooks.endpoints import Endpoint
from gateway.webhooks.events import EventType, event_id_text
from gateway.webhooks.outbox import Delivery
from gateway.webhooks.service import WEBHOOKS

routes = RouteTable("partners")
webhook_routes = RouteTable("webhooks")
PARTNER = {PrincipalKind.PARTNER}
CURSOR_KIND = "w"


class WalletIn(msgspec.Struct, forbid_unknown_fields=True):
    phone: Phone


class PartnerTarget(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of: `{"wallet": {"phone": "+86…"}}` or `{"card": ASN}` (a linked card)."""

    wallet: WalletIn | None = None
    card: Asn | None = None


class NewPartnerTopup(msgspec.Struct, forbid_unknown_fields=True):
    target: PartnerTarget
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=AMOUNT_FEN_MAX)]


class FloatOut(msgspec.Struct):
    balance_fen: int


@routes.post(
    "/v1/partner/topups", body=NewPartnerTopup, response=PartnerTopup, status=201,
    principals=PARTNER, idempotent=True,
    errors=("topup_amount_not_allowed", "partner_float_insufficient", "card_balance_ceiling",
            "not_found"),
)  # fmt: skip
async def create_partner_topup(call: Call) -> PartnerTopup:
    """Top up a rider's wallet (by phone) or a linked card from the partner's float."""
    target: PartnerTarget = call.body.target
    if (target.wallet is None) == (target.card is None):
        raise errors.VALIDATION_FAILED.error("Name the wallet or one card.", field="target")
    phone = target.wallet.phone if target.wallet is not None else None
    return await partners.top_up(
        call.tx, call.app[TOPUPS], call.caller.id, phone, target.card, call.body.amount_fen
    )


@routes.get("/v1/partner/topups/{topup_id}", response=PartnerTopup, principals=PARTNER)
async def get_partner_topup(call: Call) -> PartnerTopup:
    """One of the partner's top-ups (anyone else's: 404)."""
    return await partners.get(call.app[POOL], call.caller.id, call.path_int("topup_id"))


@routes.get("/v1/partner/float", response=FloatOut, principals=PARTNER)
async def get_float(call: Call) -> FloatOut:
    """The balance of the partner's prepaid float."""
    return FloatOut(await partners.float_balance(call.app[POOL], call.caller.id))


# ---------------------------------------------------------------------- webhooks
EventName = Literal[
    "topup.paid", "topup.credited", "topup.loaded", "topup.refunded", "topup.closed"
]
assert set(EventName.__args__) == {e.value for e in EventType}  # type: ignore[attr-defined]


class NewWebhook(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[
        str, msgspec.Meta(min_length=1, max_length=URL_CHARS_MAX, description="https only")
    ]
    events: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=len(EventType))]


class WebhookOut(msgspec.Struct):
    id: int
    url: str
    events: list[str]
    status: str
    created_at: datetime


class NewWebhookOut(WebhookOut):
    secret: str  # shown this once: it signs every delivery (OC-Webhook-Signature)


class WebhookList(msgspec.Struct):
    items: list[WebhookOut]


class Redeliver(msgspec.Struct, forbid_unknown_fields=True):
    """No event: every undelivered event of the last 7 days; one event: that one, again."""

    event_id: Annotated[str, msgspec.Meta(max_length=24, pattern="^evt_[0-9]{1,18}$")] | None = None


class Redelivered(msgspec.Struct):
    requeued: int


class DeliveryOut(msgspec.Struct):
    event_id: str
    type: str
    topup_id: int
    status: str  # pending | delivered | failed | cancelled
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None


def _webhook_out(endpoint: Endpoint) -> WebhookOut:
    return WebhookOut(
        endpoint.id, endpoint.url, endpoint.events, endpoint.status, endpoint.created_at
    )


@webhook_routes.post(
    "/v1/partner/webhooks", body=NewWebhook, response=NewWebhookOut, status=201,
    principals=PARTNER, errors=("webhook_url_refused", "webhook_limit_reached"),
)  # fmt: skip
async def create_webhook(call: Call) -> NewWebhookOut:
    """Register an endpoint for some events; its signing secret is in this answer only."""
    body: NewWebhook = call.body
    if len(set(body.events)) != len(body.events):
        raise errors.VALIDATION_FAILED.error("An event is named twice.", field="events")
    endpoint, secret = await call.app[WEBHOOKS].create_endpoint(
        call.caller.id, body.url, list(body.events)
    )
    return NewWebhookOut(
        endpoint.id, endpoint.url, endpoint.events, endpoint.status, endpoint.created_at, secret
    )


@webhook_routes.get("/v1/partner/webhooks", response=WebhookList, principals=PARTNER)
async def list_webhooks(call: Call) -> WebhookList:
    """The partner's endpoints (secrets are never shown again)."""
    found = await call.app[WEBHOOKS].endpoints_of(call.caller.id)
    return WebhookList([_webhook_out(e) for e in found])


@webhook_routes.delete("/v1/partner/webhooks/{webhook_id}", status=204, principals=PARTNER)
async def delete_webhook(call: Call) -> web.Response:
    """Delete one of the partner's endpoints: nothing more is sent to it."""
    await call.app[WEBHOOKS].delete_endpoint(call.caller.id, call.path_int("webhook_id"))
    return web.Response(status=204)


@webhook_routes.get(
    "/v1/partner/webhooks/{webhook_id}/deliveries", query=paging.PageQuery,
    response=DeliveryPage, principals=PARTNER,
)  # fmt: skip
async def list_deliveries(call: Call) -> DeliveryPage:
    """The endpoint's deliveries, newest first: each event's state and its last attempt."""
    query: paging.PageQuery = call.query
    found = await call.app[WEBHOOKS].deliveries(
        call.caller.id, call.path_int("webhook_id"), query.limit + 1,
        paging.cursor_in(CURSOR_KIND, query.cursor),
    )  # fmt: skip
    shown, cursor = paging.page(found, query.limit, CURSOR_KIND, lambda d: d.id)
    items = [_delivery_out(d) for d in shown]
    return DeliveryPage(items, cursor)


def _delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        event_id_text(d.event_id), d.event_type, d.topup_id, d.state, d.attempts,
        d.last_status, d.last_error, d.next_attempt_at, d.delivered_at, d.created_at,
    )  # fmt: skip


@webhook_routes.post(
    "/v1/partner/webhooks/{webhook_id}/redeliver", body=Redeliver, response=Redelivered,
    status=202, principals=PARTNER, errors=("not_found",),
)  # fmt: skip
async def redeliver(call: Call) -> Redelivered:
    """Send again: every event not delivered (pending or given up) of the last 7 days, or the
    one `event_id` even if it was delivered; each gets a new 24 hours of retries."""
    count = await call.app[WEBHOOKS].redeliver(
        call.caller.id, call.path_int("webhook_id"), call.body.event_id
    )
    return Redelivered(count)
