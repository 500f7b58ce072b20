"""The Idempotency-Key protocol of every POST that moves money (DESIGN.md sections 7 and 8).

Keys are unique per (principal, key) in PostgreSQL and remembered for `idempotency_ttl_s`:
- same key, same request      -> the stored answer (same status and body),
                                 with `Idempotent-Replayed: true`
- same key, different request -> 422 `idempotency_key_reused`
- same key, first still running -> 409 `idempotency_key_in_flight`
- no key on a money route     -> 400 `idempotency_key_required`

A request first claims the key: a committed `in_flight` row holding a lease token that expires
after `idempotency_lease_s`. A retry may take the key over once the lease has run out (its
holder crashed). A route then runs in one of two modes (`Idempotency`, a route option).

One transaction (`idempotent=True`), for routes that only touch the database: the handler runs
inside one transaction that also marks the key `done` with the answer, only while its lease
token still holds. The money effect and the stored answer commit together or not at all; a
crash leaves at worst an `in_flight` row whose lease runs out, after which a retry runs afresh.
A 4xx answer is stored too (a retry gets the same answer); a 5xx releases the key.

Recovery points (`idempotent=Idempotency.RECOVERY_POINTS`), for routes that call out over the
network (payment channels: create payment, refund, close). An outbound call cannot run inside
the transaction that holds the key and the ledger rows: a slow channel would hold a pooled
connection and row locks for seconds. So the handler works in phases (`Recovery.atomic`), each
its own short transaction that also advances the key's recovery point and saves a small JSON
value for later phases, only while the request's lease holds. Between phases no transaction is
open and no connection is held; that is where outbound calls run (`Recovery.call_out`). A retry
after a crash takes the key over and resumes: phases already committed are skipped and give
their saved value back. While its request lives, a key's lease is renewed in the background,
so only a dead (or hung) request's key is ever taken over.

What happens to a recovery-point key when its request ends:
- an answer below 500 (success or refusal) is stored: the key is `done`. Phases that committed
  stay committed, so a refusal after a phase records its local state in a phase first (the
  order `declined`) and only then refuses.
- a 5xx or an unexpected exception (a lost database connection too) keeps the recovery point;
  the lease is given up at once, so the retry resumes there without waiting for it to run out.
  An unknown outcome of an outbound call (timeout, dropped connection, 5xx) is such a failure,
  never a 4xx, since it is not an answer.
- when no phase has committed yet, nothing happened: the key is released as in one-transaction
  mode, and may be used again, even with another body.

Rules for a recovery-point handler, which this module asserts where it can:
- the local row commits in a phase before any outbound call (`call_out` refuses to call from
  `started`), so a key released from `started` never has a remote effect behind it;
- no transaction and no connection is held across an outbound call; phases do not nest;
- an outbound call whose outcome is unknown is never repeated without asking the remote side
  first: `call_out` queries before it creates whenever this request resumed another's work;
- the handler is deterministic given its request and the saved values, and builds its answer
  from saved values: a resumed request skips the phases, so it must reach the same answer;
- the remote request carries a key of its own derived from saved values (the order number), so
  that the remote side refuses a second create even in the one case the lease cannot cover: a
  request hung for longer than its lease while its create was on the wire.

This module never holds a transaction or a pooled connection while a handler calls out, and
never lets a request whose key was taken over commit a phase, call out or store an answer.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

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
# The recovery point of a claimed key before its first phase commits.
STARTED = "started"
SAVED_BYTES_MAX = 8_192  # what one phase saves: an id, a state, a remote reference
# A live request renews its lease this many times per lease, so one late renewal loses nothing.
LEASE_RENEWALS_PER_LEASE = 3
# Even a live request stops renewing after this long: outbound calls have timeouts far shorter,
# and a request stuck beyond it must not keep its key from retries for ever.
LEASE_HOLD_S_MAX = 300
_POINT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

T = TypeVar("T")
R = TypeVar("R")


class Idempotency(enum.Enum):
    """How a money route keeps the Idempotency-Key promise (the route option `idempotent=`)."""

    ONE_TRANSACTION = "one_transaction"  # what `idempotent=True` means
    RECOVERY_POINTS = "recovery_points"


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    lease: uuid.UUID
    point: str | None  # None in one-transaction mode
    saved_json: str  # {"<phase>": <value>, ...}


_CLAIM = """
INSERT INTO idempotency_keys AS k (principal, key, request_hash, state, lease_token,
                                   locked_until, expires_at, recovery_point)
