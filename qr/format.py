"""Byte-exact encoding of QR ride codes and rider certificates (`shared/QR_FORMAT.md`).

Three frozen dataclasses, one per wire structure: `RiderCertificate` (119 bytes),
`OfflineCode` (type 01, 193 bytes, made on the phone) and `OnlineCode` (type 02, 93 bytes, made
by the gateway). Each encodes to and decodes from exactly its bytes and the unpadded base64url
text form, and exposes the "signed part" its signature covers.

This module parses and builds bytes only. It must never check a signature or a clock (that is
`qr.verify`), never accept a length, magic, version or type other than the documented ones, and
never import aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from qr.reasons import Reason

MAGIC: Final = b"OC"
VERSION: Final = 0x01
TYPE_OFFLINE: Final = 0x01
TYPE_ONLINE: Final = 0x02
CERT_VERSION: Final = 0x01

HEADER_OFFLINE: Final = MAGIC + bytes([VERSION, TYPE_OFFLINE])
HEADER_ONLINE: Final = MAGIC + bytes([VERSION, TYPE_ONLINE])
HEADER_BYTES: Final = 4

SIGNATURE_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 33
NONCE_BYTES: Final = 8

# Rider certificate: version, issuer key id, account, device key, valid from, valid until,
# ceiling, issuer signature over bytes 0..54.
CERT_STRUCT: Final = struct.Struct(">BBQ33sIII64s")
CERT_BYTES: Final = CERT_STRUCT.size
CERT_SIGNED_BYTES: Final = CERT_BYTES - SIGNATURE_BYTES

# Offline code: header, certificate, generated at, counter, device signature over 0..128.
OFFLINE_CERT_OFFSET: Final = HEADER_BYTES
OFFLINE_TAIL_STRUCT: Final = struct.Struct(">IH")
OFFLINE_TAIL_OFFSET: Final = OFFLINE_CERT_OFFSET + CERT_BYTES
OFFLINE_SIGNED_BYTES: Final = OFFLINE_TAIL_OFFSET + OFFLINE_TAIL_STRUCT.size
OFFLINE_CODE_BYTES: Final = OFFLINE_SIGNED_BYTES + SIGNATURE_BYTES

# Online code: header, issuer key id, account, issued at, expires at, nonce, issuer signature
# over 0..28.
ONLINE_STRUCT: Final = struct.Struct(">4sBQII8s64s")
ONLINE_CODE_BYTES: Final = ONLINE_STRUCT.size
ONLINE_SIGNED_BYTES: Final = ONLINE_CODE_BYTES - SIGNATURE_BYTES

COUNTER_MODULUS: Final = 1 << 16
ONLINE_TTL_S_DEFAULT: Final = 30

# The longest text form is the offline code's: 193 bytes -> 258 base64url characters.
TEXT_CHARS_MAX: Final = (OFFLINE_CODE_BYTES * 4 + 2) // 3
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

assert CERT_BYTES == 119 and OFFLINE_CODE_BYTES == 193 and ONLINE_CODE_BYTES == 93
assert CERT_SIGNED_BYTES == 55 and OFFLINE_SIGNED_BYTES == 129 and ONLINE_SIGNED_BYTES == 29


class Malformed(ValueError):
    """The bytes or text are not a code of the documented shape (reason `malformed`)."""

    reason: Final = Reason.MALFORMED


def encode_text(data: bytes) -> str:
    """Unpadded base64url, the text form of any code or certificate."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_text(text: str) -> bytes:
    """Strict inverse of `encode_text`: one text for one byte string, or `Malformed`.

    Padding, whitespace, characters outside base64url and non-canonical trailing bits are all
    refused, so a logged text form always identifies exactly one code.
    """
    if len(text) > TEXT_CHARS_MAX or len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise Malformed("not unpadded base64url of a QR code")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Malformed("not unpadded base64url of a QR code") from exc
    if encode_text(data) != text:
        raise Malformed("non-canonical base64url")
    return data


def _check_uint(name: str, value: int, bits: int) -> None:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be an unsigned {bits}-bit int, got {value!r}")


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


