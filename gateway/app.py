"""The application factory: `create_app(config)` wires config, pools, middleware and areas.

Tests build the app with the same factory. Resources (PostgreSQL pool, Redis client, each
area's service object, background jobs) live in `cleanup_ctx` generators, so they open with
the app and close with it. Areas come from `gateway/areas.py`; nothing here names one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import redis.asyncio as redis
from aiohttp import web

from gateway import db
from gateway.api.routing import RouteTable, all_endpoints, allowed_methods, client_max_size
from gateway.api.system import OPENAPI_DOCUMENT, openapi_document_bytes
from gateway.area import Area
from gateway.areas import AREAS
from gateway.config import Config
from gateway.context import ALLOWED_METHODS, AUTHENTICATORS, CONFIG, KEYSTORE, METRICS, POOL, REDIS
from gateway.keystore import Keystore, load_kek
from gateway.metrics import Registry
from gateway.middleware import HTTP_METRICS, HttpMetrics, observe
from gateway.workers import supervise

REDIS_TIMEOUT_S = 2.0


def create_app(
    config: Config,
    extra_routes: Iterable[RouteTable] = (),
    *,
    http: bool = True,
    jobs: bool = True,
    areas: Sequence[Area] = AREAS,
) -> web.Application:
    """The gateway as an aiohttp application; `config` must have its URLs set.

    `http=False` builds the services and jobs without routes (`onecard work`); `jobs=False`
    serves HTTP without background jobs (`onecard serve --no-jobs`).
    """
    assert config.database_url and config.redis_url, "start embedded services before the app"
    tables = [table for area in areas for table in area.routes] + list(extra_routes)
    if not http:
        tables = []
    app = web.Application(
        middlewares=[observe], client_max_size=client_max_size(config.body_bytes_max, tables)
    )
    app[CONFIG] = config
    app[KEYSTORE] = Keystore(load_kek(config))
    registry = Registry(config.metrics_dir or None)
    app[METRICS] = registry
    app[HTTP_METRICS] = HttpMetrics.register(registry)
    app[AUTHENTICATORS] = []
    for table in tables:
        table.install(app)
    endpoints = all_endpoints(tables)
    app[ALLOWED_METHODS] = allowed_methods(endpoints)
    app[OPENAPI_DOCUMENT] = openapi_document_bytes(endpoints)
    app.cleanup_ctx.append(_postgres)
    app.cleanup_ctx.append(_redis)
    for area in areas:
        if area.setup is not None:
            app.cleanup_ctx.append(area.setup)
    if jobs:
        app.cleanup_ctx.append(supervise(job for area in areas for job in area.jobs))
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
