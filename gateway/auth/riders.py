"""Riders' rows: sign-up (with their wallet), login sessions and rotating refresh tokens.

A session is one login on one device: a family of refresh tokens of which each is used once.
Presenting a refresh token that was already used means it was copied: the whole family is
revoked and the answer is 401. This module owns `riders`, `rider_sessions`, `refresh_tokens`;
the flows that also touch Redis and tokens are `gateway.auth.service.Identity`'s.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway import db, errors
from gateway.ledger import AccountKind, open_account

REFRESH_TOKEN_PREFIX = "rt_"  # noqa: S105 (a prefix, not a secret)
USER_AGENT_CHARS_MAX = 200
SESSIONS_LISTED_MAX = 50


@dataclass(frozen=True)
class Rider:
    id: int
    phone: str
    wallet_account_id: int
    created_at: datetime


@dataclass(frozen=True)
class Session:
    id: str
    created_at: datetime
    last_used_at: datetime
    user_agent: str


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_INSERT_RIDER = """
INSERT INTO riders (id, phone, password_hash, wallet_account_id) OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4) RETURNING created_at
"""


async def create(conn: asyncpg.Connection, phone: str, password_hash: str) -> Rider:
    """A new rider with an empty wallet; 409 `phone_taken`."""
    db.assert_in_transaction(conn)
    rider_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('riders', 'id'))")
    wallet = await open_account(conn, AccountKind.RIDER_WALLET, str(rider_id))
    try:
        async with conn.transaction():  # a savepoint: the caller's transaction stays usable
            created_at = await conn.fetchval(_INSERT_RIDER, rider_id, phone, password_hash, wallet)
    except asyncpg.UniqueViolationError:
        raise errors.PHONE_TAKEN.error() from None
    return Rider(rider_id, phone, wallet, created_at)


async def get(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int) -> Rider | None:
    row = await conn.fetchrow(
        "SELECT id, phone, wallet_account_id, created_at FROM riders "
        "WHERE id = $1 AND status = 'active'",
        rider_id,
    )
    return None if row is None else Rider(**dict(row))


async def open_session(
    conn: asyncpg.Connection, rider_id: int, user_agent: str, refresh_ttl_s: int
) -> tuple[uuid.UUID, str]:
    """A new login session and its first refresh token."""
    db.assert_in_transaction(conn)
    session_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO rider_sessions (id, rider_id, user_agent) VALUES ($1, $2, $3)",
        session_id, rider_id, user_agent[:USER_AGENT_CHARS_MAX],
    )  # fmt: skip
    return session_id, await _new_refresh_token(conn, session_id, refresh_ttl_s)


async def _new_refresh_token(
    conn: asyncpg.Connection, session_id: uuid.UUID, refresh_ttl_s: int
) -> str:
    db.assert_in_transaction(conn)
    token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, status, expires_at) "
        "VALUES ($1, $2, 'active', now() + make_interval(secs => $3))",
        _hash(token), session_id, float(refresh_ttl_s),
    )  # fmt: skip
    return token


_REFRESH_ROW = """
SELECT t.status, t.expires_at <= now() AS expired, t.session_id, s.rider_id,
       s.revoked_at IS NOT NULL OR r.status <> 'active' AS session_revoked
FROM refresh_tokens t
JOIN rider_sessions s ON s.id = t.session_id
JOIN riders r ON r.id = s.rider_id
WHERE t.token_hash = $1
FOR UPDATE OF t
"""


@dataclass(frozen=True)
class Rotated:
    """What presenting a refresh token did: a new token, or (reuse) the session it ended."""

    rider_id: int
    session_id: uuid.UUID
    refresh_token: str | None
    reused: bool


async def rotate_refresh_token(conn: asyncpg.Connection, token: str, refresh_ttl_s: int) -> Rotated:
    """Use up the presented token and issue the next one in its session; a token presented a
    second time was copied, so its whole session ends. 401 for an unknown or dead token."""
    db.assert_in_transaction(conn)
    row = await conn.fetchrow(_REFRESH_ROW, _hash(token))
    if row is None or row["expired"] or row["session_revoked"]:
        raise errors.REFRESH_TOKEN_INVALID.error()
    if row["status"] != "active":
        await revoke_session(conn, row["session_id"], "refresh token reused")
        return Rotated(row["rider_id"], row["session_id"], None, reused=True)
    await conn.execute(
        "UPDATE refresh_tokens SET status = 'used' WHERE token_hash = $1", _hash(token)
    )
    await conn.execute(
        "UPDATE rider_sessions SET last_used_at = now() WHERE id = $1", row["session_id"]
    )
    new_token = await _new_refresh_token(conn, row["session_id"], refresh_ttl_s)
    return Rotated(row["rider_id"], row["session_id"], new_token, reused=False)


async def revoke_session(conn: asyncpg.Connection, session_id: uuid.UUID, why: str) -> None:
    db.assert_in_transaction(conn)
    await conn.execute(
        "UPDATE rider_sessions SET revoked_at = now(), revoked_why = $2 "
        "WHERE id = $1 AND revoked_at IS NULL",
        session_id, why,
    )  # fmt: skip
    await conn.execute(
        "UPDATE refresh_tokens SET status = 'revoked' WHERE session_id = $1 AND status = 'active'",
        session_id,
    )


async def end_session(conn: asyncpg.Connection, rider_id: int, session: uuid.UUID) -> bool:
    """Log out one of the rider's sessions; False when the rider has no such live session."""
    db.assert_in_transaction(conn)
    owner = await conn.fetchval(
        "SELECT rider_id FROM rider_sessions WHERE id = $1 AND revoked_at IS NULL", session
    )
    if owner != rider_id:
        return False
    await revoke_session(conn, session, "logged out")
    return True


async def sessions(conn: asyncpg.Connection | asyncpg.Pool, rider_id: int) -> list[Session]:
    rows = await conn.fetch(
        "SELECT id, created_at, last_used_at, user_agent FROM rider_sessions "
        "WHERE rider_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT $2",
        rider_id,
        SESSIONS_LISTED_MAX,
    )
    return [
        Session(str(r["id"]), r["created_at"], r["last_used_at"], r["user_agent"]) for r in rows
    ]


async def session_revoked(conn: asyncpg.Connection | asyncpg.Pool, session_id: str) -> bool:
    """Whether a session has ended (PostgreSQL's word, for when Redis cannot answer)."""
    try:
        session = uuid.UUID(session_id)
    except ValueError:
        return True
    revoked: bool | None = await conn.fetchval(
        "SELECT s.revoked_at IS NOT NULL OR r.status <> 'active' FROM rider_sessions s "
        "JOIN riders r ON r.id = s.rider_id WHERE s.id = $1",
        session,
    )
    return revoked is None or revoked


async def set_status(conn: asyncpg.Connection, phone: str, status: str) -> list[uuid.UUID] | None:
    """Disable (ending every session) or enable a rider: the sessions it ended, or None when
    there is no such phone."""
    db.assert_in_transaction(conn)
    assert status in ("active", "disabled")
    rider_id = await conn.fetchval(
        "UPDATE riders SET status = $2 WHERE phone = $1 RETURNING id", phone, status
    )
    if rider_id is None:
        return None
    if status == "active":
        return []
    ended = await conn.fetch(
        "SELECT id FROM rider_sessions WHERE rider_id = $1 AND revoked_at IS NULL", rider_id
    )
    for row in ended:
        await revoke_session(conn, row["id"], "rider disabled")
    return [row["id"] for row in ended]
