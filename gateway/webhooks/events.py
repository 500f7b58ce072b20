"""What a webhook says: its event types and the body every attempt of an event sends.

The body is built from the stored event (id, type, time, the top-up's JSON as it was) and is
the same bytes on every attempt, so receivers can de-duplicate by `id` and verify the
signature over exactly what they got. This module knows no top-up fields: `data` arrives as
JSON made by the area whose object it is.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

EVENT_ID_PREFIX = "evt_"


class EventType(enum.StrEnum):
    TOPUP_PAID = "topup.paid"  # the partner's float paid it
    TOPUP_CREDITED = "topup.credited"  # the money reached the wallet, or the card's pending load
    TOPUP_LOADED = "topup.loaded"  # the money is on the card's chip
    TOPUP_REFUNDED = "topup.refunded"
    TOPUP_CLOSED = "topup.closed"


class _Envelope(msgspec.Struct):
    id: str
    type: str
    created_at: datetime
    data: msgspec.Raw


def event_id_text(event_id: int) -> str:
    return f"{EVENT_ID_PREFIX}{event_id}"


def event_id_of(text: str) -> int | None:
    """The number of an event id as partners see it (`evt_42`), or None for anything else."""
    digits = text.removeprefix(EVENT_ID_PREFIX)
    if text.startswith(EVENT_ID_PREFIX) and digits.isascii() and digits.isdigit():
        if 0 < len(digits) <= 18:
            return int(digits)
    return None


def body(event_id: int, event_type: str, created_at: datetime, data: bytes) -> bytes:
    """`{"id": "evt_…", "type": …, "created_at": …, "data": {…}}`: the same bytes every time."""
    envelope = _Envelope(event_id_text(event_id), event_type, created_at, msgspec.Raw(data))
    return msgspec.json.encode(envelope)
