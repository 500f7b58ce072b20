"""ETag / If-None-Match for documents gates poll (issuer keys, and later ones): 304 when the
client's copy is current, so that a city's gates polling every minute cost almost nothing."""

from __future__ import annotations

import hashlib

from aiohttp import web

from gateway.responses import JSON


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


def cached_json(request: web.Request, body: bytes) -> web.Response:
    """`body` with its ETag, or 304 with no body when the client already has it."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=JSON, headers=headers)
