"""The taps area's service: batch uploads of taps from gates, and the signed deny list.

Built once at start (`setup`), after the QR codes area: QR rides verify against the QR issuer
keys that area loads, and the deny list is signed with its current key. Handlers call one
method of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from gateway.context import CONFIG, METRICS, POOL, REDIS
from gateway.metrics import Counter as MetricCounter
from gateway.qr_codes.issuer_keys import IssuerKeys
from gateway.qr_codes.service import QR_CODES
from gateway.taps import deny_list
from gateway.taps.checks import LEDGER_CHECKS as LEDGER_CHECKS  # the area's, for areas.py
from gateway.taps.ingest import Gate, Result
from gateway.taps.qr_rides import QrRides, Ride
from qr.signing import sign_raw

# Turns a page of entries into the exact response body that gets signed.
Render = Callable[[list[deny_list.Entry]], bytes]


@dataclass(frozen=True)
class Signed:
    """A response body and the issuer key's signature over its exact bytes."""

    body: bytes
    key_id: int
    signature: bytes


class Taps:
    def __init__(
        self, pool: asyncpg.Pool, keys: IssuerKeys, qr_rides: QrRides, outcomes: MetricCounter
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.qr_rides = qr_rides
        self._qr_outcomes = outcomes

    async def upload_qr_rides(self, gate: Gate, rides: Sequence[Ride], now: int) -> list[Result]:
        """Each ride verified again, debited once; its answer, in order."""
        results = await self.qr_rides.upload(gate, rides, now)
        counts = Counter((r.status.value, str(r.reason or "")) for r in results)
        for labels, count in counts.items():
            self._qr_outcomes.inc(labels, count)
        return results

    async def deny_list_delta(
        self,
        since: int,
        limit: int,
        kinds: Sequence[deny_list.Kind],
        render: Render,
    ) -> Signed:
        """Deny-list entries of `kinds` after `since`, rendered by the caller and signed by the
        current QR issuer key over the exact bytes."""
        entries = await deny_list.delta(self.pool, since, limit, kinds)
        body = render(entries)
        key = await self.keys.current()
        return Signed(body, key.key_id, sign_raw(key.private, body))


TAPS = web.AppKey("taps", Taps)


async def setup(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    keys = app[QR_CODES].keys
    qr_rides = QrRides(
        app[POOL], app[REDIS], config.redis_prefix, keys, config.qr_ride_age_max_s,
        config.qr_ride_ceiling_fen_max,
    )  # fmt: skip
    outcomes = app[METRICS].counter(
        "onecard_qr_rides_total", "QR rides uploaded by gates, by outcome", ("status", "reason")
    )
    app[TAPS] = Taps(app[POOL], keys, qr_rides, outcomes)
    yield
