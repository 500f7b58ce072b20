"""The Idempotency-Key protocol of every POST that moves money (DESIGN.md section 8).

Keys are unique per (principal, key) in PostgreSQL and remembered for `idempotency_ttl_s`:
- same key, same request      -> the stored answer (same status and body),
                                 with `Idempotent-Replayed: true`
- same key, different request -> 422 `idempotency_key_reused`
- same key, first still running -> 409 `idempotency_key_in_flight`
- no key on a money route     -> 400 `idempotency_key_required`

How a request runs: it first claims the key (a committed `in_flight` row holding a lease token
that expires after `idempotency_lease_s`), then runs the handler inside one transaction that
also marks the key `done` with the answer, only while its lease token still holds. So the money
effect and the stored answer commit together or not at all; a crash leaves at worst an
`in_flight` row whose lease runs out, after which a retry takes the key over and runs afresh.
A 4xx answer is stored too (a retry gets the same answer); a 5xx releases the key.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import msgspec
from aiohttp import web

from gateway import errors
from gateway.config import Config
from gateway.context import POOL
from gateway.responses import JSON, error_body
from gateway.workers import Periodic

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_CHARS_MAX = 255
CLAIM_ATTEMPTS_MAX = 3
PURGE_BATCH_MAX = 5_000
PURGE_INTERVAL_S = 600


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes


_CLAIM = """
INSERT INTO idempotency_keys AS k (principal, key, request_hash, state, lease_token,
                                   locked_until, expires_at)
VALUES ($1, $2, $3, 'in_flight', $4, now() + make_interval(secs => $5),
        now() + make_interval(secs => $6))
ON CONFLICT (principal, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, state = 'in_flight',
       lease_token = EXCLUDED.lease_token, locked_until = EXCLUDED.locked_until,
       response_status = NULL, response_body = NULL, created_at = now(),
       expires_at = EXCLUDED.expires_at
 WHERE k.expires_at <= now()
    OR (k.state = 'in_flight' AND k.locked_until <= now()
        AND k.request_hash = EXCLUDED.request_hash)
RETURNING true
"""

_EXISTING = """
SELECT request_hash, state, response_status, response_body FROM idempotency_keys
WHERE principal = $1 AND key = $2
"""

_FINISH = """
UPDATE idempotency_keys
   SET state = 'done', response_status = $4, response_body = $5,
       lease_token = NULL, locked_until = NULL
 WHERE principal = $1 AND key = $2 AND lease_token = $3 AND state = 'in_flight'
"""

_RELEASE = "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND lease_token = $3"

_PURGE = """
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1 FOR UPDATE SKIP LOCKED)
"""


def request_hash(request: web.Request, raw_body: bytes) -> bytes:
    """What "the same request" means: method, path, query and the body's JSON value.

    Key order and whitespace do not make a body different; a different value does.
    """
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(raw_body or b"null"), order="sorted")
    except msgspec.DecodeError:
        canonical = raw_body
    digest = hashlib.sha256()
    for part in (request.method, request.path, request.query_string):
        digest.update(part.encode() + b"\x00")
    digest.update(canonical)
    return digest.digest()


def read_key(request: web.Request) -> str:
    key = request.headers.get(HEADER)
    if key is None:
        raise errors.IDEMPOTENCY_KEY_REQUIRED.error()
    if not 0 < len(key) <= KEY_CHARS_MAX or not all(33 <= ord(c) <= 126 for c in key):
        raise errors.IDEMPOTENCY_KEY_INVALID.error()
    return key


async def run_in_transaction(
    request: web.Request,
    pool: asyncpg.Pool,
    config: Config,
    principal: str,
    raw_body: bytes,
    respond: Callable[[asyncpg.Connection], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The one-transaction mode: `respond(conn)` and the stored answer commit together."""
    key = read_key(request)
    lease = await _claim(pool, config, principal, key, request_hash(request, raw_body))
    if isinstance(lease, Stored):
        return _replay(lease)
    try:
        async with pool.acquire() as conn, conn.transaction():
            response = await respond(conn)
            body = _body_of(response)
            if await conn.execute(_FINISH, principal, key, lease, response.status, body) != (
                "UPDATE 1"
            ):
                # Our lease ran out and a retry took the key over: undo everything we did.
                raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error()
    except errors.ApiError as exc:
        if exc.status >= 500 or exc.code == errors.IDEMPOTENCY_KEY_IN_FLIGHT.code:
            await _release(pool, principal, key, lease)
            raise
        # A refusal is an answer too: store it (its effects were rolled back) and give it.
        body = error_body(request, exc.code, exc.message, exc.details)
        await pool.execute(_FINISH, principal, key, lease, exc.status, body)
        raise
    except BaseException:
        await _release(pool, principal, key, lease)
        raise
    return response


async def _claim(
    pool: asyncpg.Pool, config: Config, principal: str, key: str, digest: bytes
) -> uuid.UUID | Stored:
    for _ in range(CLAIM_ATTEMPTS_MAX):
        lease = uuid.uuid4()
        claimed = await pool.fetchval(
            _CLAIM, principal, key, digest, lease,
            float(config.idempotency_lease_s), float(config.idempotency_ttl_s),
        )  # fmt: skip
        if claimed:
            return lease
        row = await pool.fetchrow(_EXISTING, principal, key)
        if row is None:
            continue  # released or purged meanwhile: try to claim again
        if row["request_hash"] != digest:
            raise errors.IDEMPOTENCY_KEY_REUSED.error()
        if row["state"] == "in_flight":
            raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error(headers={"Retry-After": "1"})
        return Stored(row["response_status"], row["response_body"])
    raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error(headers={"Retry-After": "1"})


def _body_of(response: web.StreamResponse) -> bytes:
    assert isinstance(response, web.Response), "money routes answer with a whole body"
    assert response.content_type == JSON, "money routes answer JSON"
    body = response.body
    assert isinstance(body, bytes)
    return body


def _replay(stored: Stored) -> web.Response:
    return web.Response(
        body=stored.body,
        status=stored.status,
        content_type=JSON,
        headers={REPLAYED_HEADER: "true"},
    )


async def _release(pool: asyncpg.Pool, principal: str, key: str, lease: uuid.UUID) -> None:
    try:
        await pool.execute(_RELEASE, principal, key, lease)
    except (OSError, asyncpg.PostgresError):
        # The lease expires by itself; a retry after it will take the key over.
        log.warning("could not release an idempotency key", exc_info=True)


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Delete expired keys in batches of PURGE_BATCH_MAX until none is left; the number.

    Workers purging at once skip each other's rows (SKIP LOCKED) instead of waiting on them.
    """
    purged = 0
    while True:
        status = await pool.execute(_PURGE, PURGE_BATCH_MAX)
        deleted = int(status.split()[-1])
        purged += deleted
        if deleted < PURGE_BATCH_MAX:
            return purged


async def _purge_job(app: web.Application) -> None:
    await purge_expired(app[POOL])


PURGE_JOB = Periodic("idempotency-purge", PURGE_INTERVAL_S, _purge_job)
