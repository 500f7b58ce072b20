"""QR ride code routes: issuer keys and deny list for gates, certificates and codes for riders,
ride uploads from gates. Binary fields are lowercase hex; codes and certificates travel in their
text form (unpadded base64url, `shared/QR_FORMAT.md`).
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api.etags import cached_json
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.context import CONFIG, METRICS, POOL, REDIS
from gateway.qr_codes import challenges, deny_list, rides
from gateway.qr_codes.service import QR_CODES
from gateway.responses import JSON, encode
from qr.format import TEXT_CHARS_MAX
from qr.signing import sign_raw

routes = RouteTable("qr")
RIDER = {PrincipalKind.RIDER}
TERMINAL = {PrincipalKind.TERMINAL}
FARE_FEN_MAX = 1_000_000  # ¥10,000: far above any fare, well inside a certificate's u32
CODE_CHARS_MAX = 2 * TEXT_CHARS_MAX  # longer is surely not a code; shorter ones get a reason
SIGNATURE_HEADER = "OC-Signature"
SIGNATURE_KEY_HEADER = "OC-Signature-Key-Id"


ChallengeHex = Annotated[
    str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="the challenge, as received")
]
DeviceKeyHex = Annotated[
    str,
    msgspec.Meta(pattern="^[0-9a-f]{66}$", description="SEC1 compressed P-256 point, hex"),
]
SignatureHex = Annotated[
    str,
    msgspec.Meta(
        pattern="^[0-9a-f]{128}$",
        description="raw ECDSA P-256 r || s over 'onecard-qr-pop-v1' || challenge bytes, hex",
    ),
]


class ChallengeOut(msgspec.Struct):
    challenge: Annotated[str, msgspec.Meta(description="32 random bytes, hex; sign it once")]
    expires_in: int


class CertificateRequest(msgspec.Struct, forbid_unknown_fields=True):
    challenge: ChallengeHex
    device_public_key: DeviceKeyHex
    signature: SignatureHex


class CertificateOut(msgspec.Struct):
    certificate: str  # text form: cache it on the phone and make codes with it
    issuer_key_id: int
    account_id: int
    valid_from: int
    valid_until: int
    ceiling_fen: int
    device_fingerprint: str
    revoked_device_fingerprint: str | None


class CodeOut(msgspec.Struct):
    id: str
    code: str
    issuer_key_id: int
    issued_at: int
    expires_at: int
    png_url: str
    svg_url: str


class IssuerKeyOut(msgspec.Struct):
    key_id: int
    public_key: Annotated[str, msgspec.Meta(description="SEC1 compressed P-256 point, hex")]
    valid_from: int
    valid_until: int | None  # None: the current signing key


class IssuerKeyList(msgspec.Struct):
    keys: list[IssuerKeyOut]


class RideIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=CODE_CHARS_MAX, description="text form")]
    fare_fen: Annotated[int, msgspec.Meta(ge=1, le=FARE_FEN_MAX)]
    tapped_at: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1, description="gate clock, unix s")]


class RideBatch(msgspec.Struct, forbid_unknown_fields=True):
    rides: Annotated[
        list[RideIn],
        msgspec.Meta(description=f"at most {rides.RIDES_PER_BATCH_MAX} (else 413)"),
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


@routes.post("/v1/qr/challenges", response=ChallengeOut, status=201, principals=RIDER)
async def new_challenge(call: Call) -> ChallengeOut:
    """A challenge for the phone to sign with its device key (valid 2 minutes, once)."""
    challenge = await call.app[QR_CODES].challenge(int(call.caller.id))
    return ChallengeOut(challenge.hex(), challenges.CHALLENGE_TTL_S)


@routes.post(
    "/v1/qr/certificates", body=CertificateRequest, response=CertificateOut, status=201,
    principals=RIDER, errors=("qr_device_key_invalid", "qr_challenge_invalid",
                              "qr_proof_invalid", "qr_device_in_use", "insufficient_balance"),
)  # fmt: skip
async def new_certificate(call: Call) -> CertificateOut:
    """A rider certificate for a device key proven by signing a challenge.

    Certifying another device revokes the rider's previous one (it joins the deny list).
    """
    body: CertificateRequest = call.body
    issued = await call.app[QR_CODES].certify(
        int(call.caller.id), bytes.fromhex(body.device_public_key), bytes.fromhex(body.challenge),
        bytes.fromhex(body.signature), int(time.time()),
    )  # fmt: skip
    cert = issued.certificate
    return CertificateOut(
        cert.to_text(), cert.issuer_key_id, cert.account_id, cert.valid_from, cert.valid_until,
        cert.ceiling_fen, issued.fingerprint.hex(),
        issued.revoked_fingerprint.hex() if issued.revoked_fingerprint else None,
    )  # fmt: skip


@routes.post("/v1/qr/codes", response=CodeOut, status=201, principals=RIDER,
             errors=("insufficient_balance",))  # fmt: skip
async def new_code(call: Call) -> CodeOut:
    """An online ride code, valid 30 seconds; its image at `png_url` / `svg_url`."""
    issued = await call.app[QR_CODES].online_code(int(call.caller.id), int(time.time()))
    code = issued.code
    base = f"/v1/qr/codes/{issued.id}"
    return CodeOut(
        issued.id, code.to_text(), code.issuer_key_id, code.issued_at, code.expires_at,
        f"{base}.png", f"{base}.svg",
    )  # fmt: skip


async def _image(call: Call, image_format: str, content_type: str) -> web.Response:
    image = await call.app[QR_CODES].image(int(call.caller.id), call.path("code_id"), image_format)
    return web.Response(
        body=image, content_type=content_type, headers={"Cache-Control": "no-store"}
    )


@routes.get("/v1/qr/codes/{code_id}.png", principals=RIDER, content_type="image/png")
async def code_png(call: Call) -> web.Response:
    """The rider's own online code as a PNG image (another rider's, or expired: 404)."""
    return await _image(call, "png", "image/png")


@routes.get("/v1/qr/codes/{code_id}.svg", principals=RIDER, content_type="image/svg+xml")
async def code_svg(call: Call) -> web.Response:
    """The rider's own online code as an SVG image (another rider's, or expired: 404)."""
    return await _image(call, "svg", "image/svg+xml")


@routes.get("/v1/qr/issuer-keys", response=IssuerKeyList, principals=TERMINAL)
async def issuer_keys(call: Call) -> web.Response:
    """Every issuer public key a gate needs now. Send `If-None-Match` with the last ETag: 304
    when nothing changed."""
    keys = await call.app[QR_CODES].published_keys(int(time.time()))
    body = encode(
        IssuerKeyList(
            [IssuerKeyOut(k.key_id, k.public_bytes.hex(), k.valid_from, k.not_after) for k in keys]
        )
    )
    return cached_json(call.request, body)


# A full batch of offline codes is about 340 bytes a ride in JSON: 1,000 rides fit in 512 KiB.
RIDE_BATCH_BYTES_MAX = 512 * 1024


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
    assert call.principal is not None and call.principal.operator is not None
    batch: RideBatch = call.body
    if len(batch.rides) > rides.RIDES_PER_BATCH_MAX:
        raise errors.QR_BATCH_TOO_LARGE.error(rides_max=rides.RIDES_PER_BATCH_MAX)
    app = call.app
    config = app[CONFIG]
    uploader = rides.Uploader(
        app[POOL], app[REDIS], config.redis_prefix, app[QR_CODES].keys,
        config.qr_ride_age_max_s, config.qr_ride_ceiling_fen_max,
    )  # fmt: skip
    results = await uploader.upload(
        rides.Gate(call.principal.id, call.principal.operator),
        [rides.Ride(r.code, r.fare_fen, r.tapped_at) for r in batch.rides],
        int(time.time()),
    )
    outcomes = app[METRICS].counter(
        "onecard_qr_rides_total", "QR rides uploaded by gates, by outcome", ("status", "reason")
    )
    for result in results:
        outcomes.inc((result.status.value, str(result.reason or "")))
    return RideResults(
        [RideResultOut(i, r.status.value, r.reason and str(r.reason), r.ride_id)
         for i, r in enumerate(results)]
    )  # fmt: skip


@routes.get("/v1/qr/deny-list", query=DenyQuery, response=DenyListDelta, principals=TERMINAL)
async def deny_list_delta(call: Call) -> web.Response:
    """Deny list entries after version `since`, oldest first, signed by the current issuer key.

    Headers: `OC-Signature-Key-Id` (issuer key id) and `OC-Signature`: hex of the raw ECDSA
    P-256 / SHA-256 signature (r || s) over the exact response body bytes. Apply the entries in
    order, then ask again with `since` = `version` while `more` is true.
    """
    query: DenyQuery = call.query
    app = call.app
    entries = await deny_list.delta(app[POOL], query.since, query.limit)
    delta = DenyListDelta(
        query.since, entries[-1].version if entries else query.since,
        len(entries) == query.limit, int(time.time()),
        [DenyEntryOut(
            e.version, e.kind, e.action, e.account_id,
            e.fingerprint.hex() if e.fingerprint is not None else None,
            int(e.expires_at.timestamp()) if e.expires_at is not None else None,
        ) for e in entries],
    )  # fmt: skip
    body = encode(delta)
    key = await app[QR_CODES].keys.current()
    headers = {
        SIGNATURE_KEY_HEADER: str(key.key_id),
        SIGNATURE_HEADER: sign_raw(key.private, body).hex(),
    }
    return web.Response(body=body, content_type=JSON, headers=headers)
