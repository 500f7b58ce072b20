"""Background jobs: supervised loops with back-off and metrics, rows shared between workers,
and `onecard work` running the jobs with no HTTP."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Any

import asyncpg
from aiohttp import web

from gateway import idempotency
from gateway.config import Config
from gateway.context import METRICS
from gateway.metrics import Registry
from gateway.workers import Periodic, supervise


async def run_jobs_for(jobs: list[Periodic], seconds: float) -> Registry:
    app = web.Application()
    app[METRICS] = Registry()
    context = supervise(jobs)(app)
    await anext(context)
    await asyncio.sleep(seconds)
    await anext(context, None)  # the cleanup half: cancels and awaits every loop
    return app[METRICS]


async def test_a_failing_job_backs_off_and_recovers_without_stopping() -> None:
    started: list[float] = []

    async def flaky(app: web.Application) -> None:
        started.append(time.monotonic())
        if len(started) <= 3:
            raise RuntimeError("the database went away")

    job = Periodic("flaky", 0.05, flaky, backoff_max_s=0.2)
    registry = await run_jobs_for([job], 1.0)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # After failures 1, 2, 3 the waits double (0.1, 0.2) and stop at the bound (0.2); after the
    # success they are the interval again.
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and 0.19 <= gaps[2] < 0.3, gaps
    assert all(gap < 0.1 for gap in gaps[4:]), gaps
    text = registry.render()
    assert 'onecard_worker_runs_total{job="flaky",outcome="failed"} 3' in text
    assert 'onecard_worker_runs_total{job="flaky",outcome="ok"}' in text
    assert 'onecard_worker_last_success_seconds{job="flaky"}' in text
    assert 'onecard_worker_lag_seconds{job="flaky"}' in text


async def test_jobs_stop_with_the_application() -> None:
    runs = 0

    async def count(app: web.Application) -> None:
        nonlocal runs
        runs += 1

    await run_jobs_for([Periodic("count", 0.01, count)], 0.1)
    stopped_at = runs
    await asyncio.sleep(0.05)
    assert runs == stopped_at > 0


async def expire_keys(pool: asyncpg.Pool, count: int, principal: str) -> None:
    await pool.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash, state, expires_at) "
        "SELECT $1, 'k' || n, '\\x00', 'done', now() - interval '1 minute' "
        "FROM generate_series(1, $2) AS n",
        principal, count,
    )  # fmt: skip


async def test_workers_purging_at_once_share_the_rows(pool: asyncpg.Pool) -> None:
    await expire_keys(pool, 3 * idempotency.PURGE_BATCH_MAX, "test:purge-race")
    counts = await asyncio.gather(*(idempotency.purge_expired(pool) for _ in range(3)))
    assert sum(counts) >= 3 * idempotency.PURGE_BATCH_MAX
    left = await pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE principal = 'test:purge-race'"
    )
    assert left == 0


def start_work(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "work"], env=env, stderr=subprocess.PIPE
    )


def stop(process: subprocess.Popen[bytes]) -> bytes:
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=15)[1]


async def test_onecard_work_runs_the_jobs_without_http(pool: asyncpg.Pool, config: Config) -> None:
    await expire_keys(pool, 10, "test:work")
    env = dict(
        os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek, ONECARD_REDIS_PREFIX=config.redis_prefix,
    )  # fmt: skip
    process = start_work(env)
    try:
        deadline = time.monotonic() + 30
        while await pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE principal = 'test:work'"
        ):
            assert process.poll() is None, "onecard work stopped"
            assert time.monotonic() < deadline, "the purge job did not run"
            await asyncio.sleep(0.1)
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr.decode()[-2000:]
    log: Any = stderr.decode()
    assert '"msg": "working"' in log and "listening" not in log
