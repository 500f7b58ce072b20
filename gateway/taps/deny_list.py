"""The one deny list: what gates must refuse, for every kind of tap.

An append-only log (`deny_list`): each change is an entry with a version that only grows,
`add` or `remove`, for one subject of one kind:

    account       a rider id: no tap of any kind spends from the rider's wallet
    device        a QR device key, by fingerprint (8 bytes): its codes are refused
    card          a physical card, by card number
    virtual_card  an HCE virtual card, by card number

A card number is the card's ASN as bytes, the 10 bytes (BCD) the chip answers in its card
information (`shared/CARD_PROTOCOL.md`), so a gate compares what it reads with no conversion;
on the wire it is 20 hex digits. Gates download the entries after the last version they saw
(`delta`). Writers take one advisory lock for the rest of their transaction, so versions commit
in the order they were drawn and a gate that saw version N can never later miss an entry
numbered below N.

Device entries carry `expires_at`, the end of the device's last certificate: after that no code
of the device verifies anyway, and the entry leaves the delta. Account entries last until
removed (the rider's balance is back above zero when asking for a new certificate or code).

This module owns `deny_list`; it never moves money and imports nothing of the gateway but `db`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from gateway import db
from qr.reasons import Reason

LOCK: Final = "deny_list"
ENTRIES_PER_PAGE_MAX: Final = 1000
CARD_NUMBER_BYTES: Final = 10
# Why an account was denied when a tap found its wallet empty: the one reason that lifts itself
# once the balance is back (`gateway.qr_codes.certificates.spendable_fen`).
UNPAID: Final = "insufficient_balance"


class Kind(enum.StrEnum):
    ACCOUNT = "account"
    DEVICE = "device"
    CARD = "card"
    VIRTUAL_CARD = "virtual_card"


QR_KINDS: Final = (Kind.ACCOUNT, Kind.DEVICE)
CARD_KINDS: Final = (Kind.CARD, Kind.VIRTUAL_CARD)


@dataclass(frozen=True)
class Entry:
    version: int
    kind: str  # a `Kind`
    action: str  # "add" | "remove"
    account_id: int | None
    fingerprint: bytes | None
    card_number: bytes | None
    reason: str
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class QrTap:
    """What the deny list is asked about a QR ride: whose, which device, when."""

    account_id: int
    fingerprint: bytes | None  # None for an online code (no device)
    tapped_at: int  # unix s


_LATEST_ACCOUNT = """
SELECT action, reason FROM deny_list WHERE account_id = $1 ORDER BY version DESC LIMIT 1
"""

_LATEST_DEVICE = """
SELECT action, expires_at FROM deny_list WHERE fingerprint = $1
  AND (expires_at IS NULL OR expires_at > now())
ORDER BY version DESC LIMIT 1
"""

_LATEST_CARD = """
SELECT action FROM deny_list WHERE kind = $1 AND card_number = $2
  AND (expires_at IS NULL OR expires_at > now())
ORDER BY version DESC LIMIT 1
"""

_APPEND = """
INSERT INTO deny_list (kind, action, account_id, fingerprint, card_number, reason, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Accounts not denied now, each added once, in id order (so versions follow the ids).
_DENY_ACCOUNTS = """
INSERT INTO deny_list (kind, action, account_id, reason)
SELECT 'account', 'add', a.id, $2
FROM (SELECT DISTINCT id FROM unnest($1::bigint[]) AS id) AS a
WHERE (SELECT action FROM deny_list d WHERE d.account_id = a.id
        ORDER BY d.version DESC LIMIT 1) IS DISTINCT FROM 'add'
ORDER BY a.id
RETURNING account_id
"""

# Which entries were in force when each ride was tapped: the newest one made by the end of the
# tap's second (gate clocks count whole seconds).
_IN_FORCE_AT = """
SELECT
  (SELECT action FROM deny_list d
    WHERE d.account_id = t.account_id AND d.created_at < to_timestamp(t.tapped_at + 1)
    ORDER BY d.version DESC LIMIT 1) AS account_action,
  (SELECT action FROM deny_list d
    WHERE d.fingerprint = t.fingerprint AND d.created_at < to_timestamp(t.tapped_at + 1)
      AND (d.expires_at IS NULL OR d.expires_at > to_timestamp(t.tapped_at))
    ORDER BY d.version DESC LIMIT 1) AS device_action
FROM unnest($1::bigint[], $2::bytea[], $3::bigint[]) WITH ORDINALITY
     AS t(account_id, fingerprint, tapped_at, n)
ORDER BY t.n
"""

_DELTA = """
SELECT version, kind, action, account_id, fingerprint, card_number, reason, expires_at,
       created_at
FROM deny_list
WHERE version > $1 AND kind = ANY($3::text[]) AND (expires_at IS NULL OR expires_at > now())
ORDER BY version LIMIT $2
"""


async def _lock(conn: asyncpg.Connection) -> None:
    db.assert_in_transaction(conn)
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)


