"""What every answer is made of: JSON encoding, the error body, JSON responses, the request id.

A leaf: it imports nothing of the gateway, so that the route layer, the middleware and the
idempotency protocol can all build answers without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

JSON = "application/json"
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type=JSON,
                        headers=headers)  # fmt: skip


def error_body(request: web.Request, code: str, message: str, details: Mapping[str, Any]) -> bytes:
    """`{"error": {"code", "message", "details", "request_id"}}` (DESIGN.md section 8)."""
    return encode(
        {
            "error": {
                "code": code,
                "message": message,
                "details": details,
                "request_id": request.get(REQUEST_ID, ""),
            }
        }
    )
