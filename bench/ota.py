"""Server-side time per APDU step of over-the-air loads, PHONES sessions at once, against a bare
aiohttp + asyncpg app doing the same PostgreSQL round trips, in the same run.

A phone is what tests/gateway/ota/test_loads.py's `Phone` is: it reads its card (SELECT, file
0015, GET BALANCE), opens a session for one paid card top-up (`POST /v1/ota/sessions` with
`order_id`), relays each `next_apdu` to its card (an `hce.software_card.SoftwareCard` of the test
master keys) and posts the card's answer (`POST /v1/ota/sessions/{id}/responses`) until `done`.
PHONES phones run at once, each with its own rider, card and top-ups, over real HTTP (one
aiohttp client in this process; the gateway and the bare app each in their own process). A
step is one HTTP exchange, timed from the request sent to the answer read: the card's
`transmit`, the phone's reads and any NFC time fall outside every step. A session of one
top-up is three steps: the start (the gateway hands out INITIALIZE FOR LOAD), the INITIALIZE
answer (MAC1 verified, MAC2 made and put on record, CREDIT FOR LOAD handed out) and the CREDIT
answer (TAC verified, `ota_load` posted, the order loaded, done). steps/s = every step of every
session / the run's wall time.

Preparation, directly in a scratch database (migrated), through the product's own functions:
the card master keys of key index 1, version 1 are the published test keys
(`hce/__main__.py` TEST_KEYS), stored as `onecard keys import-card-masters --test-keys` does
(`gateway.ota.ism.import_card_masters`); per phone a rider (`gateway.auth.riders.create`, one
password hash for all), a login session and a rider access token signed with the gateway's key
(`riders.open_session`, `gateway.auth.tokens.issue`); a new card with an empty purse linked to
the rider (`gateway.topups.cards.link`) and its card float account opened; and its card
top-ups of AMOUNT_FEN, each paid exactly as a channel's paid notification pays one: in one
transaction `gateway.topups.orders.insert` then `orders.apply_payment` (moved to `paid`, then
`orders.credit` with TxnKind.TOPUP_PAID from the channel's receivable to the card's pending
load, the order `pending_load`), the channels taken in turn. The gateway's phones and the bare
app's phones get riders and cards of their own.

The bare app (`serve bare`) runs per step the same statements, on the same tables, in one
transaction, with no domain code and no crypto (as gateway/ota/sessions.py runs them; checked
by logging both servers' queries): start 14 round trips (BEGIN, lock the card, read the order,
supersede, the card's unsure and held loads, INSERT the session, its unsure loads again, the
next order, read it, the load's id, INSERT the load, UPDATE the session, COMMIT); INITIALIZE
answer 14 (BEGIN, the session's card, lock the card, the session, the load, the order,
UPDATE the card (the balance seen), the order's live loads, its tries in this session, UPDATE
the load twice (initialized, crediting), UPDATE the session, store the answer, COMMIT); CREDIT
answer 18 (BEGIN, the session's card, lock the card, the session, the load, the order, two
account look-ups,
`ledger_post`, UPDATE the card, UPDATE the load, UPDATE the order `loaded`, UPDATE the session,
its unsure loads, the next order, UPDATE the session `completed`, store the answer, COMMIT).
Its MAC2 is zeros, so its phones' cards answer CREDIT FOR LOAD with 93 02 and stay empty, at
about the same cost to the phone as a real load; it moves the chip balance it keeps and the
money (pending load -> card float) as if the card had been credited, so the ledger stays whole.
What only the gateway does: the bearer token and the rider's rate limit (one Redis round trip),
routing, validation, the APDU codecs, MAC1, MAC2 and TAC, the state machine's checks. The
rider rate limit is raised out of the way (the bench measures its Redis round trip only).

Each server first runs one warm-up session per phone, then:
(1) closed loop: every phone relays back to back (no NFC time), SESSIONS_PER_PHONE sessions
    each, ROUNDS rounds, the servers in turns; the best round by steps/s. PHONES requests are
    always in flight, so this is the servers' capacity; its p50 is mostly queueing.
(2) with an NFC time: before each request a phone waits as a real one does for its card and
    radio (the mean +-50%, at random; never counted in a step): PHONES / TARGET_STEPS_PER_S,
    so PHONES phones offer the target rate, NFC_SESSIONS_PER_PHONE sessions each.
(3) the same with the NFC time at which the phones offer half the gateway's rate of (1).
Each run prints the CPU milliseconds a step costs each process of the machine (server,
PostgreSQL, Redis, this client) and the rest of the machine (other processes, and kernel time
charged to none: on a shared machine, what competed with the run). After the run `ledger
verify` (with every area's checks) must be clean, and every gateway phone's chip must hold
what the gateway says it loaded.

    python -m bench.ota                    the bench
    python -m bench.ota serve KIND PORT    one of its servers: gateway, bare
    BENCH_PROFILE=FILE python -m bench.ota also cProfile both servers (CPU time) into FILE.gateway
                                           and FILE.bare, and print their top costs (the
                                           figures are then far slower)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

from bench._support import (
    PROFILE_ENV,
    bare_pool,
    bench_env,
    free_port,
    run_server,
    scratch_database,
    server_process,
    server_urls,
)
from bench.topups import Meter, print_profile
from gateway import db
from gateway.app import create_app
from gateway.areas import ledger_checks
from gateway.auth import passwords, riders, tokens
from gateway.channels.types import Channel, TradeState, TradeStatus
from gateway.config import Config
from gateway.keystore import Keystore, load_kek
from gateway.ledger import AccountKind, open_account
from gateway.ledger.verify import verify_ledger
from gateway.ota import ism
from gateway.topups import cards, orders
from gateway.topups.orders import BEIJING
from hce import apdu as A
from hce.__main__ import TEST_KEYS
from hce.software_card import CITY_CARD_AID, SoftwareCard

PHONES = 200  # sessions in flight at once
SESSIONS_PER_PHONE = 6  # per closed-loop round, one after another
NFC_SESSIONS_PER_PHONE = 2  # per run with an NFC time
ROUNDS = 2
POOL_SIZE = 10  # both servers
AMOUNT_FEN = 1_000  # each top-up
STEP_TIMEOUT_S = 60.0
TARGET_P50_MS = 5.0  # from the issue, on this machine
TARGET_P99_MS = 15.0
TARGET_STEPS_PER_S = 1_000
RIDER_HEADER = "X-Bench-Rider"  # the bare app's stand-in for a bearer token
PASSWORD = "correct horse battery"
KEY_INDEX = Config.ota_key_index
TERMINAL_PREFIX = bytes.fromhex(Config.ota_terminal_prefix)  # the terminal id: it ‖ the load id
KINDS = ("start", "initialize", "credit")  # of step: what the request answers
KIND_OF_INSTRUCTION = {A.INS_INITIALIZE: "initialize", A.INS_CREDIT_FOR_LOAD: "credit"}
ROUND_TRIPS = {"start": 14, "initialize": 14, "credit": 18}  # per step, both servers


# ------------------------------------------------------------------------- the gateway
def _config() -> Config:
    return Config.from_env().replace(db_pool_size_min=POOL_SIZE, db_pool_size_max=POOL_SIZE)


def gateway_app() -> web.Application:
    return create_app(_config())


# ------------------------------------------------------------------------- the bare app
_SESSION_COLUMNS = """id, rider_id, card_asn, state, order_ids, step, phase, apdu, load_id,
resolving_id, answered_rapdu, answer_status, answer, balance_fen, loaded_fen, loaded, held,
failure, created_at, updated_at"""
_LOAD_COLUMNS = """id, session_id, order_id, card_asn, amount_fen, state, key_index, terminal_id,
key_version, balance_fen, online_counter, random, date, time, mac2, tac, evidence, failure,
created_at, updated_at"""
_ORDER_COLUMNS = """id, out_trade_no, source, rider_id, partner_key_id, channel, target, card_asn,
amount_fen, state, pay_params, channel_trade_no, paid_fen, refunded_fen, flag, expires_at,
created_at, updated_at, paid_at"""

LOCK_CARD = """SELECT asn, rider_id, status, chip_balance_fen, online_counter, balance_max_fen
FROM cards WHERE asn = $1 FOR UPDATE"""
UPDATE_CARD = """UPDATE cards SET chip_balance_fen = $2, online_counter = $3, updated_at = now()
WHERE asn = $1"""
CARD_CREDITED = """UPDATE cards SET chip_balance_fen = chip_balance_fen + $2, online_counter = $3,
updated_at = now() WHERE asn = $1"""
GET_ORDER = f"SELECT {_ORDER_COLUMNS} FROM topup_orders WHERE id = $1"
LOCK_ORDER = f"SELECT {_ORDER_COLUMNS} FROM topup_orders WHERE id = $1 FOR UPDATE"
ORDER_LOADED = f"""UPDATE topup_orders SET state = 'loaded' WHERE id = $1
RETURNING {_ORDER_COLUMNS}"""
SUPERSEDE = """UPDATE ota_sessions SET state = 'superseded', phase = NULL, updated_at = now()
WHERE card_asn = $1 AND state = 'open' RETURNING id"""
LOADS_OF_CARD = f"""SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE card_asn = $1
AND state = '{{state}}' ORDER BY id FOR UPDATE"""
INSERT_SESSION = f"""INSERT INTO ota_sessions (id, rider_id, card_asn, order_ids, phase, step)
VALUES ($1, $2, $3, $4, 'prove', 0) RETURNING {_SESSION_COLUMNS}"""
NEXT_ORDER = """SELECT o.id FROM topup_orders o
 WHERE o.id = ANY($1::bigint[]) AND o.state = 'pending_load'
   AND NOT EXISTS (SELECT 1 FROM ota_loads l WHERE l.order_id = o.id
                      AND (l.session_id = $2 OR l.state IN
                           ('initialized', 'crediting', 'unsure', 'held')))
 ORDER BY array_position($1::bigint[], o.id) LIMIT 1"""
NEXT_LOAD_ID = "SELECT nextval(pg_get_serial_sequence('ota_loads', 'id'))"
INSERT_LOAD = f"""INSERT INTO ota_loads (id, session_id, order_id, card_asn, amount_fen, key_index,
terminal_id) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {_LOAD_COLUMNS}"""
SESSION_CARD = "SELECT card_asn FROM ota_sessions WHERE id = $1 AND rider_id = $2"
LOCK_SESSION = f"SELECT {_SESSION_COLUMNS} FROM ota_sessions WHERE id = $1 FOR UPDATE"
LOCK_LOAD = f"SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE id = $1 FOR UPDATE"
SESSION_STEP = f"""UPDATE ota_sessions SET phase = $2, apdu = $3, load_id = $4, step = $5,
updated_at = now() WHERE id = $1 RETURNING {_SESSION_COLUMNS}"""
SESSION_CREDIT = f"""UPDATE ota_sessions SET phase = 'credit', apdu = $2, step = $3,
balance_fen = $4, updated_at = now() WHERE id = $1 RETURNING {_SESSION_COLUMNS}"""
SESSION_LOADED = f"""UPDATE ota_sessions SET loaded = $2, loaded_fen = $3, balance_fen = $4,
updated_at = now() WHERE id = $1 RETURNING {_SESSION_COLUMNS}"""
SESSION_DONE = f"""UPDATE ota_sessions SET state = 'completed', phase = NULL, apdu = NULL,
updated_at = now() WHERE id = $1 RETURNING {_SESSION_COLUMNS}"""
HAS_LIVE_LOAD = """SELECT EXISTS (SELECT 1 FROM ota_loads WHERE order_id = $1
AND state IN ('initialized', 'crediting', 'unsure', 'held'))"""
TRIES = "SELECT count(*) FROM ota_loads WHERE session_id = $1 AND order_id = $2"
LOAD_INITIALIZED = f"""UPDATE ota_loads SET key_version = $2, balance_fen = $3,
online_counter = $4, random = $5, state = 'initialized' WHERE id = $1 RETURNING {_LOAD_COLUMNS}"""
LOAD_CREDITING = f"""UPDATE ota_loads SET date = $2, time = $3, mac2 = $4, state = 'crediting'
WHERE id = $1 RETURNING {_LOAD_COLUMNS}"""
LOAD_COMPLETED = f"""UPDATE ota_loads SET tac = $2, evidence = $3::jsonb, state = 'completed'
WHERE id = $1 RETURNING {_LOAD_COLUMNS}"""
FIND_ACCOUNT = """SELECT id FROM ledger_accounts WHERE kind = $1 AND owner = $2
AND currency = 'CNY'"""
LEDGER_POST = "SELECT txn_id, balances_fen FROM ledger_post($1, $2, $3, $4, $5)"
REMEMBER = """UPDATE ota_sessions SET answered_rapdu = $2, answer_status = $3, answer = $4::jsonb
WHERE id = $1"""

BARE_POOL = web.AppKey("bare_pool", asyncpg.Pool)


class BareStart(msgspec.Struct):
    select_hex: str
    file_0015_hex: str
    balance_fen: int
    order_id: int


class BareAnswer(msgspec.Struct):
    step: int
    rapdu: str


def _initialize_for_load(amount_fen: int, terminal_id: bytes) -> bytes:
    """`80 50 00 02 0B` key index ‖ amount ‖ terminal, Le 10."""
    return (
        bytes.fromhex("805000020B") + bytes((KEY_INDEX,)) + amount_fen.to_bytes(4, "big")
        + terminal_id + b"\x10"
    )  # fmt: skip


def _credit_for_load(date: bytes, time_: bytes, mac2: bytes) -> bytes:
    """`80 52 00 00 0B` date ‖ time ‖ MAC2, Le 04."""
    return bytes.fromhex("805200000B") + date + time_ + mac2 + b"\x04"


def _refused(status: int, code: str) -> web.Response:
    body = msgspec.json.encode({"error": {"code": code}})
    return web.Response(body=body, status=status, content_type="application/json")


def _step_body(session: asyncpg.Record, apdu: bytes) -> dict[str, Any]:
    return {"id": str(session["id"]), "state": session["state"], "step": session["step"],
            "next_apdu": apdu.hex().upper()}  # fmt: skip


async def bare_start(request: web.Request) -> web.Response:
    """`POST /v1/ota/sessions` for one order: the gateway's statements, nothing around them."""
    body = msgspec.json.decode(await request.read(), type=BareStart)
    rider_id = int(request.headers[RIDER_HEADER])
    asn = bytes.fromhex(body.file_0015_hex)[10:20].hex()
    async with request.app[BARE_POOL].acquire() as conn, conn.transaction():
        card = await conn.fetchrow(LOCK_CARD, asn)
        order = await conn.fetchrow(GET_ORDER, body.order_id)
        if card is None or card["rider_id"] != rider_id or order is None:
            return _refused(404, "not_found")
        if order["state"] != "pending_load":
            return _refused(422, "topup_not_loadable")
        await conn.fetch(SUPERSEDE, asn)
        await conn.fetch(LOADS_OF_CARD.format(state="unsure"), asn)
        await conn.fetch(LOADS_OF_CARD.format(state="held"), asn)
        session = await conn.fetchrow(INSERT_SESSION, uuid.uuid4(), rider_id, asn, [order["id"]])
        await conn.fetch(LOADS_OF_CARD.format(state="unsure"), asn)
        order_id = await conn.fetchval(NEXT_ORDER, session["order_ids"], session["id"])
        order = await conn.fetchrow(GET_ORDER, order_id)
        amount = order["amount_fen"] - order["refunded_fen"]
        load_id = await conn.fetchval(NEXT_LOAD_ID)
        terminal_id = TERMINAL_PREFIX + (load_id % 2**32).to_bytes(4, "big")
        load = await conn.fetchrow(
            INSERT_LOAD, load_id, session["id"], order_id, asn, amount, KEY_INDEX, terminal_id
        )
        apdu = _initialize_for_load(amount, terminal_id)
        session = await conn.fetchrow(
            SESSION_STEP, session["id"], "initialize", apdu, load["id"], session["step"] + 1
        )
    answer = msgspec.json.encode(_step_body(session, apdu))
    return web.Response(body=answer, status=201, content_type="application/json")


