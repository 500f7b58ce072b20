"""Riders: sign-up (with their wallet), login sessions and rotating refresh tokens.

A session is one login on one device: a family of refresh tokens of which each is used once.
Presenting a refresh token that was already used means it was copied: the whole family is
revoked and the answer is 401. This module owns `riders`, `rider_sessions`, `refresh_tokens`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway import errors
from gateway.auth import passwords, tokens
from gateway.auth.ratelimit import LoginGuard, revoked_session_key
from gateway.config import Config
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
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: str


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


async def sign_up(pool: asyncpg.Pool, phone: str, password: str) -> Rider:
    """A new rider with an empty wallet; 400 `weak_password`, 409 `phone_taken`."""
    why = passwords.weakness(password)
    if why is not None:
        raise errors.WEAK_PASSWORD.error(reason=why)
    password_hash = await asyncio.to_thread(passwords.hash_password, password)
    async with pool.acquire() as conn, conn.transaction():
        rider_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('riders', 'id'))")
        wallet = await open_account(conn, AccountKind.RIDER_WALLET, str(rider_id))
        try:
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


async def log_in(
    pool: asyncpg.Pool,
    keys: tokens.TokenKeys,
    guard: LoginGuard,
    config: Config,
    phone: str,
    password: str,
    ip: str,
    user_agent: str,
) -> TokenPair:
    """A new session; the same 401 for an unknown phone and a wrong password."""
    await guard.attempt(phone, ip)
    row = await pool.fetchrow(
        "SELECT id, password_hash FROM riders WHERE phone = $1 AND status = 'active'", phone
    )
    stored = row["password_hash"] if row is not None else passwords.DUMMY_HASH
    matches = await asyncio.to_thread(passwords.verify_password, password, stored)
    if row is None or not matches:
        raise errors.INVALID_CREDENTIALS.error()
    await guard.succeeded(phone, ip)
    session_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO rider_sessions (id, rider_id, user_agent) VALUES ($1, $2, $3)",
            session_id, row["id"], user_agent[:USER_AGENT_CHARS_MAX],
        )  # fmt: skip
        refresh = await _new_refresh_token(conn, session_id, config)
    return await _pair(keys, config, row["id"], session_id, refresh)


async def _new_refresh_token(
    conn: asyncpg.Connection, session_id: uuid.UUID, config: Config
) -> str:
    token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, status, expires_at) "
        "VALUES ($1, $2, 'active', now() + make_interval(secs => $3))",
        _hash(token), session_id, float(config.refresh_token_ttl_s),
    )  # fmt: skip
    return token


async def _pair(
    keys: tokens.TokenKeys, config: Config, rider_id: int, session_id: uuid.UUID, refresh: str
) -> TokenPair:
    access = await tokens.issue(
        keys, config.jwt_issuer, tokens.RIDER_AUDIENCE, str(rider_id),
        config.access_token_ttl_s, int(datetime.now().timestamp()), {"sid": str(session_id)},
    )  # fmt: skip
    return TokenPair(
        access, config.access_token_ttl_s, refresh, config.refresh_token_ttl_s, str(session_id)
    )


_REFRESH_ROW = """
SELECT t.status, t.expires_at <= now() AS expired, t.session_id, s.rider_id,
       s.revoked_at IS NOT NULL OR r.status <> 'active' AS session_revoked
