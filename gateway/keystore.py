"""Encrypted storage for every secret key the gateway holds (DESIGN.md section 10).

Card master keys, channel private keys, QR issuer keys, token signing keys, partner and webhook
secrets: all live in `secret_keys`, AES-256-GCM under the key-encryption key (KEK). The KEK comes
from `ONECARD_KEK` (32 bytes, base64) or the key file `onecard keys init` writes. The associated
data binds each ciphertext to its kind, name and version, so rows cannot be swapped. This
module owns `secret_keys`; it never logs key material and never returns it to a client.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Config, ConfigError

KEK_BYTES = 32
NONCE_BYTES = 12


class KeyKind(enum.StrEnum):
    CARD_MASTER_LOAD = "card_master_load"
    CARD_MASTER_PURCHASE = "card_master_purchase"
    CARD_MASTER_TAC = "card_master_tac"
    CHANNEL_PRIVATE = "channel_private"
    QR_ISSUER = "qr_issuer"
    TOKEN_SIGNING = "token_signing"  # noqa: S105 (a kind name, not a secret)
    PARTNER_SECRET = "partner_secret"  # noqa: S105
    WEBHOOK_SECRET = "webhook_secret"  # noqa: S105


class KeystoreError(RuntimeError):
    """A stored key cannot be decrypted: wrong KEK, or a tampered row."""


@dataclass(frozen=True)
class StoredKey:
    id: int
    kind: KeyKind
    name: str
    version: int
    status: str
    secret: bytes
    public_data: bytes | None
    meta: dict[str, Any]
    created_at: datetime
    not_after: datetime | None

    def __repr__(self) -> str:  # never print the secret
        return f"StoredKey({self.kind}/{self.name} v{self.version} {self.status})"


def load_kek(config: Config) -> bytes:
    """The KEK from ONECARD_KEK or the key file; ConfigError naming what is wrong."""
    if config.kek:
        return _decode_kek(config.kek, "ONECARD_KEK")
    if not config.kek_file.exists():
        raise ConfigError(
            f"no key-encryption key: set ONECARD_KEK or run `onecard keys init` "
            f"to create {config.kek_file}"
        )
    return _decode_kek(config.kek_file.read_text().strip(), "ONECARD_KEK_FILE")


def _decode_kek(text: str, variable: str) -> bytes:
    try:
        kek = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{variable}: the key-encryption key is not base64") from None
    if len(kek) != KEK_BYTES:
        raise ConfigError(f"{variable}: the key-encryption key must be {KEK_BYTES} bytes")
    return kek


def create_kek_file(path: Path) -> bool:
    """Write a new random KEK to `path` (mode 0600); False when the file already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(os.urandom(KEK_BYTES)).decode() + "\n")
    return True


def _kek_id(kek: bytes) -> bytes:
    return hashlib.sha256(b"onecard-kek-id" + kek).digest()[:8]


def _aad(kind: KeyKind, name: str, version: int) -> bytes:
    return f"onecard-key-v1|{kind.value}|{name}|{version}".encode()


_INSERT = """
INSERT INTO secret_keys (kind, name, version, kek_id, nonce, ciphertext, public_data, meta,
                         not_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9)
RETURNING id, status, created_at
"""

_NEXT_VERSION = (
    "SELECT coalesce(max(version), 0) + 1 FROM secret_keys WHERE kind = $1 AND name = $2"
)

_SELECT = """
SELECT id, kind, name, version, status, kek_id, nonce, ciphertext, public_data, meta::text,
       created_at, not_after
FROM secret_keys WHERE kind = $1 AND name = $2
"""


class Keystore:
    """Puts and gets secret keys; decrypted keys are cached in memory by row id."""

    def __init__(self, kek: bytes) -> None:
        assert len(kek) == KEK_BYTES
        self._aead = AESGCM(kek)
        self._kek_id = _kek_id(kek)
        self._cache: dict[int, StoredKey] = {}

    def __repr__(self) -> str:
        return "Keystore(<kek hidden>)"

    async def put(
        self,
        conn: asyncpg.Connection,
        kind: KeyKind,
        name: str,
        secret: bytes,
        *,
        public_data: bytes | None = None,
        meta: dict[str, Any] | None = None,
        not_after: datetime | None = None,
    ) -> StoredKey:
        """Store a new version of (kind, name); older versions stay as they are."""
        # The version is part of the associated data: encrypt under the next one, and on the
        # rare race where another writer took that version, encrypt again under the one after.
        for _ in range(5):
            nonce = os.urandom(NONCE_BYTES)
            version = await conn.fetchval(_NEXT_VERSION, kind.value, name)
            ciphertext = self._aead.encrypt(nonce, secret, _aad(kind, name, version))
            try:
                async with conn.transaction():  # a savepoint when the caller has a transaction
                    row = await conn.fetchrow(
                        _INSERT, kind.value, name, version, self._kek_id, nonce, ciphertext,
                        public_data, json.dumps(meta or {}), not_after,
                    )  # fmt: skip
            except asyncpg.UniqueViolationError:
                continue
            assert row is not None
            return StoredKey(
                row["id"], kind, name, version, row["status"], secret, public_data,
                meta or {}, row["created_at"], not_after,
            )  # fmt: skip
        raise KeystoreError(f"could not store {kind.value}/{name}: too many concurrent writers")

    async def versions(self, conn: asyncpg.Connection, kind: KeyKind, name: str) -> list[StoredKey]:
        """Every version of (kind, name), newest first, decrypted."""
        rows = await conn.fetch(_SELECT + " ORDER BY version DESC", kind.value, name)
        return [self._open(row) for row in rows]

    async def active(self, conn: asyncpg.Connection, kind: KeyKind, name: str) -> StoredKey | None:
        """The newest active version of (kind, name), or None."""
        row = await conn.fetchrow(
            _SELECT + " AND status = 'active' ORDER BY version DESC LIMIT 1", kind.value, name
        )
        return None if row is None else self._open(row)

    async def set_status(
        self,
        conn: asyncpg.Connection,
        key_id: int,
        status: str,
        not_after: datetime | None = None,
    ) -> None:
        assert status in ("active", "retired", "revoked")
        await conn.execute(
            "UPDATE secret_keys SET status = $2, not_after = coalesce($3, not_after) WHERE id = $1",
            key_id,
            status,
            not_after,
        )
        self._cache.pop(key_id, None)

    def _open(self, row: asyncpg.Record) -> StoredKey:
        cached = self._cache.get(row["id"])
        if cached is not None and cached.status == row["status"]:
            return cached
        kind = KeyKind(row["kind"])
        if row["kek_id"] != self._kek_id:
            raise KeystoreError(
                f"{kind.value}/{row['name']} v{row['version']} was stored under another "
                "key-encryption key"
            )
        try:
            secret = self._aead.decrypt(
                row["nonce"], row["ciphertext"], _aad(kind, row["name"], row["version"])
            )
        except InvalidTag:
            raise KeystoreError(
                f"{kind.value}/{row['name']} v{row['version']} does not decrypt: tampered row"
            ) from None
        key = StoredKey(
            row["id"], kind, row["name"], row["version"], row["status"], secret,
            row["public_data"], json.loads(row["meta"]), row["created_at"], row["not_after"],
        )  # fmt: skip
        self._cache[key.id] = key
        return key
