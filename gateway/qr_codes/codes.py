"""Online (type 02) ride codes: issued by the gateway for a rider, valid `ONECARD_QR_CODE_TTL_S`.

A code is kept in Redis for its lifetime, under its id (the code's random nonce, hex), so the
rider's app can fetch it as a PNG or SVG image; only the rider it was issued to can. A lost
entry costs nothing: the app asks for a new code. The ride itself is checked when the gate
uploads it (`gateway.taps.qr_rides`), never against this store.
"""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway import errors
from gateway.qr_codes.certificates import spendable_fen
from gateway.qr_codes.issuer_keys import IssuerKeys
from qr.format import OnlineCode
from qr.render import render_png, render_svg
from qr.signing import issue_online_code

CODE_ID: Final = re.compile(r"^[0-9a-f]{16}$")
_RIDER: Final = struct.Struct(">Q")
IMAGE_FORMATS: Final = {"png": render_png, "svg": render_svg}


@dataclass(frozen=True)
class Issued:
    id: str
    code: OnlineCode


def _key(prefix: str, code_id: str) -> str:
    return f"{prefix}qr-code:{code_id}"


def _unavailable() -> errors.ApiError:
    return errors.SERVICE_UNAVAILABLE.error(
        "Online codes are unavailable for a moment.", headers={"Retry-After": "5"}
    )


async def issue(
    pool: asyncpg.Pool,
    client: redis.Redis,
    prefix: str,
    keys: IssuerKeys,
    rider_id: int,
    ttl_s: int,
    now: int,
) -> Issued:
    """A fresh online code for the rider; 422 `insufficient_balance` with nothing to ride on."""
    async with pool.acquire() as conn:
        await spendable_fen(conn, rider_id)
    key = await keys.current()
    code = issue_online_code(key.private, key.key_id, rider_id, now, ttl_s)
    code_id = code.nonce.hex()
    try:
        await client.set(_key(prefix, code_id), _RIDER.pack(rider_id) + code.to_bytes(), ex=ttl_s)
    except (RedisError, OSError):
        raise _unavailable() from None
    return Issued(code_id, code)


async def image(
    client: redis.Redis, prefix: str, rider_id: int, code_id: str, image_format: str
) -> bytes:
    """The code's image; 404 when it expired, never existed or is another rider's."""
    if not CODE_ID.match(code_id) or image_format not in IMAGE_FORMATS:
        raise errors.NOT_FOUND.error()
    try:
        stored = await client.get(_key(prefix, code_id))
    except (RedisError, OSError):
        raise _unavailable() from None
    if not isinstance(stored, bytes) or _RIDER.unpack_from(stored)[0] != rider_id:
        raise errors.NOT_FOUND.error()
    code = stored[_RIDER.size :]
    # Rendering takes milliseconds of CPU: keep it off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, IMAGE_FORMATS[image_format], code)
