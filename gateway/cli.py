"""`onecard`: the operator's command. serve, work, migrate, ledger verify, keys init, config.

Every subcommand reads the same `Config`; a bad setting stops it with a message naming the
variable (exit 2). With DATABASE_URL / REDIS_URL unset, commands start the embedded servers
under ONECARD_DATA_DIR for as long as they run. Areas add their subcommands through
`gateway/areas.py` (each area's `commands`), built on the helpers of `gateway.command`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Coroutine
from dataclasses import fields
from types import FrameType
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from gateway import db
from gateway.app import create_app
from gateway.areas import AREAS, ledger_checks
from gateway.channels.commands import sandboxes_beside
from gateway.channels.sandbox import run as sandboxes
from gateway.command import SubParsers, run_async, services, subcommands
from gateway.config import HELP, Config, ConfigError, env_name
from gateway.keystore import create_kek_file, load_kek
from gateway.ledger.verify import verify_ledger
from gateway.logs import setup_logging
from gateway.metrics import shared_directory

log = logging.getLogger("onecard")
T = TypeVar("T")

WORKER_STOP_TIMEOUT_S = 15
PARENT_CHECK_S = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when stopped by SIGINT or SIGTERM, however early (once this runs); 1 when a
    sandbox does not start (one line on stderr naming its port)."""
    signals = _StopSignals()
    try:
        return _serve_beside_sandboxes(args, config, signals)
    except KeyboardInterrupt:
        signals.ignore()
        log.info("stopped while starting", extra={"pid": os.getpid()})
        return 0
    except sandboxes.StartError as exc:
        print(f"onecard: {exc}", file=sys.stderr)
        return 1


def _serve_beside_sandboxes(args: argparse.Namespace, config: Config, signals: _StopSignals) -> int:
    workers = args.workers or config.workers
    load_kek(config)  # fail now, not in every worker
    with services(config) as ready:
        applied = signals.run(db.migrate(ready.database_url))
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        with sandboxes_beside(ready):
            if workers == 1:
                signals.run(_serve(ready, reuse_port=False, jobs=not args.no_jobs))
                signals.ignore()  # the sandboxes still stop
                return 0
            with shared_directory(ready.data_dir) as metrics_dir:
                return _supervise(
                    ready.replace(metrics_dir=str(metrics_dir)), workers, jobs=not args.no_jobs
                )


class _StopSignals:
    """SIGINT and SIGTERM from the start of `serve` (or `sandbox`) until its server listens and
    installs its own handlers: the first one stops the process in order, every `with` and
    `finally` runs (the sandboxes and the embedded servers stop); later ones change nothing
    (each step of the stop has its own time limit).

    Outside an event loop the signal raises KeyboardInterrupt. In a loop run by `run` it
    cancels the loop's main task (raised in the middle of the loop's own code, it could leave
    a connection or the loop itself half made), and `run` raises KeyboardInterrupt once the
    loop is closed; while `run` makes or closes the loop, the signal waits. In a loop run
    elsewhere (`run_with_tools`), asyncio's own SIGINT handler does the same as `run`."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.held = False
        self.pending = False
        self.stopping = False
        self._release()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """`run_async(coroutine)`, stopped as above."""
        self._hold()
        try:
            result = run_async(self._main(coroutine))
        except (Exception, asyncio.CancelledError):
            if self.stopping:
                raise KeyboardInterrupt from None  # whatever the cancellation made of it
            raise
        finally:
            self._release()
        if self.stopping:
            raise KeyboardInterrupt  # asked to stop as the coroutine ended
        return result

    async def _main(self, coroutine: Coroutine[Any, Any, T]) -> T:
        self.task = asyncio.current_task()
        self.held = False
        self._deliver_pending()
        try:
            return await coroutine
        finally:
            self.task = None
            loop = asyncio.get_running_loop()
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)  # the server's, if it installed them
            self._hold()

    def ignore(self) -> None:
        """From now on the process is stopping: a signal must not cut that short, nor kill it
        once Python, exiting, restores the default actions of the signals it handled."""
        self.stopping = True
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        if self.held:
            self.pending = True
            return
        self.stopping = True
        if self.task is not None:  # at its next await; `threadsafe` wakes the loop up
            self.task.get_loop().call_soon_threadsafe(self.task.cancel)
            return
        interrupt = signal.getsignal(signal.SIGINT)  # Python's, or asyncio.Runner's in a loop
        if not callable(interrupt) or interrupt == self._on_signal:
            raise KeyboardInterrupt
        interrupt(signal.SIGINT, frame)

    def _hold(self) -> None:
        self.held = True
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _release(self) -> None:
        self.held = False
        # SIGINT as Python has it, for the loops run elsewhere: asyncio.Runner then handles it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, self._on_signal)
        self._deliver_pending()

    def _deliver_pending(self) -> None:
        if self.pending:
            self.pending = False
            self._on_signal(signal.SIGTERM, None)


async def _serve(
    config: Config, reuse_port: bool, jobs: bool, supervisor: int | None = None
) -> None:
    app = create_app(config, jobs=jobs)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:  # stopped while setting up (cancelled), what was opened is closed
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=1024)
        await site.start()
        log.info("listening", extra={"url": f"http://{config.host}:{config.port}",
                                     "pid": os.getpid(), "jobs": jobs})  # fmt: skip
        await _until_stopped(supervisor)
        log.info("stopping", extra={"pid": os.getpid()})
    finally:
        await runner.cleanup()


async def _until_stopped(supervisor: int | None = None) -> None:
    """Until SIGINT or SIGTERM; for a worker of `serve --workers N` (`supervisor` is its pid)
    also until the supervisor is gone: killed outright, it could not stop its workers, so they
    stop themselves."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watcher = None if supervisor is None else asyncio.create_task(_watch_parent(supervisor, stop))
    await stop.wait()
    if watcher is not None:
        watcher.cancel()


