"""The sandbox processes of `onecard serve` (ONECARD_SANDBOXES=true) never outlive it, and it
never runs against sandboxes it did not start.

The real command runs as `make run` runs it (free ports, a scratch database, its own process
group, as in a terminal). Killed outright, the gateway cannot stop its sandboxes: they stop
themselves once it is gone. Stopped (SIGTERM) while it starts, it stops them and exits 0
without a traceback. A sandbox port held by another process (a sandbox left running by an
earlier gateway, another checkout's) stops it with one line naming the port, before it takes
any credentials from that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiohttp import web

from gateway.channels.types import Channel
from gateway.config import Config
from tests.gateway.conftest import scratch_database
from tests.gateway.topups.test_run_with_sandboxes import (
    Run,
    killed_at_the_end,
    make_run,
    onecard,
)

START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0
# A sandbox checks its parent before it binds, then once a second (gateway.cli.PARENT_CHECK_S);
# one still starting (importing takes seconds on a busy machine) checks only then.
ORPHAN_GONE_WITHIN_S = 15.0
# The gateway waits for its sandboxes before it exits: only the kernel's reaping is left.
CHILDREN_GONE_WITHIN_S = 1.0
POLL_S = 0.01
LOG_TAIL_CHARS = 3_000


@contextlib.asynccontextmanager
async def a_run(config: Config, server_urls: tuple[str, str], tmp_path: Path) -> AsyncIterator[Run]:
    async with scratch_database(server_urls[0], "onecard_sbx", migrated=True) as database_url:
        run = make_run(config, database_url, tmp_path)
        await asyncio.to_thread(run.command, "keys", "init")
        yield run


def in_group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of the process group `pgid`."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


async def until_gone(run: Run, pgid: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while alive := in_group(pgid):
        assert time.monotonic() < deadline, (
            f"still running after {within_s} s: {[p.cmdline() for p in alive]}{run.logs()}"
        )
        await asyncio.sleep(POLL_S)


def sandbox_children(gateway: subprocess.Popen[bytes]) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(gateway.pid).children()
        return [child for child in children if "sandbox" in child.cmdline()]
    return []


async def until_true(
    run: Run, gateway: subprocess.Popen[bytes], what: str, check: Callable[[], object]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        assert gateway.poll() is None, f"exited with {gateway.returncode}{run.logs()}"
        assert time.monotonic() < deadline, f"no {what} within {START_TIMEOUT_S} s{run.logs()}"
        await asyncio.sleep(POLL_S)


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def assert_ports_free(run: Run) -> None:
    """No one listens on the sandbox ports: the next gateway's sandboxes can bind them (as
    aiohttp binds, with SO_REUSEADDR: connections of the last run may be in TIME_WAIT)."""
    for channel, port in run.sandbox_ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise AssertionError(f"{channel.value}'s port {port} still taken: {exc}") from None


def assert_no_error_logged(run: Run, but: tuple[str, ...] = ()) -> None:
    """Every line on stderr (but those starting with one of `but`) is a log entry, so no
    traceback, and none at ERROR or above."""
    lines = [line for line in run.output("stderr").splitlines() if not line.startswith(but)]
    bad = [line for line in lines if not line.startswith("{") or is_error(json.loads(line))]
    assert bad == [], "\n".join(bad)[-LOG_TAIL_CHARS:]


def is_error(entry: dict[str, object]) -> bool:
    return entry.get("level") in ("ERROR", "CRITICAL")


async def exit_code(run: Run, gateway: subprocess.Popen[bytes]) -> int:
    try:
        return await asyncio.to_thread(gateway.wait, EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {EXIT_TIMEOUT_S} s{run.logs()}") from None


# --------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("when", ["serving", "starting"])
async def test_sandboxes_stop_when_the_gateway_is_killed(
    config: Config, server_urls: tuple[str, str], tmp_path: Path, when: str
) -> None:
    """Killed while it serves, or while its first sandbox is still starting (a sandbox must not
    take the process that adopted it for its gateway)."""
    async with a_run(config, server_urls, tmp_path) as run:
        gateway = run.serve()
        with killed_at_the_end(gateway):
            if when == "serving":
                await until_true(run, gateway, "gateway", lambda: listening(run.port))
                assert len(sandbox_children(gateway)) == len(run.sandbox_ports)
            else:
                await until_true(run, gateway, "sandbox", lambda: sandbox_children(gateway))
            gateway.kill()
            assert await exit_code(run, gateway) == -signal.SIGKILL
            await until_gone(run, gateway.pid, ORPHAN_GONE_WITHIN_S)
            assert_ports_free(run)


# --------------------------------------------------------------------------- SIGTERM
@pytest.mark.parametrize("when", ["sandboxes starting", "credentials printed"])
async def test_sigterm_while_starting_stops_the_sandboxes(
    config: Config, server_urls: tuple[str, str], tmp_path: Path, when: str
) -> None:
    """SIGTERM before the gateway listens: while it waits for its sandboxes, or right after it
    printed the first sandbox's credentials URL (it still sets up the app)."""
    async with a_run(config, server_urls, tmp_path) as run:
        gateway = run.serve()
        with killed_at_the_end(gateway):
            if when == "sandboxes starting":
                await until_true(run, gateway, "sandbox", lambda: sandbox_children(gateway))
            else:
                printed = " sandbox: http://127.0.0.1:"
                await until_true(run, gateway, "line", lambda: printed in run.output("stdout"))
            gateway.send_signal(signal.SIGTERM)
            code = await exit_code(run, gateway)
            assert code == 0, f"exited with {code} on SIGTERM while starting{run.logs()}"
            # Before it listened, not after (there the server's own handler stops it):
            assert '"stopped while starting"' in run.output("stderr"), run.logs()
            await until_gone(run, gateway.pid, CHILDREN_GONE_WITHIN_S)
            assert_ports_free(run)
        assert_no_error_logged(run)


