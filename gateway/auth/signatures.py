"""Request signatures of partners (HMAC-SHA256) and terminals (Ed25519): both sides.

The canonical string of a request is six lines joined by `\\n`:

    METHOD                 upper case, e.g. POST
    /path                  as sent, without the query: percent-escapes kept as on the wire
    sorted query           k=v pairs sorted by key then value, RFC 3986 percent-encoded, joined by &
    timestamp              OC-Timestamp, unix seconds
    nonce                  OC-Nonce
    sha256(body) hex       of the exact body bytes (of b"" when there is none)

Partners send `OC-Key-Id`, `OC-Timestamp`, `OC-Nonce` and `OC-Signature` = base64 of
HMAC-SHA256(secret, canonical). Terminals send `OC-Terminal`, `OC-Timestamp`, `OC-Nonce` and
`OC-Signature` = base64 of Ed25519(terminal private key, canonical).

`sign_partner_request` / `sign_terminal_request` are the client helpers partners, terminals and
the tests use; this module must never import aiohttp, so that a client can use it alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ID = "OC-Key-Id"
TERMINAL = "OC-Terminal"
TIMESTAMP = "OC-Timestamp"
NONCE = "OC-Nonce"
SIGNATURE = "OC-Signature"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    quoted = sorted(
        (urllib.parse.quote(k, safe="-._~"), urllib.parse.quote(v, safe="-._~")) for k, v in pairs
    )
    return "&".join(f"{k}={v}" for k, v in quoted)


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    timestamp: str,
    nonce: str,
    body: bytes,
) -> bytes:
    return "\n".join(
        (method.upper(), path, canonical_query(query), timestamp, nonce,
         hashlib.sha256(body).hexdigest())
    ).encode()  # fmt: skip


def _stamped_canonical(
    method: str, url_path: str, body: bytes, timestamp: int | None, nonce: str | None
) -> tuple[str, str, bytes]:
    """(timestamp, nonce, canonical string) of a request about to be signed."""
    parts = urllib.parse.urlsplit(url_path)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(16)
    return stamp, nonce, canonical_request(method, parts.path, query, stamp, nonce, body)


def partner_signature(secret: str, canonical: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), canonical, hashlib.sha256).digest()).decode()


def partner_signature_valid(secret: str, canonical: bytes, signature: str) -> bool:
    return hmac.compare_digest(partner_signature(secret, canonical).encode(), signature.encode())


def sign_partner_request(
    key_id: str,
    secret: str,
    method: str,
    url_path: str,
    body: bytes = b"",
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers a partner adds to a request for `url_path` (path and query, no host).

    The path is signed exactly as given, escapes and all: pass it as the client will send it.
    """
    stamp, nonce, canonical = _stamped_canonical(method, url_path, body, timestamp, nonce)
    return {
        KEY_ID: key_id,
        TIMESTAMP: stamp,
        NONCE: nonce,
        SIGNATURE: partner_signature(secret, canonical),
    }


def sign_terminal_request(
    terminal_id: str,
    private_key: Ed25519PrivateKey,
    method: str,
    url_path: str,
    body: bytes = b"",
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers a terminal adds to a request for `url_path` (path and query, no host).

    The path is signed exactly as given, escapes and all: pass it as the client will send it.
    """
    stamp, nonce, canonical = _stamped_canonical(method, url_path, body, timestamp, nonce)
    return {
        TERMINAL: terminal_id,
        TIMESTAMP: stamp,
        NONCE: nonce,
        SIGNATURE: base64.b64encode(private_key.sign(canonical)).decode(),
    }


def terminal_signature_valid(public_key: bytes, canonical: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw, canonical)
    except (ValueError, InvalidSignature):
        return False
    return True
