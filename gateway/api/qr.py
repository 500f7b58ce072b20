"""QR ride code routes: issuer keys for gates, certificates and codes for riders. Ride uploads
and the deny list are tap routes (`gateway/api/taps.py`). Binary fields are lowercase hex; codes
and certificates travel in their text form (unpadded base64url, `shared/QR_FORMAT.md`).
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from gateway.api.etags import cached_json
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.qr_codes import challenges
from gateway.qr_codes.service import QR_CODES
from gateway.responses import encode

routes = RouteTable("qr")
RIDER = {PrincipalKind.RIDER}
TERMINAL = {PrincipalKind.TERMINAL}


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