VALUES ($1, $2, $3, 'in_flight', $4, now() + make_interval(secs => $5),
        now() + make_interval(secs => $6), $7)
ON CONFLICT (principal, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, state = 'in_flight',
       lease_token = EXCLUDED.lease_token, locked_until = EXCLUDED.locked_until,
       response_status = NULL, response_body = NULL, created_at = now(),
       expires_at = EXCLUDED.expires_at,
       -- A lapsed lease is taken over where its holder stopped; an expired key starts afresh.
       recovery_point = CASE WHEN k.expires_at <= now() THEN EXCLUDED.recovery_point
                             ELSE k.recovery_point END,
       recovery_data = CASE WHEN k.expires_at <= now() THEN '{}' ELSE k.recovery_data END
 WHERE k.expires_at <= now()
    OR (k.state = 'in_flight' AND k.locked_until <= now()
        AND k.request_hash = EXCLUDED.request_hash)
RETURNING k.recovery_point, k.recovery_data::text AS recovery_data
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

_ADVANCE = """
UPDATE idempotency_keys
   SET recovery_point = $4::text,
       recovery_data = recovery_data || jsonb_build_object($4::text, $5::text::jsonb),
       locked_until = now() + make_interval(secs => $6)
 WHERE principal = $1 AND key = $2 AND lease_token = $3 AND state = 'in_flight'
"""

_RENEW = """
UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $4)
 WHERE principal = $1 AND key = $2 AND lease_token = $3 AND state = 'in_flight'
"""

# The recovery point stays; the lease lapses now, so that the next retry resumes at once.
_GIVE_UP_LEASE = """
UPDATE idempotency_keys SET lease_token = NULL, locked_until = now()
 WHERE principal = $1 AND key = $2 AND lease_token = $3 AND state = 'in_flight'
"""

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
    claim = await _claim(pool, config, principal, key, request_hash(request, raw_body), None)
    if isinstance(claim, Stored):
        return _replay(claim)
    lease = claim.lease
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


PhaseFn = Callable[[asyncpg.Connection], Awaitable[Any]]


class Recovery:
    """A recovery-point route's claimed key, handed to its handler as `call.recovery`.

        order = await recovery.atomic("order_created", lambda conn: create(conn, ...), Order)
        paid = await recovery.call_out(
            "order_paid",
            create=lambda: channel.create(order.trade_no, ...),
            query=lambda: channel.query(order.trade_no),
            apply=lambda conn, payment: mark_paid(conn, order.id, payment),
            as_type=Paid,
        )
        return Answer(order.id, paid.payment_id)

    `point` is the last phase committed for this key (by this request or a crashed one before
    it), `STARTED` before the first; `saved(name)` is the value that phase saved.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        principal: str,
        key: str,
        claim: Claim,
        claimed_at: float,
    ) -> None:
        assert claim.point is not None, "a recovery-point key has a recovery point"
        self.principal = principal
        self.key = key
        self._pool = pool
        self._lease = claim.lease
        self._lease_s = float(config.idempotency_lease_s)
        # Until when (event loop clock) the lease surely holds: measured from before the
        # statement that set it was sent, so never later than PostgreSQL's `locked_until`.
        self._held_until = claimed_at + self._lease_s
        self._point = claim.point
        found = msgspec.json.decode(claim.saved_json, type=dict[str, msgspec.Raw])
        self._saved = {name: bytes(value) for name, value in found.items()}
        # Whether every phase passed so far was committed by this request: then no outbound
        # call after them can have been made yet. A request resuming another's cannot know.
        self._fresh = claim.point == STARTED
        self._in_phase = False
        self._lost = False  # a retry took the key over: this request may no longer act

    @property
    def point(self) -> str:
        return self._point

    def passed(self, name: str) -> bool:
        return name in self._saved

    @overload
    def saved(self, name: str) -> Any: ...
    @overload
    def saved(self, name: str, as_type: type[T]) -> T: ...
    def saved(self, name: str, as_type: Any = Any) -> Any:
        assert name in self._saved, f"phase {name} has not committed"
        return msgspec.json.decode(self._saved[name], type=as_type)

    @overload
    async def atomic(self, name: str, fn: PhaseFn) -> Any: ...
    @overload
    async def atomic(self, name: str, fn: PhaseFn, as_type: type[T]) -> T: ...
    async def atomic(self, name: str, fn: PhaseFn, as_type: Any = Any) -> Any:
        """Run `fn(conn)` in a transaction that also advances the key to the recovery point
        `name` and saves what `fn` returns (JSON, decoded as `as_type`). A phase committed
        before, by this request or a crashed one, is skipped and gives its saved value."""
        assert _POINT_NAME.match(name) and name != STARTED, f"bad phase name {name!r}"
        if name in self._saved:
            return self.saved(name, as_type)
        assert not self._in_phase, "phases do not nest"
        self._in_phase = True
        try:
            self._saved[name] = await self._commit_phase(name, fn)
        finally:
            self._in_phase = False
        self._point = name
        self._fresh = True
        return self.saved(name, as_type)

    async def _commit_phase(self, name: str, fn: PhaseFn) -> bytes:
        began = _clock()  # `now()` in _ADVANCE is when the transaction began
        async with self._pool.acquire() as conn, conn.transaction():
            saved = msgspec.json.encode(await fn(conn))
            assert len(saved) <= SAVED_BYTES_MAX, f"phase {name} saves {len(saved)} bytes"
            status = await conn.execute(
                _ADVANCE, self.principal, self.key, self._lease, name, saved.decode(),
                self._lease_s,
            )  # fmt: skip
            if status != "UPDATE 1":
                # A retry took the key over (our lease ran out): this phase rolls back.
                self._lost = True
                raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error(headers={"Retry-After": "1"})
        self._held_until = began + self._lease_s
        return saved

    @overload
    async def call_out(
        self,
        name: str,
        create: Callable[[], Awaitable[R]],
        query: Callable[[], Awaitable[R | None]],
        apply: Callable[[asyncpg.Connection, R], Awaitable[Any]],
    ) -> Any: ...
    @overload
    async def call_out(
        self,
        name: str,
        create: Callable[[], Awaitable[R]],
        query: Callable[[], Awaitable[R | None]],
        apply: Callable[[asyncpg.Connection, R], Awaitable[Any]],
        as_type: type[T],
    ) -> T: ...
    async def call_out(
        self,
        name: str,
        create: Callable[[], Awaitable[R]],
        query: Callable[[], Awaitable[R | None]],
        apply: Callable[[asyncpg.Connection, R], Awaitable[Any]],
        as_type: Any = Any,
    ) -> Any:
        """One outbound call with an effect, then the phase `name` that applies its answer.

        `create()` makes the effect (a payment, a refund, a close) and returns the remote
        side's answer; `query()` returns the same kind of answer for the effect it finds, or
        None when the remote side has nothing. Both raise when the outcome is unknown (timeout,
        dropped connection, 5xx): the key keeps its recovery point, and the retry queries.
        `apply(conn, answer)` runs in the phase's transaction, guarded by the state it expects
        (`WHERE state = 'created'`), and returns what the phase saves. Once `name` has
        committed, nothing is called again.
        """
        if name in self._saved:
            return self.saved(name, as_type)
        assert self._point != STARTED, "the local row commits in a phase before any call out"
        assert not self._in_phase, "no outbound call inside a phase's transaction"
        # A crashed request may have sent the create and died before `name` committed: ask.
        found = None if self._fresh else await self._while_leased(query)
        if found is None:
            self._fresh = False  # from here on the remote side may have the effect
            answer = await self._while_leased(create)
        else:
            answer = found
        return await self.atomic(name, lambda conn: apply(conn, answer), as_type)

    async def _while_leased(self, call: Callable[[], Awaitable[T]]) -> T:
        """Call out only while the lease surely holds. The keeper renews it in time; when it
        could not (the process stalled: a long pause, a blocked loop), renew first, and stop
        if a retry has taken the key over meanwhile, since that retry may be calling too."""
        if self._held_until - _clock() < self._renew_every_s:
            await self._renew()
        if self._lost:
            raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error(headers={"Retry-After": "1"})
        return await call()

    @property
    def _renew_every_s(self) -> float:
        return self._lease_s / LEASE_RENEWALS_PER_LEASE

    async def _keep_lease(self) -> None:
        """Renew the lease now and then every `_renew_every_s` while the request lives (a task
        started when the first renewal is due, cancelled when the request ends)."""
        for _ in range(int(LEASE_HOLD_S_MAX / self._renew_every_s)):
            try:
                # Shielded: cancelling the keeper when the request ends never cuts a query short.
                await asyncio.shield(self._renew())
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("could not renew an idempotency lease", exc_info=True)
            if self._lost:
                return
            await asyncio.sleep(self._renew_every_s)

    async def _renew(self) -> None:
        began = _clock()
        status = await self._pool.execute(
            _RENEW, self.principal, self.key, self._lease, self._lease_s
        )
        if status == "UPDATE 1":
            self._held_until = began + self._lease_s
        else:
            self._lost = True

    async def _finish(self, status: int, body: bytes) -> bool:
        """Store the answer; False when a retry has taken the key over meanwhile."""
        stored = await self._pool.execute(
            _FINISH, self.principal, self.key, self._lease, status, body
        )
        return bool(stored == "UPDATE 1")

    async def _give_up(self) -> None:
        """After a failure: keep the recovery point and let the lease lapse now, so the retry
        resumes at once; or release a key that never passed `started` (nothing happened)."""
        statement = _RELEASE if self._point == STARTED else _GIVE_UP_LEASE
        try:
            await self._pool.execute(statement, self.principal, self.key, self._lease)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # The lease lapses by itself; a retry after it will take the key over.
            log.warning("could not give up an idempotency lease", exc_info=True)


async def run_with_recovery_points(
    request: web.Request,
    pool: asyncpg.Pool,
    config: Config,
    principal: str,
    raw_body: bytes,
    respond: Callable[[Recovery], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The recovery-point mode: `respond(recovery)` runs its phases and outbound calls through
    `recovery`; its answer is stored with the key, or the key is left for a retry to resume."""
    key = read_key(request)
    claimed_at = _clock()
    claim = await _claim(pool, config, principal, key, request_hash(request, raw_body), STARTED)
    if isinstance(claim, Stored):
        return _replay(claim)
    recovery = Recovery(pool, config, principal, key, claim, claimed_at)
    try:
        response = await _run_leased(recovery, respond)
    except errors.ApiError as exc:
        if exc.status >= 500 or exc.code == errors.IDEMPOTENCY_KEY_IN_FLIGHT.code:
            await recovery._give_up()
        else:
            body = error_body(request, exc.code, exc.message, exc.details)
            await recovery._finish(exc.status, body)
        raise
    except BaseException:
        await recovery._give_up()
        raise
    if response.status >= 500:
        await recovery._give_up()
    elif not await recovery._finish(response.status, _body_of(response)):
        # Our lease ran out after the last phase; the retry that took the key over reaches
        # the same answer from the saved values and stores it.
        raise errors.IDEMPOTENCY_KEY_IN_FLIGHT.error(headers={"Retry-After": "1"})
    return response


async def _run_leased(
    recovery: Recovery, respond: Callable[[Recovery], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Most requests end long before their first renewal is due: a timer costs them far less
    # than a task of their own would.
    loop = asyncio.get_running_loop()
    keeper: asyncio.Task[None] | None = None

    def start_keeper() -> None:
        nonlocal keeper
        keeper = loop.create_task(recovery._keep_lease(), name="idempotency-lease")

    timer = loop.call_later(recovery._renew_every_s, start_keeper)
    try:
        return await respond(recovery)
    finally:
        timer.cancel()
        if keeper is not None:
            keeper.cancel()


def _clock() -> float:
    return asyncio.get_running_loop().time()


async def _claim(
    pool: asyncpg.Pool,
    config: Config,
    principal: str,
    key: str,
    digest: bytes,
    point: str | None,
) -> Claim | Stored:
    """Claim the key with a fresh lease (`point`: STARTED in recovery-point mode, else None)."""
    for _ in range(CLAIM_ATTEMPTS_MAX):
        lease = uuid.uuid4()
        claimed = await pool.fetchrow(
            _CLAIM, principal, key, digest, lease,
            float(config.idempotency_lease_s), float(config.idempotency_ttl_s), point,
        )  # fmt: skip
        if claimed is not None:
            return Claim(lease, claimed["recovery_point"], claimed["recovery_data"])
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
