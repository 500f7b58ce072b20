"""ECDSA P-256 for QR ride codes: raw signatures, compressed keys, issuing, proof of possession.

On the wire a signature is raw `r || s` (32 + 32 bytes, each left-padded) over SHA-256 and a
public key is a 33-byte SEC1 compressed point (`shared/QR_FORMAT.md`). `cryptography` speaks DER
signatures and key objects; the helpers here convert between the two.

The gateway issues rider certificates and online codes with `issue_certificate` and
`issue_online_code`; a phone proves it holds its device key by signing the gateway's challenge
(`sign_challenge`), which the gateway checks with `verify_challenge_signature`.

This module pins its algorithm (P-256, SHA-256): nothing read from a code or a key file ever
chooses it. A failed check is one opaque `False`, never the reason a signature is bad. It must
never import aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from qr.format import (
    NONCE_BYTES,
    ONLINE_TTL_S_DEFAULT,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    OnlineCode,
    RiderCertificate,
)

CURVE: Final = ec.SECP256R1()
ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_ECDSA_PREHASHED: Final = ec.ECDSA(Prehashed(hashes.SHA256()))
_sha256: Final = hashlib.sha256
SCALAR_BYTES: Final = 32
FINGERPRINT_BYTES: Final = 8

POP_DOMAIN: Final = b"onecard-qr-pop-v1"
CHALLENGE_BYTES_MIN: Final = 16
CHALLENGE_BYTES_MAX: Final = 256

_SECP256R1_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class InvalidPublicKey(ValueError):
    """Bytes or text that are not a P-256 public key (wrong size, prefix, or not on the curve)."""


def raw_to_der(raw: bytes) -> bytes:
    """Raw `r || s` (64 bytes) to the DER form `cryptography` verifies. ValueError otherwise.

    Built by hand: a gate converts one signature per scan, and this is two to three times as
    fast as going through Python ints and `encode_dss_signature` (the tests check they agree).
    """
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"a raw signature is {SIGNATURE_BYTES} bytes, got {len(raw)}")
    r = raw[:SCALAR_BYTES]
    s = raw[SCALAR_BYTES:]
    if r[0] and s[0]:
        # Common case (all but 2 in 256): no leading zero byte, only a sign byte to add.
        shape = (r[0] >> 7) | (s[0] >> 7) << 1
        return _DER_BEFORE_R[shape] + r + _DER_BEFORE_S[shape] + s
    r = r.lstrip(b"\0") or b"\0"
    s = s.lstrip(b"\0") or b"\0"
    if r[0] & 0x80:
        r = b"\0" + r
    if s[0] & 0x80:
        s = b"\0" + s
    # Each INTEGER is at most 33 bytes, so every length fits DER's one-byte short form.
    return bytes((0x30, len(r) + len(s) + 4, 0x02, len(r))) + r + bytes((0x02, len(s))) + s


def _der_prefixes(r_high: bool, s_high: bool) -> tuple[bytes, bytes]:
    r_len, s_len = SCALAR_BYTES + r_high, SCALAR_BYTES + s_high
    before_r = bytes((0x30, r_len + s_len + 4, 0x02, r_len)) + b"\0" * r_high
    return before_r, bytes((0x02, s_len)) + b"\0" * s_high


# Indexed by (r high bit) | (s high bit) << 1.
_DER_BEFORE_R: Final = tuple(_der_prefixes(bool(i & 1), bool(i & 2))[0] for i in range(4))
_DER_BEFORE_S: Final = tuple(_der_prefixes(bool(i & 1), bool(i & 2))[1] for i in range(4))


def der_to_raw(der: bytes) -> bytes:
    """DER ECDSA signature (as `cryptography` signs) to raw `r || s`, each left-padded to 32."""
    r, s = decode_dss_signature(der)
    if not (0 < r < _SECP256R1_ORDER and 0 < s < _SECP256R1_ORDER):
        raise ValueError("not a P-256 signature")
    return r.to_bytes(SCALAR_BYTES, "big") + s.to_bytes(SCALAR_BYTES, "big")


def sign_raw(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature of `message`, raw `r || s`."""
    _require_p256(private_key.curve)
    return der_to_raw(private_key.sign(message, ECDSA_SHA256))


