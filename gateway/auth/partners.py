"""Partners (banks, city apps, merchants): their key ids, secrets and signed requests.

The secret is shown once at creation or rotation and stored encrypted in the keystore (kind
`partner_secret`, name = key id). After a rotation the old secret keeps verifying for
`ROTATION_GRACE`, so a partner can roll it out without downtime. Every signature failure gives
the same 401 `bad_signature`. Nonces are remembered in Redis for twice the window; when Redis
does not answer, partner requests are refused (503): a replay must never get through.
This module owns `partners`.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError

from gateway import errors
from gateway.auth import nonces, signatures
from gateway.auth.principal import Principal, PrincipalKind
from gateway.cache import TtlCache
from gateway.config import Config
from gateway.keystore import KeyKind, Keystore

log = logging.getLogger(__name__)

ROTATION_GRACE = timedelta(hours=24)
NONCE_CHARS_MAX = 64
KEY_ID_PREFIX = "pk_"
SECRET_CACHE_S = 30.0
CACHE_ENTRIES_MAX = 10_000


@dataclass(frozen=True)
class Partner:
    id: int
    name: str
    key_id: str
    status: str
    rate_per_s: int | None
    rate_burst: int | None
    created_at: datetime


_COLUMNS = "id, name, key_id, status, rate_per_s, rate_burst, created_at"


async def create(conn: asyncpg.Connection, keystore: Keystore, name: str) -> tuple[Partner, str]:
    """A new partner and its secret (shown to the operator once, never again)."""
    key_id = KEY_ID_PREFIX + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO partners (name, key_id) VALUES ($1, $2) RETURNING {_COLUMNS}",  # noqa: S608
            name, key_id,
        )  # fmt: skip
        await keystore.put(conn, KeyKind.PARTNER_SECRET, key_id, secret.encode())
    return Partner(**dict(row)), secret


async def rotate(conn: asyncpg.Connection, keystore: Keystore, key_id: str) -> str:
    """A new secret; the old one verifies for ROTATION_GRACE more."""
    async with conn.transaction():
        if await find(conn, key_id) is None:
            raise LookupError(key_id)
        retire_at = datetime.now(UTC) + ROTATION_GRACE
        for old in await keystore.versions(conn, KeyKind.PARTNER_SECRET, key_id):
            if old.status == "active":
                await keystore.set_status(conn, old.id, "retired", retire_at)
        secret = secrets.token_urlsafe(32)
        await keystore.put(conn, KeyKind.PARTNER_SECRET, key_id, secret.encode())
    return secret


async def set_status(conn: asyncpg.Connection, key_id: str, status: str) -> bool:
    assert status in ("active", "disabled")
    result = await conn.execute("UPDATE partners SET status = $2 WHERE key_id = $1", key_id, status)
    return bool(result == "UPDATE 1")


async def set_limits(
    conn: asyncpg.Connection, key_id: str, rate_per_s: int | None, rate_burst: int | None
) -> bool:
    """The partner's own rate limit; None for both: back to the default for partners."""
    assert (rate_per_s is None) == (rate_burst is None)
    result = await conn.execute(
        "UPDATE partners SET rate_per_s = $2, rate_burst = $3 WHERE key_id = $1",
        key_id, rate_per_s, rate_burst,
    )  # fmt: skip
    return bool(result == "UPDATE 1")


async def find(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> Partner | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM partners WHERE key_id = $1", key_id)  # noqa: S608
    return None if row is None else Partner(**dict(row))


class PartnerAuthenticator:
    """Checks OC-Key-Id / OC-Timestamp / OC-Nonce / OC-Signature."""

    kind = PrincipalKind.PARTNER

    def __init__(
        self, pool: asyncpg.Pool, client: redis.Redis, keystore: Keystore, config: Config
    ) -> None:
        self._pool = pool
        self._redis = client
        self._keystore = keystore
        self._window_s = config.partner_window_s
        self._prefix = config.redis_prefix
        # key id -> (partner, secrets that verify): a short cache, so that disabling a partner
        # or rotating its secret takes effect within SECRET_CACHE_S.
        self._cache: TtlCache[str, tuple[Partner | None, list[str]]] = TtlCache(
            SECRET_CACHE_S, CACHE_ENTRIES_MAX
        )

    def recognises(self, request: web.Request) -> bool:
        return signatures.KEY_ID in request.headers

    async def _credentials(self, key_id: str) -> tuple[Partner | None, list[str]]:
        found, cached = self._cache.get(key_id)
        if found and cached is not None:
            return cached
        async with self._pool.acquire() as conn:
            partner = await find(conn, key_id)
            valid: list[str] = []
            if partner is not None:
                now = datetime.now(UTC)
                for key in await self._keystore.versions(conn, KeyKind.PARTNER_SECRET, key_id):
                    if key.status == "active" or (
                        key.status == "retired" and key.not_after and key.not_after > now
                    ):
                        valid.append(key.secret.decode())
        self._cache.put(key_id, (partner, valid))
        return partner, valid

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        headers = request.headers
        key_id = headers.get(signatures.KEY_ID, "")
        stamp = headers.get(signatures.TIMESTAMP, "")
        nonce = headers.get(signatures.NONCE, "")
        signature = headers.get(signatures.SIGNATURE, "")
        if not (0 < len(key_id) <= 64 and stamp.isdigit() and 0 < len(nonce) <= NONCE_CHARS_MAX):
            raise errors.BAD_SIGNATURE.error()
        partner, valid = await self._credentials(key_id)
        # The path as sent, percent-escapes kept: `request.path` is decoded, and the client
        # signed the bytes it put on the wire. `rel_url.raw_path` also drops the query and, for
        # an absolute-form target, the scheme and host.
        canonical = signatures.canonical_request(
            request.method, request.rel_url.raw_path, request.query.items(), stamp, nonce, body
        )
        if (
            partner is None
            or partner.status != "active"
            or not any(
                signatures.partner_signature_valid(secret, canonical, signature) for secret in valid
            )
        ):
            raise errors.BAD_SIGNATURE.error()
        if abs(time.time() - int(stamp)) > self._window_s:
            raise errors.STALE_REQUEST.error()
        await self._remember_nonce(key_id, nonce)
        limits = None
        if partner.rate_per_s and partner.rate_burst:
            limits = (partner.rate_per_s, partner.rate_burst)
        return Principal(PrincipalKind.PARTNER, key_id, limits=limits)

    async def _remember_nonce(self, key_id: str, nonce: str) -> None:
        try:
            fresh = await nonces.first_use(
                self._redis, self._prefix, f"partner:{key_id}", nonce, self._window_s
            )
        except (RedisError, OSError):
            log.error("partner nonce check failed closed: Redis unavailable")
            raise errors.SERVICE_UNAVAILABLE.error(
                "Partner requests are paused: the replay check is unavailable.",
                headers={"Retry-After": "5"},
            ) from None
        if not fresh:
            raise errors.REPLAYED_REQUEST.error()
