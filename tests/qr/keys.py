"""Shared test material: one issuer key, riders, and a few helpers (module-level, so hypothesis
tests can use them without function-scoped fixtures)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from qr.format import OfflineCode, RiderCertificate
from qr.phone import Phone, generate_device_key
from qr.signing import generate_private_key, issue_certificate, sign_raw

NOW = 1_750_000_000
KEY_ID = 7
ISSUER = generate_private_key()
ISSUER_KEYS: dict[int, ec.EllipticCurvePublicKey] = {KEY_ID: ISSUER.public_key()}
VALID_FROM = NOW - 3600
VALID_UNTIL = NOW + 3600


def rider(
    account_id: int = 42,
    valid_from: int = VALID_FROM,
    valid_until: int = VALID_UNTIL,
    ceiling_fen: int = 500,
    issuer: ec.EllipticCurvePrivateKey = ISSUER,
    key_id: int = KEY_ID,
) -> Phone:
    device = generate_device_key()
    cert = issue_certificate(
        issuer, key_id, account_id, device.public_key(), valid_from, valid_until, ceiling_fen
    )
    return Phone(cert, device)


def signed_offline(
    cert: RiderCertificate, device: ec.EllipticCurvePrivateKey, generated_at: int, counter: int
) -> bytes:
    """A type 01 code with any certificate (even one `Phone` would refuse)."""
    draft = OfflineCode(cert, generated_at, counter, bytes(64))
    return draft.signed_part() + sign_raw(device, draft.signed_part())


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


P = 2**256 - 2**224 + 2**192 + 2**96 - 1
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def x_not_on_curve() -> bytes:
    """An x with no y on P-256 (x^3 - 3x + b is not a square mod p)."""
    for x in range(1, 100):
        rhs = (x**3 - 3 * x + B) % P
        if pow(rhs, (P - 1) // 2, P) != 1:
            return x.to_bytes(32, "big")
    raise AssertionError("unreachable: half of all x are off the curve")