FROM refresh_tokens t
JOIN rider_sessions s ON s.id = t.session_id
JOIN riders r ON r.id = s.rider_id
WHERE t.token_hash = $1
FOR UPDATE OF t
"""


async def refresh(
    pool: asyncpg.Pool, client: redis.Redis, keys: tokens.TokenKeys, config: Config, token: str
) -> TokenPair:
    """Rotate: the presented token is used up and a new pair is issued in the same session."""
    reused_session = None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_REFRESH_ROW, _hash(token))
        if row is None or row["expired"] or row["session_revoked"]:
            raise errors.REFRESH_TOKEN_INVALID.error()
        if row["status"] != "active":
            reused_session = row["session_id"]
            await _revoke_session(conn, reused_session, "refresh token reused")
        else:
            await conn.execute(
                "UPDATE refresh_tokens SET status = 'used' WHERE token_hash = $1", _hash(token)
            )
            await conn.execute(
                "UPDATE rider_sessions SET last_used_at = now() WHERE id = $1", row["session_id"]
            )
            new_token = await _new_refresh_token(conn, row["session_id"], config)
    if reused_session is not None:
        await _mark_revoked(client, config, reused_session)
        raise errors.REFRESH_TOKEN_INVALID.error(
            "This refresh token was already used; log in again."
        )
    return await _pair(keys, config, row["rider_id"], row["session_id"], new_token)


async def _revoke_session(conn: asyncpg.Connection, session_id: uuid.UUID, why: str) -> None:
    await conn.execute(
        "UPDATE rider_sessions SET revoked_at = now(), revoked_why = $2 "
        "WHERE id = $1 AND revoked_at IS NULL",
        session_id, why,
    )  # fmt: skip
    await conn.execute(
        "UPDATE refresh_tokens SET status = 'revoked' WHERE session_id = $1 AND status = 'active'",
        session_id,
    )


async def _mark_revoked(client: redis.Redis, config: Config, session_id: uuid.UUID) -> None:
    """Access tokens of the session stop working now, not when they expire."""
    key = revoked_session_key(config.redis_prefix, str(session_id))
    try:
        await client.set(key, b"1", ex=config.access_token_ttl_s + tokens.LEEWAY_S)
    except (RedisError, OSError):
        # Its refresh tokens are revoked in PostgreSQL; access tokens expire within minutes.
        pass


async def log_out(
    pool: asyncpg.Pool, client: redis.Redis, config: Config, rider_id: int, session_id: str
) -> bool:
    """End one of the rider's sessions; False when the rider has no such session."""
    try:
        session = uuid.UUID(session_id)
    except ValueError:
        return False
    async with pool.acquire() as conn, conn.transaction():
        owner = await conn.fetchval(
            "SELECT rider_id FROM rider_sessions WHERE id = $1 AND revoked_at IS NULL", session
        )
        if owner != rider_id:
            return False
        await _revoke_session(conn, session, "logged out")
    await _mark_revoked(client, config, session)
    return True


async def sessions(pool: asyncpg.Pool, rider_id: int) -> list[Session]:
    rows = await pool.fetch(
        "SELECT id, created_at, last_used_at, user_agent FROM rider_sessions "
        "WHERE rider_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT $2",
        rider_id,
        SESSIONS_LISTED_MAX,
    )
    return [
        Session(str(r["id"]), r["created_at"], r["last_used_at"], r["user_agent"]) for r in rows
    ]


async def session_revoked(pool: asyncpg.Pool, session_id: str) -> bool:
    """Whether a session has ended (PostgreSQL's word, for when Redis cannot answer)."""
    try:
        session = uuid.UUID(session_id)
    except ValueError:
        return True
    revoked: bool | None = await pool.fetchval(
        "SELECT s.revoked_at IS NOT NULL OR r.status <> 'active' FROM rider_sessions s "
        "JOIN riders r ON r.id = s.rider_id WHERE s.id = $1",
        session,
    )
    return revoked is None or revoked


async def set_status(
    pool: asyncpg.Pool, client: redis.Redis, config: Config, phone: str, status: str
) -> bool:
    """Disable (ending every session at once) or enable a rider; False when no such phone."""
    assert status in ("active", "disabled")
    async with pool.acquire() as conn, conn.transaction():
        rider_id = await conn.fetchval(
            "UPDATE riders SET status = $2 WHERE phone = $1 RETURNING id", phone, status
        )
        if rider_id is None:
            return False
        ended = []
        if status == "disabled":
            ended = await conn.fetch(
                "SELECT id FROM rider_sessions WHERE rider_id = $1 AND revoked_at IS NULL",
                rider_id,
            )
            for row in ended:
                await _revoke_session(conn, row["id"], "rider disabled")
    for row in ended:
        await _mark_revoked(client, config, row["id"])
    return True
