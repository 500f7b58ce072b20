"""The gateway as an operator runs it (`python -m gateway.cli serve`) in a child process of the
test, on a port known in advance, so a test can `kill -9` it and start it again on the same port
while the channels' sandboxes (in the test process) keep running and keep notifying it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp

from gateway.config import Config

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05


def environment(config: Config, port: int, **settings: str) -> dict[str, str]:
    """The test session's database, Redis prefix and key-encryption key, the gateway's own port
    as the address channels notify, and `settings` (ONECARD_... names) on top."""
    return dict(
        os.environ,
        DATABASE_URL=config.database_url,
        REDIS_URL=config.redis_url,
        ONECARD_KEK=config.kek,
        ONECARD_REDIS_PREFIX=config.redis_prefix,
        ONECARD_HOST="127.0.0.1",
        ONECARD_PORT=str(port),
        ONECARD_PUBLIC_URL=f"http://127.0.0.1:{port}",
        ONECARD_SANDBOXES="false",  # the test runs the sandboxes, so they outlive the gateway
        ONECARD_ACCESS_LOG="false",
        ONECARD_LOG_LEVEL="WARNING",
        **settings,
    )


class GatewayProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["ONECARD_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it and wait until `/healthz` answers."""
        process = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                exited = process.poll()
                assert exited is None, f"the gateway exited with {exited} while starting"
                assert time.monotonic() < deadline, f"not started within {START_TIMEOUT_S} s"
                await asyncio.sleep(POLL_S)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert not self.running, "already running"
        command = [sys.executable, "-m", "gateway.cli", "serve"]
        self._process = subprocess.Popen(command, env=self.env)
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """`kill -9`: no cleanup, no answer to anything in flight."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; kill -9 when it does not stop in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