@dataclass(frozen=True, slots=True)
class RiderCertificate:
    """A rider certificate: the issuer vouches for one device key of one account for a while."""

    issuer_key_id: int
    account_id: int
    device_public_key: bytes
    valid_from: int
    valid_until: int
    ceiling_fen: int
    issuer_signature: bytes

    def __post_init__(self) -> None:
        _check_uint("issuer_key_id", self.issuer_key_id, 8)
        _check_uint("account_id", self.account_id, 64)
        _check_bytes("device_public_key", self.device_public_key, PUBLIC_KEY_BYTES)
        _check_uint("valid_from", self.valid_from, 32)
        _check_uint("valid_until", self.valid_until, 32)
        _check_uint("ceiling_fen", self.ceiling_fen, 32)
        _check_bytes("issuer_signature", self.issuer_signature, SIGNATURE_BYTES)

    def to_bytes(self) -> bytes:
        return CERT_STRUCT.pack(
            CERT_VERSION,
            self.issuer_key_id,
            self.account_id,
            self.device_public_key,
            self.valid_from,
            self.valid_until,
            self.ceiling_fen,
            self.issuer_signature,
        )

    def signed_part(self) -> bytes:
        """Bytes 0..54: what the issuer signature covers."""
        return self.to_bytes()[:CERT_SIGNED_BYTES]

    @classmethod
    def from_bytes(cls, data: bytes) -> RiderCertificate:
        if len(data) != CERT_BYTES:
            raise Malformed(f"a rider certificate is {CERT_BYTES} bytes, got {len(data)}")
        version, key_id, account, device_key, valid_from, valid_until, ceiling, sig = (
            CERT_STRUCT.unpack(data)
        )
        if version != CERT_VERSION:
            raise Malformed(f"unknown certificate version {version}")
        return cls(key_id, account, device_key, valid_from, valid_until, ceiling, sig)

    def to_text(self) -> str:
        return encode_text(self.to_bytes())

    @classmethod
    def from_text(cls, text: str) -> RiderCertificate:
        return cls.from_bytes(decode_text(text))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, bytes as lowercase hex."""
        return {
            "issuer_key_id": self.issuer_key_id,
            "account_id": self.account_id,
            "device_public_key": self.device_public_key.hex(),
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "ceiling_fen": self.ceiling_fen,
            "issuer_signature": self.issuer_signature.hex(),
        }


@dataclass(frozen=True, slots=True)
class OfflineCode:
    """Type 01: a certificate plus a timestamp and counter, signed by the device key."""

    certificate: RiderCertificate
    generated_at: int
    counter: int
    device_signature: bytes

    type: ClassVar[int] = TYPE_OFFLINE

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, RiderCertificate):
            raise ValueError("certificate must be a RiderCertificate")
        _check_uint("generated_at", self.generated_at, 32)
        _check_uint("counter", self.counter, 16)
        _check_bytes("device_signature", self.device_signature, SIGNATURE_BYTES)

    def signed_part(self) -> bytes:
        """Bytes 0..128: what the device signature covers."""
        return (
            HEADER_OFFLINE
            + self.certificate.to_bytes()
            + OFFLINE_TAIL_STRUCT.pack(self.generated_at, self.counter)
        )

    def to_bytes(self) -> bytes:
        return self.signed_part() + self.device_signature

    @classmethod
    def from_bytes(cls, data: bytes) -> OfflineCode:
        if len(data) != OFFLINE_CODE_BYTES:
            raise Malformed(f"a type 01 code is {OFFLINE_CODE_BYTES} bytes, got {len(data)}")
        if data[:HEADER_BYTES] != HEADER_OFFLINE:
            raise Malformed("header is not 4F 43 01 01")
        certificate = RiderCertificate.from_bytes(data[OFFLINE_CERT_OFFSET:OFFLINE_TAIL_OFFSET])
        generated_at, counter = OFFLINE_TAIL_STRUCT.unpack_from(data, OFFLINE_TAIL_OFFSET)
        return cls(certificate, generated_at, counter, data[OFFLINE_SIGNED_BYTES:])

    def to_text(self) -> str:
        return encode_text(self.to_bytes())

    @classmethod
    def from_text(cls, text: str) -> OfflineCode:
        return cls.from_bytes(decode_text(text))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "certificate": self.certificate.to_dict(),
            "generated_at": self.generated_at,
            "counter": self.counter,
            "device_signature": self.device_signature.hex(),
        }


@dataclass(frozen=True, slots=True)
class OnlineCode:
    """Type 02: a short-lived code the gateway issues and signs with an issuer key."""

    issuer_key_id: int
    account_id: int
    issued_at: int
    expires_at: int
    nonce: bytes
    issuer_signature: bytes

    type: ClassVar[int] = TYPE_ONLINE

    def __post_init__(self) -> None:
        _check_uint("issuer_key_id", self.issuer_key_id, 8)
        _check_uint("account_id", self.account_id, 64)
        _check_uint("issued_at", self.issued_at, 32)
        _check_uint("expires_at", self.expires_at, 32)
        _check_bytes("nonce", self.nonce, NONCE_BYTES)
        _check_bytes("issuer_signature", self.issuer_signature, SIGNATURE_BYTES)

    def to_bytes(self) -> bytes:
        return ONLINE_STRUCT.pack(
            HEADER_ONLINE,
            self.issuer_key_id,
            self.account_id,
            self.issued_at,
            self.expires_at,
            self.nonce,
            self.issuer_signature,
        )

    def signed_part(self) -> bytes:
        """Bytes 0..28: what the issuer signature covers."""
        return self.to_bytes()[:ONLINE_SIGNED_BYTES]

    @classmethod
    def from_bytes(cls, data: bytes) -> OnlineCode:
        if len(data) != ONLINE_CODE_BYTES:
            raise Malformed(f"a type 02 code is {ONLINE_CODE_BYTES} bytes, got {len(data)}")
        header, key_id, account, issued_at, expires_at, nonce, sig = ONLINE_STRUCT.unpack(data)
        if header != HEADER_ONLINE:
            raise Malformed("header is not 4F 43 01 02")
        return cls(key_id, account, issued_at, expires_at, nonce, sig)

    def to_text(self) -> str:
        return encode_text(self.to_bytes())

    @classmethod
    def from_text(cls, text: str) -> OnlineCode:
        return cls.from_bytes(decode_text(text))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "issuer_key_id": self.issuer_key_id,
            "account_id": self.account_id,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "nonce": self.nonce.hex(),
            "issuer_signature": self.issuer_signature.hex(),
        }


Code = OfflineCode | OnlineCode


def decode_code(data: bytes | str) -> Code:
    """Either code type from its bytes or text form; `Malformed` for anything else."""
    raw = decode_text(data) if isinstance(data, str) else bytes(data)
    if raw[:HEADER_BYTES] == HEADER_OFFLINE:
        return OfflineCode.from_bytes(raw)
    if raw[:HEADER_BYTES] == HEADER_ONLINE:
        return OnlineCode.from_bytes(raw)
    raise Malformed("header is not 4F 43 01 01 or 4F 43 01 02")