async def _watch_parent(supervisor: int, stop: asyncio.Event) -> None:
    # A poll: the kernel tells a child its parent died only by re-parenting it. The pid comes
    # from the supervisor's command line, not from getppid() at start: a supervisor killed
    # while the worker was still importing would otherwise be missed.
    while os.getppid() == supervisor:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(PARENT_CHECK_S)
    log.warning("the supervisor is gone; stopping", extra={"pid": os.getpid()})
    stop.set()


def _supervise(config: Config, workers: int, jobs: bool) -> int:
    """N worker processes sharing the port (SO_REUSEPORT); stop them all on SIGINT/SIGTERM."""
    env = dict(
        os.environ,
        DATABASE_URL=config.database_url,
        REDIS_URL=config.redis_url,
        ONECARD_METRICS_DIR=config.metrics_dir,
    )
    command = [sys.executable, "-m", "gateway.cli", "serve-worker"]
    command += ["--supervisor", str(os.getpid())]
    if not jobs:
        command.append("--no-jobs")
    children = [subprocess.Popen(command, env=env) for _ in range(workers)]  # noqa: S603
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    for child in children:
        while True:
            try:
                code = child.wait(timeout=1 if not stopping else WORKER_STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                if stopping:
                    child.kill()
                elif any(c.poll() not in (None, 0) for c in children):
                    stop(signal.SIGTERM, None)  # one worker died: take the others down too
        status = status or (code if code > 0 else 0)
    return status


def cmd_serve_worker(args: argparse.Namespace, config: Config) -> int:
    run_async(_serve(config, reuse_port=True, jobs=not args.no_jobs, supervisor=args.supervisor))
    return 0


# --------------------------------------------------------------------------- work
def cmd_work(args: argparse.Namespace, config: Config) -> int:
    """Every area's background jobs and nothing else: no HTTP, no port."""
    load_kek(config)
    with services(config) as ready:
        run_async(db.migrate(ready.database_url))
        run_async(_work(ready))
    return 0


async def _work(config: Config) -> None:
    runner = web.AppRunner(create_app(config, http=False), handle_signals=False)
    await runner.setup()  # runs every cleanup context: pools, services, jobs
    log.info("working", extra={"pid": os.getpid()})
    await _until_stopped()
    log.info("stopping", extra={"pid": os.getpid()})
    await runner.cleanup()


# --------------------------------------------------------------------------- sandbox
def cmd_sandbox(args: argparse.Namespace, config: Config) -> int:
    """One channel's sandbox in the foreground (the tests and `onecard serve` start them too;
    `--parent` and `--ready-fd` are how `serve` watches them and they watch it). A port it
    cannot bind: one line, exit 1."""
    if args.parent is not None and os.getppid() != args.parent:
        log.warning("the gateway is gone; not starting", extra={"pid": os.getpid()})
        return 0
    signals = _StopSignals()  # until it listens, as `serve`
    try:
        signals.run(sandboxes.serve(
            args.channel, config.host, args.port, config.data_dir,
            until=lambda: _until_stopped(args.parent), ready_fd=args.ready_fd,
        ))  # fmt: skip
    except KeyboardInterrupt:
        return 0
    except sandboxes.StartError as exc:
        print(f"onecard sandbox: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- migrate
def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    with services(config) as ready:
        applied = run_async(db.migrate(ready.database_url))
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    return 0


# --------------------------------------------------------------------------- ledger
def cmd_ledger_verify(args: argparse.Namespace, config: Config) -> int:
    async def verify(dsn: str) -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return await verify_ledger(conn, ledger_checks())
        finally:
            await conn.close()

    with services(config) as ready:
        problems = run_async(verify(ready.database_url))
    if problems:
        print(f"ledger verify: {len(problems)} problem(s)")
        for line in problems:
            print(f"  {line}")
        return 1
    print("ledger verify: ok (every txn sums to zero; every balance equals its entries)")
    return 0


# --------------------------------------------------------------------------- keys
def cmd_keys_init(args: argparse.Namespace, config: Config) -> int:
    if config.kek:
        print("ONECARD_KEK is set: no key file needed")
        return 0
    if create_kek_file(config.kek_file):
        print(f"created the key-encryption key file {config.kek_file} (mode 0600); back it up")
    else:
        load_kek(config)  # an existing file must be usable
        print(f"{config.kek_file} exists; left as it is")
    return 0


# --------------------------------------------------------------------------- config
def cmd_config(args: argparse.Namespace, config: Config) -> int:
    for field in fields(Config):
        value = getattr(config, field.name)
        if field.name == "kek" and value:
            value = "(set)"
        elif field.name in ("database_url", "redis_url") and value:
            value = _without_password(value)
        print(f"{env_name(field.name)}={value}    # {HELP[field.name]}")
    return 0


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _register_platform(sub: SubParsers[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the gateway (HTTP and background jobs)")
    serve.add_argument("--workers", type=int, default=0, help="processes sharing the port")
    serve.add_argument("--no-jobs", action="store_true",
                       help="HTTP only; run the background jobs with `onecard work`")  # fmt: skip
    serve.set_defaults(command=cmd_serve)
    worker = sub.add_parser("serve-worker", help="(internal) one worker of serve --workers")
    worker.add_argument("--no-jobs", action="store_true")
    worker.add_argument("--supervisor", type=int, help="stop once this process is gone")
    worker.set_defaults(command=cmd_serve_worker)
    sub.add_parser("work", help="run only the background jobs (no HTTP)").set_defaults(
        command=cmd_work
    )
    sandbox = sub.add_parser("sandbox", help="run one payment channel's sandbox")
    sandbox.add_argument("--parent", type=int, help="(internal) stop once this process is gone")
    sandbox.add_argument("--ready-fd", type=int, help="(internal) say `listening` on this pipe")
    sandbox.add_argument("channel", choices=["alipay", "wechatpay", "unionpay"])
    sandbox.add_argument("--port", type=int, required=True)
    sandbox.set_defaults(command=cmd_sandbox)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(command=cmd_migrate)
    ledger = sub.add_parser("ledger", help="ledger tools").add_subparsers(required=True)
    ledger.add_parser("verify", help="prove every txn and balance").set_defaults(
        command=cmd_ledger_verify
    )
    # Areas add their own commands to `keys` (token signing, card master keys).
    keys = subcommands(sub, "keys", "key management")
    keys.add_parser("init", help="create the key-encryption key file").set_defaults(
        command=cmd_keys_init
    )
    sub.add_parser("config", help="print every setting").set_defaults(command=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onecard", description="OneCard Gateway")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    _register_platform(sub)
    for area in AREAS:
        if area.commands is not None:
            area.commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
        if getattr(args, "workers", 0) < 0:
            raise ConfigError("--workers must be positive")
    except ConfigError as exc:
        print(f"onecard: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.access_log)
    try:
        status: int = args.command(args, config)
    except ConfigError as exc:
        print(f"onecard: configuration error: {exc}", file=sys.stderr)
        return 2
    except db.MigrationError as exc:
        print(f"onecard: migration refused: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
