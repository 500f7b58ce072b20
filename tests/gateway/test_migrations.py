"""The migration runner against a real PostgreSQL: fresh, again, edited, racing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import db
from tests.gateway.conftest import scratch_database


@pytest.fixture
async def empty_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    async with scratch_database(server_urls[0], "onecard_mig", migrated=False) as dsn:
        yield dsn


def write(folder: Path, name: str, sql: str) -> None:
    (folder / name).write_text(sql)


async def test_fresh_apply_then_again_is_a_no_op(empty_database: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    write(tmp_path, "0002_more.sql", "ALTER TABLE things ADD COLUMN name text;")
    assert await db.migrate(empty_database, tmp_path) == ["0001_things.sql", "0002_more.sql"]
    assert await db.migrate(empty_database, tmp_path) == []
    write(tmp_path, "0003_later.sql", "CREATE INDEX things_name ON things (name);")
    assert await db.migrate(empty_database, tmp_path) == ["0003_later.sql"]
    conn = await asyncpg.connect(empty_database)
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "0001_things.sql"),
        (2, "0002_more.sql"),
        (3, "0003_later.sql"),
    ]


async def test_an_edited_migration_is_refused(empty_database: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    await db.migrate(empty_database, tmp_path)
    write(tmp_path, "0001_things.sql", "CREATE TABLE things (id bigint PRIMARY KEY);")
    write(tmp_path, "0002_more.sql", "CREATE TABLE others (id int);")
    with pytest.raises(db.MigrationError, match=r"0001_things\.sql was edited"):
        await db.migrate(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    assert await conn.fetchval("SELECT to_regclass('others')") is None  # nothing applied
    await conn.close()


async def test_a_failing_migration_applies_nothing_of_itself(
    empty_database: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    write(tmp_path, "0002_bad.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await db.migrate(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    assert await conn.fetchval("SELECT to_regclass('half')") is None
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
    await conn.close()


async def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "1_things.sql", "SELECT 1;")
    with pytest.raises(db.MigrationError, match=r"NNNN_name\.sql"):
        db.load_migrations(tmp_path)


async def test_racing_runners_apply_each_file_once(empty_database: str, tmp_path: Path) -> None:
    # A counter table each migration bumps: applying a file twice would show.
    write(
        tmp_path,
        "0001_counter.sql",
        "CREATE TABLE applied (n int); INSERT INTO applied VALUES (1);",
    )
    write(tmp_path, "0002_slow.sql", "SELECT pg_sleep(0.3); UPDATE applied SET n = n + 1;")
    write(tmp_path, "0003_more.sql", "UPDATE applied SET n = n + 1;")
    results = await asyncio.gather(*(db.migrate(empty_database, tmp_path) for _ in range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == ["0001_counter.sql", "0002_slow.sql", "0003_more.sql"]
    conn = await asyncpg.connect(empty_database)
    assert await conn.fetchval("SELECT n FROM applied") == 3
    await conn.close()


async def test_onecard_migrate_command(empty_database: str) -> None:
    env = dict(os.environ, DATABASE_URL=empty_database, REDIS_URL="redis://unused:1/0")
    command = [sys.executable, "-m", "gateway.cli", "migrate"]
    first = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert "applied 0001_platform.sql" in first.stdout
    second = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0 and "database is up to date" in second.stdout
