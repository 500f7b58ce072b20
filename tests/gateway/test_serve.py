"""`onecard serve --workers N` from the shell: N processes on one port, all stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import psutil
import pytest

from gateway.config import Config
from tests.gateway.test_idempotency import free_port, wait_until_up


def start_serve(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)]
    return subprocess.Popen(command, env=env)


async def test_workers_share_the_port_and_stop_together(config: Config) -> None:
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=config.database_url,
        REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek,
        ONECARD_REDIS_PREFIX=config.redis_prefix,
        ONECARD_PORT=str(port),
        ONECARD_ACCESS_LOG="false",
    )
    parent = start_serve(env, workers=2)
    workers: list[psutil.Process] = []
    try:
        await wait_until_up(port)
        workers = psutil.Process(parent.pid).children()
        assert len(workers) == 2
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(
                *(session.get(f"http://127.0.0.1:{port}/readyz") for _ in range(50))
            )
            assert {response.status for response in statuses} == {200}
        # Whichever worker answers a scrape, it counts every worker's requests (each request
        # on a fresh connection, so both workers served some).
        line = 'onecard_http_requests_total{method="GET",route="/readyz",status="200"}'
        counts = set()
        for _ in range(6):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
            found = [row for row in text.splitlines() if row.startswith(line)]
            counts.add(int(found[0].split()[-1]))
        assert counts == {50}, counts  # not one worker's share: every scrape says all 50
        parent.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(parent.wait, 30) == 0
        deadline = time.monotonic() + 10
        while any(
            worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers
        ):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            await asyncio.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
        for worker in workers:
            if worker.is_running():
                worker.kill()


@pytest.mark.parametrize("when", ["serving", "starting"])
async def test_workers_stop_when_their_supervisor_is_killed(config: Config, when: str) -> None:
    """Killed while its workers serve, or while they are still importing (a worker must not
    take the process that adopted it for its supervisor)."""
    port = free_port()
    env = dict(
        os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek, ONECARD_REDIS_PREFIX=config.redis_prefix,
        ONECARD_PORT=str(port), ONECARD_ACCESS_LOG="false",
    )  # fmt: skip
    parent = start_serve(env, workers=2)
    workers: list[psutil.Process] = []
    try:
        if when == "serving":
            await wait_until_up(port)
        deadline = time.monotonic() + 15
        while len(workers := psutil.Process(parent.pid).children()) < 2:
            assert time.monotonic() < deadline, "the supervisor started no workers"
            await asyncio.sleep(0.01)
        parent.kill()  # kill -9: it cannot stop its workers
        await asyncio.to_thread(parent.wait, 10)
        deadline = time.monotonic() + 30
        while any(
            worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers
        ):
            assert time.monotonic() < deadline, "a worker outlived its killed supervisor"
            await asyncio.sleep(0.1)
    finally:
        for worker in workers:
            if worker.is_running():
                worker.kill()
