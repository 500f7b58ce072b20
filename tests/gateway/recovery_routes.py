"""A money route that calls out, for testing the recovery-point mode: create an order, pay it
at the stand-in channel (tests/gateway/stand_in_channel.py), mark it paid.

It shows the pattern a payment route follows (gateway/idempotency.py):
1. phase `order_created`: the local row commits first (state `created`), and with it the
   order's trade number, which the channel dedupes creates by;
2. `call_out`: the create runs with no transaction open and no connection held; a request
   that resumed another's queries the channel first and creates only when it has nothing;
3. phase `order_paid`: the answer is applied in a new transaction guarded by
   `WHERE state = 'created'`;
4. the answer is built from the two phases' saved values only, so a retry that skips them
   gives the same answer.

Test-only knobs, in this route and never in the platform: `X-Test-Die-At: <point>` kills the
process with SIGKILL at a named point (only when installed with `killable=True`, in a gateway
subprocess), `X-Test-Stall-At: <point>:<ms>` blocks its event loop (a hung process),
`X-Test-Hold-At: <point>:<ms>` waits without blocking, `X-Test-Fail-At: <point>` raises an
unexpected exception, and `X-Test-Channel` is handed to the channel's create.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Annotated

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

from gateway import db, errors
from gateway.api.routing import Call, Idempotency, RouteTable
from gateway.auth.principal import PrincipalKind
from tests.gateway import stand_in_channel, transfer_routes

routes = RouteTable("test")

POINTS = ("before_order", "after_order", "before_create", "after_create", "after_paid")
CHANNEL_TIMEOUT_MS = 1_000
HOLD_MS_MAX = 10_000

ORDERS_TABLE = """
CREATE TABLE IF NOT EXISTS test_orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal   text   NOT NULL,
    idem_key    text   NOT NULL,      -- deliberately not unique: tests count the rows
    amount_fen  bigint NOT NULL CHECK (amount_fen > 0),
    state       text   NOT NULL CHECK (state IN ('created', 'paid', 'declined')),
    payment_id  text
)
"""


# ------------------------------------------------------------------ orders (a domain module)
class Created(msgspec.Struct):
    order_id: int
    trade_no: str


class Settled(msgspec.Struct):
    state: str
    payment_id: str


_INSERT_ORDER = """
INSERT INTO test_orders (principal, idem_key, amount_fen, state) VALUES ($1, $2, $3, 'created')
RETURNING id
"""

_SETTLE = """
UPDATE test_orders SET state = $2, payment_id = $3 WHERE id = $1 AND state = 'created'
RETURNING state, payment_id
"""


async def create_order(
    conn: asyncpg.Connection, principal: str, key: str, amount_fen: int
) -> Created:
    db.assert_in_transaction(conn)
    order_id = await conn.fetchval(_INSERT_ORDER, principal, key, amount_fen)
    return Created(order_id, f"T{order_id}")


async def settle_order(conn: asyncpg.Connection, order_id: int, payment: Payment) -> Settled:
    """Paid or declined, only from `created`; an order settled already keeps what it has."""
    db.assert_in_transaction(conn)
    state = "paid" if payment.status == "succeeded" else "declined"
    row = await conn.fetchrow(_SETTLE, order_id, state, payment.payment_id)
    if row is None:
        row = await conn.fetchrow(
            "SELECT state, payment_id FROM test_orders WHERE id = $1", order_id
        )
    return Settled(row["state"], row["payment_id"])


# -------------------------------------------------------------- the channel's connector
class Payment(msgspec.Struct):
    payment_id: str
    trade_no: str
    amount_fen: int
    status: str


class Channel:
    """Create and query at the stand-in channel. A failure whose outcome is unknown (timeout,
    dropped connection, 5xx) is 503: the retry will ask before creating again."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def create(self, trade_no: str, amount_fen: int, knob: str) -> Payment:
        headers = {stand_in_channel.KNOB_HEADER: knob} if knob else {}
        body = {"trade_no": trade_no, "amount_fen": amount_fen}
        found = await self._send("POST", "/payments", json=body, headers=headers)
        assert found is not None, "a create answers with its payment"
        return found

    async def query(self, trade_no: str) -> Payment | None:
        return await self._send("GET", f"/payments/{trade_no}")

    async def _send(self, method: str, path: str, **options: object) -> Payment | None:
        try:
            async with self.session.request(method, path, **options) as response:  # type: ignore[arg-type]
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise _unsure(f"status {response.status}")
                return msgspec.json.decode(await response.read(), type=Payment)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unsure(type(exc).__name__) from None


