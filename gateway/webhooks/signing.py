"""The webhook signature: `OC-Webhook-Signature: t=TIMESTAMP,v1=HEX`, both sides.

`v1` is the hex HMAC-SHA256, keyed with the endpoint's secret (its UTF-8 bytes, `whsec_`
prefix included), of `f"{t}.{body}"`: the unix timestamp of the attempt, a dot and the exact
body bytes. A new timestamp is signed on every attempt; the body stays the same. Receivers
verify with `verify(...)` (or the same few lines of their own): one opaque False for every kind
of bad header, a constant-time comparison, the time passed in.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "OC-Webhook-Signature"
TOLERANCE_S = 300
HEADER_CHARS_MAX = 512


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, value: str, body: bytes, *, now: int, tolerance_s: int = TOLERANCE_S
) -> bool:
    """Whether `value` (the header) signs `body` with `secret` within `tolerance_s` of `now`."""
    if len(value) > HEADER_CHARS_MAX:
        return False
    parts: dict[str, list[str]] = {}
    for item in value.split(","):
        name, _, text = item.strip().partition("=")
        parts.setdefault(name, []).append(text)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).encode()
    # Any of several v1 values may match: a sender may sign with an old and a new secret.
    return any(hmac.compare_digest(expected, given.encode()) for given in parts.get("v1", []))
