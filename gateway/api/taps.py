"""Tap routes for gates: batch uploads of taps, and the one signed deny list.

QR rides keep their URLs (`POST /v1/qr/rides`, `GET /v1/qr/deny-list`) so gates keep working;
`GET /v1/taps/deny-list` is the same list with every kind of entry. Binary fields are lowercase
hex; codes travel in their text form (unpadded base64url, `shared/QR_FORMAT.md`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.responses import JSON, encode
from gateway.taps import deny_list
from gateway.taps.ingest import Gate
from gateway.taps.qr_rides import RIDES_PER_BATCH_MAX, Ride
from gateway.taps.service import TAPS, Render, Signed
from qr.format import TEXT_CHARS_MAX

routes = RouteTable("taps")
TERMINAL = {PrincipalKind.TERMINAL}
FARE_FEN_MAX = 1_000_000  # ¥10,000: far above any fare, well inside a certificate's u32
CODE_CHARS_MAX = 2 * TEXT_CHARS_MAX  # longer is surely not a code; shorter ones get a reason
SIGNATURE_HEADER = "OC-Signature"
SIGNATURE_KEY_HEADER = "OC-Signature-Key-Id"
# A full batch of offline codes is about 340 bytes a ride in JSON: 1,000 rides fit in 512 KiB.
RIDE_BATCH_BYTES_MAX = 512 * 1024


class RideIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=CODE_CHARS_MAX, description="text form")]
    fare_fen: Annotated[int, msgspec.Meta(ge=1, le=FARE_FEN_MAX)]
    tapped_at: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1, description="gate clock, unix s")]


class RideBatch(msgspec.Struct, forbid_unknown_fields=True):
    rides: Annotated[
        list[RideIn], msgspec.Meta(description=f"at most {RIDES_PER_BATCH_MAX} (else 413)")
    ]


class RideResultOut(msgspec.Struct):
    index: int
    status: str  # accepted | duplicate | rejected
    reason: str | None
    ride_id: int | None


class RideResults(msgspec.Struct):
    results: list[RideResultOut]


class DenyQuery(msgspec.Struct, forbid_unknown_fields=True):
    since: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1, description="the last version seen")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=deny_list.ENTRIES_PER_PAGE_MAX)] = (
        deny_list.ENTRIES_PER_PAGE_MAX
    )


class DenyEntryOut(msgspec.Struct):
    version: int
    kind: str  # account | device
    action: str  # add | remove
    account_id: int | None
    device_fingerprint: str | None
    expires_at: int | None


class DenyListDelta(msgspec.Struct):
    since: int
    version: int  # pass it back as `since`
    more: bool
    generated_at: int
    entries: list[DenyEntryOut]


class TapsDenyEntryOut(msgspec.Struct):
    version: int
    kind: str  # account | device | card | virtual_card
    action: str  # add | remove
    account_id: int | None
    device_fingerprint: str | None
    card_number: Annotated[str | None, msgspec.Meta(description="ASN, 10 bytes, hex")]
    expires_at: int | None


class TapsDenyListDelta(msgspec.Struct):
    since: int
    version: int  # pass it back as `since`
    more: bool
    generated_at: int
    entries: list[TapsDenyEntryOut]


@routes.post(
    "/v1/qr/rides", body=RideBatch, response=RideResults, principals=TERMINAL,
    errors=("qr_batch_too_large", "body_too_large"), body_bytes_max=RIDE_BATCH_BYTES_MAX,
)  # fmt: skip
async def upload_rides(call: Call) -> RideResults:
    """Rides a gate accepted: each is verified again, debited once, and answered `accepted`,
    `duplicate` (this gate uploaded it before) or `rejected` with a reason.

    No Idempotency-Key: every ride is idempotent on its own replay key (one ride row and one
    ledger txn per code, whatever the request), so uploading a batch again is always safe and
    answers each ride afresh, which a stored whole-batch answer could not after a partial run.
    """
    assert call.caller.operator is not None, "every terminal belongs to an operator"
    batch: RideBatch = call.body
    if len(batch.rides) > RIDES_PER_BATCH_MAX:
        raise errors.QR_BATCH_TOO_LARGE.error(rides_max=RIDES_PER_BATCH_MAX)
    results = await call.app[TAPS].upload_qr_rides(
        Gate(call.caller.id, call.caller.operator),
        [Ride(r.code, r.fare_fen, r.tapped_at) for r in batch.rides], int(time.time()),
    )  # fmt: skip
    return RideResults(
        [RideResultOut(i, r.status.value, r.reason and str(r.reason), r.tap_id)
         for i, r in enumerate(results)]
    )  # fmt: skip


def _page(query: DenyQuery, entries: Sequence[deny_list.Entry]) -> tuple[int, bool, int]:
    """(version to pass back, more, generated at) of a page of entries."""
    version = entries[-1].version if entries else query.since
    return version, len(entries) == query.limit, int(time.time())


def _expiry(entry: deny_list.Entry) -> int | None:
    return int(entry.expires_at.timestamp()) if entry.expires_at is not None else None


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _signed(signed: Signed) -> web.Response:
    headers = {
        SIGNATURE_KEY_HEADER: str(signed.key_id),
        SIGNATURE_HEADER: signed.signature.hex(),
    }
    return web.Response(body=signed.body, content_type=JSON, headers=headers)


def _render_qr(query: DenyQuery) -> Render:
    def render(entries: list[deny_list.Entry]) -> bytes:
        return encode(DenyListDelta(query.since, *_page(query, entries), [
            DenyEntryOut(e.version, e.kind, e.action, e.account_id, _hex(e.fingerprint),
                         _expiry(e))
            for e in entries
        ]))  # fmt: skip

    return render


def _render_all(query: DenyQuery) -> Render:
    def render(entries: list[deny_list.Entry]) -> bytes:
        return encode(TapsDenyListDelta(query.since, *_page(query, entries), [
            TapsDenyEntryOut(e.version, e.kind, e.action, e.account_id, _hex(e.fingerprint),
                             _hex(e.card_number), _expiry(e))
            for e in entries
        ]))  # fmt: skip

    return render


@routes.get("/v1/qr/deny-list", query=DenyQuery, response=DenyListDelta, principals=TERMINAL)
async def deny_list_delta(call: Call) -> web.Response:
    """The deny list's account and device entries after version `since`, oldest first, signed
    by the current QR issuer key.

    Headers: `OC-Signature-Key-Id` (issuer key id) and `OC-Signature`: hex of the raw ECDSA
    P-256 / SHA-256 signature (r || s) over the exact response body bytes. Apply the entries in
    order, then ask again with `since` = `version` while `more` is true.
    """
    query: DenyQuery = call.query
    signed = await call.app[TAPS].deny_list_delta(
        query.since, query.limit, deny_list.QR_KINDS, _render_qr(query)
    )
    return _signed(signed)


@routes.get("/v1/taps/deny-list", query=DenyQuery, response=TapsDenyListDelta, principals=TERMINAL)
async def taps_deny_list_delta(call: Call) -> web.Response:
    """Every deny list entry (accounts, QR devices, cards, virtual cards) after version `since`,
    oldest first, signed as `GET /v1/qr/deny-list` is. Cards are named by their ASN (hex)."""
    query: DenyQuery = call.query
    signed = await call.app[TAPS].deny_list_delta(
        query.since, query.limit, tuple(deny_list.Kind), _render_all(query)
    )
    return _signed(signed)