async def bare_respond(request: web.Request) -> web.Response:
    """`POST /v1/ota/sessions/{id}/responses`: the card's answer, the gateway's statements."""
    body = msgspec.json.decode(await request.read(), type=BareAnswer)
    rider_id = int(request.headers[RIDER_HEADER])
    session_id = uuid.UUID(request.match_info["session_id"])
    rapdu = bytes.fromhex(body.rapdu)
    async with request.app[BARE_POOL].acquire() as conn, conn.transaction():
        asn = await conn.fetchval(SESSION_CARD, session_id, rider_id)
        if asn is None:
            return _refused(404, "not_found")
        card = await conn.fetchrow(LOCK_CARD, asn)
        session = await conn.fetchrow(LOCK_SESSION, session_id)
        if session["state"] != "open" or session["step"] != body.step:
            return _refused(409, "ota_step_mismatch")
        load = await conn.fetchrow(LOCK_LOAD, session["load_id"])
        if session["phase"] == "initialize":
            answer = await _bare_initialized(conn, session, load, card, rapdu)
        else:
            answer = await _bare_credited(conn, session, load, card, rapdu)
        encoded = msgspec.json.encode(answer)
        await conn.execute(REMEMBER, session_id, rapdu, 200, encoded.decode())
    return web.Response(body=encoded, content_type="application/json")


