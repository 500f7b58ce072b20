"""Per-principal rate limits (token buckets in Redis), failed-login limits, session revocation.

One Lua script takes a token from the principal's bucket and, for riders, checks that the
session has not been logged out. The checks of all requests that arrive in the same event-loop
turn go to Redis in one pipeline: one round trip for many requests under load, the same
latency when idle. If Redis does not answer, limits degrade open (the request goes on, a
warning is logged and counted): Redis holds only what can be rebuilt, and riders and terminals
must still be able to ride.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError

from gateway import errors
from gateway.auth.principal import Principal, PrincipalKind
from gateway.config import Config
from gateway.metrics import Counter, Registry

log = logging.getLogger(__name__)

# KEYS[1] bucket, KEYS[2] revoked-session marker (or the bucket again when there is none)
# ARGV rate per s, burst, now (ms).  Returns {allowed, retry_after_ms, revoked}
_TAKE = """
local revoked = 0
if KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1 then revoked = 1 end
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - stamp) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1; allowed = 1
else
    wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait, revoked}
"""


Check = tuple[list[str], list[int], "asyncio.Future[list[int]]"]


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        config: Config,
        metrics: Registry,
        session_revoked: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        # Asked when Redis cannot answer: a logged-out session must stay logged out.
        self._session_revoked = session_revoked
        self._redis = client
        self._prefix = config.redis_prefix
        self._script = client.register_script(_TAKE)
        self._pending: list[Check] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._limits = {
            PrincipalKind.RIDER: (config.rate_rider_per_s, config.rate_rider_burst),
            PrincipalKind.PARTNER: (config.rate_partner_per_s, config.rate_partner_burst),
            PrincipalKind.TERMINAL: (config.rate_terminal_per_s, config.rate_terminal_burst),
            PrincipalKind.ADMIN: (config.rate_admin_per_s, config.rate_admin_burst),
            PrincipalKind.CHANNEL: (config.rate_channel_per_s, config.rate_channel_burst),
        }
        self._public = (config.rate_public_per_s, config.rate_public_burst)
        self._channel_buckets: dict[str, TokenBucket] = {}
        self._degraded = degraded_checks(metrics)
        self._limited = metrics.counter(
            "onecard_rate_limited_total", "Requests refused with 429", ("kind",)
        )

    async def check_address(self, address: str) -> None:
        """The bucket of a client address, for routes anyone may call (sign-up, login)."""
        bucket = f"{self._prefix}rl:addr:{address}"
        try:
            allowed, wait_ms, _ = await self._take(
                [bucket, bucket], [*self._public, int(time.time() * 1000)]
            )
        except (RedisError, OSError, TimeoutError):
            log.warning("address rate limit skipped: Redis unavailable")
            self._degraded.inc(("rate_limit",))
            return
        if not allowed:
            self._limited.inc(("address",))
            raise errors.RATE_LIMITED.error(
                headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))}
            )

    async def check(self, principal: Principal) -> None:
        rate, burst = principal.limits or self._limits[principal.kind]
        if principal.kind is PrincipalKind.CHANNEL:
            self._check_channel(principal.key, rate, burst)
            return
        bucket = f"{self._prefix}rl:{principal.key}"
        revoked_key = (
            revoked_session_key(self._prefix, principal.session) if principal.session else bucket
        )
        try:
            allowed, wait_ms, revoked = await self._take(
                [bucket, revoked_key], [rate, burst, int(time.time() * 1000)]
            )
        except (RedisError, OSError, TimeoutError):
            log.warning("rate limit skipped: Redis unavailable", extra={"kind": principal.kind})
            self._degraded.inc(("rate_limit",))
            if principal.session and self._session_revoked is not None:
                if await self._session_revoked(principal.session):
                    raise errors.TOKEN_INVALID.error() from None
            return
        if revoked:
            raise errors.TOKEN_INVALID.error()
        if not allowed:
            self._limited.inc((principal.kind.value,))
            raise errors.RATE_LIMITED.error(
                headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))}
            )

    def _check_channel(self, key: str, rate: int, burst: int) -> None:
        """A channel's notifications are already verified against its key, so they cannot be
        forged, only repeated: a bucket in this process bounds that without a Redis round trip
        on the hottest route (under `serve --workers N` each worker has its own)."""
        bucket = self._channel_buckets.get(key)
        if bucket is None:
            bucket = self._channel_buckets[key] = TokenBucket(rate, burst)
        wait_s = bucket.take(time.monotonic())
        if wait_s > 0:
            self._limited.inc((PrincipalKind.CHANNEL.value,))
            raise errors.RATE_LIMITED.error(headers={"Retry-After": str(math.ceil(wait_s))})

    def _take(self, keys: list[str], args: list[int]) -> asyncio.Future[list[int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Check]) -> None:
        try:
            results = await self._run(batch)
        except Exception as exc:  # every waiting request must get an answer, whatever failed
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run(self, batch: list[Check]) -> list[Any]:
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self._redis.script_load(_TAKE)  # a restarted or flushed Redis
                continue
            return results
        return results


class TokenBucket:
    """The bucket of `_TAKE`, kept in this process."""

    def __init__(self, rate_per_s: int, burst: int) -> None:
        self._rate = float(rate_per_s)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """Take a token: 0 when there was one, else the seconds until there will be."""
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


def degraded_checks(metrics: Registry) -> Counter:
    """Checks let through (or answered from PostgreSQL) because Redis did not answer."""
    return metrics.counter(
        "onecard_redis_degraded_total", "Checks let through because Redis failed", ("check",)
    )


def revoked_session_key(prefix: str, session: str) -> str:
    return f"{prefix}revoked-session:{session}"


class LoginGuard:
    """Counts login attempts that did not succeed, per phone and per IP; 429 above the limit.

    An attempt is counted before its password is checked (and refunded when it succeeds), so
    guesses sent in parallel are bounded like guesses sent one after another. The IP limit is
    higher: many riders share one carrier NAT address.
    """

    def __init__(self, client: redis.Redis, config: Config, metrics: Registry) -> None:
        self._redis = client
        self._prefix = config.redis_prefix
        self._max_per_phone = config.login_failures_max
        self._max_per_ip = config.login_failures_ip_max
        self._window_s = config.login_failure_window_s
        self._degraded = degraded_checks(metrics)

    def _keys(self, phone: str, ip: str) -> list[str]:
        return [f"{self._prefix}login-fail:phone:{phone}", f"{self._prefix}login-fail:ip:{ip}"]

    async def attempt(self, phone: str, ip: str) -> None:
        """Count this attempt; 429 when the phone or the address is over its limit."""
        keys = self._keys(phone, ip)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    # The window starts at the first attempt (works on Redis 6 and 7 alike).
                    pipe.set(key, 0, ex=self._window_s, nx=True)
                    pipe.incr(key)
                    pipe.ttl(key)
                replies = await pipe.execute()
        except (RedisError, OSError):
            log.warning("login limit skipped: Redis unavailable")
            self._degraded.inc(("login_limit",))
            return
        limits = (self._max_per_phone, self._max_per_ip)
        for count, ttl, limit in zip(replies[1::3], replies[2::3], limits, strict=True):
            if int(count) > limit:
                raise errors.RATE_LIMITED.error(
                    "Too many failed logins; retry later.",
                    headers={"Retry-After": str(max(1, int(ttl)))},
                )

    async def succeeded(self, phone: str, ip: str) -> None:
        """A right password: the phone starts afresh and the address gets its attempt back."""
        phone_key, ip_key = self._keys(phone, ip)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(phone_key)
                pipe.decr(ip_key)
                await pipe.execute()
        except (RedisError, OSError):
            self._degraded.inc(("login_limit",))
