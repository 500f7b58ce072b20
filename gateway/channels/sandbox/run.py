"""Starting sandboxes: `onecard sandbox CHANNEL --port P` runs one in the foreground;
`running(...)` runs the configured ones as child processes for `onecard serve` and the tests,
and stops them when it ends; killed outright, it leaves none behind (they watch it). It never
takes another process on a sandbox's port for the sandbox.

Sandboxes run only when configured (`ONECARD_SANDBOXES=true`, as `make run` sets it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.channels.sandbox.base import ChannelSandbox, Sandbox

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
EXIT_WAIT_S = 1.0  # for the exit code of a sandbox that closed its end of the pipe
PROBE_S = 0.2  # connecting to a port the sandbox could not take, to tell why
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
READY = b"listening\n"  # one write, well under PIPE_BUF: read whole
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


class StartError(Exception):
    """A sandbox did not start: its one-line reason, naming the port."""


async def serve(
    channel: str,
    host: str,
    port: int,
    data_dir: Path,
    until: Callable[[], Awaitable[None]],
    ready_fd: int | None = None,
) -> None:
    """Serve `channel`'s sandbox until `until()` returns; once it listens, say so on `ready_fd`
    (the pipe `running` waits on). A port it cannot bind raises StartError, nothing left open."""
    runner = web.AppRunner(application(channel, data_dir), handle_signals=False)
    try:  # a bind that fails, or a stop while starting, closes what setup opened
        await runner.setup()
        await _listen(runner, channel, host, port)
        if ready_fd is not None:
            _say_ready(ready_fd)
        await until()
    finally:
        await runner.cleanup()


async def _listen(runner: web.AppRunner, channel: str, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # uvloop's repeats the address
        where = f"{host}:{port}"
        raise StartError(f"the {channel} sandbox cannot listen on {where}: {reason}") from None
    log.info("sandbox listening", extra={"channel": channel, "url": f"http://{host}:{port}"})


def _say_ready(ready_fd: int) -> None:
    # A gateway that stopped waiting (or died) closed its end: nobody to tell, not an error.
    with contextlib.suppress(OSError):
        os.write(ready_fd, READY)
    os.close(ready_fd)


@dataclass
class _Child:
    channel: str
    port: int
    process: subprocess.Popen[bytes]
    ready_fd: int  # the read end of the pipe the sandbox says READY on


@contextlib.contextmanager
def running(ports: Mapping[str, int], host: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """Each channel's sandbox in a child process; yields channel -> base URL once every one of
    them listens (StartError when one does not: every one started is stopped).

    A sandbox is ready when it says so on a pipe, not when something answers on its port:
    that could be another process (a sandbox an earlier gateway left behind). Each sandbox is
    given this process's pid and stops once it is gone, even killed outright (kill -9, OOM)."""
    children: list[_Child] = []
    try:
        for channel, port in ports.items():
            with _signals_held():  # a stop must not come between a fork and this list
                children.append(_start(channel, port))
        for child in children:
            _wait_for(host, child)
        yield {channel: f"http://{host}:{port}" for channel, port in ports.items()}
    finally:
        for child in children:
            os.close(child.ready_fd)
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait for the end of the block, then go to the handlers there were
    (interrupted between its fork and its exec, Popen would lose the child)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread's handlers only
        return
    got: list[int] = []
    held = {signum: signal.signal(signum, lambda n, _: got.append(n)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for number in dict.fromkeys(got):
            signal.raise_signal(number)


def _start(channel: str, port: int) -> _Child:
    ready_fd, write_fd = os.pipe()
    try:
        command = [sys.executable, "-m", "gateway.cli", "sandbox", "--parent", str(os.getpid())]
        command += ["--ready-fd", str(write_fd), channel, "--port", str(port)]
        process = subprocess.Popen(command, pass_fds=(write_fd,))  # noqa: S603 - our own module
    except BaseException:
        os.close(ready_fd)
        raise
    finally:
        os.close(write_fd)  # the child's copy only: its exit is the end of the pipe
    return _Child(channel, port, process, ready_fd)


def _wait_for(host: str, child: _Child) -> None:
    """Until the sandbox says READY on its pipe; StartError if the pipe ends first (the sandbox
    exited) or after START_TIMEOUT_S."""
    pipe = select.poll()
    pipe.register(child.ready_fd, select.POLLIN)
    if not pipe.poll(START_TIMEOUT_S * 1000):
        raise StartError(
            f"the {child.channel} sandbox did not start on port {child.port} "
            f"within {START_TIMEOUT_S:g} s"
        )
    if os.read(child.ready_fd, len(READY)) != READY:  # b"": its end closed, so it exited
        raise StartError(_why_not_started(host, child))


def _why_not_started(host: str, child: _Child) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=EXIT_WAIT_S)  # for its exit code; it said why on stderr
    why = f"the {child.channel} sandbox did not start on port {child.port}"
    with contextlib.suppress(OSError), socket.create_connection((host, child.port), PROBE_S):
        return f"{why}: another process holds the port (a sandbox an earlier gateway left?)"
    return f"{why}: it exited with code {child.process.returncode}"