async def _bare_initialized(
    conn: asyncpg.Connection, session: asyncpg.Record, load: asyncpg.Record,
    card: asyncpg.Record, rapdu: bytes,
) -> dict[str, Any]:  # fmt: skip
    """The INITIALIZE answer's fields by their offsets; no MAC checked, none made."""
    balance, counter = int.from_bytes(rapdu[0:4], "big"), int.from_bytes(rapdu[4:6], "big")
    key_version, card_random = rapdu[6], rapdu[8:12]
    asn = load["card_asn"]
    order = await conn.fetchrow(LOCK_ORDER, load["order_id"])
    # The balance this app keeps (its phones' cards are never credited): the ledger stays whole.
    await conn.execute(UPDATE_CARD, asn, card["chip_balance_fen"], counter)
    live = await conn.fetchval(HAS_LIVE_LOAD, order["id"])
    tries = await conn.fetchval(TRIES, session["id"], order["id"])
    assert order["state"] == "pending_load" and not live and tries == 1
    now = datetime.now(BEIJING)
    date, time_ = bytes.fromhex(f"{now:%Y%m%d}"), bytes.fromhex(f"{now:%H%M%S}")
    mac2 = bytes(4)
    await conn.fetchrow(LOAD_INITIALIZED, load["id"], key_version, balance, counter, card_random)
    await conn.fetchrow(LOAD_CREDITING, load["id"], date, time_, mac2)
    apdu = _credit_for_load(date, time_, mac2)
    session = await conn.fetchrow(SESSION_CREDIT, session["id"], apdu, session["step"] + 1, balance)
    return _step_body(session, apdu)


