"""OTA load sessions: the state machine that the card's answers, relayed by the phone, drive.

A session loads one card's pending orders one after another; every order gets its own
INITIALIZE FOR LOAD / CREDIT FOR LOAD pair and its own `ota_loads` row:
`started -> initialized (MAC1 verified) -> crediting (MAC2 handed out) -> completed (TAC
verified)`, or `failed_before_credit`. Each step is one transaction, committed before its
answer (the next APDU) leaves the gateway: in particular MAC2 is on record before the card can
see it.

A load whose TAC never came back, or did not verify, is `unsure`: the card may or may not have
been credited. It is resolved before anything else, in this session or the card's next one,
never guessed: GET TRANSACTION PROVE for its online counter gives the MAC2 and TAC of the load
(proof verifies -> completed), or `94 06`; then the next INITIALIZE FOR LOAD, whose MAC1
authenticates the card's online counter, tells whether the counter is still the load's (not
credited: the order is loadable again) or moved (held for an operator, with the evidence).

Money moves only on proof: pending load -> card float on a verified TAC or transaction proof
(`ota_load`, ref `ota:<load id>`). The card float follows each verified chip balance: a
difference this gateway did not cause (the card's first contact, rides not yet cleared) is
posted against suspense (`card_balance_seen`, ref `card-seen:<load id>`), so that the card
float always equals the last known chip balances (the `ledger verify` check of this area).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from gateway import db, errors
from gateway.config import Config
from gateway.ledger import AccountKind, Leg, TxnKind, open_account, post
from gateway.ota.ism import SecurityModule, UnknownCardKey
from gateway.topups import orders
from gateway.topups import partners as partner_topups
from gateway.topups.cards import ReadCard
from gateway.topups.orders import BEIJING, State
from hce import apdu as A
from hce.card_crypto import MacError
from hce.issuer import LoadTransaction
from hce.terminal import bcd_date, bcd_time

STEPS_MAX = 200  # the schema's bound too: a card that answers strangely cannot loop for ever
TRIES_PER_SESSION_MAX = 3  # INITIALIZEs of one order in one session (a card that keeps failing)


class Phase(enum.StrEnum):
    PROVE = "prove"
    INITIALIZE = "initialize"
    CREDIT = "credit"


class LoadState(enum.StrEnum):
    STARTED = "started"
    INITIALIZED = "initialized"
    CREDITING = "crediting"
    COMPLETED = "completed"
    FAILED_BEFORE_CREDIT = "failed_before_credit"
    UNSURE = "unsure"
    HELD = "held"
    NOT_CREDITED = "not_credited"


class SessionState(enum.StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    FAILED = "failed"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Load:
    id: int
    session_id: uuid.UUID
    order_id: int
    card_asn: str
    amount_fen: int
    state: LoadState
    key_index: int
    terminal_id: bytes
    key_version: int | None
    balance_fen: int | None
    online_counter: int | None
    random: bytes | None
    date: bytes | None
    time: bytes | None
    mac2: bytes | None
    tac: bytes | None
    evidence: dict[str, Any]
    failure: str | None
    created_at: datetime
    updated_at: datetime

    def facts(self) -> LoadTransaction:
        """What the issuer computes over: the command as sent and the verified answer."""
        assert self.balance_fen is not None and self.online_counter is not None
        assert self.random is not None
        return LoadTransaction(
            bytes.fromhex(self.card_asn), self.amount_fen, self.terminal_id, self.balance_fen,
            self.online_counter, self.random,
        )  # fmt: skip

    @property
    def key(self) -> tuple[int, int]:
        assert self.key_version is not None
        return self.key_index, self.key_version


_LOAD_COLUMNS = """id, session_id, order_id, card_asn, amount_fen, state, key_index, terminal_id,
key_version, balance_fen, online_counter, random, date, time, mac2, tac, evidence, failure,
created_at, updated_at"""


def _load(row: asyncpg.Record) -> Load:
    values = dict(row)
    values["state"] = LoadState(values["state"])
    return Load(**values)


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    rider_id: int
    card_asn: str
    state: SessionState
    order_ids: list[int]
    step: int
    phase: Phase | None
    apdu: bytes | None
    load_id: int | None
    resolving_id: int | None
    answered_rapdu: bytes | None
    answer_status: int | None
    answer: dict[str, Any] | None
    balance_fen: int | None
    loaded_fen: int
    loaded: list[int]
    held: list[int]
    failure: str | None
    created_at: datetime
    updated_at: datetime


_SESSION_COLUMNS = """id, rider_id, card_asn, state, order_ids, step, phase, apdu, load_id,
resolving_id, answered_rapdu, answer_status, answer, balance_fen, loaded_fen, loaded, held,
failure, created_at, updated_at"""


def _session(row: asyncpg.Record) -> Session:
    values = dict(row)
    values["state"] = SessionState(values["state"])
    values["phase"] = Phase(values["phase"]) if values["phase"] else None
    values["order_ids"] = list(values["order_ids"])
    values["loaded"] = list(values["loaded"])
    values["held"] = list(values["held"])
    return Session(**values)


class Done(msgspec.Struct):
    balance_fen: int | None  # the card's balance, as last verified
    loaded_fen: int
    orders: list[int]  # loaded in this session
    held: list[int]  # held for an operator: the rider is told to wait


class Step(msgspec.Struct, omit_defaults=True):
    """What the phone is told after a step: the next APDU, or the end."""

    id: str
    state: str
    step: int | None = None
    next_apdu: str | None = None
    done: Done | None = None


@dataclass(frozen=True)
class Answer:
    """A step's outcome, stored with the session so that a re-sent card answer gets it again:
    a `Step` (HTTP 200), or a refusal (`error`)."""

    step: Step | None = None
    error: errors.ApiError | None = None

    def to_json(self) -> tuple[int, dict[str, Any]]:
        if self.error is not None:
            return self.error.status, {"error": {
                "code": self.error.code, "message": self.error.message,
                "details": self.error.details,
            }}  # fmt: skip
        return 200, msgspec.to_builtins(self.step)

    @classmethod
    def from_json(cls, status: int, body: dict[str, Any]) -> Answer:
        if "error" in body:
            found = body["error"]
            return cls(error=errors.ApiError(
                found["code"], status, found["message"], found["details"]
            ))  # fmt: skip
        return cls(step=msgspec.convert(body, Step))

    def result(self) -> Step:
        if self.error is not None:
            raise self.error
        assert self.step is not None
        return self.step


class _Failed(Exception):
    """The session cannot go on: `reason` is what the app shows the rider."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------- the engine
