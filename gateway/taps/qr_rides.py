"""QR rides uploaded by gates: the QR kind's checks, in Python, before the one ingest path.

Per ride, in order (the first refusal is the answer):
1. the tap time is within `ONECARD_QR_RIDE_AGE_MAX_S` before and `TAP_FUTURE_S_MAX` after the
   server's clock, else `tap_time_out_of_window`;
2. `qr.verify.verify` at the tap time with the issuer keys that verified then: `malformed` ...
   `bad_device_signature` as the gate reports them;
3. the replay key is claimed in Redis (`replay`, one pipeline for the batch): held by another
   terminal -> `replayed` at once. When Redis fails or forgets, step 5 decides. Meanwhile
   PostgreSQL is asked, in one query each for the whole batch, which deny-list entries were in
   force at each tap and which riders have a wallet;
4. the ride is refused when the deny list held the account (`account_denied`) or the device
   (`device_revoked`) at the tap, when the fare is above the certificate's ceiling
   (`fare_above_ceiling`) or when the rider has no wallet (`unknown_account`);
5. one PostgreSQL transaction for the batch: `ingest.store` claims the replay keys
   (`duplicate` / `replayed` / the stored refusal for a key taken before) and moves each fare
   from the wallet to the terminal operator's `operator_payable`, one ledger txn per ride whose
   ref is `qr:<replay key hex>`. A fare the wallet cannot pay is refused
   (`insufficient_balance`), nothing is debited, and the account goes on the deny list.

A code that did not verify is never stored and never burns a replay key. The same code twice in
one batch is stored once; the second gets the first's answer as a re-upload would (`duplicate`
when accepted). Within a batch a rider's rides are judged on the wallet in order: the deny-list
entry an unpaid ride makes applies to taps from then on, not to the rest of its own batch.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import asyncpg
import redis.asyncio as redis
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.ledger import AccountKind, accounts_of_owners, open_account
from gateway.qr_codes.issuer_keys import IssuerKeys
from gateway.taps import deny_list, ingest, replay
from gateway.taps.ingest import Gate, Result, Status, Tap, refused
from qr.format import TYPE_OFFLINE, Malformed, decode_text
from qr.reasons import Reason
from qr.verify import Verdict, verify

RIDES_PER_BATCH_MAX: Final = ingest.TAPS_PER_BATCH_MAX
TAP_FUTURE_S_MAX: Final = 300
REDIS_KEY: Final = "qr-ride"


class GatewayReason(enum.StrEnum):
    """Refusals only the gateway can make, beside the gate's own (`qr.reasons.Reason`)."""

    TAP_TIME_OUT_OF_WINDOW = "tap_time_out_of_window"
    FARE_ABOVE_CEILING = "fare_above_ceiling"
    INSUFFICIENT_BALANCE = deny_list.UNPAID
    UNKNOWN_ACCOUNT = "unknown_account"


@dataclass(frozen=True)
class Ride:
    code: str  # text form (unpadded base64url)
    fare_fen: int
    tapped_at: int  # the gate's clock, unix s


@dataclass(frozen=True)
class _Facts:
    """What PostgreSQL knows of a batch's rides before storing them."""

    payable: int  # the gate operator's account
    refusals: list[Reason | None]  # the deny list's, one per ride
    wallets: dict[str, int]  # rider id (text) -> wallet account id


class _Checked(NamedTuple):
    code: bytes
    verdict: Verdict


@dataclass(frozen=True)
class _Verified:
    """A ride whose code verified, the first in its batch with its replay key."""

    position: int
    ride: Ride
    code: bytes
    verdict: Verdict

    @property
    def replay_key(self) -> bytes:
        assert self.verdict.replay_key is not None
        return self.verdict.replay_key

    @property
    def account_id(self) -> int:
        assert self.verdict.account_id is not None
        return self.verdict.account_id