async def _bare_credited(
    conn: asyncpg.Connection, session: asyncpg.Record, load: asyncpg.Record,
    card: asyncpg.Record, rapdu: bytes,
) -> dict[str, Any]:  # fmt: skip
    """The CREDIT answer taken as a TAC that verified: the load completed, its money moved."""
    asn, amount = load["card_asn"], load["amount_fen"]
    await conn.fetchrow(LOCK_ORDER, load["order_id"])
    pending = await conn.fetchval(FIND_ACCOUNT, "pending_load", asn)
    card_float = await conn.fetchval(FIND_ACCOUNT, "card_float", asn)
    await conn.fetchrow(
        LEDGER_POST, "ota_load", f"ota:{load['id']}", f"loaded onto card {asn}",
        [pending, card_float], [-amount, amount],
    )  # fmt: skip
    await conn.execute(CARD_CREDITED, asn, amount, (card["online_counter"] or 0) + 1)
    evidence = msgspec.json.encode({"credit_answer": rapdu.hex()}).decode()
    tac = rapdu[:-2] if len(rapdu) == 6 else bytes(4)
    await conn.fetchrow(LOAD_COMPLETED, load["id"], tac, evidence)
    await conn.fetchrow(ORDER_LOADED, load["order_id"])
    chip = card["chip_balance_fen"] + amount
    loaded = [*session["loaded"], load["order_id"]]
    session = await conn.fetchrow(
        SESSION_LOADED, session["id"], loaded, session["loaded_fen"] + amount, chip
    )
    await conn.fetch(LOADS_OF_CARD.format(state="unsure"), asn)
    await conn.fetchval(NEXT_ORDER, session["order_ids"], session["id"])
    session = await conn.fetchrow(SESSION_DONE, session["id"])
    done = {"balance_fen": session["balance_fen"], "loaded_fen": session["loaded_fen"],
            "orders": list(session["loaded"]), "held": list(session["held"])}  # fmt: skip
    return {"id": str(session["id"]), "state": session["state"], "done": done}


