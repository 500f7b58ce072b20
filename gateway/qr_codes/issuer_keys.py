"""QR issuer keys: the P-256 keys the gateway signs rider certificates, online codes and deny
lists with, each named by a one-byte key id (1..255).

Keys live encrypted in the keystore (kind `qr_issuer`, name `issuer`, one version per key; meta
holds `key_id` and `valid_from`). The first key is made on demand under an advisory lock.
Rotation makes a new key under the next id and retires the old one with `not_after` = now + the
certificate TTL: a certificate it signed keeps verifying, at gates and here, until that
certificate expires. Gates fetch the public halves from `GET /v1/qr/issuer-keys`.

This module never hands out a private key except to the signing code in this package.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.keystore import KeyKind, Keystore, StoredKey
from qr.signing import CURVE, encode_public_key, generate_private_key
from qr.verify import CertificateCache

KEY_ID_MIN: Final = 1
KEY_ID_MAX: Final = 255
SCALAR_BYTES: Final = 32
LOCK: Final = "qr_issuer"
# An unknown key id in an uploaded code reloads the keys from PostgreSQL at most this often.
RELOAD_INTERVAL_S: Final = 5.0
# Workers sign with a rotated key within this many seconds.
CURRENT_KEY_MAX_AGE_S: Final = 60.0
CERT_CACHE_ENTRIES_MAX: Final = 16_384


class KeyIdsExhausted(RuntimeError):
    """Every key id is held by a key that still verifies: rotate again later."""


@dataclass(frozen=True)
class IssuerKey:
    key_id: int
    private: ec.EllipticCurvePrivateKey
    public: ec.EllipticCurvePublicKey
    public_bytes: bytes  # SEC1 compressed, 33 bytes
    valid_from: int  # unix s
    not_after: int | None  # unix s; None while it is the current key
    active: bool

    def __repr__(self) -> str:  # never print the private key
        return f"IssuerKey({self.key_id}, active={self.active}, not_after={self.not_after})"

    def verifies_at(self, at: int) -> bool:
        return self.not_after is None or at < self.not_after


KEY_NAME: Final = "issuer"


def _issuer_key(stored: StoredKey) -> IssuerKey:
    private = ec.derive_private_key(int.from_bytes(stored.secret, "big"), CURVE)
    public = private.public_key()
    not_after = None if stored.not_after is None else int(stored.not_after.timestamp())
    return IssuerKey(
        int(stored.meta["key_id"]), private, public, encode_public_key(public),
        int(stored.meta["valid_from"]), not_after, stored.status == "active",
    )  # fmt: skip


async def load_keys(conn: asyncpg.Connection, keystore: Keystore) -> list[IssuerKey]:
    """Every issuer key that is not revoked, newest first; one (the newest) per key id."""
    keys: dict[int, IssuerKey] = {}
    for stored in await keystore.versions(conn, KeyKind.QR_ISSUER, KEY_NAME):
        if stored.status != "revoked":
            key = _issuer_key(stored)
            keys.setdefault(key.key_id, key)
    return list(keys.values())


async def ensure_issuer_key(conn: asyncpg.Connection, keystore: Keystore) -> None:
    """Create the first issuer key (under an advisory lock, so workers make one together)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)
        if not any(key.active for key in await load_keys(conn, keystore)):
            await _store_new_key(conn, keystore, KEY_ID_MIN)


async def rotate_issuer_key(
    conn: asyncpg.Connection, keystore: Keystore, verify_for: timedelta
) -> int:
    """A new issuer key under the next key id; the old ones verify for `verify_for` more."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)
        now = datetime.now(UTC)
        stored = await keystore.versions(conn, KeyKind.QR_ISSUER, KEY_NAME)
        keys = await load_keys(conn, keystore)
        live = {k.key_id for k in keys if k.verifies_at(int(now.timestamp()))}
        # Ids go round 1..255 from the newest key's, skipping any that still verifies.
        key_id = int(stored[0].meta["key_id"]) if stored else KEY_ID_MAX
        for _ in range(KEY_ID_MAX):
            key_id = key_id % KEY_ID_MAX + 1
            if key_id not in live:
                break
        else:
            raise KeyIdsExhausted("all 255 issuer key ids still verify certificates")
        for old in stored:
            if old.status == "active":
                await keystore.set_status(conn, old.id, "retired", now + verify_for)
        await _store_new_key(conn, keystore, key_id)
        return key_id


async def _store_new_key(conn: asyncpg.Connection, keystore: Keystore, key_id: int) -> None:
    assert KEY_ID_MIN <= key_id <= KEY_ID_MAX
    private = generate_private_key()
    secret = private.private_numbers().private_value.to_bytes(SCALAR_BYTES, "big")
    await keystore.put(
        conn, KeyKind.QR_ISSUER, KEY_NAME, secret,
        public_data=encode_public_key(private.public_key()),
        meta={"key_id": key_id, "valid_from": int(time.time())},
    )  # fmt: skip


class IssuerKeys:
    """The current signing key and every key that still verifies, cached per worker.

    Also holds the gateway's cache of verified certificates (`qr.verify.CertificateCache`).
    """

    def __init__(self, keystore: Keystore, pool: asyncpg.Pool) -> None:
        self._keystore = keystore
        self._pool = pool
        self._keys: list[IssuerKey] = []
        self._current: IssuerKey | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self.cert_cache: Final = CertificateCache(CERT_CACHE_ENTRIES_MAX)

    async def load(self) -> list[IssuerKey]:
        async with self._pool.acquire() as conn:
            keys = await load_keys(conn, self._keystore)
            if not any(key.active for key in keys):
                await ensure_issuer_key(conn, self._keystore)
                keys = await load_keys(conn, self._keystore)
        self._keys = keys
        self._current = next(key for key in keys if key.active)
        self._loaded_at = time.monotonic()
        return keys

    async def current(self) -> IssuerKey:
        if self._current is None or time.monotonic() - self._loaded_at > CURRENT_KEY_MAX_AGE_S:
            await self.load()
        assert self._current is not None, "an active issuer key exists after load()"
        return self._current

    def verifying_at(self, at: int) -> Mapping[int, ec.EllipticCurvePublicKey]:
        """Key id -> public key of every key that verified codes at unix time `at`."""
        return {key.key_id: key.public for key in self._keys if key.verifies_at(at)}

    async def reload_if_stale(self) -> bool:
        """Reload (at most every few seconds) when a code names a key id not yet known."""
        if time.monotonic() - self._loaded_at <= RELOAD_INTERVAL_S:
            return False
        async with self._lock:
            if time.monotonic() - self._loaded_at > RELOAD_INTERVAL_S:
                await self.load()
        return True

    async def published(self, now: int) -> list[IssuerKey]:
        """What gates should hold now (fresh from PostgreSQL): keys that still verify."""
        keys = await self.load()
        return sorted((k for k in keys if k.verifies_at(now)), key=lambda k: k.key_id)