class Engine:
    """Runs sessions: one card answer in, one transaction, the next APDU out."""

    def __init__(self, ism: SecurityModule, config: Config) -> None:
        self.ism = ism
        self.config = config
        self.key_index = config.ota_key_index
        self.terminal_prefix = bytes.fromhex(config.ota_terminal_prefix)

    def terminal_id(self, load_id: int) -> bytes:
        """Each load's own terminal id: the configured prefix and the load's number. MAC1 is
        computed over it, so an INITIALIZE answer the phone asked the card for earlier (at the
        same counter, for the same amount) cannot pass for the answer to this one."""
        return self.terminal_prefix + (load_id % 2**32).to_bytes(4, "big")

    # ------------------------------------------------------------------ starting
    async def start(
        self, conn: asyncpg.Connection, rider_id: int, read: ReadCard, order_id: int | None
    ) -> Step:
        """A new session for the card read by the phone (superseding any live one for it)."""
        db.assert_in_transaction(conn)
        card = await lock_card(conn, read.asn)
        if card is None or card["rider_id"] != rider_id or card["status"] != "active":
            raise errors.NOT_FOUND.error()
        if order_id is not None:
            order = await orders.get(conn, order_id)
            if order is None or order.rider_id != rider_id:
                raise errors.NOT_FOUND.error()
            if order.card_asn != read.asn:
                raise errors.OTA_CARD_MISMATCH.error()
            if order.state is not State.PENDING_LOAD:
                raise errors.TOPUP_NOT_LOADABLE.error(state=order.state.value)
            wanted = [order_id]
        else:
            wanted = await _pending_orders(conn, read.asn, rider_id)
        await _supersede(conn, read.asn)
        unsure = await _loads_of_card(conn, read.asn, LoadState.UNSURE)
        held = {load.order_id for load in await _loads_of_card(conn, read.asn, LoadState.HELD)}
        if order_id is not None and order_id in held:
            raise errors.OTA_LOAD_HELD.error()
        wanted = [o for o in wanted if o not in held]
        if not wanted and not unsure:
            raise errors.OTA_NOTHING_TO_LOAD.error()
        row = await conn.fetchrow(
            f"INSERT INTO ota_sessions (id, rider_id, card_asn, order_ids, phase, step) "  # noqa: S608
            f"VALUES ($1, $2, $3, $4, 'prove', 0) RETURNING {_SESSION_COLUMNS}",
            uuid.uuid4(), rider_id, read.asn, wanted,
        )  # fmt: skip
        assert row is not None
        session = _session(row)
        return (await self._next(conn, session)).result()

    # ------------------------------------------------------------------ one step
    async def respond(
        self, conn: asyncpg.Connection, rider_id: int, session_id: uuid.UUID, step: int,
        rapdu: bytes,
    ) -> Answer:  # fmt: skip
        """The card's answer to the APDU of `step`: the next step, or the end. The same answer
        sent again (a retry) gets the same outcome."""
        db.assert_in_transaction(conn)
        asn = await conn.fetchval(
            "SELECT card_asn FROM ota_sessions WHERE id = $1 AND rider_id = $2",
            session_id, rider_id,
        )  # fmt: skip
        if asn is None:
            raise errors.NOT_FOUND.error()
        # The card first, as `start` does (locks: card, session, load, order, accounts).
        card = await lock_card(conn, asn)
        session = await _lock_session(conn, session_id)
        ended_open = session.state in (SessionState.OPEN, SessionState.SUPERSEDED)
        answered_step = session.step - 1 if ended_open else session.step
        if step == answered_step and rapdu == session.answered_rapdu:
            assert session.answer is not None and session.answer_status is not None
            return Answer.from_json(session.answer_status, session.answer)
        if session.state is SessionState.SUPERSEDED:
            raise errors.OTA_SESSION_SUPERSEDED.error()
        if session.state is not SessionState.OPEN:
            raise errors.OTA_SESSION_OVER.error(state=session.state.value)
        if step != session.step:
            raise errors.OTA_STEP_MISMATCH.error(expected_step=session.step)
        try:
            answer = A.ResponseApdu.from_bytes(rapdu)
        except A.ApduError:
            raise errors.VALIDATION_FAILED.error(
                "A card answer has at least its two status bytes.", field="rapdu"
            ) from None
        try:
            if card is None or card["status"] != "active" or card["rider_id"] != rider_id:
                raise _Failed("card_not_linked", "This card is no longer linked to you.")
            outcome = await self._dispatch(conn, session, answer, card)
        except _Failed as failed:
            outcome = await self._fail(conn, session, failed)
        await _remember(conn, session.id, rapdu, outcome)
        return outcome

    async def _dispatch(
        self, conn: asyncpg.Connection, s: Session, answer: A.ResponseApdu, card: asyncpg.Record
    ) -> Answer:
        """`card`: the card's row, locked for this step (each step changes it at most once,
        and last)."""
        assert s.load_id is not None
        load = await _lock_load(conn, s.load_id)
        if s.phase is Phase.PROVE and load.state is not LoadState.UNSURE:
            return await self._next(conn, s)  # an operator settled it meanwhile
        if s.phase is Phase.PROVE:
            s = await self._on_prove(conn, s, load, answer, card)
        elif s.phase is Phase.INITIALIZE:
            credit = await self._on_initialize(conn, s, load, answer, card)
            if isinstance(credit, Answer):
                return credit
            s = credit
        else:
            s = await self._on_credit(conn, s, load, answer, card)
        return await self._next(conn, s)

    # ------------------------------------------------------------------ the phases
    async def _on_prove(
        self, conn: asyncpg.Connection, s: Session, load: Load, answer: A.ResponseApdu,
        card: asyncpg.Record,
    ) -> Session:  # fmt: skip
        """An unsure load's GET TRANSACTION PROVE answer."""
        evidence = {"prove_answer": answer.to_bytes().hex()}
        if answer.ok and len(answer.data) == 8:
            proof = A.GetTransactionProveResponse.from_bytes(answer.data)
            assert load.date is not None and load.time is not None
            try:
                self.ism.verify_proof(*load.key, load.facts(), load.date, load.time,
                                      proof.mac2, proof.tac)  # fmt: skip
            except (MacError, UnknownCardKey):
                return await self._hold(conn, s, load, {**evidence, "why": "proof_invalid"})
            await complete_load(conn, self.config, load, proof.tac, evidence, card)
            return await _loaded(conn, s, load)
        if answer.sw == A.StatusWord.NO_TRANSACTION_PROOF:
            await _update_load(conn, load, evidence={**load.evidence, **evidence})
            return await _update_session(conn, s.id, resolving_id=load.id)
        await _update_load(conn, load, evidence={**load.evidence, **evidence})
        raise _Failed("card_not_ready", "The card did not answer; hold it to the phone again.")

    async def _on_initialize(
        self, conn: asyncpg.Connection, s: Session, load: Load, answer: A.ResponseApdu,
        card: asyncpg.Record,
    ) -> Session | Answer:  # fmt: skip
        """INITIALIZE FOR LOAD's answer: MAC1 checked, MAC2 made and put on record, CREDIT FOR
        LOAD handed out; or the session as it is when this order cannot be loaded now."""
        if not answer.ok:
            await _fail_load(conn, load, f"card_sw_{answer.sw:04X}")
            raise _refusal(answer.sw)
        try:
            init = A.InitializeForLoadResponse.from_bytes(answer.data)
        except A.ApduError:
            await _fail_load(conn, load, "malformed_answer")
            raise _Failed("card_refused", "The card gave an answer we cannot read.") from None
        facts = LoadTransaction(
            bytes.fromhex(load.card_asn), load.amount_fen, load.terminal_id, init.balance_fen,
            init.online_counter, init.random,
        )  # fmt: skip
        key = (load.key_index, init.key_version)
        await self.ism.knows_or_reload(conn, *key)
        try:
            self.ism.verify_mac1(*key, facts, init.mac1)
        except (MacError, UnknownCardKey) as exc:
            await _fail_load(conn, load, "unknown_key" if isinstance(exc, UnknownCardKey)
                             else "mac1_invalid")  # fmt: skip
            raise _Failed("card_not_genuine", "This card cannot be loaded here.") from None
        if card["online_counter"] is not None and init.online_counter < card["online_counter"]:
            # A genuine card's counter never goes back: an answer kept from before.
            await _fail_load(conn, load, "counter_went_back")
            raise _Failed("card_not_genuine", "This card cannot be loaded here.")
        order = await orders.lock(conn, load.order_id)  # before any ledger account (lock order)
        # The balance and counter are now the card's own: the card float follows them.
        await _seen(conn, load, card, init.balance_fen, init.online_counter)
        if s.resolving_id is not None:
            s = await self._settle_by_counter(conn, s, init.online_counter, init.balance_fen)
        why_not = await self._not_loadable(conn, s, load, order)
        if why_not is not None:
            await _fail_load(conn, load, why_not)
            return await _update_session(conn, s.id, balance_fen=init.balance_fen)
        if init.balance_fen + load.amount_fen > card["balance_max_fen"]:
            await _fail_load(conn, load, "card_balance_ceiling")
            raise _Failed("card_balance_ceiling", "The card cannot hold that much.")
        if s.step + 1 > STEPS_MAX:
            await _fail_load(conn, load, "too_many_steps")
            raise _Failed("card_not_ready", "The card keeps failing; try again later.")
        now = datetime.now(BEIJING)
        date, time = bcd_date(now), bcd_time(now)
        mac2 = self.ism.mac2(*key, facts, date, time)
        load = await _update_load(
            conn, load, LoadState.INITIALIZED, key_version=init.key_version,
            balance_fen=init.balance_fen, online_counter=init.online_counter, random=init.random,
        )  # fmt: skip
        load = await _update_load(conn, load, LoadState.CREDITING, date=date, time=time, mac2=mac2)
        command = A.CreditForLoad(date, time, mac2).to_bytes()
        s = await _update_session(
            conn, s.id, phase=Phase.CREDIT, apdu=command, step=s.step + 1,
            balance_fen=init.balance_fen,
        )  # fmt: skip
        return _step(s)

    async def _not_loadable(
        self, conn: asyncpg.Connection, s: Session, load: Load, order: orders.Order
    ) -> str | None:
        """Why this INITIALIZE may not go on to CREDIT (the order, locked, as it is now), or
        None. An INITIALIZE that only read the counter of another rider's unsure load, or of a
        top-up changed since (a partial refund), loads nothing."""
        if order.state is not State.PENDING_LOAD or await _has_live_load(conn, order.id):
            return "order_not_loadable"
        if order.amount_fen - order.refunded_fen != load.amount_fen:
            return "order_changed"
        if order.rider_id != s.rider_id or order.card_asn != s.card_asn:
            return "not_this_riders"
        tries: int = await conn.fetchval(
            "SELECT count(*) FROM ota_loads WHERE session_id = $1 AND order_id = $2",
            s.id, order.id,
        )  # fmt: skip
        if tries > TRIES_PER_SESSION_MAX:
            return "retry_later"
        return None

    async def _on_credit(
        self, conn: asyncpg.Connection, s: Session, load: Load, answer: A.ResponseApdu,
        card: asyncpg.Record,
    ) -> Session:  # fmt: skip
        """CREDIT FOR LOAD's answer: a TAC that verifies completes the load; anything else
        leaves it unsure, and the card is asked for its proof at once."""
        evidence = {"credit_answer": answer.to_bytes().hex()}
        if answer.ok and len(answer.data) == 4:
            assert load.date is not None and load.time is not None
            try:
                self.ism.verify_tac(*load.key, load.facts(), load.date, load.time, answer.data)
            except (MacError, UnknownCardKey):
                evidence["why"] = "tac_invalid"
            else:
                await complete_load(conn, self.config, load, answer.data, evidence, card)
                return await _loaded(conn, s, load)
        await _update_load(conn, load, LoadState.UNSURE, evidence={**load.evidence, **evidence})
        return s

    # ------------------------------------------------------------------ outcomes
    async def _hold(
        self, conn: asyncpg.Connection, s: Session, load: Load, evidence: dict[str, Any]
    ) -> Session:
        await _update_load(conn, load, LoadState.HELD, evidence={**load.evidence, **evidence})
        return await _update_session(conn, s.id, held=[*s.held, load.order_id])

    async def _settle_by_counter(
        self, conn: asyncpg.Connection, s: Session, counter: int, balance_fen: int
    ) -> Session:
        """The unsure load whose card answered `94 06`: its counter unchanged means the card
        was not credited; moved, nobody can tell: an operator decides."""
        assert s.resolving_id is not None
        unsure = await _lock_load(conn, s.resolving_id)
        s = await _update_session(conn, s.id, resolving_id=None)
        if unsure.state is not LoadState.UNSURE:  # an operator settled it meanwhile
            return s
        if counter == unsure.online_counter:
            await _update_load(conn, unsure, LoadState.NOT_CREDITED)
            return s
        evidence = {"why": "counter_moved", "counter_now": counter, "balance_now_fen": balance_fen}
        return await self._hold(conn, s, unsure, evidence)

    async def _fail(self, conn: asyncpg.Connection, s: Session, failed: _Failed) -> Answer:
        await _update_session(conn, s.id, state=SessionState.FAILED, phase=None,
                              failure=failed.reason)  # fmt: skip
        error = errors.OTA_LOAD_FAILED.error(
            failed.message, reason=failed.reason, session_id=str(s.id)
        )
        return Answer(error=error)

    # ------------------------------------------------------------------ what comes next
    async def _next(self, conn: asyncpg.Connection, s: Session) -> Answer:
        """The next APDU: prove an unsure load, else initialize the next order, else done."""
        if s.step >= STEPS_MAX:
            return await self._fail(conn, s, _Failed("card_not_ready", "Too many steps."))
        # While a `94 06` waits for the counter, nothing else is proved.
        unsure = [] if s.resolving_id else await _loads_of_card(conn, s.card_asn, LoadState.UNSURE)
        if unsure:
            counter = unsure[0].online_counter
            assert counter is not None
            prove = A.GetTransactionProve(A.TX_TYPE_LOAD, counter)
            s = await _update_session(
                conn, s.id, phase=Phase.PROVE, apdu=prove.to_bytes(), load_id=unsure[0].id,
                step=s.step + 1,
            )  # fmt: skip
            return _step(s)
        order = await self._next_order(conn, s)
        if order is None:
            state = SessionState.COMPLETED
            s = await _update_session(conn, s.id, state=state, phase=None, apdu=None)
            return Answer(Step(str(s.id), state.value, done=Done(
                s.balance_fen, s.loaded_fen, s.loaded, s.held
            )))  # fmt: skip
        amount = order.amount_fen - order.refunded_fen
        load_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('ota_loads', 'id'))")
        terminal_id = self.terminal_id(load_id)
        await conn.execute(
            "INSERT INTO ota_loads (id, session_id, order_id, card_asn, amount_fen, key_index, "
            "terminal_id) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)",
            load_id, s.id, order.id, s.card_asn, amount, self.key_index, terminal_id,
        )  # fmt: skip
        command = A.InitializeForLoad(self.key_index, amount, terminal_id)
        s = await _update_session(
            conn, s.id, phase=Phase.INITIALIZE, apdu=command.to_bytes(), load_id=load_id,
            step=s.step + 1,
        )  # fmt: skip
        return _step(s)

    async def _next_order(self, conn: asyncpg.Connection, s: Session) -> orders.Order | None:
        """The session's next order to load: pending, not tried in this session, no attempt
        of it live elsewhere. While a `94 06` waits for a counter, the unsure load's own order
        will do for the INITIALIZE that reads it."""
        if s.resolving_id is not None:
            # The counter is read with the unsure load's own order: nothing else is loaded
            # until that load is settled.
            unsure = await _lock_load(conn, s.resolving_id)
            return await orders.get(conn, unsure.order_id)
        order_id = await conn.fetchval(
            """SELECT o.id FROM topup_orders o
                WHERE o.id = ANY($1::bigint[]) AND o.state = 'pending_load'
                  AND NOT EXISTS (SELECT 1 FROM ota_loads l WHERE l.order_id = o.id
                                     AND (l.session_id = $2 OR l.state IN
                                          ('initialized', 'crediting', 'unsure', 'held')))
                ORDER BY array_position($1::bigint[], o.id) LIMIT 1""",
            s.order_ids, s.id,
        )  # fmt: skip
        if order_id is None:
            return None
        order = await orders.get(conn, order_id)
        assert order is not None
        return order if order.state is State.PENDING_LOAD else None


