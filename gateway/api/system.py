"""Operational routes: liveness, readiness, metrics, the API description and its page."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from gateway import __version__
from gateway.api import openapi
from gateway.api.routing import Call, Endpoint, RouteTable
from gateway.context import METRICS, POOL, REDIS
from gateway.responses import json_response

routes = RouteTable("system")
log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)


def openapi_document_bytes(endpoints: list[Endpoint]) -> bytes:
    """The encoded /openapi.json, built once when the app is made."""
    return msgspec.json.encode(openapi.build(endpoints, "OneCard Gateway", __version__))


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]


@routes.get("/healthz", public=True, response=Health)
async def healthz(call: Call) -> Health:
    """The process is up and serving."""
    return Health("ok")


@routes.get("/readyz", public=True, response=Readiness)
async def readyz(call: Call) -> web.Response:
    """PostgreSQL and Redis answer; 503 naming the ones that do not."""
    app = call.app
    checks = dict(
        zip(
            ("postgresql", "redis"),
            await asyncio.gather(_check(app[POOL].fetchval("SELECT 1")), _check(app[REDIS].ping())),
            strict=True,
        )
    )
    ready = all(state == "ok" for state in checks.values())
    return json_response(Readiness("ok" if ready else "unavailable", checks), 200 if ready else 503)


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_S)
    except Exception as exc:
        log.warning("readiness check failed", extra={"error": type(exc).__name__})
        return "down"
    return "ok"


@routes.get("/metrics", public=True, content_type="text/plain")
async def metrics(call: Call) -> web.Response:
    """Prometheus metrics in the text format."""
    return web.Response(
        text=call.app[METRICS].render(), content_type="text/plain", charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )  # fmt: skip


@routes.get("/openapi.json", public=True)
async def openapi_document(call: Call) -> web.Response:
    """This API described in OpenAPI 3.1."""
    return web.Response(body=call.app[OPENAPI_DOCUMENT], content_type="application/json")


# Read once: two small files that never change while the gateway runs. Served with the
# content types /openapi.json documents (a guess from the file name would vary by platform).
_DOCS_PAGE = (STATIC_DIR / "docs.html").read_bytes()
_DOCS_SCRIPT = (STATIC_DIR / "docs.js").read_bytes()


@routes.get("/docs", public=True, content_type="text/html")
async def docs(call: Call) -> web.Response:
    """A page that renders /openapi.json; its script is served from here, no network needed."""
    return web.Response(body=_DOCS_PAGE, content_type="text/html", charset="utf-8")


@routes.get("/docs/docs.js", public=True, content_type="text/javascript")
async def docs_script(call: Call) -> web.Response:
    """The script of /docs."""
    return web.Response(body=_DOCS_SCRIPT, content_type="text/javascript", charset="utf-8")