def bare_app() -> web.Application:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await bare_pool(POOL_SIZE)
        app[BARE_POOL] = pool
        yield
        await pool.close()

    app = web.Application()
    app.router.add_post("/v1/ota/sessions", bare_start)
    app.router.add_post("/v1/ota/sessions/{session_id}/responses", bare_respond)
    app.cleanup_ctx.append(resources)
    return app


def serve(kind: str, port: int) -> None:
    run_server(gateway_app() if kind == "gateway" else bare_app(), kind, port)


# ------------------------------------------------------------------------- preparing
@dataclass
class Holder:
    """A rider with one linked card and its paid card top-ups, not loaded yet."""

    rider_id: int
    token: str
    card: SoftwareCard
    orders: list[int]


def new_card() -> SoftwareCard:
    """An empty card of the test master keys (tests/gateway/ota/test_loads.py's `new_card`)."""
    today = datetime.now(UTC).date()
    return SoftwareCard.issue(
        asn=bytes.fromhex(f"31{secrets.randbelow(10**18):018d}"),
        master_load_key=bytes.fromhex(TEST_KEYS["mlk"]),
        master_purchase_key=bytes.fromhex(TEST_KEYS["mpk"]),
        master_tac_key=bytes.fromhex(TEST_KEYS["mtk"]), balance_fen=0,
        valid_from=bytes.fromhex(f"{today - timedelta(days=30):%Y%m%d}"),
        valid_until=bytes.fromhex(f"{today + timedelta(days=3650):%Y%m%d}"),
    )  # fmt: skip


@dataclass(frozen=True)
class Preparer:
    pool: asyncpg.Pool
    config: Config
    token_keys: tokens.TokenKeys
    password_hash: str
    phones: Iterator[int] = field(default_factory=lambda: iter(range(10**8)))
    # Each channel's receivable is one account every payment of it posts to: three of them
    # let three payments commit at once.
    channels: Iterator[Channel] = field(default_factory=lambda: itertools.cycle(Channel))

    async def holder(self, orders_each: int) -> Holder:
        card = new_card()
        asn = card.asn.hex()
        today = datetime.now(BEIJING).date()
        read = cards.read_issuer_info(asn, card.issuer_info.to_bytes(), today)
        async with self.pool.acquire() as conn, conn.transaction():
            rider = await riders.create(conn, f"+86139{next(self.phones):08d}", self.password_hash)
            session_id, _ = await riders.open_session(
                conn, rider.id, "bench.ota", self.config.refresh_token_ttl_s
            )
            await cards.link(conn, rider.id, read)
            await open_account(conn, AccountKind.CARD_FLOAT, asn)
        token = await tokens.issue(
            self.token_keys, self.config.jwt_issuer, tokens.RIDER_AUDIENCE, str(rider.id),
            self.config.access_token_ttl_s, int(time.time()), {"sid": str(session_id)},
        )  # fmt: skip
        paid = [await self.paid_topup(rider.id, asn) for _ in range(orders_each)]
        return Holder(rider.id, token, card, paid)

    async def paid_topup(self, rider_id: int, asn: str) -> int:
        """A card top-up, paid as a channel's paid notification pays it (one transaction)."""
        now, channel = datetime.now(UTC), next(self.channels)
        async with self.pool.acquire() as conn, conn.transaction():
            order = await orders.insert(
                conn, source="rider", rider_id=rider_id, channel=channel.value,
                partner_key_id=None, card_asn=asn, amount_fen=AMOUNT_FEN,
                expires_at=now + timedelta(seconds=self.config.topup_ttl_s), next_check_at=None,
            )  # fmt: skip
            paid = TradeStatus(order.out_trade_no, TradeState.PAID, f"bench{order.id}",
                               AMOUNT_FEN, now)  # fmt: skip
            applied = await orders.apply_payment(conn, order, paid)
            assert applied is orders.Applied.CREDITED
        return order.id