async def _seen(
    conn: asyncpg.Connection, load: Load, card: asyncpg.Record, balance: int, counter: int
) -> None:
    """A verified balance and counter of the card (`card`: its locked row): the last known
    ones from now on, and the card float follows; what we did not cause waits in suspense."""
    difference = balance - card["chip_balance_fen"]
    if difference:
        float_id = await open_account(conn, AccountKind.CARD_FLOAT, load.card_asn)
        suspense = await open_account(conn, AccountKind.SUSPENSE, suspense_owner(load.card_asn))
        await post(
            conn, TxnKind.CARD_BALANCE_SEEN,
            [Leg(suspense, -difference), Leg(float_id, difference)],
            ref=f"card-seen:{load.id}", memo=f"card {load.card_asn} balance as verified",
        )  # fmt: skip
    await conn.execute(
        "UPDATE cards SET chip_balance_fen = $2, online_counter = $3, updated_at = now() "
        "WHERE asn = $1",
        load.card_asn, balance, counter,
    )  # fmt: skip


async def complete_load(
    conn: asyncpg.Connection, config: Config, load: Load, tac: bytes | None,
    evidence: dict[str, Any], card: asyncpg.Record,
) -> None:  # fmt: skip
    """A load known to be on the chip (a verified TAC or proof, or an operator's decision):
    `ota_load` from the card's pending load, the order `loaded`, the card's last known balance
    and counter moved on. When the card has already been seen past this load (its balance then
    was posted as seen, against suspense), the money goes to suspense instead: the card float
    counts it already."""
    db.assert_in_transaction(conn)
    assert load.online_counter is not None
    # `card`: the card's row, locked by the caller; then the order, then the accounts.
    order = await orders.lock(conn, load.order_id)
    assert order.state is State.PENDING_LOAD, "a live load keeps its order waiting"
    assert order.amount_fen - order.refunded_fen == load.amount_fen, "checked before MAC2"
    seen_since = card["online_counter"] is not None and card["online_counter"] > load.online_counter
    pending = await open_account(conn, AccountKind.PENDING_LOAD, load.card_asn)
    if seen_since:
        target = await open_account(conn, AccountKind.SUSPENSE, suspense_owner(load.card_asn))
    else:
        target = await open_account(conn, AccountKind.CARD_FLOAT, load.card_asn)
    await post(
        conn, TxnKind.OTA_LOAD, [Leg(pending, -load.amount_fen), Leg(target, load.amount_fen)],
        ref=f"ota:{load.id}", memo=f"loaded onto card {load.card_asn}",
    )  # fmt: skip
    if not seen_since:
        await conn.execute(
            "UPDATE cards SET chip_balance_fen = chip_balance_fen + $2, online_counter = $3, "
            "updated_at = now() WHERE asn = $1",
            load.card_asn, load.amount_fen, load.online_counter + 1,
        )  # fmt: skip
    await _update_load(conn, load, LoadState.COMPLETED, tac=tac,
                       evidence={**load.evidence, **evidence})  # fmt: skip
    loaded = await orders.move(conn, order, State.LOADED)
    await partner_topups.order_moved(conn, loaded, config)


