"""A gateway killed with `kill -9` in the middle of 500 top-ups loses nothing and credits nothing
twice.

The gateway runs as an operator runs it (`python -m gateway.cli serve`, background jobs on) in
a child process; the three channels' sandboxes run in the test process, so they outlive it and
keep retrying their notifications while it is dead. Riders sign up over HTTP; 500 top-ups go
out at once (channels rotating, amounts varying, a key each) and 60 % of them are paid on the
sandboxes' pay pages as their answers come in. Once 200 answers are in and notifications are
on the wire, the gateway is killed; some orders are paid while it is dead (their notifications
are given up before it comes back, so only the reconciler can find them); it starts again on
the same port, every top-up whose answer was lost is sent again with its key, as a phone does,
and the reconciler is left to finish. Then, from the database and the sandboxes: one order per
key, every paid order credited exactly once, nothing unpaid credited, every wallet the sum of
its paid orders, every key done, and `onecard ledger verify` clean.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.channels.sandbox.base import Sandbox
from gateway.channels.types import Channel
from gateway.config import Config
from tests.gateway import identity_helpers as make
from tests.gateway.sandboxes import CHANNELS, Sandboxes, free_port
from tests.gateway.topups.gateway_process import GatewayProcess, environment
from tests.gateway.topups.test_topups import TOKEN_OF

RIDERS = 100
TOPUPS_PER_RIDER = 5
TOPUPS = RIDERS * TOPUPS_PER_RIDER
KILL_AFTER_ANSWERS = 200  # of TOPUPS: the rest are in flight or not yet sent
# The sandbox gives a notification up after 4 tries over 3.5 s (sandbox/base.py): dead for
# longer than that, the gateway never hears of what was paid right after it died.
DEAD_S = 4.5
# How long a dead request's Idempotency-Key keeps its retries waiting (409): past the restart,
# so that some retries wait for it before they take the key over.
LEASE_S = 8
SIGN_UPS_AT_ONCE = 8
RETRY_PAUSE_S = 0.25
REQUEST_TIMEOUT_S = 15.0
ANSWERS_WITHIN_S = 60.0
KILL_POINT_WITHIN_S = 30.0
RECONCILED_WITHIN_S = 60.0
NOTIFIERS_IDLE_WITHIN_S = 20.0
POLL_S = 0.05
RETRY_STATUSES = frozenset({409, 500, 502, 503})  # in flight, or no answer: the phone retries


@dataclass
class Topup:
    """One phone's top-up: what it sends (the same on every retry) and what became of it."""

    index: int
    rider: make.RiderLogin
    channel: Channel
    amount_fen: int
    key: str
    pay: bool  # the rider pays it on the sandbox's pay page
    pay_while_dead: bool  # ... and only once the gateway has been killed
    answer: dict[str, Any] | None = None
    lost: int = 0  # tries that got no answer (connection refused or cut, timeout)
    retried: int = 0  # tries answered 409 or 5xx

    @property
    def body(self) -> dict[str, Any]:
        return {"target": {"wallet": True}, "amount_fen": self.amount_fen,
                "channel": self.channel.value}  # fmt: skip

    @property
    def id(self) -> int:
        assert self.answer is not None
        return int(self.answer["id"])


def plan(riders: list[make.RiderLogin]) -> list[Topup]:
    """Channels rotate, amounts vary within the allowed ones, three in five are paid and one in
    fifteen of those while the gateway is dead. Fixed, so every run tells the same story."""
    run = secrets.token_hex(4)
    return [_planned(i, riders[i % RIDERS], run) for i in range(TOPUPS)]


def _planned(i: int, rider: make.RiderLogin, run: str) -> Topup:
    return Topup(
        index=i, rider=rider, channel=CHANNELS[i % len(CHANNELS)],
        amount_fen=1_000 + 100 * (i % 90), key=f"crash-{run}-{i}",
        pay=i % 5 < 3, pay_while_dead=i % 15 == 0,
    )  # fmt: skip


async def sign_up(http: aiohttp.ClientSession, url: str) -> list[make.RiderLogin]:
    at_once = asyncio.Semaphore(SIGN_UPS_AT_ONCE)

    async def one() -> make.RiderLogin:
        phone = make.new_phone()
        credentials = {"phone": phone, "password": make.PASSWORD}
        async with at_once:
            async with http.post(f"{url}/v1/riders", json=credentials) as created:
                assert created.status == 201, await created.text()
                rider_id = (await created.json())["id"]
            async with http.post(f"{url}/v1/sessions", json=credentials) as login:
                assert login.status == 201, await login.text()
                body = await login.json()
        return make.RiderLogin(
            rider_id, phone, body["access_token"], body["refresh_token"], body["session_id"]
        )

    return list(await asyncio.gather(*(one() for _ in range(RIDERS))))


