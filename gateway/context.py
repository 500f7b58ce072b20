"""Typed keys of the application's shared state (`app[POOL]`, ...), in one place.

Only `gateway.app` sets them; everything else reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from gateway.config import Config
from gateway.keystore import Keystore
from gateway.metrics import Registry

if TYPE_CHECKING:
    from gateway.api.routing import Endpoint
    from gateway.auth.principal import Principal
    from gateway.auth.ratelimit import LoginGuard
    from gateway.auth.tokens import TokenKeys
    from gateway.qr_codes.issuer_keys import IssuerKeys


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
ENDPOINTS = web.AppKey("endpoints", list["Endpoint"])
# Authenticators (gateway.auth) and the rate limiter; typed loosely to keep this module light.
AUTHENTICATORS = web.AppKey("authenticators", list[Any])
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
TOKEN_KEYS: web.AppKey[TokenKeys] = web.AppKey("token_keys")
LOGIN_GUARD: web.AppKey[LoginGuard] = web.AppKey("login_guard")
QR_ISSUER_KEYS: web.AppKey[IssuerKeys] = web.AppKey("qr_issuer_keys")