def suspense_owner(asn: str) -> str:
    """Where a card's balance changes this gateway did not cause wait for clearing: one
    suspense account per card, so that no first contact queues behind another's."""
    return f"card:{asn}"


# ---------------------------------------------------------------------- rows
async def _loaded(conn: asyncpg.Connection, s: Session, load: Load) -> Session:
    assert load.balance_fen is not None
    return await _update_session(
        conn, s.id, loaded=[*s.loaded, load.order_id], loaded_fen=s.loaded_fen + load.amount_fen,
        balance_fen=load.balance_fen + load.amount_fen,
    )  # fmt: skip


def _step(s: Session) -> Answer:
    assert s.apdu is not None
    return Answer(Step(str(s.id), s.state.value, step=s.step, next_apdu=s.apdu.hex().upper()))


def _refusal(sw: int) -> _Failed:
    if sw == A.StatusWord.BALANCE_CEILING_EXCEEDED:
        return _Failed("card_balance_ceiling", "The card cannot hold that much.")
    if sw == A.StatusWord.COUNTER_EXHAUSTED:
        return _Failed("card_exhausted", "This card can take no more loads; replace it.")
    if sw in (A.StatusWord.KEY_INDEX_NOT_SUPPORTED, A.StatusWord.FILE_NOT_FOUND):
        return _Failed("card_not_supported", "This card cannot be loaded here.")
    return _Failed("card_refused", f"The card refused ({A.StatusWord.describe(sw)}).")


