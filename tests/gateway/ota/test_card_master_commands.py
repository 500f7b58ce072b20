"""`onecard keys import-card-masters | rotate-card-masters | show-card-masters`.

Until the `ota` area is registered in gateway/areas.py, `onecard` has no such commands, so these
tests build the command line as `gateway.cli.build_parser` does (the platform, then the areas'
`register`) with the identity area's and this module's `register`, parse real argument lists,
and run the command in a thread (it runs its own event loop, as under `onecard`), against the
test database with the test KEK.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gateway import cli
from gateway.auth import commands as auth_commands
from gateway.command import subcommands
from gateway.config import Config
from gateway.keystore import Keystore, load_kek
from gateway.ota import ism
from gateway.ota import keys as ota_keys
from tests.gateway.ota.test_ism import LOAD, fresh_index, kcv, secret_hex
from tests.hce import vectors as V


def onecard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onecard")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    cli._register_platform(sub)
    auth_commands.register(sub)
    ota_keys.register(sub)
    return parser


@dataclass
class Ran:
    status: int
    out: str
    err: str


Onecard = Callable[..., Awaitable[Ran]]
Stored = Callable[[int], Awaitable[dict[int, ism.CardMasters]]]


@pytest.fixture
def onecard(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Onecard:
    async def run(*argv: str, stdin: bytes = b"") -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            args = onecard_parser().parse_args(argv)
            status = await asyncio.to_thread(args.command, args, config)
        except SystemExit as exc:  # argparse's own refusals
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return run


@pytest.fixture
async def index(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await fresh_index(conn)


@pytest.fixture
async def stored(pool: asyncpg.Pool, config: Config) -> AsyncIterator[Stored]:
    keystore = Keystore(load_kek(config))

    async def versions(index: int) -> dict[int, ism.CardMasters]:
        async with pool.acquire() as conn:
            return {
                c.key_version: c
                for c in await ism.card_masters(conn, keystore)
                if c.key_index == index
            }

    yield versions


def key_file(tmp_path: Path, mlk: bytes, mtk: bytes, name: str = "keys.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"mlk": mlk.hex(), "mtk": mtk.hex()}))
    return path


def assert_refused(ran: Ran, says: str, *secrets_: bytes) -> None:
    assert ran.status == 2, ran
    assert "Traceback" not in ran.err and len(ran.err.strip().splitlines()) == 1, ran.err
    assert says in ran.err, ran.err
    for secret in secret_hex(*secrets_):
        assert secret not in ran.out + ran.err


async def test_import_from_a_file_and_from_stdin(
    onecard: Onecard, stored: Stored, index: int, tmp_path: Path, pool: asyncpg.Pool, config: Config
) -> None:
    mlk, mtk = secrets.token_bytes(16), secrets.token_bytes(16)
    path = key_file(tmp_path, mlk, mtk)
    ran = await onecard("keys", "import-card-masters", "--index", str(index), "--version", "1",
                        "--from", str(path))  # fmt: skip
    assert ran.status == 0, ran
    assert f"MLK KCV {kcv(mlk)}, MTK KCV {kcv(mtk)}" in ran.out and "TEST" not in ran.out
    body = json.dumps({"mlk": V.MLK.hex().upper(), "mtk": V.MTK.hex()}).encode()
    ran = await onecard("keys", "import-card-masters", "--index", hex(index), "--version", "2",
                        "--from", "-", stdin=body)  # fmt: skip
    assert ran.status == 0, ran
    for secret in secret_hex(mlk, mtk, V.MLK, V.MTK):
        assert secret not in ran.out + ran.err
    found = await stored(index)
    assert sorted(found) == [1, 2]
    assert (found[1].mlk_kcv, found[2].mtk_kcv) == (kcv(mlk), kcv(V.MTK))
    assert not found[2].test_keys  # the test keys' values, but not imported as --test-keys
    async with pool.acquire() as conn:
        module = await ism.SecurityModule.load(conn, Keystore(load_kek(config)))
    module.verify_mac1(index, 2, LOAD, V.LOAD_MAC1)


async def test_test_keys_are_marked_loudly_and_a_duplicate_is_refused(
    onecard: Onecard, stored: Stored, index: int, tmp_path: Path
) -> None:
    ran = await onecard("keys", "import-card-masters", "--index", str(index), "--version", "1",
                        "--test-keys")  # fmt: skip
    assert ran.status == 0, ran
    assert "WARNING: TEST KEYS" in ran.err and "TEST KEYS" in ran.out
    assert (await stored(index))[1].test_keys
    path = key_file(tmp_path, secrets.token_bytes(16), secrets.token_bytes(16))
    for source in (["--test-keys"], ["--from", str(path)]):
        ran = await onecard("keys", "import-card-masters", "--index", str(index),
                            "--version", "1", *source)  # fmt: skip
        assert_refused(ran, "exist")
    assert (await stored(index))[1].mlk_kcv == kcv(V.MLK)


async def test_rotate_adds_the_next_version_keeps_the_old_and_retires(
    onecard: Onecard, stored: Stored, index: int, tmp_path: Path
) -> None:
    mlk, mtk = secrets.token_bytes(16), secrets.token_bytes(16)
    path = key_file(tmp_path, mlk, mtk)
    base = ("keys", "rotate-card-masters", "--index", str(index))
    ran = await onecard(*base, "--test-keys")  # no version yet: the first one
    assert ran.status == 0 and "version 1:" in ran.out, ran
    ran = await onecard(*base, "--from", str(path))
    assert ran.status == 0, ran
    assert "version 2:" in ran.out and "still active for cards in the field: 1" in ran.out
    found = await stored(index)
    assert {v: (c.status, c.mlk_kcv) for v, c in found.items()} == {
        1: ("active", kcv(V.MLK)),
        2: ("active", kcv(mlk)),
    }

    ran = await onecard(*base, "--retire", "1")
    assert ran.status == 0 and "retired key index" in ran.out, ran
    ran = await onecard(*base, "--retire", "1")
    assert ran.status == 0 and "already retired" in ran.out, ran
    assert_refused(await onecard(*base, "--retire", "9"), "version 9")
    ran = await onecard(*base, "--test-keys", "--retire", "2")  # both at once
    assert ran.status == 0 and "version 3:" in ran.out and "retired" in ran.out, ran
    found = await stored(index)
    assert {v: c.status for v, c in found.items()} == {1: "retired", 2: "retired", 3: "active"}
    # A retirement that fails takes the new version back with it.
    assert_refused(await onecard(*base, "--test-keys", "--retire", "9"), "version 9")
    assert sorted(await stored(index)) == [1, 2, 3]

    ran = await onecard(*base, "--version", "2", "--test-keys")  # replace a version's keys
    assert ran.status == 0 and "WARNING: replaced" in ran.err, ran
    assert (await stored(index))[2].status == "active"
    assert_refused(await onecard(*base), "--from FILE or --test-keys")
    assert_refused(await onecard(*base, "--version", "5", "--retire", "1"), "needs the keys")
    assert_refused(await onecard(*base, "--version", "4", "--test-keys", "--retire", "4"),
                   "being stored")  # fmt: skip


async def test_show_prints_check_values_and_never_a_key(
    onecard: Onecard, index: int, tmp_path: Path
) -> None:
    mlk, mtk = secrets.token_bytes(16), secrets.token_bytes(16)
    path = key_file(tmp_path, mlk, mtk)
    for argv in (
        ("import-card-masters", "--index", str(index), "--version", "1", "--from", str(path)),
        ("rotate-card-masters", "--index", str(index), "--test-keys", "--retire", "1"),
    ):
        assert (await onecard("keys", *argv)).status == 0
    ran = await onecard("keys", "show-card-masters")
    assert ran.status == 0, ran
    rows = {tuple(line.split()[:2]): line.split() for line in ran.out.splitlines()}
    assert rows[str(index), "1"][2:5] == ["retired", kcv(mlk), kcv(mtk)]
    assert rows[str(index), "1"][-1] == "issuer"
    assert rows[str(index), "2"][2:5] == ["active", kcv(V.MLK), kcv(V.MTK)]
    assert rows[str(index), "2"][-2:] == ["TEST", "KEYS"]
    assert "WARNING: TEST KEYS" in ran.out
    for secret in secret_hex(mlk, mtk, V.MLK, V.MTK):
        assert secret not in ran.out + ran.err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"mlk": "zz' + b"0" * 30 + b'", "mtk": "' + b"11" * 16 + b'"}', "mlk is not 32 hex"),
        (b'{"mlk": "' + b"ab" * 15 + b'", "mtk": "' + b"11" * 16 + b'"}', "mlk is not 32 hex"),
        (b'{"mlk": "' + b"ab" * 16 + b'", "mtk": "' + b"11" * 17 + b'"}', "mtk is not 32 hex"),
        (b'{"mlk": "' + b"ab" * 16 + b'", "mtk": 1234}', "mtk is not 32 hex"),
        (b'{"mlk": "' + b"ab" * 16 + b'"}', "expected exactly"),
        (b'["' + b"ab" * 16 + b'"]', "expected exactly"),
        (b"mlk=" + b"ab" * 16, "is not JSON"),
        (b"\xff\xfe" + b"ab" * 16, "is not JSON"),
        (b" " * 5000, "longer than"),
    ],
)
async def test_a_bad_key_file_is_one_line_and_exit_2(
    onecard: Onecard, stored: Stored, index: int, tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    ran = await onecard("keys", "import-card-masters", "--index", str(index), "--version", "1",
                        "--from", str(path))  # fmt: skip
    assert_refused(ran, says)
    assert "ab" * 4 not in ran.err and "11" * 4 not in ran.err  # nothing of the file echoed
    ran = await onecard("keys", "rotate-card-masters", "--index", str(index), "--from", "-",
                        stdin=content)  # fmt: skip
    assert_refused(ran, says.replace("is not JSON", "stdin is not JSON"))
    assert await stored(index) == {}


async def test_a_missing_file_and_bad_numbers_are_refused(
    onecard: Onecard, stored: Stored, index: int, tmp_path: Path
) -> None:
    ran = await onecard("keys", "import-card-masters", "--index", str(index), "--version", "1",
                        "--from", str(tmp_path / "absent.json"))  # fmt: skip
    assert_refused(ran, "cannot read")
    assert "No such file" in ran.err
    for bad in (("--index", "0"), ("--index", "256"), ("--version", "x1"), ("--version", "-1")):
        argv = {"--index": str(index), "--version": "1", **dict([bad])}
        ran = await onecard("keys", "import-card-masters", *sum(argv.items(), ()), "--test-keys")
        assert ran.status == 2 and "Traceback" not in ran.err, ran
    ran = await onecard("keys", "import-card-masters", "--index", "1", "--version", "1")
    assert ran.status == 2 and "--from" in ran.err  # a source is required
    ran = await onecard("keys", "import-card-masters", "--index", "1", "--version", "1",
                        "--test-keys", "--from", "-")  # fmt: skip
    assert ran.status == 2 and "not allowed with" in ran.err
    assert await stored(index) == {}


def test_the_platform_and_the_areas_share_one_keys_group() -> None:
    parser = cli.build_parser()  # the registered areas (identity's rotate-token-signing)
    assert parser.parse_args(["keys", "init"]).command is cli.cmd_keys_init
    rotate = parser.parse_args(["keys", "rotate-token-signing"]).command
    assert rotate is auth_commands.cmd_keys_rotate_token_signing
    parsed = onecard_parser().parse_args(["keys", "show-card-masters"])
    assert parsed.command is ota_keys.cmd_show_card_masters
    sub = argparse.ArgumentParser().add_subparsers()
    keys = subcommands(sub, "keys", "key management")
    assert subcommands(sub, "keys", "ignored the second time") is keys
    sub.add_parser("config")
    with pytest.raises(ValueError, match="not a group"):
        subcommands(sub, "config", "")
