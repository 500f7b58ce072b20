"""Terminals (gates, validators, top-up kiosks): Ed25519 credentials, one per terminal.

An operator registers a terminal for its transport operator; the gateway either generates the
key pair (the private key is printed once and never stored) or takes the terminal's public key.
Requests carry OC-Terminal / OC-Timestamp / OC-Nonce / OC-Signature (see `signatures`).
Nonces are checked in Redis; if Redis does not answer, terminals still authenticate (gates must
keep working) and the skip is logged and counted. This module owns `terminals`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.exceptions import RedisError

from gateway import errors
from gateway.auth import nonces, signatures
from gateway.auth.principal import Principal, PrincipalKind
from gateway.auth.ratelimit import degraded_checks
from gateway.cache import TtlCache
from gateway.config import Config
from gateway.metrics import Registry

log = logging.getLogger(__name__)

TERMINAL_ID = re.compile(r"^[0-9A-F]{12}$")
OPERATOR = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
KEY_CACHE_S = 30.0
CACHE_ENTRIES_MAX = 50_000  # a city's gates and validators


@dataclass(frozen=True)
class Terminal:
    id: str
    operator: str
    public_key: bytes
    status: str
    created_at: datetime


def private_key_text(private_key: Ed25519PrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()


async def register(
    conn: asyncpg.Connection, terminal_id: str, operator: str, public_key: bytes | None = None
) -> tuple[Terminal, Ed25519PrivateKey | None]:
    """Register a terminal; generates its key pair when no public key is given."""
    terminal_id = terminal_id.upper()
    if not TERMINAL_ID.match(terminal_id):
        raise ValueError("a terminal id is 6 bytes: 12 hex digits")
    if not OPERATOR.match(operator):
        raise ValueError("an operator code is 1-32 lower-case letters, digits, - or _")
    private = None
    if public_key is None:
        private = Ed25519PrivateKey.generate()
        public_key = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    row = await conn.fetchrow(
        "INSERT INTO terminals (id, operator, public_key) VALUES ($1, $2, $3) "
        "RETURNING id, operator, public_key, status, created_at",
        terminal_id, operator, public_key,
    )  # fmt: skip
    return Terminal(**dict(row)), private


async def find(conn: asyncpg.Connection | asyncpg.Pool, terminal_id: str) -> Terminal | None:
    row = await conn.fetchrow(
        "SELECT id, operator, public_key, status, created_at FROM terminals WHERE id = $1",
        terminal_id,
    )
    return None if row is None else Terminal(**dict(row))


class TerminalAuthenticator:
    kind = PrincipalKind.TERMINAL

    def __init__(
        self, pool: asyncpg.Pool, client: redis.Redis, config: Config, metrics: Registry
    ) -> None:
        self._pool = pool
        self._redis = client
        self._window_s = config.partner_window_s
        self._prefix = config.redis_prefix
        self._cache: TtlCache[str, Terminal | None] = TtlCache(KEY_CACHE_S, CACHE_ENTRIES_MAX)
        self._degraded = degraded_checks(metrics)

    def recognises(self, request: web.Request) -> bool:
        return signatures.TERMINAL in request.headers

    async def _terminal(self, terminal_id: str) -> Terminal | None:
        found, cached = self._cache.get(terminal_id)
        if found:
            return cached
        terminal = await find(self._pool, terminal_id)
        self._cache.put(terminal_id, terminal)
        return terminal

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        headers = request.headers
        terminal_id = headers.get(signatures.TERMINAL, "")
        stamp = headers.get(signatures.TIMESTAMP, "")
        nonce = headers.get(signatures.NONCE, "")
        if not (TERMINAL_ID.match(terminal_id) and stamp.isdigit() and 0 < len(nonce) <= 64):
            raise errors.BAD_SIGNATURE.error()
        terminal = await self._terminal(terminal_id)
        # The path as sent, percent-escapes kept: `request.path` is decoded, and the client
        # signed the bytes it put on the wire. `rel_url.raw_path` also drops the query and, for
        # an absolute-form target, the scheme and host.
        canonical = signatures.canonical_request(
            request.method, request.rel_url.raw_path, request.query.items(), stamp, nonce, body
        )
        signature = headers.get(signatures.SIGNATURE, "")
        if (
            terminal is None
            or terminal.status != "active"
            or not (signatures.terminal_signature_valid(terminal.public_key, canonical, signature))
        ):
            raise errors.BAD_SIGNATURE.error()
        if abs(time.time() - int(stamp)) > self._window_s:
            raise errors.STALE_REQUEST.error()
        await self._remember_nonce(terminal_id, nonce)
        return Principal(PrincipalKind.TERMINAL, terminal_id, operator=terminal.operator)

    async def _remember_nonce(self, terminal_id: str, nonce: str) -> None:
        try:
            fresh = await nonces.first_use(
                self._redis, self._prefix, f"terminal:{terminal_id}", nonce, self._window_s
            )
        except (RedisError, OSError):
            log.warning("terminal nonce check skipped: Redis unavailable")
            self._degraded.inc(("terminal_nonce",))
            return
        if not fresh:
            raise errors.REPLAYED_REQUEST.error()
