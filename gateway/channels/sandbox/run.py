"""Starting sandboxes: `onecard sandbox CHANNEL --port P` runs one in the foreground;
`running(...)` runs the configured ones as child processes for `onecard serve` and the tests,
and stops them when it ends.

Sandboxes run only when configured (`ONECARD_SANDBOXES=true`, as `make run` sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from aiohttp import web

from gateway.channels.sandbox.base import ChannelSandbox, Sandbox

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# channel name -> the module whose `make(sandbox)` builds its protocol routes.
MODULES: dict[str, str] = {
    "alipay": "gateway.channels.sandbox.alipay",
    "wechatpay": "gateway.channels.sandbox.wechatpay",
    "unionpay": "gateway.channels.sandbox.unionpay",
}


SANDBOX = web.AppKey("sandbox", Sandbox)


def application(channel: str, data_dir: Path) -> web.Application:
    """The sandbox of `channel` (keys kept under `data_dir/sandbox/<channel>/`)."""
    module = importlib.import_module(MODULES[channel])
    sandbox = Sandbox(data_dir / "sandbox" / channel)
    implementation: ChannelSandbox = module.make(sandbox)
    app = sandbox.application(implementation)
    app[SANDBOX] = sandbox
    return app


async def serve(channel: str, host: str, port: int, data_dir: Path) -> None:
    runner = web.AppRunner(application(channel, data_dir), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("sandbox listening", extra={"channel": channel, "url": f"http://{host}:{port}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


@contextlib.contextmanager
def running(ports: Mapping[str, int], host: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """Each channel's sandbox in a child process; yields channel -> base URL."""
    children: list[subprocess.Popen[bytes]] = []
    try:
        for channel, port in ports.items():
            command = [sys.executable, "-m", "gateway.cli", "sandbox", channel, "--port", str(port)]
            children.append(subprocess.Popen(command))  # noqa: S603 - our own module
        for (channel, port), child in zip(ports.items(), children, strict=True):
            _wait_for(host, port, child, channel)
        yield {channel: f"http://{host}:{port}" for channel, port in ports.items()}
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()


def _wait_for(host: str, port: int, child: subprocess.Popen[bytes], channel: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {channel} sandbox did not start on port {port}")
        time.sleep(0.05)