async def lock_card(conn: asyncpg.Connection, asn: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT asn, rider_id, status, chip_balance_fen, online_counter, balance_max_fen "
        "FROM cards WHERE asn = $1 FOR UPDATE",
        asn,
    )


async def _lock_session(conn: asyncpg.Connection, session_id: uuid.UUID) -> Session:
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM ota_sessions WHERE id = $1 FOR UPDATE",  # noqa: S608
        session_id,
    )
    assert row is not None
    return _session(row)


async def get_session(
    conn: asyncpg.Connection | asyncpg.Pool, rider_id: int, session_id: uuid.UUID
) -> tuple[Session, list[Load]]:
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM ota_sessions WHERE id = $1 AND rider_id = $2",  # noqa: S608
        session_id, rider_id,
    )  # fmt: skip
    if row is None:
        raise errors.NOT_FOUND.error()
    loads = await conn.fetch(
        f"SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE session_id = $1 ORDER BY id",  # noqa: S608
        session_id,
    )
    return _session(row), [_load(load) for load in loads]


async def _lock_load(conn: asyncpg.Connection, load_id: int) -> Load:
    """A load known to exist (a session names it), locked."""
    load = await lock_load(conn, load_id)
    assert load is not None
    return load


async def lock_load(conn: asyncpg.Connection, load_id: int) -> Load | None:
    row = await conn.fetchrow(
        f"SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE id = $1 FOR UPDATE",  # noqa: S608
        load_id,
    )
    return None if row is None else _load(row)


