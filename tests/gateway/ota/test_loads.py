"""Over-the-air loads from the phone's side: a software card, a phone relaying its APDUs over
real HTTP to the gateway, top-ups paid in the channels' sandboxes. Every tear the issue names,
each settled on the card's next session, with the ledger, the order and the chip agreeing
(`ledger verify` runs after every test)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.channels.types import Channel
from gateway.config import Config
from hce import apdu as A
from hce.issuer import Issuer, LoadTransaction
from hce.software_card import CITY_CARD_AID, CardTorn, SoftwareCard
from hce.terminal import bcd_date, bcd_time
from tests.gateway import identity_helpers as make
from tests.gateway.sandboxes import Sandboxes, until
from tests.gateway.topups.test_topups import pay, status_of, topup
from tests.hce.vectors import MLK, MPK, MTK

ClientT = TestClient[Any, Any]
KEY_INDEX = 1


def new_card(balance_fen: int = 5_000, master_load_key: bytes = MLK) -> SoftwareCard:
    today = datetime.now(UTC).date()
    return SoftwareCard.issue(
        asn=bytes.fromhex(f"31{secrets.randbelow(10**18):018d}"), master_load_key=master_load_key,
        master_purchase_key=MPK, master_tac_key=MTK, balance_fen=balance_fen,
        valid_from=bytes.fromhex(f"{today - timedelta(days=30):%Y%m%d}"),
        valid_until=bytes.fromhex(f"{today + timedelta(days=3650):%Y%m%d}"),
    )  # fmt: skip


def asn_of(card: SoftwareCard) -> str:
    return card.asn.hex()


@dataclass
class Phone:
    """What the rider's app does: read the card, open a session, relay each APDU."""

    gateway: ClientT
    rider: make.RiderLogin
    card: SoftwareCard
    sent: list[str] = field(default_factory=list)  # the APDUs the gateway handed out

    def read(self) -> dict[str, Any]:
        self.card.reset()
        select = A.ResponseApdu.from_bytes(self.card.transmit(A.Select(CITY_CARD_AID).to_bytes()))
        info = A.ResponseApdu.from_bytes(self.card.transmit(A.ReadBinary().to_bytes()))
        balance = A.ResponseApdu.from_bytes(self.card.transmit(A.GetBalance().to_bytes()))
        assert select.ok and info.ok and balance.ok
        return {
            "select_hex": select.data.hex(), "file_0015_hex": info.data.hex(),
            "balance_fen": int.from_bytes(balance.data, "big"),
        }  # fmt: skip

    async def start(self, order_id: int | None = None, **extra: Any) -> Any:
        body = {**self.read(), **extra}
        if order_id is not None:
            body["order_id"] = order_id
        elif "card" not in extra:
            body["card"] = asn_of(self.card)
        return await self.gateway.post("/v1/ota/sessions", json=body, headers=self.rider.auth)

    async def answer(self, session: dict[str, Any], rapdu: bytes) -> Any:
        return await self.gateway.post(
            f"/v1/ota/sessions/{session['id']}/responses",
            json={"step": session["step"], "rapdu": rapdu.hex()}, headers=self.rider.auth,
        )  # fmt: skip

    def transmit(self, session: dict[str, Any]) -> bytes:
        self.sent.append(session["next_apdu"])
        return self.card.transmit(bytes.fromhex(session["next_apdu"]))

    async def relay(self, session: dict[str, Any]) -> dict[str, Any]:
        """Until the gateway says done (or refuses)."""
        while "done" not in session:
            response = await self.answer(session, self.transmit(session))
            assert response.status == 200, await response.text()
            session = await response.json()
        return session

    async def until_credit(self, order_id: int) -> dict[str, Any]:
        """A session for the order, INITIALIZE relayed: CREDIT FOR LOAD is next."""
        session = await (await self.start(order_id)).json()
        session = await (await self.answer(session, self.transmit(session))).json()
        assert instruction(session["next_apdu"]) == CREDIT, session
        return session

    async def load(self, order_id: int | None = None) -> dict[str, Any]:
        started = await self.start(order_id)
        assert started.status == 201, await started.text()
        return await self.relay(await started.json())


