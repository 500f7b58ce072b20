"""The application factory: `create_app(config)` wires config, pools, routes and middleware.

Tests build the app with the same factory. Resources (PostgreSQL pool, Redis client, background
workers) live in `cleanup_ctx` generators, so they open with the app and close with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as redis
from aiohttp import web

from gateway import db, idempotency
from gateway.api import route_tables
from gateway.api.routing import RouteTable, all_endpoints, client_max_size
from gateway.api.system import OPENAPI_DOCUMENT, openapi_document_bytes
from gateway.auth import riders
from gateway.auth.bearer import BearerAuthenticator
from gateway.auth.partners import PartnerAuthenticator
from gateway.auth.ratelimit import LoginGuard, RateLimiter
from gateway.auth.terminals import TerminalAuthenticator
from gateway.auth.tokens import TokenKeys
from gateway.config import Config
from gateway.context import (
    AUTHENTICATORS,
    CONFIG,
    ENDPOINTS,
    KEYSTORE,
    LOGIN_GUARD,
    METRICS,
    POOL,
    QR_ISSUER_KEYS,
    RATE_LIMITER,
    REDIS,
    TOKEN_KEYS,
)
from gateway.keystore import Keystore, load_kek
from gateway.metrics import Registry
from gateway.middleware import HTTP_METRICS, HttpMetrics, observe
from gateway.qr_codes.issuer_keys import IssuerKeys

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 600
TOKEN_KEYS_RELOAD_S = 60
REDIS_TIMEOUT_S = 2.0


def create_app(config: Config, extra_routes: Iterable[RouteTable] = ()) -> web.Application:
    """The gateway as an aiohttp application; `config` must have its URLs set."""
    assert config.database_url and config.redis_url, "start embedded services before the app"
    tables = [*route_tables(), *extra_routes]
    app = web.Application(
        middlewares=[observe], client_max_size=client_max_size(config.body_bytes_max, tables)
    )
    app[CONFIG] = config
    app[KEYSTORE] = Keystore(load_kek(config))
    registry = Registry()
    app[METRICS] = registry
    app[HTTP_METRICS] = HttpMetrics.register(registry)
    app[AUTHENTICATORS] = []
    for table in tables:
        table.install(app)
    app[ENDPOINTS] = all_endpoints(tables)
    app[OPENAPI_DOCUMENT] = openapi_document_bytes(app[ENDPOINTS])
    app.cleanup_ctx.append(_postgres)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_identity)
    app.cleanup_ctx.append(_qr_issuer_keys)
    app.cleanup_ctx.append(_idempotency_purger)
    return app


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    pool = await db.create_pool(app[CONFIG])
    app[POOL] = pool
    app[METRICS].gauge(
        "onecard_db_pool_connections",
        "PostgreSQL pool connections by state",
        ("state",),
        lambda: [(("in_use",), pool.get_size() - pool.get_idle_size()),
                 (("idle",), pool.get_idle_size()), (("max",), pool.get_max_size())],
    )  # fmt: skip
    yield
    await pool.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = redis.Redis.from_url(
        app[CONFIG].redis_url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    app[REDIS] = client
    yield
    await client.aclose()


async def _identity(app: web.Application) -> AsyncIterator[None]:
    """Token keys, the three authenticators and the rate limits."""
    config, pool, client = app[CONFIG], app[POOL], app[REDIS]
    keys = TokenKeys(app[KEYSTORE], pool)
    await keys.load()
    app[TOKEN_KEYS] = keys
    app[AUTHENTICATORS].extend(
        [
            BearerAuthenticator(keys, config.jwt_issuer),
            PartnerAuthenticator(pool, client, app[KEYSTORE], config),
            TerminalAuthenticator(pool, client, config, app[METRICS]),
        ]
    )
    reloader = asyncio.create_task(_reload_forever(keys), name="token-keys-reloader")
    app[RATE_LIMITER] = RateLimiter(
        client, config, app[METRICS], lambda session: riders.session_revoked(pool, session)
    )
    app[LOGIN_GUARD] = LoginGuard(client, config, app[METRICS])
    yield
    reloader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reloader


async def _qr_issuer_keys(app: web.Application) -> AsyncIterator[None]:
    """QR issuer keys, loaded (the first one made) at start and reloaded as they rotate."""
    keys = IssuerKeys(app[KEYSTORE], app[POOL])
    await keys.load()
    app[QR_ISSUER_KEYS] = keys
    yield


async def _reload_forever(keys: TokenKeys) -> None:
    """Signing keys rotated or revoked elsewhere reach this worker within a minute."""
    while True:
        await asyncio.sleep(TOKEN_KEYS_RELOAD_S)
        try:
            await keys.load()
        except Exception:
            log.warning("reloading token signing keys failed", exc_info=True)


async def _idempotency_purger(app: web.Application) -> AsyncIterator[None]:
    async def purge_forever() -> None:
        while True:
            try:
                await idempotency.purge_expired(app[POOL])
            except Exception:
                log.warning("purging expired idempotency keys failed", exc_info=True)
            await asyncio.sleep(PURGE_INTERVAL_S)

    task = asyncio.create_task(purge_forever(), name="idempotency-purger")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
