"""The in-process token bucket that limits a channel's notifications."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.ratelimit import TokenBucket

gaps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=200)


@given(
    rate=st.integers(min_value=1, max_value=1_000),
    burst=st.integers(min_value=1, max_value=50),
    gaps_s=gaps,
)
def test_never_more_than_the_burst_plus_what_the_rate_refilled(
    rate: int, burst: int, gaps_s: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    allowed = 0
    for gap in gaps_s:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0
        if wait == 0:
            allowed += 1
    assert allowed <= burst + now * rate + 1e-6


@given(rate=st.integers(min_value=1, max_value=1_000), burst=st.integers(min_value=1, max_value=50))
def test_a_full_bucket_gives_its_burst_at_once_and_names_the_wait(rate: int, burst: int) -> None:
    bucket = TokenBucket(rate, burst)
    assert [bucket.take(10.0) for _ in range(burst)] == [0.0] * burst
    wait = bucket.take(10.0)
    assert 0 < wait <= 1 / rate + 1e-9
    assert bucket.take(10.0 + wait + 1e-9) == 0.0