def instruction(apdu_hex: str) -> int:
    return bytes.fromhex(apdu_hex)[1]


INITIALIZE, CREDIT, PROVE = 0x50, 0x52, 0x5A


async def linked_rider(gateway: ClientT, card: SoftwareCard) -> make.RiderLogin:
    rider = await make.rider(gateway)
    linked = await gateway.post(
        "/v1/cards", json={"asn": asn_of(card), "file_0015_hex": card.issuer_info.to_bytes().hex()},
        headers=rider.auth,
    )  # fmt: skip
    assert linked.status == 201, await linked.text()
    return rider


async def paid_card_topup(
    gateway: ClientT, sandboxes: Sandboxes, rider: make.RiderLogin, card: SoftwareCard,
    amount_fen: int = 2_000, channel: Channel = Channel.UNIONPAY,
) -> int:  # fmt: skip
    created = await topup(gateway, rider, channel, amount_fen, target={"card": asn_of(card)})
    assert created.status == 201, await created.text()
    order = await created.json()
    await pay(sandboxes, channel, order["pay"])

    async def pending() -> bool:
        return await status_of(gateway, rider, order["id"]) == "pending_load"

    await until(pending)
    return int(order["id"])


async def ledger_of_card(pool: asyncpg.Pool, asn: str) -> dict[str, int]:
    rows = await pool.fetch("SELECT kind, balance_fen FROM ledger_accounts WHERE owner = $1", asn)
    return {row["kind"]: row["balance_fen"] for row in rows}


async def card_with_paid_topup(
    gateway: ClientT, sandboxes: Sandboxes, amount_fen: int = 2_000, balance_fen: int = 5_000
) -> tuple[SoftwareCard, make.RiderLogin, int]:
    """A new card (5,000 fen on it), linked by a new rider, and a paid top-up waiting for it."""
    card = new_card(balance_fen)
    rider = await linked_rider(gateway, card)
    return card, rider, await paid_card_topup(gateway, sandboxes, rider, card, amount_fen)