def _unsure(why: str) -> errors.ApiError:
    return errors.SERVICE_UNAVAILABLE.error(
        "The payment channel did not answer; retry with the same Idempotency-Key.", why=why
    )


CHANNEL = web.AppKey("test_channel", Channel)
KILLABLE = web.AppKey("test_killable", bool)


# ------------------------------------------------------------------------------ the route
class NewOrder(msgspec.Struct, forbid_unknown_fields=True):
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class Order(msgspec.Struct):
    order_id: int
    trade_no: str
    state: str
    payment_id: str
    amount_fen: int


@routes.post(
    "/test/orders", body=NewOrder, response=Order, status=201,
    principals={PrincipalKind.ADMIN}, idempotent=Idempotency.RECOVERY_POINTS,
    errors=("insufficient_balance", "service_unavailable"),
)  # fmt: skip
async def create_paid_order(call: Call) -> Order:
    """Create an order and pay it at the channel."""
    body: NewOrder = call.body
    recovery, channel, knobs = call.recovery, call.app[CHANNEL], Knobs(call)
    await knobs.at("before_order")
    order = await recovery.atomic(
        "order_created",
        lambda conn: create_order(conn, call.caller.key, recovery.key, body.amount_fen),
        Created,
    )
    await knobs.at("after_order")

    async def create() -> Payment:
        await knobs.at("before_create")
        payment = await channel.create(order.trade_no, body.amount_fen, knobs.channel)
        await knobs.at("after_create")
        return payment

    settled = await recovery.call_out(
        "order_paid",
        create=create,
        query=lambda: channel.query(order.trade_no),
        apply=lambda conn, payment: settle_order(conn, order.order_id, payment),
        as_type=Settled,
    )
    await knobs.at("after_paid")
    if settled.state == "declined":
        raise errors.INSUFFICIENT_BALANCE.error("The channel declined the payment.")
    return Order(order.order_id, order.trade_no, settled.state, settled.payment_id,
                 body.amount_fen)  # fmt: skip


class Knobs:
    """The test-only knobs of one request (see the module docstring)."""

    def __init__(self, call: Call) -> None:
        self.headers = call.request.headers
        self.killable = call.app[KILLABLE]
        self.channel = self.headers.get(stand_in_channel.KNOB_HEADER, "")

    async def at(self, point: str) -> None:
        assert point in POINTS
        if self.headers.get("X-Test-Die-At") == point:
            assert self.killable, "only a gateway subprocess may be killed"
            os.kill(os.getpid(), signal.SIGKILL)
        if self.headers.get("X-Test-Fail-At") == point:
            raise RuntimeError(f"simulated failure at {point}")
        stall = self._ms("X-Test-Stall-At", point)
        if stall:
            time.sleep(stall / 1000)  # noqa: ASYNC251 - a hung process: its lease keeper stops too
        hold = self._ms("X-Test-Hold-At", point)
        if hold:
            await asyncio.sleep(hold / 1000)

    def _ms(self, header: str, point: str) -> int:
        at, _, ms = self.headers.get(header, "").partition(":")
        return min(int(ms), HOLD_MS_MAX) if at == point else 0


def install(
    app: web.Application,
    channel_url: str,
    timeout_ms: int = CHANNEL_TIMEOUT_MS,
    killable: bool = False,
) -> None:
    """The header authenticator, and a client of the stand-in channel at `channel_url`."""
    transfer_routes.install_authenticator(app)
    app[KILLABLE] = killable

    async def channel_client(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        async with aiohttp.ClientSession(channel_url, timeout=timeout) as session:
            app[CHANNEL] = Channel(session)
            yield

    app.cleanup_ctx.append(channel_client)
