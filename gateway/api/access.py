"""Routes of partners, terminals and operators about themselves, and operator adjustments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from gateway import errors, wallet
from gateway.api.riders import RiderOut, WalletOut
from gateway.api.routing import Call, RouteTable
from gateway.auth import partners, riders, terminals
from gateway.auth.principal import PrincipalKind
from gateway.context import POOL

routes = RouteTable("access")
ADMIN = {PrincipalKind.ADMIN}
ADJUSTMENT_FEN_MAX = 100_000_000  # ¥1,000,000: far above any wallet, below any overflow


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


class Adjustment(msgspec.Struct, forbid_unknown_fields=True):
    rider_id: Annotated[int, msgspec.Meta(ge=1)]
    amount_fen: Annotated[int, msgspec.Meta(ge=-ADJUSTMENT_FEN_MAX, le=ADJUSTMENT_FEN_MAX)]
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]


class Adjusted(msgspec.Struct):
    txn_id: int
    rider_id: int
    amount_fen: int
    balance_fen: int


@routes.get("/v1/whoami", response=WhoAmI, principals=set(PrincipalKind))
async def whoami(call: Call) -> WhoAmI:
    """Who the gateway takes the caller for."""
    assert call.principal is not None
    p = call.principal
    return WhoAmI(p.kind.value, p.id, p.role, p.operator)


@routes.get("/v1/partners/{key_id}", response=PartnerOut, principals={PrincipalKind.PARTNER})
async def get_partner(call: Call) -> PartnerOut:
    """The calling partner's own record (any other key id: 404)."""
    assert call.principal is not None
    key_id = call.request.match_info["key_id"]
    if key_id != call.principal.id:
        raise errors.NOT_FOUND.error()
    partner = await partners.find(call.app[POOL], key_id)
    if partner is None:
        raise errors.NOT_FOUND.error()
    return PartnerOut(partner.key_id, partner.name, partner.status, partner.created_at)


@routes.get(
    "/v1/terminals/{terminal_id}", response=TerminalOut, principals={PrincipalKind.TERMINAL}
)
async def get_terminal(call: Call) -> TerminalOut:
    """The calling terminal's own record (any other terminal: 404)."""
    assert call.principal is not None
    terminal_id = call.request.match_info["terminal_id"].upper()
    if terminal_id != call.principal.id:
        raise errors.NOT_FOUND.error()
    terminal = await terminals.find(call.app[POOL], terminal_id)
    if terminal is None:
        raise errors.NOT_FOUND.error()
    return TerminalOut(terminal.id, terminal.operator, terminal.status, terminal.created_at)


@routes.get("/v1/admin/riders/{rider_id}", response=RiderOut, principals=ADMIN)
async def admin_get_rider(call: Call) -> RiderOut:
    """A rider's profile, for operators."""
    rider = await riders.get(call.app[POOL], call.path_int("rider_id"))
    if rider is None:
        raise errors.NOT_FOUND.error()
    return RiderOut(rider.id, rider.phone, rider.created_at)


@routes.get("/v1/admin/riders/{rider_id}/wallet", response=WalletOut, principals=ADMIN)
async def admin_get_wallet(call: Call) -> WalletOut:
    """A rider's wallet, for operators."""
    found = await wallet.wallet_of(call.app[POOL], call.path_int("rider_id"))
    return WalletOut(found.balance_fen, found.floor_fen, found.currency)


@routes.post(
    "/v1/admin/adjustments", body=Adjustment, response=Adjusted, status=201, principals=ADMIN,
    idempotent=True, errors=("insufficient_balance", "not_found"),
)  # fmt: skip
async def adjust_wallet(call: Call) -> Adjusted:
    """Credit or debit a rider's wallet against suspense, with a reason (role admin)."""
    assert call.principal is not None and call.conn is not None
    body: Adjustment = call.body
    if body.amount_fen == 0:
        raise errors.VALIDATION_FAILED.error("An adjustment moves money.", field="amount_fen")
    txn_id, balance = await wallet.adjust(
        call.conn, body.rider_id, body.amount_fen, body.reason, call.principal.id
    )
    return Adjusted(txn_id, body.rider_id, body.amount_fen, balance)