@dataclass
class Crash:
    """The run: every top-up's phone, the kill, the restart."""

    http: aiohttp.ClientSession
    pool: asyncpg.Pool
    gateway: GatewayProcess
    sandboxes: Sandboxes
    answered: int = 0
    paid_while_dead: int = 0
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    answered_at_kill: int = 0
    notifying_at_kill: int = 0
    cut_at: dict[str, int] = field(default_factory=dict)  # recovery point -> keys left in flight

    async def run(self, topups: list[Topup]) -> None:
        phones = [asyncio.create_task(self.phone(topup)) for topup in topups]
        try:
            await self.kill_midway()
            self.cut_at = await in_flight_keys(self.pool, topups)
            await asyncio.sleep(DEAD_S)
            await self.gateway.start()
            await asyncio.gather(*phones)
        finally:
            for phone in phones:
                phone.cancel()

    async def kill_midway(self) -> None:
        """kill -9 once enough answers are in and a notification is on its way."""
        deadline = time.monotonic() + KILL_POINT_WITHIN_S
        while self.answered < KILL_AFTER_ANSWERS or self.notifying() == 0:
            assert time.monotonic() < deadline, (
                f"no kill point within {KILL_POINT_WITHIN_S} s: {self.answered} answers, "
                f"{self.notifying()} notifications on their way"
            )
            await asyncio.sleep(0.01)
        self.answered_at_kill, self.notifying_at_kill = self.answered, self.notifying()
        self.gateway.kill()
        self.killed.set()

    def notifying(self) -> int:
        return sum(len(sandbox._sending) for sandbox in self.sandboxes.states.values())

    async def phone(self, topup: Topup) -> None:
        await self.until_answered(topup)
        self.answered += 1
        if not topup.pay:
            return
        if topup.pay_while_dead:
            await self.killed.wait()
            self.paid_while_dead += not self.gateway.running
        else:  # a rider takes a moment to confirm in the channel's app
            await asyncio.sleep((topup.index % 10) / 10)
        assert topup.answer is not None
        token = topup.answer["pay"][TOKEN_OF[topup.channel]]
        url = f"{self.sandboxes.urls[topup.channel]}/sandbox/pay"
        async with self.http.post(url, data={"token": token}) as response:
            assert response.status == 200, f"paying top-up {topup.index}: {await response.text()}"

    async def until_answered(self, topup: Topup) -> None:
        """POST /v1/topups with the same key and body until it is answered 201."""
        headers = {**topup.rider.auth, "Idempotency-Key": topup.key}
        deadline = time.monotonic() + ANSWERS_WITHIN_S
        while True:
            try:
                async with self.http.post(
                    f"{self.gateway.url}/v1/topups", json=topup.body, headers=headers
                ) as response:
                    if response.status == 201:
                        topup.answer = await response.json()
                        return
                    text = await response.text()
                    assert response.status in RETRY_STATUSES, f"top-up {topup.index}: {text}"
                    topup.retried += 1
            except (aiohttp.ClientError, TimeoutError):
                topup.lost += 1
            assert time.monotonic() < deadline, (
                f"top-up {topup.index} not answered within {ANSWERS_WITHIN_S} s "
                f"({topup.lost} tries lost, {topup.retried} answered 409/5xx)"
            )
            await asyncio.sleep(RETRY_PAUSE_S)


async def in_flight_keys(pool: asyncpg.Pool, topups: list[Topup]) -> dict[str, int]:
    """Recovery point -> how many of the top-ups' keys a dead request left there."""
    rows = await pool.fetch(
        "SELECT recovery_point, count(*) AS n FROM idempotency_keys "
        "WHERE key = ANY($1::text[]) AND state = 'in_flight' GROUP BY recovery_point",
        [topup.key for topup in topups],
    )
    return {row["recovery_point"]: row["n"] for row in rows}


def paid_at_sandbox(sandboxes: Sandboxes, order: asyncpg.Record) -> bool:
    trade = sandboxes.states[Channel(order["channel"])].trades.get(order["out_trade_no"])
    return trade is not None and trade.state == "paid"


async def orders_of(pool: asyncpg.Pool, topups: list[Topup]) -> list[asyncpg.Record]:
    rider_ids = sorted({topup.rider.id for topup in topups})
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, out_trade_no, channel, state, rider_id, amount_fen FROM topup_orders "
        "WHERE rider_id = ANY($1::bigint[])",
        rider_ids,
    )
    return rows


async def until_reconciled(pool: asyncpg.Pool, sandboxes: Sandboxes, topups: list[Topup]) -> None:
    """Until no order the sandbox says is paid still waits (notifications, the reconciler)."""
    deadline = time.monotonic() + RECONCILED_WITHIN_S
    while True:
        waiting = [
            order["id"] for order in await orders_of(pool, topups)
            if paid_at_sandbox(sandboxes, order) and order["state"] != "credited"
        ]  # fmt: skip
        if not waiting:
            return
        assert time.monotonic() < deadline, (
            f"{len(waiting)} paid orders not credited within {RECONCILED_WITHIN_S} s: "
            f"{waiting[:10]}"
        )
        await asyncio.sleep(POLL_S * 4)


