"""Physical cards linked to riders, and what the gateway last knew of each chip.

A rider links a card with the bytes the phone read from it (file 0015): its length, the ASN
inside, its card type and validity dates are checked here. A card is linked to one rider at a
time; linking a card someone else holds is refused (409), and a card reported lost stays so.
The chip balance and counters are the last known ones (the OTA and clearing areas update
them); `pending_fen` is what paid top-ups will still load onto it.

This module owns `cards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from gateway import db, errors
from hce.apdu import ApduError, IssuerInfo

VIRTUAL_CARD_TYPE = 0x80
PHYSICAL_CARD_TYPES = frozenset({0x01, 0x02, 0x03})
BALANCE_MAX_FEN_DEFAULT = 100_000


@dataclass(frozen=True)
class Card:
    asn: str
    rider_id: int | None
    status: str
    card_type: int
    valid_from: date
    valid_until: date
    balance_max_fen: int
    chip_balance_fen: int
    pending_fen: int
    linked_at: datetime | None


def _bcd_date(raw: bytes) -> date:
    text = raw.hex()
    if not text.isdigit():
        raise ValueError("not BCD")
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


@dataclass(frozen=True)
class ReadCard:
    """File 0015 as the phone read it, checked."""

    asn: str
    card_type: int
    valid_from: date
    valid_until: date
    raw: bytes


def read_issuer_info(asn: str, file_0015: bytes, today: date) -> ReadCard:
    """400 `card_unreadable` for bytes that are not a physical card's file 0015 naming `asn`
    and valid today."""
    try:
        info = IssuerInfo.from_bytes(file_0015)
        valid_from, valid_until = _bcd_date(info.valid_from), _bcd_date(info.valid_until)
    except (ApduError, ValueError):
        raise errors.CARD_UNREADABLE.error("File 0015 is not 30 bytes of issuer info.") from None
    if info.asn.hex() != asn:
        raise errors.CARD_UNREADABLE.error("The ASN in file 0015 is not the card's.")
    if info.card_type not in PHYSICAL_CARD_TYPES:
        raise errors.CARD_UNREADABLE.error("Not a physical card.", card_type=info.card_type)
    if not valid_from <= today <= valid_until:
        raise errors.CARD_UNREADABLE.error(
            "The card is not valid today.", valid_from=str(valid_from),
            valid_until=str(valid_until),
        )  # fmt: skip
    return ReadCard(asn, info.card_type, valid_from, valid_until, bytes(file_0015))


_COLUMNS = """
c.asn, c.rider_id, c.status, c.card_type, c.valid_from, c.valid_until, c.balance_max_fen,
c.chip_balance_fen, c.linked_at,
coalesce((SELECT sum(o.amount_fen - o.refunded_fen) FROM topup_orders o
          WHERE o.card_asn = c.asn AND o.state IN ('paid', 'pending_load')), 0)::bigint
    AS pending_fen
"""

_LINK = """
INSERT INTO cards AS c (asn, rider_id, status, card_type, issuer_info, valid_from, valid_until,
                        linked_at)
VALUES ($1, $2, 'active', $3, $4, $5, $6, now())
ON CONFLICT (asn) DO UPDATE
   SET rider_id = EXCLUDED.rider_id, status = 'active', issuer_info = EXCLUDED.issuer_info,
       card_type = EXCLUDED.card_type, valid_from = EXCLUDED.valid_from,
       valid_until = EXCLUDED.valid_until, linked_at = now(), updated_at = now()
 WHERE c.status = 'unlinked' OR (c.status = 'active' AND c.rider_id = EXCLUDED.rider_id)
RETURNING asn
"""


def _card(row: asyncpg.Record) -> Card:
    return Card(**dict(row))


async def link(conn: asyncpg.Connection, rider_id: int, read: ReadCard) -> Card:
    """Link the card to the rider (again: no change); 409 `card_linked_elsewhere` when another
    rider holds it or it was reported lost."""
    db.assert_in_transaction(conn)
    linked = await conn.fetchval(
        _LINK, read.asn, rider_id, read.card_type, read.raw, read.valid_from, read.valid_until
    )
    if linked is None:
        raise errors.CARD_LINKED_ELSEWHERE.error()
    card = await find(conn, read.asn)
    assert card is not None
    return card


async def find(conn: asyncpg.Connection | asyncpg.Pool, asn: str) -> Card | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM cards c WHERE c.asn = $1", asn)  # noqa: S608
    return None if row is None else _card(row)


async def owned(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int, asn: str) -> Card:
    """The rider's own active card; 404 for any other (another rider's, unknown, unlinked)."""
    card = await find(conn, asn)
    if card is None or card.rider_id != rider_id or card.status != "active":
        raise errors.NOT_FOUND.error()
    return card


async def of_rider(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int) -> list[Card]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM cards c WHERE c.rider_id = $1 ORDER BY c.linked_at",  # noqa: S608
        rider_id,
    )
    return [_card(row) for row in rows]


async def unlink(conn: asyncpg.Connection, rider_id: int, asn: str) -> None:
    db.assert_in_transaction(conn)
    status = await conn.execute(
        "UPDATE cards SET status = 'unlinked', rider_id = NULL, updated_at = now() "
        "WHERE asn = $1 AND rider_id = $2 AND status = 'active'",
        asn, rider_id,
    )  # fmt: skip
    if status != "UPDATE 1":
        raise errors.NOT_FOUND.error()


async def mark_lost(conn: asyncpg.Connection, rider_id: int, asn: str) -> None:
    """The card is lost for good: no one may link it again (the taps deny list refuses it)."""
    db.assert_in_transaction(conn)
    status = await conn.execute(
        "UPDATE cards SET status = 'lost', rider_id = NULL, updated_at = now() "
        "WHERE asn = $1 AND rider_id = $2 AND status = 'active'",
        asn, rider_id,
    )  # fmt: skip
    if status != "UPDATE 1":
        raise errors.NOT_FOUND.error()


def room_fen(card: Card) -> int:
    """How much more may be loaded onto the card: its ceiling less what it holds and what
    paid top-ups will still load."""
    return max(0, card.balance_max_fen - card.chip_balance_fen - card.pending_fen)
