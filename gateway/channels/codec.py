"""Signatures as channels send them: base64 text, decoded strictly.

Only the one canonical text of a signature is accepted: base64 lets the last character's unused
bits vary, and a check that took any of those texts would let a changed message field (the
signature's own text) pass as the same signed message.
"""

from __future__ import annotations

import base64
import binascii


def signature_bytes(text: str) -> bytes:
    """The signature's bytes; ValueError for anything but canonical, padded base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not the canonical base64 of its bytes")
    return raw