async def prepare(dsn: str, env: dict[str, str], orders_each: int) -> dict[str, list[Holder]]:
    """The test card master keys, then PHONES holders per server."""
    config = Config.from_env(env).replace(db_pool_size_min=POOL_SIZE, db_pool_size_max=POOL_SIZE)
    keystore = Keystore(load_kek(config))
    pool = await db.create_pool(config, dsn)
    try:
        async with pool.acquire() as conn:
            await ism.import_card_masters(
                conn, keystore, KEY_INDEX, 1, mlk=bytes.fromhex(TEST_KEYS["mlk"]),
                mtk=bytes.fromhex(TEST_KEYS["mtk"]), test_keys=True,
            )  # fmt: skip
        token_keys = tokens.TokenKeys(keystore, pool)
        password_hash = await asyncio.to_thread(passwords.hash_password, PASSWORD)
        preparer = Preparer(pool, config, token_keys, password_hash)
        return {
            kind: list(await asyncio.gather(
                *(preparer.holder(orders_each) for _ in range(PHONES))
            ))
            for kind in ("gateway", "bare")
        }  # fmt: skip
    finally:
        await pool.close()


# ------------------------------------------------------------------------- the phones
class Refused(Exception):
    """A server's answer that a phone did not expect: the bench stops."""


@dataclass
class Phone:
    """One rider's app and card: read the card, open a session, relay every APDU. With an NFC
    time, the phone waits that long (+-50%, at random) before each request: the card exchanges
    and radio of a real phone, which no step counts."""

    http: aiohttp.ClientSession
    holder: Holder
    headers: dict[str, str]

    def read(self) -> dict[str, Any]:
        card = self.holder.card
        card.reset()
        select = A.ResponseApdu.from_bytes(card.transmit(A.Select(CITY_CARD_AID).to_bytes()))
        info = A.ResponseApdu.from_bytes(card.transmit(A.ReadBinary().to_bytes()))
        balance = A.ResponseApdu.from_bytes(card.transmit(A.GetBalance().to_bytes()))
        assert select.ok and info.ok and balance.ok
        return {
            "select_hex": select.data.hex(), "file_0015_hex": info.data.hex(),
            "balance_fen": int.from_bytes(balance.data, "big"),
        }  # fmt: skip

    async def post(self, path: str, body: dict[str, Any], status: int, took: list[float]) -> (
        dict[str, Any]
    ):  # fmt: skip
        raw = msgspec.json.encode(body)
        started = time.perf_counter()
        async with self.http.post(path, data=raw, headers=self.headers) as response:
            answer = await response.read()
        took.append(time.perf_counter() - started)
        if response.status != status:
            raise Refused(f"{path}: {response.status} {answer[:300]!r}")
        found: dict[str, Any] = msgspec.json.decode(answer)
        return found

    async def load(self, took: dict[str, list[float]], nfc_s: float) -> None:
        """One session for the holder's next top-up, to its end."""
        order_id = self.holder.orders.pop(0)
        body = {**self.read(), "order_id": order_id}
        await _nfc(nfc_s)
        step = await self.post("/v1/ota/sessions", body, 201, took["start"])
        while "done" not in step:
            command = bytes.fromhex(step["next_apdu"])
            kind = KIND_OF_INSTRUCTION[command[1]]
            rapdu = self.holder.card.transmit(command)
            answer = {"step": step["step"], "rapdu": rapdu.hex()}
            path = f"/v1/ota/sessions/{step['id']}/responses"
            await _nfc(nfc_s)
            step = await self.post(path, answer, 200, took[kind])
        assert step["done"]["orders"] == [order_id], step

    async def run(self, sessions: int, took: dict[str, list[float]], nfc_s: float) -> None:
        for _ in range(sessions):
            await self.load(took, nfc_s)


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot (not idle, not waiting)."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def _nfc(nfc_s: float) -> None:
    if nfc_s:
        await asyncio.sleep(random.uniform(0.5, 1.5) * nfc_s)


@dataclass(frozen=True)
class Round:
    kind: str
    nfc_s: float
    seconds: float
    took: dict[str, list[float]]  # step kind -> seconds of each step
    cpu_ms: dict[str, float]  # CPU ms per step, by process

    @property
    def steps(self) -> int:
        return sum(len(found) for found in self.took.values())

    @property
    def rate(self) -> float:
        return self.steps / self.seconds

    def ms(self, q: float, kind: str | None = None) -> float:
        """The q-quantile of the steps (of one kind), in ms."""
        found = sorted(self.took[kind] if kind else [t for k in KINDS for t in self.took[k]])
        if q == 0.5:
            return statistics.median(found) * 1000
        return found[min(len(found) - 1, int(len(found) * q))] * 1000


def phones_of(kind: str, http: aiohttp.ClientSession, holders: list[Holder]) -> list[Phone]:
    def headers(holder: Holder) -> dict[str, str]:
        if kind == "bare":
            return {RIDER_HEADER: str(holder.rider_id), "Content-Type": "application/json"}
        return {"Authorization": f"Bearer {holder.token}", "Content-Type": "application/json"}

    return [Phone(http, holder, headers(holder)) for holder in holders]


