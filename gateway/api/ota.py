"""Over-the-air load routes: the phone relays the card's answers; operators settle held loads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from gateway import errors
from gateway.api import paging
from gateway.api.routing import Call, RouteTable
from gateway.api.topups import Asn
from gateway.auth.principal import PrincipalKind
from gateway.ota.service import OTA, CardRead, evidence_view
from gateway.ota.sessions import Load, Step

routes = RouteTable("ota")
RIDER = {PrincipalKind.RIDER}
ADMIN = {PrincipalKind.ADMIN}
CURSOR_KIND = "l"  # positions are load ids
APDU_HEX_MAX = 2 * 258  # a short APDU's answer: 256 data bytes and the status word

Hex = Annotated[str, msgspec.Meta(pattern="^([0-9A-Fa-f]{2})+$", max_length=APDU_HEX_MAX)]


class NewSession(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `order_id` (one top-up) or `card` (every load pending on the card), and
    what the phone read from the card: SELECT's answer, file 0015, GET BALANCE."""

    select_hex: Hex
    file_0015_hex: Annotated[str, msgspec.Meta(pattern="^[0-9A-Fa-f]{60}$")]
    balance_fen: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
    order_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    card: Asn | None = None


class CardAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """The card's answer to the APDU of `step`: its data and status word, as hex."""

    step: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    rapdu: Annotated[str, msgspec.Meta(pattern="^([0-9A-Fa-f]{2}){2,}$", max_length=APDU_HEX_MAX)]


class LoadOut(msgspec.Struct):
    id: int
    order_id: int
    amount_fen: int
    state: str
    failure: str | None
    created_at: datetime


class SessionOut(msgspec.Struct):
    id: str
    state: str
    card: str
    step: int
    failure: str | None
    loaded_fen: int
    loads: list[LoadOut]
    created_at: datetime


class HeldLoad(msgspec.Struct):
    id: int
    state: str  # unsure or held; completed or not_credited once resolved
    order_id: int
    card: str
    amount_fen: int
    session_id: str
    evidence: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class HeldLoads(msgspec.Struct):
    items: list[HeldLoad]
    next_cursor: str | None


class Resolution(msgspec.Struct, forbid_unknown_fields=True):
    outcome: Literal["credited", "not_credited"]
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500)]


@routes.post(
    "/v1/ota/sessions", body=NewSession, response=Step, status=201, principals=RIDER,
    errors=("card_unreadable", "not_found", "ota_card_mismatch", "topup_not_loadable",
            "ota_nothing_to_load", "ota_load_held"),
)  # fmt: skip
async def start_session(call: Call) -> Step:
    """Start loading the card the phone holds; relay `next_apdu` to the card."""
    body: NewSession = call.body
    if (body.order_id is None) == (body.card is None):
        raise errors.VALIDATION_FAILED.error("Give exactly one of order_id and card.")
    read = CardRead(bytes.fromhex(body.select_hex), bytes.fromhex(body.file_0015_hex),
                    body.balance_fen)  # fmt: skip
    return await call.app[OTA].start(int(call.caller.id), read, body.order_id, body.card)


@routes.post(
    "/v1/ota/sessions/{ota_session_id}/responses", body=CardAnswer, response=Step, principals=RIDER,
    errors=("not_found", "ota_session_superseded", "ota_session_over", "ota_step_mismatch",
            "ota_load_failed"),
)  # fmt: skip
async def card_answered(call: Call) -> Step:
    """The card's answer to the last `next_apdu`: the next one, or `done`. Sending the same
    answer again (after a lost reply) gets the same reply."""
    body: CardAnswer = call.body
    answer = await call.app[OTA].respond(
        int(call.caller.id), call.path("ota_session_id"), body.step, bytes.fromhex(body.rapdu)
    )
    return answer.result()


@routes.get("/v1/ota/sessions/{ota_session_id}", response=SessionOut, principals=RIDER)
async def get_session(call: Call) -> SessionOut:
    """A session of the rider's: its state and each load it attempted."""
    session, loads = await call.app[OTA].session(int(call.caller.id), call.path("ota_session_id"))
    return SessionOut(
        str(session.id), session.state.value, session.card_asn, session.step, session.failure,
        session.loaded_fen, [_load_out(load) for load in loads], session.created_at,
    )  # fmt: skip


@routes.get("/v1/admin/ota/unsure", query=paging.PageQuery, response=HeldLoads, principals=ADMIN)
async def held_loads(call: Call) -> HeldLoads:
    """Loads that may be on a chip and are not settled, oldest first, with the card's evidence:
    held (no card answer could settle them) or unsure (waiting for the card's next session)."""
    query: paging.PageQuery = call.query
    loads = await call.app[OTA].unsettled(
        query.limit + 1, paging.cursor_in(CURSOR_KIND, query.cursor)
    )
    shown, cursor = paging.page(loads, query.limit, CURSOR_KIND, lambda load: load.id)
    return HeldLoads([_held(load) for load in shown], cursor)


@routes.post(
    "/v1/admin/ota/{load_id}/resolve", body=Resolution, response=HeldLoad, principals=ADMIN,
    errors=("not_found", "ota_load_not_held"),
)  # fmt: skip
async def resolve_load(call: Call) -> HeldLoad:
    """Settle a held or unsure load (role admin; kept in the audit trail): `credited` moves its
    money to the card float and the top-up is loaded; `not_credited` lets the top-up be loaded
    again (or refunded)."""
    body: Resolution = call.body
    load = await call.app[OTA].resolve(
        call.path_int("load_id"), body.outcome == "credited", body.reason, call.caller.id
    )
    return _held(load)


def _load_out(load: Load) -> LoadOut:
    return LoadOut(load.id, load.order_id, load.amount_fen, load.state.value, load.failure,
                   load.created_at)  # fmt: skip


def _held(load: Load) -> HeldLoad:
    return HeldLoad(
        load.id, load.state.value, load.order_id, load.card_asn, load.amount_fen,
        str(load.session_id), evidence_view(load), load.created_at, load.updated_at,
    )  # fmt: skip
