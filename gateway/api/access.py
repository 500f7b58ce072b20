"""Routes of partners, terminals and operators about themselves and about riders."""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway import errors
from gateway.api.riders import RiderOut
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.auth.service import IDENTITY

routes = RouteTable("access")
ADMIN = {PrincipalKind.ADMIN}


class PartnerOut(msgspec.Struct):
    key_id: str
    name: str
    status: str
    created_at: datetime


class TerminalOut(msgspec.Struct):
    id: str
    operator: str
    status: str
    created_at: datetime


class WhoAmI(msgspec.Struct):
    kind: str
    id: str
    role: str | None
    operator: str | None


@routes.get("/v1/whoami", response=WhoAmI, principals=set(PrincipalKind) - {PrincipalKind.CHANNEL})
async def whoami(call: Call) -> WhoAmI:
    """Who the gateway takes the caller for."""
    p = call.caller
    return WhoAmI(p.kind.value, p.id, p.role, p.operator)


@routes.get("/v1/partners/{key_id}", response=PartnerOut, principals={PrincipalKind.PARTNER})
async def get_partner(call: Call) -> PartnerOut:
    """The calling partner's own record (any other key id: 404)."""
    if call.path("key_id") != call.caller.id:
        raise errors.NOT_FOUND.error()
    partner = await call.app[IDENTITY].partner(call.caller.id)
    return PartnerOut(partner.key_id, partner.name, partner.status, partner.created_at)


@routes.get(
    "/v1/terminals/{terminal_id}", response=TerminalOut, principals={PrincipalKind.TERMINAL}
)
async def get_terminal(call: Call) -> TerminalOut:
    """The calling terminal's own record (any other terminal: 404)."""
    if call.path("terminal_id").upper() != call.caller.id:
        raise errors.NOT_FOUND.error()
    terminal = await call.app[IDENTITY].terminal(call.caller.id)
    return TerminalOut(terminal.id, terminal.operator, terminal.status, terminal.created_at)


@routes.get("/v1/admin/riders/{rider_id}", response=RiderOut, principals=ADMIN)
async def admin_get_rider(call: Call) -> RiderOut:
    """A rider's profile, for operators."""
    rider = await call.app[IDENTITY].rider(call.path_int("rider_id"))
    return RiderOut(rider.id, rider.phone, rider.created_at)
