"""A small bounded cache with a time to live, for lookups worth keeping for a few seconds.

Bounded on purpose: callers key it by what clients send (a key id, a terminal id), so a flood
of made-up keys must evict old entries rather than grow memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float, entries_max: int) -> None:
        assert ttl_s > 0 and entries_max > 0
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        """(found, value): found is False when missing or older than the time to live."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        value, stored_at = entry
        if time.monotonic() - stored_at >= self._ttl_s:
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (value, time.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
