"""Access tokens: EdDSA (Ed25519) JWTs with a key id, for riders and for operators.

Signing keys live encrypted in the keystore (kind `token_signing`, name `jwt`). Rotation adds a
new version and retires the old one with `not_after` set past the longest token it may have
signed, so tokens already out keep verifying until they expire. Verification pins the
algorithm, requires `sub iss aud iat exp jti`, and checks the audience: riders and operators
have different audiences, so one can never pass for the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway import errors
from gateway.keystore import KeyKind, Keystore, StoredKey

ALGORITHM = "EdDSA"
RIDER_AUDIENCE = "onecard-rider"
ADMIN_AUDIENCE = "onecard-admin"
KEY_NAME = "jwt"
REQUIRED_CLAIMS = ["sub", "iss", "aud", "iat", "exp", "jti"]
# An unknown kid makes the verifier reload keys from PostgreSQL, at most this often.
RELOAD_INTERVAL_S = 5.0
# Workers pick up a rotated signing key within this many seconds.
CURRENT_KEY_MAX_AGE_S = 60.0
LEEWAY_S = 5


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    not_after: datetime | None


def _signing_key(stored: StoredKey) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(stored.secret)
    public = private.public_key()
    return SigningKey(key_id(public), private, public, stored.not_after)


class TokenKeys:
    """The current signing key and every key that still verifies, reloaded on demand."""

    def __init__(self, keystore: Keystore, pool: asyncpg.Pool) -> None:
        self._keystore = keystore
        self._pool = pool
        self._current: SigningKey | None = None
        self._verifying: dict[str, SigningKey] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with self._pool.acquire() as conn:
            stored = await self._keystore.versions(conn, KeyKind.TOKEN_SIGNING, KEY_NAME)
            if not stored:
                await ensure_signing_key(conn, self._keystore)
                stored = await self._keystore.versions(conn, KeyKind.TOKEN_SIGNING, KEY_NAME)
        now = datetime.now(UTC)
        keys = [
            (s, _signing_key(s))
            for s in stored
            if s.status != "revoked" and (s.not_after is None or s.not_after > now)
        ]
        self._verifying = {k.kid: k for _, k in keys}
        active = [k for s, k in keys if s.status == "active"]
        self._current = active[0] if active else None
        self._loaded_at = time.monotonic()

    async def current(self) -> SigningKey:
        if self._current is None or time.monotonic() - self._loaded_at > CURRENT_KEY_MAX_AGE_S:
            await self.load()
        assert self._current is not None, "an active token signing key exists after load()"
        return self._current

    def still_verifies(self, kid: str) -> bool:
        key = self._verifying.get(kid)
        return key is not None and (key.not_after is None or key.not_after > datetime.now(UTC))

    async def verifying(self, kid: str) -> SigningKey | None:
        key = self._verifying.get(kid)
        if key is None and time.monotonic() - self._loaded_at > RELOAD_INTERVAL_S:
            async with self._lock:
                if time.monotonic() - self._loaded_at > RELOAD_INTERVAL_S:
                    await self.load()
            key = self._verifying.get(kid)
        if key is not None and key.not_after is not None and key.not_after <= datetime.now(UTC):
            return None
        return key


async def ensure_signing_key(conn: asyncpg.Connection, keystore: Keystore) -> None:
    """Create the first signing key (under an advisory lock, so workers make one together)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('token_signing'))")
        if await keystore.active(conn, KeyKind.TOKEN_SIGNING, KEY_NAME) is None:
            await _store_new_key(conn, keystore)


async def rotate_signing_key(
    conn: asyncpg.Connection, keystore: Keystore, verify_for: timedelta
) -> str:
    """A new signing key; the old ones keep verifying for `verify_for`. Returns the new kid."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('token_signing'))")
        retire_at = datetime.now(UTC) + verify_for
        for old in await keystore.versions(conn, KeyKind.TOKEN_SIGNING, KEY_NAME):
            if old.status == "active":
                await keystore.set_status(conn, old.id, "retired", retire_at)
        return await _store_new_key(conn, keystore)


async def _store_new_key(conn: asyncpg.Connection, keystore: Keystore) -> str:
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    kid = key_id(private.public_key())
    await keystore.put(conn, KeyKind.TOKEN_SIGNING, KEY_NAME, raw, meta={"kid": kid})
    return kid


@dataclass(frozen=True)
class Claims:
    subject: str
    session: str | None
    role: str | None
    token_id: str
    expires_at: int
    audience: str


async def issue(
    keys: TokenKeys,
    issuer: str,
    audience: str,
    subject: str,
    ttl_s: int,
    now: int,
    extra: dict[str, Any] | None = None,
) -> str:
    return sign_with(await keys.current(), issuer, audience, subject, ttl_s, now, extra)


def sign_with(
    key: SigningKey | StoredKey,
    issuer: str,
    audience: str,
    subject: str,
    ttl_s: int,
    now: int,
    extra: dict[str, Any] | None = None,
) -> str:
    if isinstance(key, StoredKey):
        key = _signing_key(key)
    claims = {
        "sub": subject, "iss": issuer, "aud": audience, "iat": now, "nbf": now,
        "exp": now + ttl_s, "jti": uuid.uuid4().hex, **(extra or {}),
    }  # fmt: skip
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})


class VerifiedTokens:
    """Tokens whose signature and claims were checked, so a repeat costs a dict lookup.

    Keyed by the whole token string; an entry is used only while the token has not expired
    and its signing key still verifies. Bounded: the oldest entries go first.
    """

    def __init__(self, entries_max: int = 20_000) -> None:
        self._entries: dict[str, tuple[Claims, str]] = {}
        self._entries_max = entries_max

    def get(self, keys: TokenKeys, token: str, audience: str, now: float) -> Claims | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        claims, kid = entry
        if (
            claims.audience != audience
            or claims.expires_at + LEEWAY_S <= now
            or (not keys.still_verifies(kid))
        ):
            del self._entries[token]
            return None
        return claims

    def put(self, token: str, claims: Claims, kid: str) -> None:
        if len(self._entries) >= self._entries_max:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = (claims, kid)


async def verify(
    keys: TokenKeys,
    token: str,
    issuer: str,
    audience: str,
    cache: VerifiedTokens | None = None,
) -> Claims:
    """The token's claims, or 401 `token_invalid` (one answer for every way it can be bad)."""
    if cache is not None:
        cached = cache.get(keys, token, audience, time.time())
        if cached is not None:
            return cached
    try:
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise errors.TOKEN_INVALID.error()
        key = await keys.verifying(kid)
        if key is None:
            raise errors.TOKEN_INVALID.error()
        claims = jwt.decode(
            token, key.public, algorithms=[ALGORITHM], audience=audience, issuer=issuer,
            leeway=LEEWAY_S, options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )  # fmt: skip
    except (jwt.PyJWTError, ValueError, RecursionError):
        # RecursionError: a payload of deeply nested JSON arrays.
        raise errors.TOKEN_INVALID.error() from None
    if not isinstance(claims["sub"], str):
        raise errors.TOKEN_INVALID.error()
    verified = Claims(
        claims["sub"], claims.get("sid"), claims.get("role"), str(claims["jti"]), claims["exp"],
        audience,
    )  # fmt: skip
    if cache is not None:
        cache.put(token, verified, kid)
    return verified
