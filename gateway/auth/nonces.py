"""Nonces of signed requests (partners, terminals), remembered in Redis for twice the window.

A request whose timestamp is inside the window and whose nonce is new is fresh; the same nonce
again within the window is a replay. Redis errors reach the caller, which decides: partners
fail closed, terminals degrade open.
"""

from __future__ import annotations

import redis.asyncio as redis


async def first_use(
    client: redis.Redis, prefix: str, owner: str, nonce: str, window_s: int
) -> bool:
    """True the first time `owner` presents `nonce`, False on any later time in the window."""
    key = f"{prefix}nonce:{owner}:{nonce}"
    return bool(await client.set(key, b"1", nx=True, ex=2 * window_s))
