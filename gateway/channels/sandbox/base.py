"""What every channel sandbox shares: its trades, its misbehaviours, its notifier, its control
and pay-page routes, and its keys kept on disk.

A sandbox is a real aiohttp server standing in for one payment channel. Its protocol routes
(`gateway.channels.sandbox.<channel>`) speak that channel's published merchant protocol, so a
merchant's official SDK works against it unchanged but for the base URL; this module holds the
rest, the same for every channel:

- `GET /sandbox/credentials`: what the channel's developer console gives a test merchant (ids,
  the merchant's keys, the channel's public key), as JSON;
- `GET /sandbox/pay/{token}` and `POST /sandbox/pay`: the page standing in for the channel's
  phone app. It takes what the gateway handed the phone (an order string, a prepay id, a
  transaction number) and pays it; the channel then notifies the merchant;
- `POST /sandbox/behaviours` / `DELETE /sandbox/behaviours`: make it misbehave, for one trade
  or all (duplicate, late, out-of-order, tampered, wrong-amount and unknown-order
  notifications, slow answers, timeouts, 5xx, a notification that never comes);
- `GET /sandbox/trades/{out_trade_no}`: a trade as the sandbox sees it (for tests).

A sandbox never runs unless configured (`ONECARD_SANDBOXES`); in production the gateway talks to
the real channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import html
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 5.0
NOTIFY_ATTEMPTS_MAX = 4
NOTIFY_RETRY_PAUSE_S = 0.5
LATE_S_DEFAULT = 3.0
SLOW_MS_DEFAULT = 1_500
TIMEOUT_S = 60.0  # longer than any client of ours waits
TOKEN_CHARS_MAX = 8192


class Misbehaviour(enum.StrEnum):
    DUPLICATE = "duplicate"  # every notification is sent twice
    LATE = "late"  # notifications wait `late_s` (e.g. until after the merchant closed)
    OUT_OF_ORDER = "out_of_order"  # a stale earlier notification follows the newer one
    TAMPERED = "tampered"  # the signature does not match the body
    WRONG_AMOUNT = "wrong_amount"  # the amount notified is not the amount paid
    UNKNOWN_ORDER = "unknown_order"  # also a notification for a trade the merchant never made
    SLOW = "slow"  # API answers come after `slow_ms`
    TIMEOUT = "timeout"  # API answers never come in time
    ERROR_5XX = "error_5xx"  # API calls answer 500 (`errors` times, then normally)
    NO_NOTIFY = "no_notify"  # paid, but no notification ever comes: only a query finds it
    REFUSE = "refuse"  # a create is refused with the channel's own "not permitted" error


@dataclass
class Behaviour:
    kinds: set[Misbehaviour] = field(default_factory=set)
    late_s: float = LATE_S_DEFAULT
    slow_ms: int = SLOW_MS_DEFAULT
    errors: int = 1_000_000  # how many 5xx answers before answering normally again


@dataclass
class Refund:
    out_refund_no: str
    refund_no: str
    amount_fen: int
    state: str  # "processing" | "success" | "failed"
    created_at: datetime
    notify_url: str | None = None


@dataclass
class Trade:
    out_trade_no: str
    trade_no: str
    amount_fen: int
    subject: str
    notify_url: str
    state: str  # "waiting" | "paid" | "closed" | "refunded"
    created_at: datetime
    expires_at: datetime | None = None
    paid_at: datetime | None = None
    payer: str = ""
    refunds: dict[str, Refund] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # channel-specific (app id, ...)

    @property
    def refunded_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds.values() if r.state != "failed")


@dataclass(frozen=True)
class Outgoing:
    """One notification as the channel sends it."""

    url: str
    body: bytes
    headers: dict[str, str]


class ChannelSandbox(Protocol):
    """What one channel adds to the shared sandbox."""

    name: str

    def routes(self) -> list[web.RouteDef]:
        """The channel's protocol routes."""

    def credentials(self, base_url: str) -> dict[str, Any]:
        """What the developer console shows the test merchant; `base_url` is this sandbox's
        own origin (e.g. http://127.0.0.1:8091), as the merchant reaches it."""

    def trade_for_token(self, token: str) -> Trade:
        """The trade behind what the phone was handed; ValueError when it names none."""

    def payment_notification(self, trade: Trade, amount_fen: int, tamper: bool) -> Outgoing:
        """The channel's notification that `trade` was paid (of `amount_fen`)."""

    def is_ack(self, status: int, body: bytes) -> bool:
        """Whether the merchant's answer stops the channel sending again."""