async def until_notifiers_idle(states: dict[Channel, Sandbox]) -> None:
    """Until every notification was acknowledged or given up: nothing moves any more."""
    deadline = time.monotonic() + NOTIFIERS_IDLE_WITHIN_S
    while any(sandbox._sending for sandbox in states.values()):
        assert time.monotonic() < deadline, "sandboxes still notifying"
        await asyncio.sleep(POLL_S)


@pytest.mark.slow
async def test_a_gateway_killed_mid_flight_credits_every_paid_order_exactly_once(
    sandboxes: Sandboxes, config: Config, pool: asyncpg.Pool
) -> None:
    for sandbox in sandboxes.states.values():
        sandbox.behaviours.clear()
    gateway = GatewayProcess(
        environment(
            config, free_port(), ONECARD_TOPUP_QUERY_AFTER_S="1",
            ONECARD_IDEMPOTENCY_LEASE_S=str(LEASE_S),
            # Every phone of the test calls from 127.0.0.1.
            ONECARD_RATE_PUBLIC_PER_S="10000", ONECARD_RATE_PUBLIC_BURST="10000",
        )
    )  # fmt: skip
    await gateway.start()
    try:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=TOPUPS + 100)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            topups = plan(await sign_up(http, gateway.url))
            crash = Crash(http, pool, gateway, sandboxes)
            await crash.run(topups)
        await until_reconciled(pool, sandboxes, topups)
        await until_notifiers_idle(sandboxes.states)
    finally:
        gateway.stop()

    # The kill came midway: notifications were on the wire, some requests died after their
    # order was made (their retries resumed them), and some orders were paid while the gateway
    # was dead.
    assert crash.answered_at_kill < TOPUPS and crash.notifying_at_kill > 0
    assert crash.cut_at.get("order_created", 0) + crash.cut_at.get("payment_created", 0) > 0, (
        crash.cut_at
    )
    assert sum(topup.lost for topup in topups) > 0
    assert crash.paid_while_dead > 0
    await assert_paid_once_and_unpaid_never(pool, sandboxes, topups)
    await assert_wallets(pool, topups)
    await assert_keys_done(pool, topups)
    assert_ledger_verifies(gateway.env)


async def assert_paid_once_and_unpaid_never(
    pool: asyncpg.Pool, sandboxes: Sandboxes, topups: list[Topup]
) -> None:
    by_id = {topup.id: topup for topup in topups}
    assert len(by_id) == TOPUPS, "two keys were answered with the same order"
    orders = await orders_of(pool, topups)
    assert sorted(order["id"] for order in orders) == sorted(by_id), "one order per key"
    txns = await topup_txns(pool, list(by_id))
    for order in orders:
        topup = by_id[order["id"]]
        paid = paid_at_sandbox(sandboxes, order)
        assert paid == topup.pay, f"order {order['id']}: the sandbox says paid={paid}"
        expected = ("credited", 1) if paid else ("paying", 0)
        found = (order["state"], txns.get(order["id"], 0))
        assert found == expected, f"order {order['id']} (paid={paid}): {found}"


async def topup_txns(pool: asyncpg.Pool, order_ids: list[int]) -> dict[int, int]:
    """order id -> how many `topup_paid` txns name it."""
    rows = await pool.fetch(
        "SELECT ref, count(*) AS n FROM ledger_txns WHERE kind = 'topup_paid' "
        "AND ref = ANY($1::text[]) GROUP BY ref",
        [f"topup:{order_id}" for order_id in order_ids],
    )
    return {int(row["ref"].removeprefix("topup:")): row["n"] for row in rows}


async def assert_wallets(pool: asyncpg.Pool, topups: list[Topup]) -> None:
    expected: dict[str, int] = {}
    for topup in topups:
        owner = str(topup.rider.id)
        expected[owner] = expected.get(owner, 0) + (topup.amount_fen if topup.pay else 0)
    rows = await pool.fetch(
        "SELECT owner, balance_fen FROM ledger_accounts "
        "WHERE kind = 'rider_wallet' AND owner = ANY($1::text[])",
        list(expected),
    )
    found = {owner: 0 for owner in expected} | {row["owner"]: row["balance_fen"] for row in rows}
    assert found == expected


async def assert_keys_done(pool: asyncpg.Pool, topups: list[Topup]) -> None:
    states = await pool.fetch(
        "SELECT state, count(*) AS n FROM idempotency_keys WHERE key = ANY($1::text[]) "
        "GROUP BY state",
        [topup.key for topup in topups],
    )
    assert {row["state"]: row["n"] for row in states} == {"done": TOPUPS}


def assert_ledger_verifies(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ledger", "verify"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
