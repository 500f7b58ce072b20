"""The replay fast path: Redis remembers which terminal uploaded each tap, for a while.

A batch claims its taps' replay keys in one pipeline (one round trip, whatever its size; each
command keeps its own key, so Redis Cluster routes each to its own slot): `SET key terminal NX
EX`. A key another terminal holds is a replay, answered at once without PostgreSQL. Redis is the
fast path only: when it fails or has forgotten a tap, PostgreSQL's unique replay key decides,
and a claim that turns out wrong is dropped (`forget`) so the terminal that did upload the tap
still gets its `duplicate`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Redis remembers a tap this long; PostgreSQL's unique replay key remembers it for ever.
REPLAY_CACHE_TTL_S: Final = 3600


async def claim(client: redis.Redis, keys: Sequence[str], terminal_id: str) -> list[bool]:
    """For each key: False when Redis knows another terminal uploaded the tap (a replay)."""
    if not keys:
        return []
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, terminal_id, nx=True, ex=REPLAY_CACHE_TTL_S)
        claimed = [bool(answer) for answer in await pipe.execute()]
        held = [i for i, ok in enumerate(claimed) if not ok]
        if held:
            pipe = client.pipeline(transaction=False)
            for i in held:
                pipe.get(keys[i])
            mine = terminal_id.encode()
            for i, holder in zip(held, await pipe.execute(), strict=True):
                claimed[i] = holder is None or holder == mine
    except (RedisError, OSError):
        log.warning("tap replay fast path skipped: Redis unavailable")
        return [True] * len(keys)  # PostgreSQL's unique replay key still refuses the replay
    return claimed


async def forget(client: redis.Redis, keys: Sequence[str]) -> None:
    if not keys:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        await pipe.execute()
    except (RedisError, OSError):
        log.warning("tap replay fast path: could not drop claims, Redis unavailable")