async def unsettled_loads(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int, after_id: int | None
) -> list[Load]:
    rows = await conn.fetch(
        f"SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE state IN ('unsure', 'held') "  # noqa: S608
        "AND id > $1 ORDER BY id LIMIT $2",
        after_id or 0, limit,
    )  # fmt: skip
    return [_load(row) for row in rows]


async def _loads_of_card(conn: asyncpg.Connection, asn: str, state: LoadState) -> list[Load]:
    assert state in (LoadState.UNSURE, LoadState.HELD)  # the states ota_loads_card_open covers
    # The state is written into the statement (an enum's value, not input), so that each
    # statement's plan is the partial index's, whatever plan asyncpg's cache settles on.
    rows = await conn.fetch(
        f"SELECT {_LOAD_COLUMNS} FROM ota_loads WHERE card_asn = $1 "  # noqa: S608
        f"AND state = '{state.value}' ORDER BY id FOR UPDATE",
        asn,
    )
    return [_load(row) for row in rows]


async def _has_live_load(conn: asyncpg.Connection, order_id: int) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM ota_loads WHERE order_id = $1 "
        "AND state IN ('initialized', 'crediting', 'unsure', 'held'))",
        order_id,
    )
    return found


async def _pending_orders(conn: asyncpg.Connection, asn: str, rider_id: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT id FROM topup_orders WHERE card_asn = $1 AND rider_id = $2 "
        "AND state = 'pending_load' AND flag IS NULL ORDER BY id",
        asn, rider_id,
    )  # fmt: skip
    return [row["id"] for row in rows]


