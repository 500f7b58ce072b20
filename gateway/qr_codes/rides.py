"""QR rides uploaded by gates: re-verify each code, refuse replays, debit the rider's wallet.

Per ride, in order (the first refusal is the answer):
1. the tap time is within `ONECARD_QR_RIDE_AGE_MAX_S` before and `TAP_FUTURE_S_MAX` after the
   server's clock, else `tap_time_out_of_window`;
2. `qr.verify.verify` at the tap time with the issuer keys that verified then: `malformed` ...
   `bad_device_signature` as the gate reports them;
3. the replay key is claimed in Redis (SET NX, the terminal as value): held by another terminal
   -> `replayed` at once. Redis is the fast path only; when it fails or forgets, step 4 decides;
4. one PostgreSQL transaction: the ride row goes in under its unique replay key. Already there
   -> `duplicate` when this terminal uploaded it before and it was accepted (its stored
   rejection when it was refused), `replayed` when another terminal did. Otherwise it is
   refused when the deny list held the account (`account_denied`) or the device
   (`device_revoked`) at the tap, when the fare is above the certificate's ceiling
   (`fare_above_ceiling`) or the rider has no wallet (`unknown_account`); else the fare moves
   from the wallet to the terminal operator's `operator_payable` account in one ledger txn
   whose ref is the replay key. A fare the wallet cannot pay is refused
   (`insufficient_balance`), nothing is debited, and the account goes on the deny list.

A refused ride whose code verified is stored too: its code was spent at the gate, so an upload
from another gate is a replay, and the same gate uploading again gets the same answer. A code
that did not verify is never stored and never burns a replay key.

This module owns `qr_rides`; it moves money only through `gateway.ledger.post`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.ledger import AccountKind, FloorBreach, Leg, TxnKind, open_account, post
from gateway.ledger.accounts import find_account
from gateway.qr_codes import deny_list
from gateway.qr_codes.issuer_keys import IssuerKeys
from qr.format import TYPE_OFFLINE, decode_text
from qr.reasons import Reason
from qr.verify import Verdict, verify

log = logging.getLogger(__name__)

RIDES_PER_BATCH_MAX: Final = 1000
TAP_FUTURE_S_MAX: Final = 300
# Redis remembers a ride this long; PostgreSQL's unique replay key remembers it for ever.
REPLAY_CACHE_TTL_S: Final = 3600


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class GatewayReason(enum.StrEnum):
    """Refusals only the gateway can make, beside the gate's own (`qr.reasons.Reason`)."""

    TAP_TIME_OUT_OF_WINDOW = "tap_time_out_of_window"
    FARE_ABOVE_CEILING = "fare_above_ceiling"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    UNKNOWN_ACCOUNT = "unknown_account"


@dataclass(frozen=True)
class Ride:
    code: str  # text form (unpadded base64url)
    fare_fen: int
    tapped_at: int  # the gate's clock, unix s


@dataclass(frozen=True)
class Gate:
    terminal_id: str
    operator: str


@dataclass(frozen=True)
class Result:
    status: Status
    reason: str | None = None
    ride_id: int | None = None


def _refused(reason: str, ride_id: int | None = None) -> Result:
    return Result(Status.REJECTED, reason, ride_id)


@dataclass(frozen=True)
class Uploader:
    """What a ride upload needs besides the rides; one per request."""

    pool: asyncpg.Pool
    redis: redis.Redis
    redis_prefix: str
    keys: IssuerKeys
    age_max_s: int
    # An online code carries no ceiling of its own: its fare is bounded by the largest
    # single-ride ceiling a certificate could have.
    online_fare_max_fen: int

    async def upload(self, gate: Gate, rides: list[Ride], now: int) -> list[Result]:
        assert len(rides) <= RIDES_PER_BATCH_MAX, "the route refuses larger batches"
        # Verify every code before taking a connection: a key reload needs one of its own, and
        # holding one while waiting for another can exhaust the pool under a burst of uploads.
        checked = [await self._check(ride, now) for ride in rides]
        async with self.pool.acquire() as conn:
            payable = await open_account(conn, AccountKind.OPERATOR_PAYABLE, gate.operator)
            return [
                outcome if isinstance(outcome, Result)
                else await self._one(conn, gate, payable, ride, outcome)
                for ride, outcome in zip(rides, checked, strict=True)
            ]  # fmt: skip

    async def _check(self, ride: Ride, now: int) -> Result | Verdict:
        """The refusal of a ride that fails verification, or its verdict when it passes."""
        if not now - self.age_max_s <= ride.tapped_at <= now + TAP_FUTURE_S_MAX:
            return _refused(GatewayReason.TAP_TIME_OUT_OF_WINDOW)
        verdict = await self._verify(ride)
        if not verdict.ok:
            assert verdict.reason is not None
            return _refused(verdict.reason)
        return verdict

    async def _one(
        self, conn: asyncpg.Connection, gate: Gate, payable: int, ride: Ride, verdict: Verdict
    ) -> Result:
        assert verdict.replay_key is not None and verdict.account_id is not None
        if not await self._claim(verdict.replay_key, gate.terminal_id):
            return _refused(Reason.REPLAYED)
        result = await _record(conn, gate, payable, ride, verdict, self.online_fare_max_fen)
        if result.reason is Reason.REPLAYED:
            # Redis had forgotten the ride and this gate's claim is wrong: drop it, so the gate
            # that did upload the ride still gets its `duplicate`.
            await self._forget(verdict.replay_key)
        return result

    async def _verify(self, ride: Ride) -> Verdict:
        at = ride.tapped_at
        verdict = verify(ride.code, self.keys.verifying_at(at), at, cert_cache=self.keys.cert_cache)
        if verdict.reason is Reason.UNKNOWN_ISSUER_KEY and await self.keys.reload_if_stale():
            # A key rotated on another worker since this one loaded its keys.
            verdict = verify(
                ride.code, self.keys.verifying_at(at), at, cert_cache=self.keys.cert_cache
            )
        return verdict

    async def _claim(self, replay_key: bytes, terminal_id: str) -> bool:
        """False when Redis knows another terminal uploaded this code (a replay)."""
        key = f"{self.redis_prefix}qr-ride:{replay_key.hex()}"
        try:
            if await self.redis.set(key, terminal_id, nx=True, ex=REPLAY_CACHE_TTL_S):
                return True
            holder = await self.redis.get(key)
        except (RedisError, OSError):
            log.warning("QR replay fast path skipped: Redis unavailable")
            return True  # PostgreSQL's unique replay key still refuses the replay
        return holder is None or holder == terminal_id.encode()

    async def _forget(self, replay_key: bytes) -> None:
        try:
            await self.redis.delete(f"{self.redis_prefix}qr-ride:{replay_key.hex()}")
        except (RedisError, OSError):
            log.warning("QR replay fast path: could not drop a claim, Redis unavailable")