def verify_raw(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """True only when `signature` (raw `r || s`) is a valid signature of `message`."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        # Hashing with hashlib and verifying the digest is the same check, a little faster.
        public_key.verify(raw_to_der(signature), _sha256(message).digest(), _ECDSA_PREHASHED)
    except InvalidSignature:
        return False
    return True


def encode_public_key(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 33-byte SEC1 compressed point of a P-256 public key."""
    _require_p256(public_key.curve)
    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


def decode_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its 33-byte compressed point; `InvalidPublicKey` otherwise."""
    if len(data) != PUBLIC_KEY_BYTES or data[0] not in (0x02, 0x03):
        raise InvalidPublicKey("a device or issuer key is a 33-byte compressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, data)
    except ValueError as exc:
        raise InvalidPublicKey("the compressed point is not on the P-256 curve") from exc


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """An issuer public key from a key file entry: SEC1 hex (compressed or not) or PEM."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidPublicKey("not a PEM public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidPublicKey("the PEM key is not an elliptic-curve key")
        _require_p256(key.curve)
        return key
    try:
        data = bytes.fromhex(stripped)
    except ValueError as exc:
        raise InvalidPublicKey("not hex and not PEM") from exc
    if len(data) == PUBLIC_KEY_BYTES:
        return decode_public_key(data)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, data)
    except ValueError as exc:
        raise InvalidPublicKey("not a P-256 point") from exc


def _require_p256(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise InvalidPublicKey(f"QR codes use P-256 only, not {curve.name}")


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key pair (issuer or device)."""
    return ec.generate_private_key(CURVE)


def device_fingerprint(device_public_key: bytes) -> bytes:
    """The first 8 bytes of SHA-256 over the 33-byte key: how deny lists name a device."""
    if len(device_public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"a device key is {PUBLIC_KEY_BYTES} bytes")
    return hashlib.sha256(device_public_key).digest()[:FINGERPRINT_BYTES]


def issue_certificate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_key_id: int,
    account_id: int,
    device_public_key: bytes | ec.EllipticCurvePublicKey,
    valid_from: int,
    valid_until: int,
    ceiling_fen: int,
) -> RiderCertificate:
    """A rider certificate signed by the issuer key `issuer_key_id`.

    The device key must already be proven (see `verify_challenge_signature`); this checks only
    that it is a real P-256 point, so a gate never meets an issuer-signed key it cannot load.
    """
    if isinstance(device_public_key, ec.EllipticCurvePublicKey):
        device_public_key = encode_public_key(device_public_key)
    decode_public_key(device_public_key)
    if valid_until <= valid_from:
        raise ValueError("valid_until must be after valid_from")
    draft = RiderCertificate(
        issuer_key_id=issuer_key_id,
        account_id=account_id,
        device_public_key=device_public_key,
        valid_from=valid_from,
        valid_until=valid_until,
        ceiling_fen=ceiling_fen,
        issuer_signature=bytes(SIGNATURE_BYTES),
    )
    return replace(draft, issuer_signature=sign_raw(issuer_key, draft.signed_part()))


def issue_online_code(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_key_id: int,
    account_id: int,
    issued_at: int,
    ttl_s: int = ONLINE_TTL_S_DEFAULT,
    nonce: bytes | None = None,
) -> OnlineCode:
    """A type 02 code valid from `issued_at` for `ttl_s` seconds, with a fresh random nonce."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    draft = OnlineCode(
        issuer_key_id=issuer_key_id,
        account_id=account_id,
        issued_at=issued_at,
        expires_at=issued_at + ttl_s,
        nonce=secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce,
        issuer_signature=bytes(SIGNATURE_BYTES),
    )
    return replace(draft, issuer_signature=sign_raw(issuer_key, draft.signed_part()))


def challenge_message(challenge: bytes) -> bytes:
    """What a proof-of-possession signature covers: a domain tag, then the server challenge.

    The tag keeps a proof from ever being a valid code signature (those start with `OC`).
    """
    if not CHALLENGE_BYTES_MIN <= len(challenge) <= CHALLENGE_BYTES_MAX:
        raise ValueError(
            f"a challenge is {CHALLENGE_BYTES_MIN}..{CHALLENGE_BYTES_MAX} bytes, "
            f"got {len(challenge)}"
        )
    return POP_DOMAIN + challenge


def sign_challenge(device_key: ec.EllipticCurvePrivateKey, challenge: bytes) -> bytes:
    """The device's proof that it holds `device_key`: raw signature over the challenge."""
    return sign_raw(device_key, challenge_message(challenge))


def verify_challenge_signature(
    device_public_key: bytes | ec.EllipticCurvePublicKey, challenge: bytes, signature: bytes
) -> bool:
    """True only when `signature` proves possession of the device key for this challenge."""
    try:
        message = challenge_message(challenge)
        if isinstance(device_public_key, bytes):
            device_public_key = decode_public_key(device_public_key)
        _require_p256(device_public_key.curve)
    except ValueError:
        return False
    return verify_raw(device_public_key, signature, message)