async def _supersede(conn: asyncpg.Connection, asn: str) -> None:
    """The card's live session ends: what it handed out before MAC2 is void; a load whose MAC2
    it handed out is unsure (the card may have it)."""
    ids = await conn.fetch(
        "UPDATE ota_sessions SET state = 'superseded', phase = NULL, updated_at = now() "
        "WHERE card_asn = $1 AND state = 'open' RETURNING id",
        asn,
    )
    if not ids:
        return
    superseded = [row["id"] for row in ids]
    await conn.execute(
        "UPDATE ota_loads SET state = 'failed_before_credit', failure = 'superseded' "
        "WHERE session_id = ANY($1::uuid[]) AND state IN ('started', 'initialized')",
        superseded,
    )
    await conn.execute(
        "UPDATE ota_loads SET state = 'unsure' "
        "WHERE session_id = ANY($1::uuid[]) AND state = 'crediting'",
        superseded,
    )


async def _fail_load(conn: asyncpg.Connection, load: Load, failure: str) -> None:
    await _update_load(conn, load, LoadState.FAILED_BEFORE_CREDIT, failure=failure)


async def _update_load(
    conn: asyncpg.Connection, load: Load, state: LoadState | None = None, **columns: Any
) -> Load:
    if state is not None:
        columns["state"] = state.value
    names = list(columns)
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    row = await conn.fetchrow(
        f"UPDATE ota_loads SET {assignments} WHERE id = $1 RETURNING {_LOAD_COLUMNS}",  # noqa: S608
        load.id, *columns.values(),
    )  # fmt: skip
    assert row is not None
    return _load(row)


async def _update_session(conn: asyncpg.Connection, session_id: uuid.UUID, **columns: Any) -> (
    Session
):  # fmt: skip
    values = {name: value.value if isinstance(value, enum.Enum) else value
              for name, value in columns.items()}  # fmt: skip
    names = list(values)
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    row = await conn.fetchrow(
        f"UPDATE ota_sessions SET {assignments}, updated_at = now() WHERE id = $1 "  # noqa: S608
        f"RETURNING {_SESSION_COLUMNS}",
        session_id, *values.values(),
    )  # fmt: skip
    assert row is not None
    return _session(row)


async def _remember(
    conn: asyncpg.Connection, session_id: uuid.UUID, rapdu: bytes, outcome: Answer
) -> None:
    status, body = outcome.to_json()
    await conn.execute(
        "UPDATE ota_sessions SET answered_rapdu = $2, answer_status = $3, answer = $4 "
        "WHERE id = $1",
        session_id, rapdu, status, body,
    )  # fmt: skip