def now() -> datetime:
    return datetime.now(UTC)


def new_number(prefix: str = "") -> str:
    return prefix + datetime.now(UTC).strftime("%Y%m%d") + str(secrets.randbelow(10**16)).zfill(16)


class Sandbox:
    """The state and the notifier a channel's protocol routes work with."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.trades: dict[str, Trade] = {}
        self.behaviours: dict[str | None, Behaviour] = {}  # None: every trade
        self.channel: ChannelSandbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ keys on disk
    def keys(self, name: str, make: Callable[[], dict[str, str]]) -> dict[str, str]:
        """The sandbox's keys, made once and kept under the data directory, so that a restart
        (and the gateway that imported them) keeps working."""
        path = self.data_dir / f"{name}.json"
        if path.exists():
            stored: dict[str, str] = json.loads(path.read_text())
            return stored
        self.data_dir.mkdir(parents=True, exist_ok=True)
        made = make()
        path.write_text(json.dumps(made, indent=1))
        path.chmod(0o600)
        return made

    # ------------------------------------------------------------------ misbehaviour
    def behaviour(self, out_trade_no: str | None) -> Behaviour:
        return self.behaviours.get(out_trade_no) or self.behaviours.get(None) or Behaviour()

    async def api_gate(self, out_trade_no: str | None) -> web.Response | None:
        """Slow, time out or fail an API call as configured; None: answer normally."""
        behaviour = self.behaviour(out_trade_no)
        if Misbehaviour.SLOW in behaviour.kinds:
            await asyncio.sleep(behaviour.slow_ms / 1000)
        if Misbehaviour.TIMEOUT in behaviour.kinds:
            await asyncio.sleep(TIMEOUT_S)
        if Misbehaviour.ERROR_5XX in behaviour.kinds and behaviour.errors > 0:
            behaviour.errors -= 1
            return web.Response(status=500, text="SYSTEM_ERROR")
        return None

    def refuses_create(self, out_trade_no: str) -> bool:
        return Misbehaviour.REFUSE in self.behaviour(out_trade_no).kinds

    # ------------------------------------------------------------------ paying and notifying
    def pay(self, trade: Trade, payer: str = "sandbox-buyer") -> None:
        """The buyer pays in the app: the trade is paid and the merchant is told (maybe)."""
        if trade.state != "waiting":
            raise ValueError(f"trade {trade.out_trade_no} is {trade.state}")
        trade.state = "paid"
        trade.paid_at = now()
        trade.payer = payer
        self.notify_payment(trade)

    def notify_payment(self, trade: Trade) -> None:
        assert self.channel is not None
        behaviour = self.behaviour(trade.out_trade_no)
        if Misbehaviour.NO_NOTIFY in behaviour.kinds:
            return
        amount = trade.amount_fen + (1 if Misbehaviour.WRONG_AMOUNT in behaviour.kinds else 0)
        tamper = Misbehaviour.TAMPERED in behaviour.kinds
        outgoing = [self.channel.payment_notification(trade, amount, tamper)]
        if Misbehaviour.DUPLICATE in behaviour.kinds:
            outgoing.append(outgoing[0])
        if Misbehaviour.OUT_OF_ORDER in behaviour.kinds:
            # A notification from before the payment arrives after the one saying it is paid.
            stale = Trade(**{**trade.__dict__, "state": "waiting", "paid_at": None})
            outgoing.append(self.channel.payment_notification(stale, amount, tamper))
        if Misbehaviour.UNKNOWN_ORDER in behaviour.kinds:
            ghost = Trade(**{**trade.__dict__, "out_trade_no": "UNKNOWN" + trade.out_trade_no,
                             "trade_no": new_number()})  # fmt: skip
            outgoing.append(self.channel.payment_notification(ghost, amount, tamper))
        delay_s = behaviour.late_s if Misbehaviour.LATE in behaviour.kinds else 0.0
        self.send_later(outgoing, delay_s)

    def send_later(self, outgoing: list[Outgoing], delay_s: float = 0.0) -> None:
        task = asyncio.create_task(self._deliver(outgoing, delay_s))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, outgoing: list[Outgoing], delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        for message in outgoing:
            await self._send_until_acked(message)

    async def _send_until_acked(self, message: Outgoing) -> None:
        """As channels do: send again, pausing longer each time, until the merchant acks."""
        assert self.channel is not None and self._session is not None
        for attempt in range(NOTIFY_ATTEMPTS_MAX):
            if attempt:
                await asyncio.sleep(NOTIFY_RETRY_PAUSE_S * 2 ** (attempt - 1))
            try:
                async with self._session.post(
                    message.url, data=message.body, headers=message.headers,
                    timeout=aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT_S),
                ) as response:  # fmt: skip
                    if self.channel.is_ack(response.status, await response.read()):
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
        log.warning("notification never acknowledged", extra={"url": message.url})

    # ------------------------------------------------------------------ the server
    def application(self, channel: ChannelSandbox) -> web.Application:
        self.channel = channel
        app = web.Application()
        app.add_routes(channel.routes())
        app.add_routes(
            [
                web.get("/sandbox/credentials", self._credentials),
                web.get("/sandbox/pay/{token}", self._pay_page),
                web.post("/sandbox/pay", self._pay),
                web.post("/sandbox/behaviours", self._set_behaviour),
                web.delete("/sandbox/behaviours", self._clear_behaviours),
                web.get("/sandbox/trades/{out_trade_no}", self._trade),
            ]
        )
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession()
        yield
        for task in list(self._sending):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._session.close()

    async def _credentials(self, request: web.Request) -> web.Response:
        assert self.channel is not None
        origin = f"{request.scheme}://{request.host}"
        return web.json_response(self.channel.credentials(origin))

    async def _pay_page(self, request: web.Request) -> web.Response:
        assert self.channel is not None
        token = request.match_info["token"]
        try:
            trade = self.channel.trade_for_token(token)
        except ValueError as exc:
            return web.Response(status=404, text=f"cannot pay this: {exc}")
        page = _PAY_PAGE.format(
            channel=html.escape(self.channel.name), subject=html.escape(trade.subject),
            yuan=f"{trade.amount_fen // 100}.{trade.amount_fen % 100:02d}",
            out_trade_no=html.escape(trade.out_trade_no), state=html.escape(trade.state),
            token=html.escape(token, quote=True),
        )  # fmt: skip
        return web.Response(text=page, content_type="text/html")

    async def _pay(self, request: web.Request) -> web.Response:
        assert self.channel is not None
        form = await request.post()
        token = str(form.get("token", ""))
        if not 0 < len(token) <= TOKEN_CHARS_MAX:
            return web.Response(status=400, text="no token")
        try:
            trade = self.channel.trade_for_token(token)
            self.pay(trade)
        except ValueError as exc:
            return web.Response(status=409, text=f"not paid: {exc}")
        return web.Response(
            text=_PAID_PAGE.format(out_trade_no=html.escape(trade.out_trade_no)),
            content_type="text/html",
        )

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        body = await request.json()
        kinds = {Misbehaviour(kind) for kind in body.get("kinds", [])}
        behaviour = Behaviour(
            kinds, float(body.get("late_s", LATE_S_DEFAULT)),
            int(body.get("slow_ms", SLOW_MS_DEFAULT)), int(body.get("errors", 1_000_000)),
        )  # fmt: skip
        self.behaviours[body.get("out_trade_no")] = behaviour
        return web.json_response({"ok": True})

    async def _clear_behaviours(self, request: web.Request) -> web.Response:
        self.behaviours.clear()
        return web.json_response({"ok": True})

    async def _trade(self, request: web.Request) -> web.Response:
        trade = self.trades.get(request.match_info["out_trade_no"])
        if trade is None:
            return web.json_response({"error": "no such trade"}, status=404)
        return web.json_response(
            {
                "out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no,
                "amount_fen": trade.amount_fen, "state": trade.state,
                "refunds": {no: {"amount_fen": r.amount_fen, "state": r.state}
                            for no, r in trade.refunds.items()},
            }
        )  # fmt: skip


_PAY_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{channel} sandbox: pay</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 2em auto">
<h1>{channel} sandbox</h1>
<p>{subject}</p>
<p style="font-size: 2em">&yen; {yuan}</p>
<p>Order <code>{out_trade_no}</code> &middot; {state}</p>
<form method="post" action="/sandbox/pay">
<input type="hidden" name="token" value="{token}">
<button type="submit" id="pay" style="font-size: 1.5em; padding: .5em 2em">Pay</button>
</form></body></html>
"""

_PAID_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Paid</title></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 2em auto">
<h1 id="paid">Paid</h1><p>Order <code>{out_trade_no}</code> is paid.</p></body></html>
"""
