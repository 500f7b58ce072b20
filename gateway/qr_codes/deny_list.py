"""The QR deny list: accounts gates must refuse and device keys that were revoked.

An append-only log (`qr_deny_list`): each change is an entry with a version that only grows,
`add` or `remove`, for an account (rider id) or a device fingerprint (8 bytes). Gates download
the entries after the last version they saw (`delta`). Writers take one advisory lock for the
rest of their transaction, so versions commit in the order they were drawn and a gate that saw
version N can never later miss an entry numbered below N.

Device entries carry `expires_at`, the end of the device's last certificate: after that no code
of the device verifies anyway, and the entry leaves the delta. Account entries last until
removed (the rider's balance is back above zero when asking for a new certificate or code).

This module owns `qr_deny_list`; it never moves money.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from qr.reasons import Reason

LOCK: Final = "qr_deny_list"
ENTRIES_PER_PAGE_MAX: Final = 1000


@dataclass(frozen=True)
class Entry:
    version: int
    kind: str  # "account" | "device"
    action: str  # "add" | "remove"
    account_id: int | None
    fingerprint: bytes | None
    reason: str
    expires_at: datetime | None
    created_at: datetime


_LATEST_ACCOUNT = """
SELECT action, reason FROM qr_deny_list WHERE account_id = $1 ORDER BY version DESC LIMIT 1
"""

_LATEST_DEVICE = """
SELECT action, expires_at FROM qr_deny_list WHERE fingerprint = $1
  AND (expires_at IS NULL OR expires_at > now())
ORDER BY version DESC LIMIT 1
"""

_APPEND = """
INSERT INTO qr_deny_list (kind, action, account_id, fingerprint, reason, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""

# Which entry was in force when a ride was tapped: the newest one made by the end of the tap's
# second (gate clocks count whole seconds).
_IN_FORCE_AT = """
SELECT
  (SELECT action FROM qr_deny_list
    WHERE account_id = $1 AND created_at < to_timestamp($3 + 1)
    ORDER BY version DESC LIMIT 1) AS account_action,
  (SELECT action FROM qr_deny_list
    WHERE fingerprint = $2 AND created_at < to_timestamp($3 + 1)
      AND (expires_at IS NULL OR expires_at > to_timestamp($3))
    ORDER BY version DESC LIMIT 1) AS device_action
"""

_DELTA = """
SELECT version, kind, action, account_id, fingerprint, reason, expires_at, created_at
FROM qr_deny_list
WHERE version > $1 AND (expires_at IS NULL OR expires_at > now())
ORDER BY version LIMIT $2
"""


async def _lock(conn: asyncpg.Connection) -> None:
    assert conn.is_in_transaction(), "deny list writes belong inside the caller's transaction"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)


async def account_denied(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> bool:
    return await denial_reason(conn, account_id) is not None


async def denial_reason(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> str | None:
    """Why the account is on the deny list, or None when it is not."""
    latest = await conn.fetchrow(_LATEST_ACCOUNT, account_id)
    return latest["reason"] if latest is not None and latest["action"] == "add" else None


async def deny_account(conn: asyncpg.Connection, account_id: int, reason: str) -> bool:
    """Add the account to the deny list (no-op when it is on it); True when added."""
    await _lock(conn)
    if await account_denied(conn, account_id):
        return False
    await conn.execute(_APPEND, "account", "add", account_id, None, reason, None)
    return True


async def lift_account(conn: asyncpg.Connection, account_id: int, reason: str) -> bool:
    """Take the account off the deny list (no-op when it is not on it); True when lifted."""
    await _lock(conn)
    if not await account_denied(conn, account_id):
        return False
    await conn.execute(_APPEND, "account", "remove", account_id, None, reason, None)
    return True


async def revoke_device(
    conn: asyncpg.Connection, fingerprint: bytes, expires_at: datetime, reason: str
) -> None:
    await _lock(conn)
    await conn.execute(_APPEND, "device", "add", None, fingerprint, reason, expires_at)


async def restore_device(conn: asyncpg.Connection, fingerprint: bytes, reason: str) -> None:
    """Lift a revoked device key (its rider registers it again), when it is revoked."""
    await _lock(conn)
    latest = await conn.fetchrow(_LATEST_DEVICE, fingerprint)
    if latest is not None and latest["action"] == "add":
        await conn.execute(
            _APPEND, "device", "remove", None, fingerprint, reason, latest["expires_at"]
        )


async def refusal_at(
    conn: asyncpg.Connection, account_id: int, fingerprint: bytes | None, tapped_at: int
) -> Reason | None:
    """`account_denied` or `device_revoked` when an entry was in force at the tap, else None."""
    row = await conn.fetchrow(_IN_FORCE_AT, account_id, fingerprint, tapped_at)
    assert row is not None
    if row["account_action"] == "add":
        return Reason.ACCOUNT_DENIED
    if row["device_action"] == "add":
        return Reason.DEVICE_REVOKED
    return None


async def delta(conn: asyncpg.Connection | asyncpg.Pool, since: int, limit: int) -> list[Entry]:
    """Entries after version `since`, oldest first, at most `limit` (expired devices left out)."""
    assert 0 < limit <= ENTRIES_PER_PAGE_MAX
    rows = await conn.fetch(_DELTA, since, limit)
    return [Entry(*row) for row in rows]
