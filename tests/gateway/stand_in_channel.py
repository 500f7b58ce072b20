"""A stand-in payment channel: a real aiohttp server on a real socket, for recovery-point tests.

It creates payments by the merchant's trade number and answers queries by it, as real channels
do (Alipay's `out_trade_no`, WeChat Pay's `out_trade_no`): a second create for a trade number
gives the first payment back and creates nothing. It remembers every request it saw, so that a
test can tell how many creates reached it. On request (the `X-Test-Channel` header of a create)
it misbehaves: `slow:<ms>` answers after a while (and applies the create even if the caller has
gone), `fail` answers 503 without creating anything, `drop` creates the payment and then drops
the connection without an answer.

It never runs inside the gateway's process when the gateway is killed: tests run it in their
own event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

KNOB_HEADER = "X-Test-Channel"
# A payment above this is declined (a definite answer, unlike a failure).
DECLINE_ABOVE_FEN = 100_000
SLOW_MS_MAX = 10_000


@dataclass
class StandInChannel:
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # trade number -> what reached the channel for it, in order: "create", "create:failed",
    # "create:duplicate", "query", "query:none"
    seen: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    create_received: asyncio.Event = field(default_factory=asyncio.Event)
    applied: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def creates(self, trade_no: str) -> int:
        """Creates that made or returned a payment (a 503 refusal created nothing)."""
        return sum(op in ("create", "create:duplicate") for op in self.seen[trade_no])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/payments", self._create)
        app.router.add_get("/payments/{trade_no}", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        trade_no, amount_fen = str(body["trade_no"]), int(body["amount_fen"])
        knob = request.headers.get(KNOB_HEADER, "")
        self.create_received.set()
        if knob == "fail":
            self.seen[trade_no].append("create:failed")
            return web.json_response({"error": "try again later"}, status=503)
        if knob.startswith("slow:"):
            await asyncio.sleep(min(int(knob[5:]), SLOW_MS_MAX) / 1000)
        payment = self._apply(trade_no, amount_fen)
        if knob == "drop":
            assert request.transport is not None
            request.transport.abort()
        return web.json_response(payment)

    def _apply(self, trade_no: str, amount_fen: int) -> dict[str, Any]:
        if trade_no in self.payments:
            self.seen[trade_no].append("create:duplicate")
            return self.payments[trade_no]
        self.seen[trade_no].append("create")
        status = "declined" if amount_fen > DECLINE_ABOVE_FEN else "succeeded"
        self.payments[trade_no] = {
            "payment_id": f"P{secrets.token_hex(6)}",
            "trade_no": trade_no,
            "amount_fen": amount_fen,
            "status": status,
        }
        self.applied[trade_no].set()
        return self.payments[trade_no]

    async def _query(self, request: web.Request) -> web.Response:
        trade_no = request.match_info["trade_no"]
        payment = self.payments.get(trade_no)
        self.seen[trade_no].append("query" if payment else "query:none")
        if payment is None:
            return web.json_response({"error": "no such trade"}, status=404)
        return web.json_response(payment)
