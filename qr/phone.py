"""What the rider app does for QR rides, with no network: hold a certificate, make codes.

The app generates its device key pair once (`generate_device_key`), proves possession to the
gateway (`Phone.sign_challenge` or `qr.signing.sign_challenge`), and receives a rider
certificate. From then on `Phone.make_code(now)` makes a fresh type 01 code every few seconds,
offline, with a counter that increments per code and wraps at 65536.

This module must never send the device private key anywhere (it only signs with it), never
read the clock (`now` is passed in), and never import aiohttp, asyncpg or redis.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from qr.format import COUNTER_MODULUS, OfflineCode, RiderCertificate
from qr.signing import encode_public_key, generate_private_key, sign_challenge, sign_raw

# The app refreshes its certificate this long before it expires, while it still has network.
RENEW_MARGIN_S_DEFAULT: Final = 3600


def generate_device_key() -> ec.EllipticCurvePrivateKey:
    """A fresh device key pair; the private half never leaves the phone."""
    return generate_private_key()


class Phone:
    """A rider's phone: one certificate, the matching device key, and the code counter.

    `counter` is the counter the next code will carry; the app persists it across restarts so
    that two codes made in the same second never share (generated at, counter).
    """

    def __init__(
        self,
        certificate: RiderCertificate,
        device_key: ec.EllipticCurvePrivateKey,
        counter: int = 0,
    ) -> None:
        if encode_public_key(device_key.public_key()) != certificate.device_public_key:
            raise ValueError("the certificate is for another device key")
        if not 0 <= counter < COUNTER_MODULUS:
            raise ValueError(f"counter must be in 0..{COUNTER_MODULUS - 1}")
        self.certificate: Final = certificate
        self._device_key: Final = device_key
        self.counter = counter

    def make_code(self, now: int) -> bytes:
        """A type 01 code generated at `now`, signed by the device key; advances the counter."""
        draft = OfflineCode(
            certificate=self.certificate,
            generated_at=now,
            counter=self.counter,
            device_signature=bytes(64),
        )
        signed = draft.signed_part()
        self.counter = (self.counter + 1) % COUNTER_MODULUS
        return signed + sign_raw(self._device_key, signed)

    def certificate_valid_at(self, now: int) -> bool:
        return self.certificate.valid_from <= now < self.certificate.valid_until

    def needs_renewal(self, now: int, margin_s: int = RENEW_MARGIN_S_DEFAULT) -> bool:
        """True when the app should fetch a new certificate the next time it is online."""
        return now + margin_s >= self.certificate.valid_until

    def sign_challenge(self, challenge: bytes) -> bytes:
        """Proof of possession of the device key over the gateway's challenge (raw r || s)."""
        return sign_challenge(self._device_key, challenge)
