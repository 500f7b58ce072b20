"""The idle cost of the background jobs: an idle gateway with every job running, CPU per core.

`python -m bench.workers`. Starts `onecard serve` (HTTP and every area's jobs) against a scratch
database, lets it settle, then reads the process's CPU time over a quiet minute-long window.
Target: below 1 % of one core. The baseline in the same run is the same gateway started with
`--no-jobs`, so the jobs' own share is the difference.
"""

from __future__ import annotations

import asyncio
import time

import psutil

from bench._support import bench_env, free_port, scratch_database, server_process, server_urls

SETTLE_S = 3.0
WINDOW_S = 30.0
TARGET_CORE_SHARE = 0.01


def _cpu_share(pid: int) -> float:
    """CPU seconds per wall second of the process and its children over WINDOW_S."""
    process = psutil.Process(pid)
    time.sleep(SETTLE_S)

    def cpu() -> float:
        times = process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    before, started = cpu(), time.monotonic()
    time.sleep(WINDOW_S)
    return (cpu() - before) / (time.monotonic() - started)


async def _measure() -> dict[str, float]:
    shares = {}
    with server_urls() as (admin_dsn, redis_url):
        async with scratch_database(admin_dsn) as dsn:
            env = bench_env(dsn, redis_url)
            for name, extra in (("every job", []), ("no jobs", ["--no-jobs"])):
                port = free_port()
                env["ONECARD_PORT"] = str(port)
                args = ["serve", *extra]
                with server_process("gateway.cli", args, env, port) as process:
                    shares[name] = await asyncio.to_thread(_cpu_share, process.pid)
    return shares


def main() -> None:
    shares = asyncio.run(_measure())
    jobs, bare = shares["every job"], shares["no jobs"]
    verdict = "meets" if jobs < TARGET_CORE_SHARE else "ABOVE"
    print(
        f"idle gateway, every job running: {jobs * 100:.3f} % of a core "
        f"({jobs * WINDOW_S * 1000:.0f} ms of CPU in {WINDOW_S:.0f} s; {verdict} target "
        f"< {TARGET_CORE_SHARE * 100:.0f} %); baseline, the same with --no-jobs: "
        f"{bare * 100:.3f} % ({bare * WINDOW_S * 1000:.0f} ms)",
        flush=True,
    )


if __name__ == "__main__":
    main()