_INSERT = """
INSERT INTO qr_rides (replay_key, code, rider_id, terminal_id, operator, fare_fen, tapped_at,
                      status, reason)
VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8, $9)
ON CONFLICT (replay_key) DO NOTHING
RETURNING id
"""

_EXISTING = "SELECT id, terminal_id, status, reason FROM qr_rides WHERE replay_key = $1"

_SETTLED = "UPDATE qr_rides SET txn_id = $2 WHERE id = $1"

_UNPAID = "UPDATE qr_rides SET status = 'rejected', reason = $2 WHERE id = $1"


async def _record(
    conn: asyncpg.Connection,
    gate: Gate,
    payable: int,
    ride: Ride,
    verdict: Verdict,
    online_fare_max_fen: int,
) -> Result:
    account = verdict.account_id
    assert account is not None and verdict.replay_key is not None
    async with conn.transaction():
        refusal: str | None = await deny_list.refusal_at(
            conn, account, verdict.device_fingerprint, ride.tapped_at
        )
        ceiling = verdict.ceiling_fen if verdict.type == TYPE_OFFLINE else online_fare_max_fen
        if refusal is None and ceiling is not None and ride.fare_fen > ceiling:
            refusal = GatewayReason.FARE_ABOVE_CEILING
        wallet = await find_account(conn, AccountKind.RIDER_WALLET, str(account))
        if refusal is None and wallet is None:
            refusal = GatewayReason.UNKNOWN_ACCOUNT
        ride_id: int | None = await conn.fetchval(
            _INSERT, verdict.replay_key, decode_text(ride.code), account, gate.terminal_id,
            gate.operator, ride.fare_fen, ride.tapped_at,
            Status.REJECTED.value if refusal else Status.ACCEPTED.value, refusal,
        )  # fmt: skip
        if ride_id is None:
            return await _earlier_answer(conn, gate, verdict.replay_key)
        if refusal is not None:
            return _refused(refusal, ride_id)
        assert wallet is not None
        legs = [Leg(wallet["id"], -ride.fare_fen), Leg(payable, ride.fare_fen)]
        return await _debit(conn, ride_id, account, legs, gate, verdict.replay_key)


async def _debit(
    conn: asyncpg.Connection,
    ride_id: int,
    account: int,
    legs: list[Leg],
    gate: Gate,
    replay_key: bytes,
) -> Result:
    try:
        async with conn.transaction():  # a savepoint: a refused posting leaves the ride row
            posting = await post(
                conn, TxnKind.QR_RIDE, legs, ref=f"qr:{replay_key.hex()}",
                memo=f"QR ride, gate {gate.terminal_id} ({gate.operator})",
            )  # fmt: skip
    except FloorBreach:
        await conn.execute(_UNPAID, ride_id, GatewayReason.INSUFFICIENT_BALANCE.value)
        await deny_list.deny_account(conn, account, GatewayReason.INSUFFICIENT_BALANCE.value)
        return _refused(GatewayReason.INSUFFICIENT_BALANCE, ride_id)
    await conn.execute(_SETTLED, ride_id, posting.txn_id)
    return Result(Status.ACCEPTED, None, ride_id)


async def _earlier_answer(conn: asyncpg.Connection, gate: Gate, replay_key: bytes) -> Result:
    row = await conn.fetchrow(_EXISTING, replay_key)
    assert row is not None, "a conflicting ride row exists once the insert returns nothing"
    if row["terminal_id"] != gate.terminal_id:
        return _refused(Reason.REPLAYED)
    if row["status"] == Status.ACCEPTED:
        return Result(Status.DUPLICATE, None, row["id"])
    return _refused(row["reason"], row["id"])
