"""Supervised periodic background work: `Periodic(name, interval_s, run)`.

Each area declares its periodic jobs in `gateway/areas.py`; `supervise(...)` runs them as one
cleanup context, in the HTTP processes (`onecard serve`) or alone (`onecard work`). A job that
fails is logged and retried after a back-off that doubles up to `backoff_max_s`; it never stops
the loop and never takes the process down. Metrics per job: runs by outcome, the time of the
last success, and the lag (how late the last run started against its schedule).

Several processes on several hosts run the same jobs at once. A job must therefore claim its
rows (`SELECT ... FOR UPDATE SKIP LOCKED` in the transaction that handles them) or take an
advisory lock per item, so that N workers share the work and never do one item twice; it never
holds a transaction across a network call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from gateway.context import METRICS
from gateway.metrics import Counter

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class Periodic:
    name: str
    interval_s: float
    run: Callable[[web.Application], Awaitable[object]]
    # Whether the first run waits one interval (a reload of what setup just loaded) or starts
    # at once (a purge that may have a backlog).
    first_after_interval: bool = False
    backoff_max_s: float = BACKOFF_MAX_S

    def __post_init__(self) -> None:
        assert self.interval_s > 0 and self.backoff_max_s > 0


@dataclass
class _State:
    last_success_s: float = 0.0
    lag_s: float = 0.0
    failures: int = 0


def supervise(
    jobs: Iterable[Periodic],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs `jobs` for as long as the application lives."""
    jobs = tuple(jobs)
    assert len({job.name for job in jobs}) == len(jobs), "job names are unique"

    async def run_jobs(app: web.Application) -> AsyncIterator[None]:
        registry = app[METRICS]
        runs = registry.counter(
            "onecard_worker_runs_total", "Background job runs by outcome", ("job", "outcome")
        )
        states = {job.name: _State() for job in jobs}
        registry.gauge(
            "onecard_worker_last_success_seconds", "Unix time of the job's last success",
            ("job",), lambda: [((name, ), s.last_success_s) for name, s in states.items()],
        )  # fmt: skip
        registry.gauge(
            "onecard_worker_lag_seconds", "How late the job's last run started",
            ("job",), lambda: [((name,), s.lag_s) for name, s in states.items()],
        )  # fmt: skip
        tasks = [
            asyncio.create_task(_loop(app, job, states[job.name], runs), name=f"job-{job.name}")
            for job in jobs
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run_jobs


async def _loop(app: web.Application, job: Periodic, state: _State, runs: Counter) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + (job.interval_s if job.first_after_interval else 0.0)
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        started = loop.time()
        state.lag_s = started - due
        try:
            await job.run(app)
        except Exception:
            state.failures += 1
            runs.inc((job.name, "failed"))
            log.warning("background job failed", extra={"job": job.name}, exc_info=True)
        else:
            state.failures = 0
            state.last_success_s = time.time()
            runs.inc((job.name, "ok"))
        due = started + _delay_s(job, state.failures)


def _delay_s(job: Periodic, failures: int) -> float:
    """The interval after a success; after failures a back-off that doubles, bounded by
    `backoff_max_s` (or by the interval itself, when that is longer)."""
    if failures == 0:
        return job.interval_s
    backoff_s: float = job.interval_s * 2.0 ** min(failures, 32)
    return min(max(job.backoff_max_s, job.interval_s), backoff_s)
