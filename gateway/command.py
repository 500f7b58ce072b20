"""What every `onecard` command needs, opened once: the servers, an event loop, PostgreSQL,
Redis and the keystore. Area commands (`gateway/<area>/commands.py`) build on this module; it
imports no area, so the command line has no import circle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as redis

from gateway import db
from gateway.config import Config
from gateway.embedded import server_urls
from gateway.keystore import Keystore, load_kek

T = TypeVar("T")
SubParsers = argparse._SubParsersAction
Command = Callable[[argparse.Namespace, Config], int]
COMMAND_POOL_SIZE_MAX = 2


def subcommands(
    sub: SubParsers[argparse.ArgumentParser], name: str, help: str
) -> SubParsers[argparse.ArgumentParser]:
    """The sub-commands of the top-level command `name` (`onecard keys ...`), the group made
    the first time: the platform and any area add to one group without naming each other."""
    parser = sub.choices.get(name)
    if parser is None:
        created: SubParsers[argparse.ArgumentParser] = sub.add_parser(
            name, help=help
        ).add_subparsers(required=True)
        return created
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"`{name}` is a command, not a group of commands")


@contextlib.contextmanager
def services(config: Config) -> Iterator[Config]:
    """The config with both URLs set, starting embedded servers for the missing ones."""
    with server_urls(config.data_dir, config.database_url, config.redis_url) as (database, cache):
        yield config.replace(database_url=database, redis_url=cache)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when the `speed` extra is installed, on asyncio's own loop otherwise."""
    with contextlib.suppress(ImportError):
        import uvloop  # optional: typed as Any where it is not installed

        result: T = uvloop.run(coroutine)
        return result
    return asyncio.run(coroutine)


@dataclass(frozen=True)
class Tools:
    """What a command works with; `conn` is one connection of `pool`, held for the command."""

    config: Config
    pool: asyncpg.Pool
    conn: asyncpg.Connection
    redis: redis.Redis
    keystore: Keystore


def run_with_tools(config: Config, work: Callable[[Tools], Awaitable[T]]) -> T:
    """Run `work` against the configured (or embedded) PostgreSQL and Redis, then close all."""
    keystore = Keystore(load_kek(config))

    async def run(ready: Config) -> T:
        pool = await db.create_pool(
            ready.replace(db_pool_size_min=1, db_pool_size_max=COMMAND_POOL_SIZE_MAX)
        )
        client = redis.Redis.from_url(ready.redis_url)
        try:
            async with pool.acquire() as conn:
                return await work(Tools(ready, pool, conn, client, keystore))
        finally:
            await client.aclose()
            await pool.close()

    with services(config) as ready:
        return run_async(run(ready))