@dataclass(frozen=True)
class Bench:
    phones: dict[str, list[Phone]]  # server kind -> its phones
    pids: dict[str, int]  # server kind -> its process
    conn: asyncpg.Connection  # to the bench's database

    async def round(self, kind: str, sessions: int, nfc_s: float = 0.0) -> Round:
        """Every phone runs `sessions` sessions, one after another, all phones at once."""
        took: dict[str, list[float]] = {k: [] for k in KINDS}
        meter = Meter({"server": self.pids[kind]}, self.conn)
        before, busy, started = await meter.read(), _machine_busy_s(), time.perf_counter()
        await asyncio.gather(*(phone.run(sessions, took, nfc_s) for phone in self.phones[kind]))
        elapsed, after = time.perf_counter() - started, await meter.read()
        spent = Meter.spent(before, after)
        spent["rest"] = max(0.0, _machine_busy_s() - busy - sum(spent.values()))
        steps = sum(len(found) for found in took.values())
        return Round(kind, nfc_s, elapsed, took, {k: 1000 * s / steps for k, s in spent.items()})

    async def measure(self) -> Figures:
        """A warm-up session per phone on each server; ROUNDS closed-loop rounds, the servers
        in turns (a burst of other work on the machine does not fall on one side only), the
        best of each by steps/s; then both servers with the NFC time of the target rate, and
        with the NFC time of half the gateway's closed-loop rate."""
        for kind in self.phones:
            await self.round(kind, 1)
        closed: dict[str, Round] = {}
        for number in range(1, ROUNDS + 1):
            for kind in self.phones:
                found = await self.round(kind, SESSIONS_PER_PHONE)
                show(f"closed loop, round {number}", found)
                if kind not in closed or found.rate > closed[kind].rate:
                    closed[kind] = found
        paced: list[dict[str, Round]] = []
        for rate in (TARGET_STEPS_PER_S, closed["gateway"].rate / 2):
            nfc_s = PHONES / rate
            runs = {kind: await self.round(kind, NFC_SESSIONS_PER_PHONE, nfc_s)
                    for kind in self.phones}  # fmt: skip
            for found in runs.values():
                show(f"NFC time {1000 * nfc_s:,.0f} ms", found)
            paced.append(runs)
        return Figures(closed, *paced)


@dataclass(frozen=True)
class Figures:
    closed: dict[str, Round]  # server kind -> its best closed-loop round
    at_target: dict[str, Round]  # NFC time PHONES / TARGET_STEPS_PER_S
    at_half: dict[str, Round]  # NFC time PHONES / (half the gateway's closed-loop rate)


def show(what: str, found: Round) -> None:
    kinds = ", ".join(f"{k} {found.ms(0.5, k):.1f}/{found.ms(0.99, k):.1f}" for k in KINDS)
    cpu = ", ".join(f"{part} {ms:.2f}" for part, ms in found.cpu_ms.items())
    print(f"  {found.kind:8s} {what:24s} {found.rate:6,.0f} steps/s  p50 {found.ms(0.5):7.1f} "
          f"ms  p99 {found.ms(0.99):7.1f} ms  ({found.steps} steps in {found.seconds:.1f} s)\n"
          f"  {'':8s} p50/p99 ms by step: {kinds}\n"
          f"  {'':8s} CPU ms per step: {cpu}; total {sum(found.cpu_ms.values()):.2f}",
          flush=True)  # fmt: skip


async def measure(
    dsn: str, ports: dict[str, int], pids: dict[str, int], holders: dict[str, list[Holder]]
) -> Figures:
    async with contextlib.AsyncExitStack() as stack:
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        phones: dict[str, list[Phone]] = {}
        for kind, port in ports.items():
            http = await stack.enter_async_context(aiohttp.ClientSession(
                f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=PHONES),
                timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S),
            ))  # fmt: skip
            phones[kind] = phones_of(kind, http, holders[kind])
        return await Bench(phones, pids, conn).measure()


# ------------------------------------------------------------------------- checking
async def check(dsn: str, holders: list[Holder]) -> list[str]:
    """`ledger verify` with every area's checks, and the gateway's phones' chips against what
    the gateway last knew of them and what it says it loaded."""
    conn = await asyncpg.connect(dsn)
    try:
        problems = await verify_ledger(conn, ledger_checks())
        rows = await conn.fetch(
            "SELECT c.asn, c.chip_balance_fen, (SELECT coalesce(sum(amount_fen), 0) FROM ota_loads "
            "l WHERE l.card_asn = c.asn AND l.state = 'completed') AS loaded_fen "
            "FROM cards c WHERE c.asn = ANY($1::text[])",
            [holder.card.asn.hex() for holder in holders],
        )  # fmt: skip
    finally:
        await conn.close()
    known = {row["asn"]: row for row in rows}
    for holder in holders:
        row = known[holder.card.asn.hex()]
        if not holder.card.balance_fen == row["chip_balance_fen"] == row["loaded_fen"]:
            problems.append(
                f"card {row['asn']}: chip {holder.card.balance_fen} fen, gateway knows "
                f"{row['chip_balance_fen']} fen, loaded {row['loaded_fen']} fen"
            )
    return problems


