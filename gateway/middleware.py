"""The one middleware every request passes: request id, error shape, access log, metrics.

Every failure leaves as `{"error": {"code", "message", "details", "request_id"}}`: our
`ApiError`s, aiohttp's own HTTP errors (404, 405, 413, ...) and unexpected exceptions, which
become 500 `internal_error` with the traceback in the log only. One middleware instead of four
keeps the per-request cost low.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway import errors
from gateway.context import ALLOWED_METHODS
from gateway.metrics import Counter, Histogram, Registry
from gateway.responses import JSON, REQUEST_ID, REQUEST_ID_HEADER, error_body

log = logging.getLogger("onecard.http")
access_log = logging.getLogger("onecard.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_HTTP_ERRORS: dict[int, errors.ErrorCode] = {
    404: errors.NOT_FOUND,
    405: errors.METHOD_NOT_ALLOWED,
    413: errors.BODY_TOO_LARGE,
    415: errors.UNSUPPORTED_MEDIA_TYPE,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram

    @classmethod
    def register(cls, registry: Registry) -> HttpMetrics:
        labels = ("method", "route", "status")
        return cls(
            registry.counter("onecard_http_requests_total", "HTTP requests", labels),
            registry.histogram("onecard_http_request_seconds", "HTTP request latency", labels),
        )


HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)


def error_response(exc: errors.ApiError, request: web.Request) -> web.Response:
    return web.Response(
        body=error_body(request, exc.code, exc.message, exc.details),
        status=exc.status,
        content_type=JSON,
        headers=exc.headers,
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> errors.ApiError:
    known = _HTTP_ERRORS.get(exc.status)
    if known is not None:
        api_error = known.error()
    elif exc.status < 500:
        api_error = errors.ApiError(errors.BAD_REQUEST.code, exc.status, errors.BAD_REQUEST.message)
    else:
        api_error = errors.INTERNAL_ERROR.error()
    if exc.status == 405:
        # aiohttp lists the methods of every route the path matches; the path names one.
        api_error.headers["Allow"] = ", ".join(request.app[ALLOWED_METHODS](request.path))
    return api_error


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except errors.ApiError as exc:
        response = error_response(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_from_http_exception(exc, request), request)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error", extra={"request_id": request_id})
        response = error_response(errors.INTERNAL_ERROR.error(), request)
    response.headers[REQUEST_ID_HEADER] = request_id
    _record(request, response.status, time.perf_counter() - started, request_id)
    return response


def _record(request: web.Request, status: int, elapsed_s: float, request_id: str) -> None:
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    metrics = request.app[HTTP_METRICS]
    labels = (request.method, route, str(status))
    metrics.requests.inc(labels)
    metrics.latency.observe(labels, elapsed_s)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed_s * 1000, 3),
                "remote": request.remote,
            },
        )
