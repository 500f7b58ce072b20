"""The bounded TTL cache the authenticators keep their lookups in."""

from __future__ import annotations

import time

from gateway.cache import TtlCache


def test_entries_expire_and_the_size_stays_bounded() -> None:
    cache: TtlCache[str, int | None] = TtlCache(ttl_s=0.05, entries_max=100)
    cache.put("known", 1)
    cache.put("unknown", None)
    assert cache.get("known") == (True, 1)
    assert cache.get("unknown") == (True, None)  # a miss is remembered too
    assert cache.get("never") == (False, None)
    time.sleep(0.06)
    assert cache.get("known") == (False, None)
    for n in range(10_000):  # a flood of made-up keys
        cache.put(f"key-{n}", n)
    assert len(cache) == 100
    assert cache.get("key-9999") == (True, 9999) and cache.get("key-0") == (False, None)


def test_recently_used_entries_survive_eviction() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=60, entries_max=3)
    for key in ("a", "b", "c"):
        cache.put(key, 0)
    cache.get("a")
    cache.put("d", 0)
    assert cache.get("a")[0] and not cache.get("b")[0]
