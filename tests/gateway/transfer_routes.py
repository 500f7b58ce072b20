"""A money route for testing the HTTP platform itself: move fen between two ledger accounts.

Built from the platform's real parts (route table, idempotency, ledger); only the caller's
identity is simplified to a header, since identity has its own tests.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import Principal, PrincipalKind
from gateway.context import AUTHENTICATORS
from gateway.ledger import FloorBreach, Leg, TxnKind, post

routes = RouteTable("test")

Fen = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class Transfer(msgspec.Struct, forbid_unknown_fields=True):
    source: int
    target: int
    amount_fen: Fen
    memo: Annotated[str, msgspec.Meta(max_length=200)] = ""
    hold_ms: Annotated[int, msgspec.Meta(ge=0, le=5_000)] = 0
    fail_after_posting: bool = False


class Transferred(msgspec.Struct):
    txn_id: int
    source_balance_fen: int
    target_balance_fen: int


class HeaderAuthenticator:
    kind = PrincipalKind.ADMIN

    def recognises(self, request: web.Request) -> bool:
        return "X-Test-Principal" in request.headers

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        return Principal(PrincipalKind.ADMIN, request.headers["X-Test-Principal"], role="admin")


@routes.post(
    "/test/transfers", body=Transfer, response=Transferred, status=201,
    principals={PrincipalKind.ADMIN}, idempotent=True,
)  # fmt: skip
async def create_transfer(call: Call) -> Transferred:
    """Move money between two accounts."""
    body: Transfer = call.body
    assert call.conn is not None
    try:
        posting = await post(
            call.conn, TxnKind.ADJUSTMENT,
            [Leg(body.source, -body.amount_fen), Leg(body.target, body.amount_fen)],
            ref=f"test-transfer:{uuid.uuid4()}", memo=body.memo,
        )  # fmt: skip
    except FloorBreach:
        raise errors.INSUFFICIENT_BALANCE.error() from None
    if body.hold_ms:
        await asyncio.sleep(body.hold_ms / 1000)
    if body.fail_after_posting:
        raise RuntimeError("simulated crash after posting")
    return Transferred(
        posting.txn_id, posting.balances_fen[body.source], posting.balances_fen[body.target]
    )


class Echo(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    count: Annotated[int, msgspec.Meta(ge=0, le=100)]
    tags: Annotated[list[str], msgspec.Meta(max_length=5)] = []
    nested: dict[str, int] = {}


class EchoQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


@routes.post("/test/echo", body=Echo, query=EchoQuery, response=Echo, public=True)
async def echo(call: Call) -> Any:
    """Answer the validated body."""
    return call.body


@routes.get("/test/boom", public=True)
async def boom(call: Call) -> Any:
    """Fail unexpectedly."""
    raise RuntimeError("secret-token-abc must never reach the client")


def install_authenticator(app: web.Application) -> None:
    app[AUTHENTICATORS].append(HeaderAuthenticator())