# --------------------------------------------------------------------------- a taken port
class Squatter:
    """Another process's server on a sandbox port, handing out credentials of its own."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def answer(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response({"app_id": "squatter", "private_key": "not ours"})

    @contextlib.asynccontextmanager
    async def on(self, port: int) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.answer)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield
        finally:
            await runner.cleanup()


async def test_a_taken_sandbox_port_stops_the_gateway(
    config: Config, server_urls: tuple[str, str], tmp_path: Path
) -> None:
    squatter = Squatter()
    async with a_run(config, server_urls, tmp_path) as run:
        port = run.sandbox_ports[Channel.WECHATPAY]  # the second: the first one starts
        async with squatter.on(port):
            gateway = run.serve()
            with killed_at_the_end(gateway):
                code = await exit_code(run, gateway)
                await until_gone(run, gateway.pid, CHILDREN_GONE_WITHIN_S)
        assert code == 1, f"exited with {code}{run.logs()}"
        assert squatter.requests == [], f"asked the squatter: {squatter.requests}{run.logs()}"
        conn = await asyncpg.connect(run.env["DATABASE_URL"])
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM secret_keys WHERE kind = 'channel_private'"
            )
        finally:
            await conn.close()
        assert stored == 0, f"credentials stored{run.logs()}"
        # The gateway's line and the sandbox's; the rest log entries (no traceback, no
        # unclosed session), none an error.
        said = run.output("stderr")
        assert_one_line_naming(said, "onecard: ", port)
        assert_one_line_naming(said, "onecard sandbox: ", port)
        assert_no_error_logged(run, but=("onecard: ", "onecard sandbox: "))


def assert_one_line_naming(text: str, prefix: str, port: int) -> None:
    said = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(said) == 1, f"not one line starting {prefix!r}:\n{text[-LOG_TAIL_CHARS:]}"
    assert str(port) in said[0], said[0]


@contextlib.contextmanager
def listener() -> Iterator[int]:
    """A plain socket listening on a free port; its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_sandbox_that_cannot_bind_says_so_in_one_line(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ONECARD_")}
    env["ONECARD_DATA_DIR"] = str(tmp_path)
    with listener() as port:
        done = subprocess.run(
            [*onecard(), "sandbox", "alipay", "--port", str(port)], env=env,
            capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert_one_line_naming(done.stderr, "onecard sandbox: ", port)
    assert len(done.stderr.splitlines()) == 1, done.stderr
