"""Configuration is validated at start; keys are encrypted at rest and bound to their row."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from gateway.config import Config, ConfigError
from gateway.keystore import KeyKind, Keystore, KeystoreError, create_kek_file, load_kek


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ONECARD_PORT", "eighty"),
        ("ONECARD_PORT", "70000"),
        ("ONECARD_BODY_BYTES_MAX", "0"),
        ("ONECARD_ACCESS_LOG", "maybe"),
        ("ONECARD_LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
    ],
)
def test_a_bad_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Config.from_env({variable: value})


def test_defaults_and_overrides() -> None:
    config = Config.from_env({"ONECARD_PORT": "9090", "ONECARD_ACCESS_LOG": "off"})
    assert (config.port, config.access_log, config.body_bytes_max) == (9090, False, 65536)
    assert config.idempotency_ttl_s == 86400


def test_the_cli_stops_on_a_bad_setting() -> None:
    env = dict(os.environ, ONECARD_WORKERS="-3")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "ONECARD_WORKERS" in result.stderr
    assert "Traceback" not in result.stderr


def test_onecard_config_never_prints_passwords() -> None:
    env = dict(
        os.environ,
        DATABASE_URL="postgresql://app:s3cret-pw@db.internal:5432/onecard",
        REDIS_URL="redis://:r3dis-pw@cache.internal:6379/0",
        ONECARD_KEK="QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config"], env=env, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "s3cret-pw" not in result.stdout and "r3dis-pw" not in result.stdout
    assert "QUFBQUFB" not in result.stdout
    assert "DATABASE_URL=postgresql://app:***@db.internal:5432/onecard" in result.stdout


def test_keys_init_creates_a_private_key_file_once(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    env = dict(os.environ, ONECARD_KEK_FILE=str(path), ONECARD_KEK="")
    command = [sys.executable, "-m", "gateway.cli", "keys", "init"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "created" in first.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    content = path.read_text()
    second = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "left as it is" in second.stdout
    assert path.read_text() == content
    assert len(load_kek(Config(kek_file=path))) == 32


def test_a_missing_or_bad_kek_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys init"):
        load_kek(Config(kek_file=tmp_path / "absent"))
    with pytest.raises(ConfigError, match="ONECARD_KEK"):
        load_kek(Config(kek="c2hvcnQ="))
    assert create_kek_file(tmp_path / "k") and not create_kek_file(tmp_path / "k")


async def test_keys_are_encrypted_versioned_and_bound_to_their_row(pool: asyncpg.Pool) -> None:
    kek = secrets.token_bytes(32)
    keystore = Keystore(kek)
    name = f"test-{secrets.token_hex(4)}"
    secret = secrets.token_bytes(16)
    async with pool.acquire() as conn:
        first = await keystore.put(conn, KeyKind.CARD_MASTER_LOAD, name, secret)
        second = await keystore.put(conn, KeyKind.CARD_MASTER_LOAD, name, b"newer-secret")
        assert (first.version, second.version) == (1, 2)
        stored = await conn.fetchval("SELECT ciphertext FROM secret_keys WHERE id = $1", first.id)
        assert secret not in stored
        active = await keystore.active(conn, KeyKind.CARD_MASTER_LOAD, name)
        assert active is not None and active.secret == b"newer-secret"
        assert secret.hex() not in repr(active) and "newer" not in repr(active)
        with pytest.raises(KeystoreError, match="another key-encryption key"):
            await Keystore(secrets.token_bytes(32)).active(conn, KeyKind.CARD_MASTER_LOAD, name)
        # Moving version 2's ciphertext onto version 1's row must not decrypt: the associated
        # data binds each ciphertext to its kind, name and version.
        await conn.execute(
            "UPDATE secret_keys SET (ciphertext, nonce) = "
            "(SELECT ciphertext, nonce FROM secret_keys WHERE id = $2) WHERE id = $1",
            first.id,
            second.id,
        )
        with pytest.raises(KeystoreError, match="tampered"):
            await Keystore(kek).versions(conn, KeyKind.CARD_MASTER_LOAD, name)
        await conn.execute("DELETE FROM secret_keys WHERE name = $1", name)


async def test_concurrent_versions_never_collide(pool: asyncpg.Pool) -> None:
    keystore = Keystore(secrets.token_bytes(32))
    name = f"test-{secrets.token_hex(4)}"

    async def put(n: int) -> int:
        async with pool.acquire() as conn:
            return (await keystore.put(conn, KeyKind.QR_ISSUER, name, bytes([n]) * 32)).version

    versions = await asyncio.gather(*(put(n) for n in range(5)))
    assert sorted(versions) == [1, 2, 3, 4, 5]
    async with pool.acquire() as conn:
        keys = await keystore.versions(conn, KeyKind.QR_ISSUER, name)
    assert {k.secret for k in keys} == {bytes([n]) * 32 for n in range(5)}


def test_readme_documents_every_setting() -> None:
    from dataclasses import fields

    from gateway.config import env_name

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme.startswith("# OneCard Gateway\n\n```sh\nmake run")
    for field in fields(Config):
        name = env_name(field.name)
        short = name.removesuffix("_BURST").removesuffix("_PER_S")
        assert f"`{name}`" in readme or f"`{short}_PER_S` / `_BURST`" in readme, name