# ---------------------------------------------------------------------- the happy path
async def test_a_paid_card_top_up_reaches_the_chip(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    card = new_card(balance_fen=5_000)
    rider = await linked_rider(gateway, card)
    first = await paid_card_topup(gateway, sandboxes, rider, card, 2_000)
    second = await paid_card_topup(gateway, sandboxes, rider, card, 3_000, Channel.ALIPAY)
    phone = Phone(gateway, rider, card)

    done = await phone.load()  # every load pending on the card, one after another

    assert done["done"] == {"balance_fen": 10_000, "loaded_fen": 5_000,
                            "orders": [first, second], "held": []}  # fmt: skip
    assert [instruction(apdu) for apdu in phone.sent] == [INITIALIZE, CREDIT, INITIALIZE, CREDIT]
    assert card.balance_fen == 10_000 and card.online_counter == 2
    assert await status_of(gateway, rider, first) == "loaded"
    assert await status_of(gateway, rider, second) == "loaded"
    balances = await ledger_of_card(pool, asn_of(card))
    assert balances["pending_load"] == 0 and balances["card_float"] == 10_000
    cards = await (await gateway.get("/v1/cards", headers=rider.auth)).json()
    assert cards["items"][0]["chip_balance_fen"] == 10_000
    txns = await pool.fetchval(
        "SELECT count(*) FROM ledger_txns WHERE kind = 'ota_load' AND ref LIKE 'ota:%' "
        "AND id IN (SELECT txn_id FROM ledger_entries e JOIN ledger_accounts a "
        "ON a.id = e.account_id WHERE a.owner = $1)",
        asn_of(card),
    )  # fmt: skip
    assert txns == 2
    # Nothing is left to load.
    again = await phone.start()
    assert again.status == 422
    assert (await again.json())["error"]["code"] == "ota_nothing_to_load"


async def test_a_lost_reply_is_asked_again_and_gets_the_same_step(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await (await phone.start(order)).json()
    initialized = phone.transmit(session)
    first = await (await phone.answer(session, initialized)).json()
    second = await (await phone.answer(session, initialized)).json()  # the phone retries
    assert first == second and instruction(first["next_apdu"]) == CREDIT
    # An answer to a step that is not the current one is refused, and changes nothing.
    stale = await phone.answer({**session, "step": session["step"] + 5}, initialized)
    assert stale.status == 409
    assert (await stale.json())["error"]["code"] == "ota_step_mismatch"
    done = await phone.relay(first)
    assert done["done"]["loaded_fen"] == 2_000 and card.balance_fen == 7_000


# ---------------------------------------------------------------------- tears
async def test_a_tear_before_initialize_leaves_nothing_to_settle(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    abandoned = await phone.start(order)  # INITIALIZE handed out, never reaches the card
    assert abandoned.status == 201
    done = await Phone(gateway, rider, card).load(order)
    assert done["done"]["orders"] == [order] and card.balance_fen == 7_000


async def test_a_tear_after_initialize_leaves_nothing_to_settle(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await (await phone.start(order)).json()
    phone.transmit(session)  # the card answered INITIALIZE; the phone lost the card
    retry = Phone(gateway, rider, card)
    done = await retry.load(order)
    assert [instruction(apdu) for apdu in retry.sent] == [INITIALIZE, CREDIT]
    assert done["done"]["orders"] == [order] and card.balance_fen == 7_000
    # The first session was superseded: its phone can no longer go on.
    late = await phone.answer(session, b"\x90\x00")
    assert late.status == 409
    assert (await late.json())["error"]["code"] == "ota_session_superseded"


@pytest.mark.parametrize("credited", [True, False], ids=["card_credited", "card_not_credited"])
async def test_a_tear_during_credit_for_load_is_settled_on_the_next_session(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, credited: bool
) -> None:
    """CREDIT FOR LOAD reached the card (which credited, or left the field first) but no answer
    reached the phone. The next session proves it: GET TRANSACTION PROVE gives the proof (the
    load completes, never twice), or 94 06 and an unchanged counter (the order loads again)."""
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    card.tear_after(1, commit=credited)
    with pytest.raises(CardTorn):
        phone.transmit(session)
    assert await status_of(gateway, rider, order) == "pending_load"

    retry = Phone(gateway, rider, card)
    done = await retry.load()
    expected = [PROVE] if credited else [PROVE, INITIALIZE, CREDIT]
    assert [instruction(apdu) for apdu in retry.sent] == expected
    assert done["done"]["orders"] == [order] and done["done"]["loaded_fen"] == 2_000
    assert card.balance_fen == 7_000  # once, whatever happened
    assert await status_of(gateway, rider, order) == "loaded"
    states = await pool.fetch("SELECT state FROM ota_loads WHERE order_id = $1 ORDER BY id", order)
    assert [row["state"] for row in states] == (
        ["completed"] if credited else ["not_credited", "completed"]
    )


async def test_a_tac_lost_between_phone_and_gateway_is_proven_on_the_next_session(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    phone.transmit(session)  # the card credited and answered its TAC; the phone went offline
    assert card.balance_fen == 7_000

    retry = Phone(gateway, rider, card)
    done = await retry.load(order)
    assert [instruction(apdu) for apdu in retry.sent] == [PROVE]
    assert done["done"] == {"balance_fen": 7_000, "loaded_fen": 2_000, "orders": [order],
                            "held": []}  # fmt: skip
    assert card.balance_fen == 7_000


# ---------------------------------------------------------------------- refusals
async def test_a_card_with_other_keys_is_refused_and_nothing_moves(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    card = new_card(master_load_key=bytes(16))  # not this issuer's card: MAC1 cannot verify
    rider = await linked_rider(gateway, card)
    order = await paid_card_topup(gateway, sandboxes, rider, card)
    phone = Phone(gateway, rider, card)
    session = await (await phone.start(order)).json()
    refused = await phone.answer(session, phone.transmit(session))
    assert refused.status == 422
    error = (await refused.json())["error"]
    assert error["code"] == "ota_load_failed" and error["details"]["reason"] == "card_not_genuine"
    assert card.balance_fen == 5_000
    assert await status_of(gateway, rider, order) == "pending_load"
    assert "card_float" not in await ledger_of_card(pool, asn_of(card))


async def test_a_forged_or_replayed_tac_is_not_taken_and_the_card_is_asked_for_proof(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    real = phone.transmit(session)  # the card credits and answers its TAC ...
    forged = await phone.answer(session, bytes(4) + b"\x90\x00")  # ... the phone sends another
    assert forged.status == 200
    proving = await forged.json()
    assert instruction(proving["next_apdu"]) == PROVE and "done" not in proving
    assert await status_of(gateway, rider, order) == "pending_load"
    # The real TAC, sent now for the old step, is refused too: the step moved on.
    assert (await phone.answer(session, real)).status == 409
    done = await phone.relay(proving)  # the card's own proof settles it
    assert done["done"]["orders"] == [order] and card.balance_fen == 7_000


async def test_two_sessions_for_one_order_only_one_loads(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    first, second = Phone(gateway, rider, card), Phone(gateway, rider, card)
    started = await asyncio.gather(first.start(order), second.start(order))
    assert [r.status for r in started] == [201, 201]
    sessions = [await r.json() for r in started]
    answers = []
    for phone, session in zip((first, second), sessions, strict=True):
        answers.append(await phone.answer(session, phone.transmit(session)))
    assert sorted(r.status for r in answers) == [200, 409]
    winner = next(i for i, r in enumerate(answers) if r.status == 200)
    done = await (first, second)[winner].relay(await answers[winner].json())
    assert done["done"]["orders"] == [order] and card.balance_fen == 7_000


async def test_another_riders_order_or_session_is_not_found(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    other_card = new_card()
    other = await linked_rider(gateway, other_card)
    response = await Phone(gateway, other, other_card).start(order)
    assert response.status == 404
    # The owner's card with the order, but the other rider relaying: 404 too.
    response = await Phone(gateway, other, card).start(order)
    assert response.status == 404
    session = await (await Phone(gateway, rider, card).start(order)).json()
    peek = await gateway.get(f"/v1/ota/sessions/{session['id']}", headers=other.auth)
    assert peek.status == 404
    answer = await Phone(gateway, other, card).answer(session, b"\x90\x00")
    assert answer.status == 404


async def test_bad_input_is_refused_and_changes_nothing(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    read = phone.read()
    other = new_card()
    bad_bodies = [
        {**read},  # neither order nor card
        {**read, "order_id": order, "card": asn_of(card)},  # both
        {**read, "order_id": order, "select_hex": "6F00"},  # not an FCI
        {**read, "order_id": order, "file_0015_hex": other.issuer_info.to_bytes().hex()},
        {**read, "card": asn_of(other)},  # the card read is not the card named
        {**read, "order_id": order, "balance_fen": -1},
        {**read, "order_id": order, "select_hex": "zz"},
    ]
    for body in bad_bodies:
        response = await gateway.post("/v1/ota/sessions", json=body, headers=rider.auth)
        assert response.status == 400, (body, await response.text())
    assert await pool.fetchval("SELECT count(*) FROM ota_sessions WHERE card_asn = $1",
                               asn_of(card)) == 0  # fmt: skip
    session = await (await phone.start(order)).json()
    for rapdu in ("", "90", "XYZW"):
        response = await gateway.post(
            f"/v1/ota/sessions/{session['id']}/responses",
            json={"step": session["step"], "rapdu": rapdu}, headers=rider.auth,
        )  # fmt: skip
        assert response.status == 400, rapdu
    unknown = await gateway.post(
        "/v1/ota/sessions/not-a-session/responses", json={"step": 1, "rapdu": "9000"},
        headers=rider.auth,
    )  # fmt: skip
    assert unknown.status == 404
    done = await phone.relay(session)  # the session is still as it was
    assert done["done"]["orders"] == [order]


# ---------------------------------------------------------------------- held for an operator
def load_elsewhere(card: SoftwareCard, amount_fen: int) -> None:
    """Another load terminal credits the card (its own terminal id): the card's online counter
    moves, and its proof for that counter is not ours."""
    issuer = Issuer(master_load_key=MLK, master_tac_key=MTK)
    terminal = bytes.fromhex("999999999999")
    card.reset()
    assert card.transmit(A.Select(CITY_CARD_AID).to_bytes())[-2:] == b"\x90\x00"
    command = A.InitializeForLoad(KEY_INDEX, amount_fen, terminal)
    answer = A.InitializeForLoadResponse.from_bytes(card.transmit(command.to_bytes())[:-2])
    load = LoadTransaction.from_initialize(card.asn, command, answer)
    now = datetime.now(UTC)
    credit = issuer.credit_for_load(load, bcd_date(now), bcd_time(now))
    assert card.transmit(credit.to_bytes())[-2:] == b"\x90\x00"


async def test_a_load_nobody_can_prove_is_held_and_an_operator_settles_it(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool, config: Config
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    card.tear_after(1, commit=False)
    with pytest.raises(CardTorn):
        phone.transmit(session)  # unsure: the card did not credit, but who can tell yet
    load_elsewhere(card, 1_000)  # and its counter moves before it comes back
    retry = Phone(gateway, rider, card)
    started = await retry.start(order)
    assert started.status == 201
    done = await retry.relay(await started.json())
    assert done["done"]["held"] == [order] and done["done"]["loaded_fen"] == 0
    assert card.balance_fen == 6_000  # only the other terminal's load
    assert await status_of(gateway, rider, order) == "pending_load"

    admin = await make.admin_token(pool, config)
    held = await (await gateway.get("/v1/admin/ota/unsure", headers=admin)).json()
    mine = [item for item in held["items"] if item["order_id"] == order]
    assert len(mine) == 1 and mine[0]["evidence"]["prove_answer"]
    auditor = await make.admin_token(pool, config, role="auditor")
    body = {"outcome": "not_credited", "reason": "card log shows no load from us"}
    forbidden = await gateway.post(f"/v1/admin/ota/{mine[0]['id']}/resolve", json=body,
                                   headers=auditor)  # fmt: skip
    assert forbidden.status == 403
    resolved = await gateway.post(f"/v1/admin/ota/{mine[0]['id']}/resolve", json=body,
                                  headers=admin)  # fmt: skip
    assert resolved.status == 200, await resolved.text()
    again = await gateway.post(f"/v1/admin/ota/{mine[0]['id']}/resolve", json=body,
                               headers=admin)  # fmt: skip
    assert again.status == 409
    audit = await pool.fetchrow("SELECT outcome, operator FROM ota_resolutions WHERE load_id = $1",
                                mine[0]["id"])  # fmt: skip
    assert audit["outcome"] == "not_credited"
    # Not credited: the order loads again, once.
    done = await Phone(gateway, rider, card).load(order)
    assert done["done"]["orders"] == [order] and card.balance_fen == 8_000
    balances = await ledger_of_card(pool, asn_of(card))
    assert balances["card_float"] == 8_000 and balances["pending_load"] == 0


async def test_a_top_up_that_may_be_on_the_chip_is_not_refunded_until_settled(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    phone.transmit(session)  # CREDIT handed out and done; the gateway never hears back

    async def refund() -> Any:
        return await gateway.post(
            f"/v1/topups/{order}/refunds", json={"amount_fen": 2_000, "reason": "never mind"},
            headers={**rider.auth, "Idempotency-Key": secrets.token_hex(8)},
        )  # fmt: skip

    refused = await refund()
    assert refused.status == 409, await refused.text()
    assert (await refused.json())["error"]["code"] == "topup_load_in_progress"
    await Phone(gateway, rider, card).load()  # the proof settles it: loaded
    assert await status_of(gateway, rider, order) == "loaded"
    assert card.balance_fen == 7_000
    after = await refund()
    assert after.status == 422  # a loaded top-up is on the chip: not refundable here
