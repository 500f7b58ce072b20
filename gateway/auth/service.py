"""The identity area's service: riders' sign-up, log-in and sessions, and who is who.

Built once at start (`setup`), it holds the token keys, the login guard and the rate limiter,
and puts the three authenticators (bearer tokens, partner HMAC, terminal Ed25519) into the
platform's list. Handlers call one method of it. Its flows commit to PostgreSQL first, then
tell Redis (revoked sessions), and never hold a transaction across a Redis or token call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError

from gateway import errors
from gateway.auth import partners, passwords, riders, terminals, tokens
from gateway.auth.bearer import BearerAuthenticator
from gateway.auth.partners import PartnerAuthenticator
from gateway.auth.ratelimit import LoginGuard, RateLimiter, revoked_session_key
from gateway.auth.terminals import TerminalAuthenticator
from gateway.config import Config
from gateway.context import AUTHENTICATORS, CONFIG, KEYSTORE, METRICS, POOL, RATE_LIMITER, REDIS
from gateway.workers import Periodic

log = logging.getLogger(__name__)

TOKEN_KEYS_RELOAD_S = 60


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: str


class Identity:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: redis.Redis,
        config: Config,
        token_keys: tokens.TokenKeys,
        login_guard: LoginGuard,
    ) -> None:
        self.pool = pool
        self.redis = client
        self.config = config
        self.token_keys = token_keys
        self.login_guard = login_guard

    async def sign_up(self, phone: str, password: str) -> riders.Rider:
        """A new rider with an empty wallet; 400 `weak_password`, 409 `phone_taken`."""
        why = passwords.weakness(password)
        if why is not None:
            raise errors.WEAK_PASSWORD.error(reason=why)
        password_hash = await asyncio.to_thread(passwords.hash_password, password)
        async with self.pool.acquire() as conn, conn.transaction():
            return await riders.create(conn, phone, password_hash)

    async def log_in(self, phone: str, password: str, ip: str, user_agent: str) -> TokenPair:
        """A new session; the same 401 for an unknown phone and a wrong password."""
        await self.login_guard.attempt(phone, ip)
        row = await self.pool.fetchrow(
            "SELECT id, password_hash FROM riders WHERE phone = $1 AND status = 'active'", phone
        )
        stored = row["password_hash"] if row is not None else passwords.DUMMY_HASH
        matches = await asyncio.to_thread(passwords.verify_password, password, stored)
        if row is None or not matches:
            raise errors.INVALID_CREDENTIALS.error()
        await self.login_guard.succeeded(phone, ip)
        async with self.pool.acquire() as conn, conn.transaction():
            session_id, refresh = await riders.open_session(
                conn, row["id"], user_agent, self.config.refresh_token_ttl_s
            )
        return await self._pair(row["id"], session_id, refresh)

    async def refresh(self, token: str) -> TokenPair:
        """Trade a refresh token (once) for a new pair; reusing one ends its session."""
        async with self.pool.acquire() as conn, conn.transaction():
            rotated = await riders.rotate_refresh_token(
                conn, token, self.config.refresh_token_ttl_s
            )
        if rotated.reused:
            await self._mark_revoked(rotated.session_id)
            raise errors.REFRESH_TOKEN_INVALID.error(
                "This refresh token was already used; log in again."
            )
        assert rotated.refresh_token is not None
        return await self._pair(rotated.rider_id, rotated.session_id, rotated.refresh_token)

    async def log_out(self, rider_id: int, session_id: str) -> bool:
        """End one of the rider's sessions; False when the rider has no such session."""
        try:
            session = uuid.UUID(session_id)
        except ValueError:
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            if not await riders.end_session(conn, rider_id, session):
                return False
        await self._mark_revoked(session)
        return True

    async def sessions(self, rider_id: int) -> list[riders.Session]:
        return await riders.sessions(self.pool, rider_id)

    async def rider(self, rider_id: int) -> riders.Rider:
        """An active rider; 404 otherwise."""
        found = await riders.get(self.pool, rider_id)
        if found is None:
            raise errors.NOT_FOUND.error()
        return found

    async def partner(self, key_id: str) -> partners.Partner:
        found = await partners.find(self.pool, key_id)
        if found is None:
            raise errors.NOT_FOUND.error()
        return found

    async def terminal(self, terminal_id: str) -> terminals.Terminal:
        found = await terminals.find(self.pool, terminal_id)
        if found is None:
            raise errors.NOT_FOUND.error()
        return found

    async def session_revoked(self, session_id: str) -> bool:
        return await riders.session_revoked(self.pool, session_id)

    async def _pair(self, rider_id: int, session_id: uuid.UUID, refresh: str) -> TokenPair:
        config = self.config
        access = await tokens.issue(
            self.token_keys, config.jwt_issuer, tokens.RIDER_AUDIENCE, str(rider_id),
            config.access_token_ttl_s, int(time.time()), {"sid": str(session_id)},
        )  # fmt: skip
        return TokenPair(
            access, config.access_token_ttl_s, refresh, config.refresh_token_ttl_s,
            str(session_id),
        )  # fmt: skip

    async def _mark_revoked(self, session_id: uuid.UUID) -> None:
        await mark_revoked(self.redis, self.config, session_id)


async def mark_revoked(client: redis.Redis, config: Config, session_id: uuid.UUID) -> None:
    """Access tokens of the session stop working now, not when they expire."""
    key = revoked_session_key(config.redis_prefix, str(session_id))
    try:
        await client.set(key, b"1", ex=config.access_token_ttl_s + tokens.LEEWAY_S)
    except (RedisError, OSError):
        # Its refresh tokens are revoked in PostgreSQL; access tokens expire within minutes.
        log.warning("could not mark a session revoked in Redis")


async def set_rider_status(
    pool: asyncpg.Pool, client: redis.Redis, config: Config, phone: str, status: str
) -> bool:
    """Disable (ending every session at once) or enable a rider; False: no such phone."""
    async with pool.acquire() as conn, conn.transaction():
        ended = await riders.set_status(conn, phone, status)
    for session in ended or ():
        await mark_revoked(client, config, session)
    return ended is not None


IDENTITY = web.AppKey("identity", Identity)


async def setup(app: web.Application) -> AsyncIterator[None]:
    """Token keys, the three authenticators, the rate limits and the service."""
    config, pool, client, metrics = app[CONFIG], app[POOL], app[REDIS], app[METRICS]
    keys = tokens.TokenKeys(app[KEYSTORE], pool)
    await keys.load()
    identity = Identity(pool, client, config, keys, LoginGuard(client, config, metrics))
    app[IDENTITY] = identity
    app[AUTHENTICATORS].extend(
        [
            BearerAuthenticator(keys, config.jwt_issuer),
            PartnerAuthenticator(pool, client, app[KEYSTORE], config),
            TerminalAuthenticator(pool, client, config, metrics),
        ]
    )
    app[RATE_LIMITER] = RateLimiter(client, config, metrics, identity.session_revoked)
    yield


async def _reload_token_keys(app: web.Application) -> None:
    """Signing keys rotated or revoked elsewhere reach this process within a minute."""
    await app[IDENTITY].token_keys.load()


RELOAD_TOKEN_KEYS = Periodic(
    "token-keys-reload", TOKEN_KEYS_RELOAD_S, _reload_token_keys, first_after_interval=True
)