# ------------------------------------------------------------------------- the run
def environment(dsn: str, redis_url: str) -> dict[str, str]:
    env = bench_env(dsn, redis_url)
    # Out of the way: the bench measures the limiter's Redis round trip, never its refusals.
    env["ONECARD_RATE_RIDER_PER_S"] = env["ONECARD_RATE_RIDER_BURST"] = "1000000"
    return env


async def run() -> None:
    profile = os.environ.get(PROFILE_ENV)
    orders_each = 1 + ROUNDS * SESSIONS_PER_PHONE + 2 * NFC_SESSIONS_PER_PHONE
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            env = environment(dsn, redis_url)
            started = time.perf_counter()
            holders = await prepare(dsn, env, orders_each)
            print(f"{PHONES} phones per server, each its own rider, card and {orders_each} paid "
                  f"top-ups of {AMOUNT_FEN} fen (prepared in {time.perf_counter() - started:.1f} "
                  f"s); {SESSIONS_PER_PHONE} sessions per phone per round, best of {ROUNDS}; "
                  f"pool {POOL_SIZE}", flush=True)  # fmt: skip
            ports = {"gateway": free_port(), "bare": free_port()}
            with contextlib.ExitStack() as servers:
                pids = {}
                for kind, port in ports.items():
                    own = dict(env, **({PROFILE_ENV: profile} if profile else {}))
                    process = server_process("bench.ota", ["serve", kind, str(port)], own, port)
                    pids[kind] = servers.enter_context(process).pid
                figures = await measure(dsn, ports, pids, holders)
            problems = await check(dsn, holders["gateway"])
    report(figures, problems)
    if profile:
        print_profile(profile)


def _verdict(met: bool) -> str:
    return "meets" if met else "BELOW"


def report(figures: Figures, problems: list[str]) -> None:
    gateway, bare = figures.closed["gateway"], figures.closed["bare"]
    print(f"(1) closed loop, {PHONES} sessions relaying back to back: gateway {gateway.rate:,.0f} "
          f"steps/s; bare aiohttp + asyncpg {bare.rate:,.0f} steps/s; ratio "
          f"{gateway.rate / bare.rate:.2f} ({_verdict(gateway.rate >= TARGET_STEPS_PER_S)} "
          f"target >= {TARGET_STEPS_PER_S:,} steps/s)", flush=True)  # fmt: skip
    _latencies("   ", gateway, bare)
    print(f"    (with {PHONES} requests always in flight, p50 is about {PHONES} / steps/s: "
          f"queueing, not a step's own time)", flush=True)  # fmt: skip
    for number, paced in ((2, figures.at_target), (3, figures.at_half)):
        gateway, bare = paced["gateway"], paced["bare"]
        print(
            f"({number}) {PHONES} sessions, NFC time {1000 * gateway.nfc_s:,.0f} ms per "
            f"exchange (the phones offer at most {PHONES / gateway.nfc_s:,.0f} steps/s): "
            f"gateway {gateway.rate:,.0f} steps/s; bare {bare.rate:,.0f} steps/s",
            flush=True,
        )
        _latencies("   ", gateway, bare)
    # Where the ceiling is: CPU per step, of the server alone and of everything the bench runs.
    cores = os.cpu_count() or 1
    for kind, found in figures.closed.items():
        own, rest = found.cpu_ms["server"], found.cpu_ms["rest"]
        ours = sum(found.cpu_ms.values()) - rest
        print(f"    {kind}: a step costs its server {own:.2f} CPU ms (at most {1000 / own:,.0f} "
              f"steps/s per core), PostgreSQL {found.cpu_ms['postgres']:.2f} ms, the bench's "
              f"processes {ours:.2f} ms (at most {1000 * cores / ours:,.0f} steps/s on {cores} "
              f"cores); the rest of the machine {rest:.2f} ms per step meanwhile",
              flush=True)  # fmt: skip
    if problems:
        print(f"ledger verify: {len(problems)} PROBLEM(S)", flush=True)
        for problem in problems:
            print(f"    {problem}", flush=True)
    else:
        print("ledger verify: clean (ledger, top-ups, loads; chips agree with the gateway)",
              flush=True)  # fmt: skip


def _latencies(indent: str, gateway: Round, bare: Round) -> None:
    for q, target in ((0.5, TARGET_P50_MS), (0.99, TARGET_P99_MS)):
        mine, theirs = gateway.ms(q), bare.ms(q)
        print(f"{indent} p{round(q * 100)} per step: gateway {mine:,.1f} ms; bare {theirs:,.1f} "
              f"ms; ratio {mine / theirs:.2f} ({_verdict(mine < target)} target < {target:.0f} "
              f"ms)", flush=True)  # fmt: skip
    for kind in KINDS:
        print(
            f"{indent}   {kind} ({ROUND_TRIPS[kind]} PostgreSQL round trips): gateway p50 "
            f"{gateway.ms(0.5, kind):,.1f} ms, p99 {gateway.ms(0.99, kind):,.1f} ms; bare p50 "
            f"{bare.ms(0.5, kind):,.1f} ms, p99 {bare.ms(0.99, kind):,.1f} ms",
            flush=True,
        )


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
