"""The OTA area's service: sessions for riders, held loads for operators, and the refund of
card top-ups nobody came to load."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from gateway import errors
from gateway.config import Config
from gateway.context import CONFIG, KEYSTORE, POOL
from gateway.ota import sessions
from gateway.ota.ism import SecurityModule
from gateway.ota.sessions import Answer, Engine, Load, LoadState, Session, Step
from gateway.topups import cards
from gateway.topups import partners as partner_topups
from gateway.topups.orders import BEIJING
from gateway.topups.service import TOPUPS, Topups
from gateway.workers import Periodic
from hce import apdu as A


@dataclass(frozen=True)
class CardRead:
    """What the phone read from the card before the session: SELECT's answer, file 0015 and
    GET BALANCE (unauthenticated: the session's INITIALIZE answer is what is trusted)."""

    select: bytes
    file_0015: bytes
    balance_fen: int


# Card top-ups paid before a moment, still waiting to be loaded, with no load of them that may
# be on the chip: oldest first.
_UNLOADED = """
SELECT o.id, o.channel FROM topup_orders o
 WHERE o.state = 'pending_load' AND o.paid_at < $1 AND o.flag IS NULL
   AND (o.channel IS NULL OR o.channel = ANY($3::text[]))
   AND NOT EXISTS (SELECT 1 FROM ota_loads l WHERE l.order_id = o.id
                      AND l.state IN ('initialized', 'crediting', 'unsure', 'held'))
 ORDER BY o.paid_at LIMIT $2
"""
REFUND_BATCH_MAX = 100


class Ota:
    def __init__(
        self, pool: asyncpg.Pool, config: Config, ism: SecurityModule, topups: Topups
    ) -> None:
        self.pool = pool
        self.config = config
        self.ism = ism
        self.topups = topups
        self.engine = Engine(ism, config)

    async def start(
        self, rider_id: int, read: CardRead, order_id: int | None, card_asn: str | None
    ) -> Step:
        """A session for the card the phone holds: for one order, or for every load pending on
        the card (`card_asn`)."""
        checked = _checked(read, card_asn)
        async with self.pool.acquire() as conn, conn.transaction():
            return await self.engine.start(conn, rider_id, checked, order_id)

    async def respond(self, rider_id: int, session_id: str, step: int, rapdu: bytes) -> Answer:
        found = _session_id(session_id)
        async with self.pool.acquire() as conn, conn.transaction():
            return await self.engine.respond(conn, rider_id, found, step, rapdu)

    async def session(self, rider_id: int, session_id: str) -> tuple[Session, list[Load]]:
        return await sessions.get_session(self.pool, rider_id, _session_id(session_id))

    # ------------------------------------------------------------------ loads never picked up
    async def refund_unloaded(self, now: datetime) -> int:
        """Card top-ups paid more than `ota_refund_after_days` before `now` and still not
        loaded go back the way they were paid: through their channel, or to the partner's
        float (a channel this gateway has no credentials for waits). How many were refunded
        (a full batch: call again)."""
        days = self.config.ota_refund_after_days
        reason = f"not loaded onto the card within {days} days"
        channels = [channel.value for channel in self.topups.channels.configured]
        due = await self.pool.fetch(
            _UNLOADED, now - timedelta(days=days), REFUND_BATCH_MAX, channels
        )
        refunded = 0
        for row in due:
            if row["channel"] is not None:
                refunded += await self.topups.refund_unloaded(row["id"], reason) is not None
                continue
            async with self.pool.acquire() as conn, conn.transaction():
                refunded += await partner_topups.refund_unloaded(
                    conn, row["id"], reason, self.config
                )
        return refunded

    # ------------------------------------------------------------------ operators
    async def unsettled(self, limit: int, after_id: int | None) -> list[Load]:
        """Loads that may be on a chip and are not settled: held for an operator, or unsure
        (waiting for the card's next session, which may never come: a card lost or broken)."""
        return await sessions.unsettled_loads(self.pool, limit, after_id)

    async def resolve(self, load_id: int, credited: bool, reason: str, operator: str) -> Load:
        """An operator's decision on a held or unsure load, written to the audit trail; money
        moves only as it says (credited: pending load -> card float; not credited: nothing,
        the order can be loaded again or refunded)."""
        async with self.pool.acquire() as conn, conn.transaction():
            asn = await conn.fetchval("SELECT card_asn FROM ota_loads WHERE id = $1", load_id)
            if asn is None:
                raise errors.NOT_FOUND.error()
            card = await sessions.lock_card(conn, asn)  # the card first: the sessions' lock order
            assert card is not None
            load = await sessions.lock_load(conn, load_id)
            assert load is not None
            if load.state not in (LoadState.HELD, LoadState.UNSURE):
                raise errors.OTA_LOAD_NOT_HELD.error(state=load.state.value)
            outcome = "credited" if credited else "not_credited"
            await conn.execute(
                "INSERT INTO ota_resolutions (load_id, outcome, reason, operator) "
                "VALUES ($1, $2, $3, $4)",
                load.id, outcome, reason, operator,
            )  # fmt: skip
            decision = {"operator": operator, "outcome": outcome, "reason": reason}
            if credited:
                evidence = {"decision": decision}
                await sessions.complete_load(conn, self.config, load, None, evidence, card)
            else:
                await conn.execute(
                    "UPDATE ota_loads SET state = 'not_credited', evidence = evidence || $2 "
                    "WHERE id = $1",
                    load.id, {"decision": decision},
                )  # fmt: skip
            found = await sessions.lock_load(conn, load.id)
            assert found is not None
            return found


def _session_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise errors.NOT_FOUND.error() from None


def _checked(read: CardRead, card_asn: str | None) -> cards.ReadCard:
    """The card as read, consistent with itself: SELECT's file 0015 is the one read, names the
    card asked for, and is a physical card valid today; 400 `card_unreadable` otherwise."""
    try:
        fci = A.SelectResponse.from_bytes(read.select)
    except A.ApduError:
        raise errors.CARD_UNREADABLE.error("The SELECT answer is not an e-purse's.") from None
    if fci.issuer_info.to_bytes() != read.file_0015:
        raise errors.CARD_UNREADABLE.error("File 0015 is not the one SELECT named.")
    asn = fci.issuer_info.asn.hex()
    if card_asn is not None and card_asn != asn:
        raise errors.CARD_UNREADABLE.error("The card read is not the card asked for.")
    return cards.read_issuer_info(asn, read.file_0015, datetime.now(BEIJING).date())


OTA = web.AppKey("ota", Ota)
RELOAD_KEYS_INTERVAL_S = 60.0
REFUND_UNLOADED_INTERVAL_S = 3600.0


async def setup(app: web.Application) -> AsyncIterator[None]:
    async with app[POOL].acquire() as conn:
        ism = await SecurityModule.load(conn, app[KEYSTORE])
    app[OTA] = Ota(app[POOL], app[CONFIG], ism, app[TOPUPS])
    yield


def evidence_view(load: Load) -> dict[str, Any]:
    return {
        "key_version": load.key_version, "balance_fen": load.balance_fen,
        "online_counter": load.online_counter,
        "random": load.random.hex().upper() if load.random else None,
        "date": load.date.hex() if load.date else None,
        "time": load.time.hex() if load.time else None,
        "mac2": load.mac2.hex().upper() if load.mac2 else None,
        "terminal_id": load.terminal_id.hex().upper(), **load.evidence,
    }  # fmt: skip


async def _reload_keys(app: web.Application) -> None:
    """Card master keys imported, rotated or retired by `onecard keys`, in every process."""
    async with app[POOL].acquire() as conn:
        await app[OTA].ism.reload(conn)


RELOAD_CARD_KEYS = Periodic("ota-reload-card-keys", RELOAD_KEYS_INTERVAL_S, _reload_keys,
                            first_after_interval=True)  # fmt: skip


async def _refund_unloaded(app: web.Application) -> None:
    while await app[OTA].refund_unloaded(datetime.now(UTC)) == REFUND_BATCH_MAX:
        pass  # a backlog: keep going while whole batches are refunded


REFUND_UNLOADED = Periodic("ota-refund-unloaded", REFUND_UNLOADED_INTERVAL_S, _refund_unloaded)