async def account_denied(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> bool:
    return await denial_reason(conn, account_id) is not None


async def denial_reason(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> str | None:
    """Why the account is on the deny list, or None when it is not."""
    latest = await conn.fetchrow(_LATEST_ACCOUNT, account_id)
    return latest["reason"] if latest is not None and latest["action"] == "add" else None


async def deny_account(conn: asyncpg.Connection, account_id: int, reason: str) -> bool:
    """Add the account to the deny list (no-op when it is on it); True when added."""
    return bool(await deny_accounts(conn, [account_id], reason))


async def deny_accounts(
    conn: asyncpg.Connection, account_ids: Sequence[int], reason: str
) -> list[int]:
    """Add each account not on the deny list, in one statement; the ids added, ascending."""
    await _lock(conn)
    rows = await conn.fetch(_DENY_ACCOUNTS, list(account_ids), reason)
    return [row["account_id"] for row in rows]


async def lift_account(conn: asyncpg.Connection, account_id: int, reason: str) -> bool:
    """Take the account off the deny list (no-op when it is not on it); True when lifted."""
    await _lock(conn)
    if not await account_denied(conn, account_id):
        return False
    await conn.execute(_APPEND, Kind.ACCOUNT.value, "remove", account_id, None, None, reason, None)
    return True


async def revoke_device(
    conn: asyncpg.Connection, fingerprint: bytes, expires_at: datetime, reason: str
) -> None:
    await _lock(conn)
    await conn.execute(
        _APPEND, Kind.DEVICE.value, "add", None, fingerprint, None, reason, expires_at
    )


async def restore_device(conn: asyncpg.Connection, fingerprint: bytes, reason: str) -> None:
    """Lift a revoked device key (its rider registers it again), when it is revoked."""
    await _lock(conn)
    latest = await conn.fetchrow(_LATEST_DEVICE, fingerprint)
    if latest is not None and latest["action"] == "add":
        await conn.execute(
            _APPEND, Kind.DEVICE.value, "remove", None, fingerprint, None, reason,
            latest["expires_at"],
        )  # fmt: skip


async def card_denied(
    conn: asyncpg.Connection | asyncpg.Pool, kind: Kind, card_number: bytes
) -> bool:
    assert kind in CARD_KINDS
    latest: str | None = await conn.fetchval(_LATEST_CARD, kind.value, card_number)
    return latest == "add"


async def deny_card(
    conn: asyncpg.Connection,
    kind: Kind,
    card_number: bytes,
    reason: str,
    expires_at: datetime | None = None,
) -> bool:
    """Add a card or virtual card (its ASN) to the deny list, unless it is on it; True when
    added. `expires_at`: when the entry stops mattering (a virtual card's last key expires)."""
    assert kind in CARD_KINDS and len(card_number) == CARD_NUMBER_BYTES, "an ASN is 10 bytes"
    await _lock(conn)
    if await card_denied(conn, kind, card_number):
        return False
    await conn.execute(_APPEND, kind.value, "add", None, None, card_number, reason, expires_at)
    return True


async def lift_card(conn: asyncpg.Connection, kind: Kind, card_number: bytes, reason: str) -> bool:
    """Take a card or virtual card off the deny list, when it is on it; True when lifted."""
    assert kind in CARD_KINDS and len(card_number) == CARD_NUMBER_BYTES, "an ASN is 10 bytes"
    await _lock(conn)
    if not await card_denied(conn, kind, card_number):
        return False
    await conn.execute(_APPEND, kind.value, "remove", None, None, card_number, reason, None)
    return True


async def qr_refusals_at(conn: asyncpg.Connection, taps: Sequence[QrTap]) -> list[Reason | None]:
    """For each ride, in order: `account_denied` or `device_revoked` when an entry was in force
    at its tap, else None; one query for the whole batch."""
    if not taps:
        return []
    rows = await conn.fetch(
        _IN_FORCE_AT,
        [t.account_id for t in taps],
        [t.fingerprint for t in taps],
        [t.tapped_at for t in taps],
    )
    return [
        Reason.ACCOUNT_DENIED if row["account_action"] == "add"
        else Reason.DEVICE_REVOKED if row["device_action"] == "add"
        else None
        for row in rows
    ]  # fmt: skip


async def delta(
    conn: asyncpg.Connection | asyncpg.Pool,
    since: int,
    limit: int,
    kinds: Sequence[Kind] = tuple(Kind),
) -> list[Entry]:
    """Entries of `kinds` after version `since`, oldest first, at most `limit` (entries past
    their `expires_at` left out)."""
    assert 0 < limit <= ENTRIES_PER_PAGE_MAX
    rows = await conn.fetch(_DELTA, since, limit, [k.value for k in kinds])
    return [Entry(*row) for row in rows]