@dataclass(frozen=True)
class QrRides:
    """The QR kind's upload: built once by the taps service."""

    pool: asyncpg.Pool
    redis: redis.Redis
    redis_prefix: str
    keys: IssuerKeys
    age_max_s: int
    # An online code carries no ceiling of its own: its fare is bounded by the largest
    # single-ride ceiling a certificate could have.
    online_fare_max_fen: int

    async def upload(self, gate: Gate, rides: Sequence[Ride], now: int) -> list[Result]:
        """The answer for each ride, in order."""
        assert len(rides) <= RIDES_PER_BATCH_MAX, "the route refuses larger batches"
        # Verify every code before taking a connection: a key reload needs one of its own, and
        # holding one while waiting for another can exhaust the pool under a burst of uploads.
        checked = await self._check_all(rides, now)
        results: list[Result | None] = [c if isinstance(c, Result) else None for c in checked]
        verified, repeats = _first_of_each_code(rides, checked)
        if verified:
            answers = await self._claim_and_store(gate, verified)
            for ride, result in zip(verified, answers, strict=True):
                results[ride.position] = result
        for i, first_at in repeats:
            earlier = results[first_at]
            assert earlier is not None
            results[i] = _repeated(earlier)
        assert all(result is not None for result in results)
        return [r for r in results if r is not None]

    async def _check_all(self, rides: Sequence[Ride], now: int) -> list[Result | _Checked]:
        """The refusal of each ride that fails verification, or its verdict when it passes."""
        keys_at: dict[int, Mapping[int, ec.EllipticCurvePublicKey]] = {}
        checked = [self._check(ride, now, keys_at) for ride in rides]
        unknown_key = [
            i for i, c in enumerate(checked)
            if isinstance(c, Result) and c.reason is Reason.UNKNOWN_ISSUER_KEY
        ]  # fmt: skip
        if unknown_key and await self.keys.reload_if_stale():
            # A key rotated on another worker since this one loaded its keys.
            keys_at.clear()
            for i in unknown_key:
                checked[i] = self._check(rides[i], now, keys_at)
        return checked

    def _check(
        self, ride: Ride, now: int, keys_at: dict[int, Mapping[int, ec.EllipticCurvePublicKey]]
    ) -> Result | _Checked:
        if not now - self.age_max_s <= ride.tapped_at <= now + TAP_FUTURE_S_MAX:
            return refused(GatewayReason.TAP_TIME_OUT_OF_WINDOW)
        try:
            code = decode_text(ride.code)
        except Malformed:
            return refused(Reason.MALFORMED)
        at = ride.tapped_at
        keys = keys_at.get(at)
        if keys is None:
            keys = keys_at[at] = self.keys.verifying_at(at)
        verdict = verify(code, keys, at, cert_cache=self.keys.cert_cache)
        if not verdict.ok:
            assert verdict.reason is not None
            return refused(verdict.reason)
        return _Checked(code, verdict)

    def _redis_key(self, replay_key: bytes) -> str:
        return f"{self.redis_prefix}{REDIS_KEY}:{replay_key.hex()}"

    async def _claim_and_store(self, gate: Gate, rides: list[_Verified]) -> list[Result]:
        """Steps 3 to 5 for rides whose codes verified: the answer for each, in order."""
        keys = [self._redis_key(ride.replay_key) for ride in rides]
        results: dict[int, Result] = {}
        async with self.pool.acquire() as conn:
            # What PostgreSQL knows of the rides is read while Redis answers the claims.
            async with asyncio.TaskGroup() as group:
                reading = group.create_task(self._facts(conn, gate, rides))
                claiming = group.create_task(replay.claim(self.redis, keys, gate.terminal_id))
            facts, claims = reading.result(), claiming.result()
            claimed = [i for i, ok in enumerate(claims) if ok]
            results.update((i, refused(Reason.REPLAYED)) for i, ok in enumerate(claims) if not ok)
            if claimed:
                taps = [self._tap(rides[i], facts.refusals[i], facts.wallets) for i in claimed]
                async with conn.transaction():
                    stored = await ingest.store(conn, ingest.QR, gate, taps, facts.payable)
                    unpaid = sorted({rides[claimed[j]].account_id for j in stored.unpaid})
                    if unpaid:
                        await deny_list.deny_accounts(conn, unpaid, deny_list.UNPAID)
                results.update(zip(claimed, stored.results, strict=True))
        # Redis had forgotten these rides and this gate's claims are wrong: drop them, so the
        # gate that did upload each ride still gets its `duplicate`.
        wrong = [keys[i] for i in claimed if results[i].reason is Reason.REPLAYED]
        await replay.forget(self.redis, wrong)
        return [results[i] for i in range(len(rides))]

    async def _facts(self, conn: asyncpg.Connection, gate: Gate, rides: list[_Verified]) -> _Facts:
        payable = await open_account(conn, AccountKind.OPERATOR_PAYABLE, gate.operator)
        refusals = await deny_list.qr_refusals_at(
            conn,
            [deny_list.QrTap(r.account_id, r.verdict.device_fingerprint, r.ride.tapped_at)
             for r in rides],
        )  # fmt: skip
        owners = sorted({str(r.account_id) for r in rides})
        wallets = await accounts_of_owners(conn, AccountKind.RIDER_WALLET, owners)
        return _Facts(payable, refusals, wallets)

    def _tap(self, ride: _Verified, refusal: Reason | None, wallets: dict[str, int]) -> Tap:
        """The ride with the refusal the deny list, its ceiling or its missing wallet makes."""
        verdict = ride.verdict
        ceiling = verdict.ceiling_fen if verdict.type == TYPE_OFFLINE else None
        ceiling = self.online_fare_max_fen if ceiling is None else ceiling
        wallet = wallets.get(str(ride.account_id))
        reason: str | None = refusal
        if reason is None and ride.ride.fare_fen > ceiling:
            reason = GatewayReason.FARE_ABOVE_CEILING
        if reason is None and wallet is None:
            reason = GatewayReason.UNKNOWN_ACCOUNT
        return Tap(
            ride.replay_key, ride.code, ride.account_id, ride.ride.fare_fen, ride.ride.tapped_at,
            None if reason else wallet, reason,
        )  # fmt: skip


def _first_of_each_code(
    rides: Sequence[Ride], checked: list[Result | _Checked]
) -> tuple[list[_Verified], list[tuple[int, int]]]:
    """The rides whose codes verified, the first of each replay key only; and (position, the
    position of its first) for each repeat of a code within the batch."""
    first: dict[bytes, _Verified] = {}
    repeats = []
    for i, check in enumerate(checked):
        if isinstance(check, _Checked):
            key = check.verdict.replay_key
            assert key is not None, "a verified code has a replay key"
            if key in first:
                repeats.append((i, first[key].position))
            else:
                first[key] = _Verified(i, rides[i], check.code, check.verdict)
    return list(first.values()), repeats


def _repeated(earlier: Result) -> Result:
    """The answer for a code repeated within one batch: what re-uploading it would get."""
    if earlier.status in (Status.ACCEPTED, Status.DUPLICATE):
        return Result(Status.DUPLICATE, None, earlier.tap_id)
    return earlier
