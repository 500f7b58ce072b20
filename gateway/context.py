"""Typed keys of the platform's shared state (`app[POOL]`, ...), and the seams areas fill.

Only `gateway.app` and the areas' setups set them; everything else reads them. An area's own
service object has its own key, defined in the area.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from gateway.auth.principal import Principal
from gateway.config import Config
from gateway.keystore import Keystore
from gateway.metrics import Registry


class Authenticator(Protocol):
    """One way of proving who calls: a bearer token, a request signature, a channel's own."""

    def recognises(self, request: web.Request) -> bool:
        """Whether the request carries this kind of credential (cheap: headers, route)."""

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        """The principal, or 401 for credentials that do not hold."""


class RateLimiter(Protocol):
    async def check(self, principal: Principal) -> None:
        """Raise 429 `rate_limited` when the principal is over its limit."""

    async def check_address(self, address: str) -> None:
        """Raise 429 `rate_limited` when the client address is over its limit."""


CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", redis.Redis)
KEYSTORE = web.AppKey("keystore", Keystore)
METRICS = web.AppKey("metrics", Registry)
AUTHENTICATORS = web.AppKey("authenticators", list[Authenticator])
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
# path -> the methods `Allow` lists on a 405 (built from the route tables).
ALLOWED_METHODS: web.AppKey[Callable[[str], list[str]]] = web.AppKey("allowed_methods")
