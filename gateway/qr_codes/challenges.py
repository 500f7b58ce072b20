"""Proof-of-possession challenges: random bytes a rider's phone signs with its device key.

A challenge lives in Redis for `CHALLENGE_TTL_S`, bound to the rider who asked for it, and is
taken (read and deleted at once) by the certificate request that answers it: used once, by
that rider only. This module never accepts a challenge it did not hand out.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway import errors

CHALLENGE_BYTES: Final = 32
CHALLENGE_TTL_S: Final = 120


def _key(prefix: str, challenge: bytes) -> str:
    # Hashed: the key names the challenge without storing a usable copy of it.
    return f"{prefix}qr-challenge:{hashlib.sha256(challenge).hexdigest()}"


async def new_challenge(client: redis.Redis, prefix: str, rider_id: int) -> bytes:
    challenge = secrets.token_bytes(CHALLENGE_BYTES)
    try:
        await client.set(_key(prefix, challenge), str(rider_id), ex=CHALLENGE_TTL_S)
    except (RedisError, OSError):
        raise errors.SERVICE_UNAVAILABLE.error(
            "Device registration is paused: challenges are unavailable.",
            headers={"Retry-After": "5"},
        ) from None
    return challenge


async def take_challenge(client: redis.Redis, prefix: str, rider_id: int, challenge: bytes) -> None:
    """Use up the challenge; 400 `qr_challenge_invalid` unless this rider holds it unused."""
    try:
        holder = await client.getdel(_key(prefix, challenge))
    except (RedisError, OSError):
        raise errors.SERVICE_UNAVAILABLE.error(
            "Device registration is paused: challenges are unavailable.",
            headers={"Retry-After": "5"},
        ) from None
    if holder is None or holder != str(rider_id).encode():
        raise errors.QR_CHALLENGE_INVALID.error()
