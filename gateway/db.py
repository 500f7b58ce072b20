"""PostgreSQL: the connection pool and the migration runner.

Migrations are numbered plain-SQL files in `migrations/` (`0001_init.sql`, ...). The runner
applies the ones not yet applied, in order, each inside its own transaction, and records name
and SHA-256 checksum. It refuses to run when an applied file was edited or removed, and holds a
PostgreSQL advisory lock so that several workers starting together apply each file once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; this one spells "onecard" in ASCII, so it is recognisable in pg_locks.
MIGRATION_LOCK_ID = 0x6F6E6563617264
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The database and the migration files disagree; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Run when a connection goes back to the pool, after asyncpg rolled back any transaction.

    asyncpg's default reset also sends RESET ALL / UNLISTEN / CLOSE ALL / advisory unlock: one
    more round trip for every acquire. Pool connections here never change session state: no
    SET, no LISTEN, no cursors left open, only transaction-scoped advisory locks
    (pg_advisory_xact_lock). Code that needs session state uses a connection of its own (the
    migration runner does).
    """


def assert_in_transaction(conn: asyncpg.Connection) -> None:
    """The convention of every domain function that writes: it takes a connection inside the
    caller's transaction, so that the write commits (or not) with everything else it belongs
    to. Only reads may take the pool."""
    assert conn.is_in_transaction(), "a domain write runs inside the caller's transaction"


async def create_pool(config: Config, dsn: str | None = None) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn or config.database_url,
        min_size=config.db_pool_size_min,
        max_size=config.db_pool_size_max,
        init=_init_connection,
        reset=_keep_session,
        server_settings={
            "statement_timeout": str(config.db_statement_timeout_ms),
            "application_name": "onecard-gateway",
        },
    )
    assert pool is not None
    return pool


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return migrations


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(dsn: str, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = load_migrations(folder)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            return await _apply_pending(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_CREATE_TABLE)
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    on_disk = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(f"{row['name']} was applied but its file is gone")
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"{migration.name} was edited after it was applied; "
                "write a new migration instead of changing an applied one"
            )
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("applied migration", extra={"migration": migration.name})
        done.append(migration.name)
    return done
