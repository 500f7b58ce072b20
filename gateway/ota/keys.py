"""`onecard keys import-card-masters | rotate-card-masters | show-card-masters`: the card master
keys (MLK, MTK) of the issuer's security module (`gateway/ota/ism.py`), per key index and key
version.

A key never comes on the command line (argv is visible to every user of the machine): it comes
from a JSON file `{"mlk": "<32 hex digits>", "mtk": "<32 hex digits>"}`, or from stdin with
`--from -`. `--test-keys` stores the published test keys of CARD_PROTOCOL.md instead, marked
as test keys wherever they are shown. Nothing here prints a key or echoes the file: only key
check values (KCVs). A refusal is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.command import Command, SubParsers, Tools, run_with_tools, subcommands
from gateway.config import Config
from gateway.ota import ism
from hce.__main__ import TEST_KEYS

KEY_FILE_BYTES_MAX = 4096
KEY_HEX_DIGITS = 32
TEST_KEYS_WARNING = (
    "WARNING: TEST KEYS: these are the published test keys of CARD_PROTOCOL.md; "
    "never put them on real cards"
)


class Refused(Exception):
    """The operator's input cannot be used: one line, exit status 2."""


def _byte(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("a number 1..255 (decimal, or hex as 0x..)") from None
    if not ism.KEY_BYTE_MIN <= value <= ism.KEY_BYTE_MAX:
        raise argparse.ArgumentTypeError(f"{ism.KEY_BYTE_MIN}..{ism.KEY_BYTE_MAX}, not {value}")
    return value


def _read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read(KEY_FILE_BYTES_MAX + 1)
    try:
        with Path(source).open("rb") as handle:
            return handle.read(KEY_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise Refused(f"cannot read {source}: {exc.strerror}") from None


def read_key_file(source: str) -> tuple[bytes, bytes]:
    """(MLK, MTK) from a JSON key file, or stdin for "-"; `Refused` naming what is wrong and
    never what the file holds."""
    where = "stdin" if source == "-" else source
    raw = _read_source(source)
    if len(raw) > KEY_FILE_BYTES_MAX:
        raise Refused(f"{where} is longer than {KEY_FILE_BYTES_MAX} bytes: not a key file")
    try:
        given = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise Refused(f'{where} is not JSON like {{"mlk": "<hex>", "mtk": "<hex>"}}') from None
    if not isinstance(given, dict) or set(given) != {"mlk", "mtk"}:
        raise Refused(f'{where}: expected exactly {{"mlk": "<hex>", "mtk": "<hex>"}}')
    return _key(given, "mlk", where), _key(given, "mtk", where)


def _key(given: dict[str, Any], name: str, where: str) -> bytes:
    text = given[name]
    wrong = Refused(f"{where}: {name} is not {KEY_HEX_DIGITS} hex digits (a 16-byte key)")
    if not isinstance(text, str) or len(text) != KEY_HEX_DIGITS:
        raise wrong
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise wrong from None


def _keys_of(args: argparse.Namespace) -> tuple[bytes, bytes, bool]:
    if args.test_keys:
        return bytes.fromhex(TEST_KEYS["mlk"]), bytes.fromhex(TEST_KEYS["mtk"]), True
    return (*read_key_file(args.source), False)


def _refusing(command: Command) -> Command:
    def run(args: argparse.Namespace, config: Config) -> int:
        try:
            return command(args, config)
        except (Refused, ism.CardKeyError, ism.UnknownCardKey) as exc:
            print(f"onecard: refused: {exc}", file=sys.stderr)
            return 2

    return run


def _describe(shown: ism.CardMasters) -> str:
    test = "  TEST KEYS" if shown.test_keys else ""
    return (
        f"key index {shown.key_index} version {shown.key_version}: "
        f"MLK KCV {shown.mlk_kcv}, MTK KCV {shown.mtk_kcv}{test}"
    )


def _print_stored(shown: ism.CardMasters) -> None:
    print(f"stored {_describe(shown)}")
    if shown.test_keys:
        print(TEST_KEYS_WARNING, file=sys.stderr)


def cmd_import_card_masters(args: argparse.Namespace, config: Config) -> int:
    mlk, mtk, test_keys = _keys_of(args)

    async def work(t: Tools) -> ism.CardMasters:
        return await ism.import_card_masters(
            t.conn, t.keystore, args.index, args.version, mlk=mlk, mtk=mtk, test_keys=test_keys
        )

    _print_stored(run_with_tools(config, work))
    print("running gateways use them when a card reports this version")
    return 0


def cmd_rotate_card_masters(args: argparse.Namespace, config: Config) -> int:
    if not args.test_keys and args.source is None and args.retire is None:
        raise Refused("give --from FILE or --test-keys (a new version), --retire VERSION, or both")
    if args.version is not None and not args.test_keys and args.source is None:
        raise Refused("--version needs the keys: --from FILE or --test-keys")
    if args.retire is not None and args.retire == args.version:
        raise Refused(f"--retire {args.retire} is the version being stored")
    new = _keys_of(args) if args.test_keys or args.source is not None else None

    async def work(t: Tools) -> tuple[ism.Rotated | None, bool]:
        async with t.conn.transaction():  # a new version and a retirement: both or neither
            rotated = None
            if new is not None:
                mlk, mtk, test_keys = new
                rotated = await ism.rotate_card_masters(
                    t.conn, t.keystore, args.index, mlk=mlk, mtk=mtk,
                    key_version=args.version, test_keys=test_keys,
                )  # fmt: skip
            retired = args.retire is not None and await ism.retire_card_masters(
                t.conn, t.keystore, args.index, args.retire
            )
            return rotated, retired

    rotated, retired = run_with_tools(config, work)
    if rotated is not None:
        _print_rotated(rotated)
    if args.retire is not None:
        what = f"key index {args.index} version {args.retire}"
        if retired:
            print(f"retired {what}: cards on its keys no longer load (running gateways: after "
                  "their next reload of the keys)")  # fmt: skip
        else:
            print(f"{what} was already retired")
    return 0


def _print_rotated(rotated: ism.Rotated) -> None:
    if rotated.replaced:
        print(
            f"WARNING: replaced the keys of key index {rotated.shown.key_index} version "
            f"{rotated.shown.key_version}: cards on the old keys of that version no longer load",
            file=sys.stderr,
        )
    _print_stored(rotated.shown)
    if rotated.others_active:
        versions = ", ".join(str(v) for v in rotated.others_active)
        print(f"versions still active for cards in the field: {versions} "
              "(retire one with --retire VERSION)")  # fmt: skip


def cmd_show_card_masters(args: argparse.Namespace, config: Config) -> int:
    shown = run_with_tools(config, lambda t: ism.card_masters(t.conn, t.keystore))
    if not shown:
        print("no card master keys; import them with `onecard keys import-card-masters`")
        return 0
    print(f"{'index':>5}  {'version':>7}  {'status':<10}  {'MLK KCV':<7}  {'MTK KCV':<7}  "
          f"{'created':<25}  keys")  # fmt: skip
    for row in shown:
        created = "-" if row.created_at is None else row.created_at.isoformat(timespec="seconds")
        print(f"{row.key_index:>5}  {row.key_version:>7}  {row.status:<10}  "
              f"{row.mlk_kcv or '-':<7}  {row.mtk_kcv or '-':<7}  {created:<25}  "
              f"{'TEST KEYS' if row.test_keys else 'issuer'}")  # fmt: skip
    if any(row.test_keys for row in shown):
        print(TEST_KEYS_WARNING)
    return 0


def _add_source(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument(
        "--from", dest="source", metavar="FILE",
        help='a JSON file {"mlk": hex, "mtk": hex}, or - for stdin (never a key in argv)',
    )  # fmt: skip
    source.add_argument(
        "--test-keys", action="store_true", help="the published test keys of CARD_PROTOCOL.md"
    )


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    keys = subcommands(sub, "keys", "key management")
    imported = keys.add_parser(
        "import-card-masters", help="the master load and TAC keys of a new key index and version"
    )
    imported.add_argument("--index", type=_byte, required=True, help="key index, 1..255")
    imported.add_argument("--version", type=_byte, required=True, help="key version, 1..255")
    _add_source(imported, required=True)
    imported.set_defaults(command=_refusing(cmd_import_card_masters))

    rotated = keys.add_parser(
        "rotate-card-masters", help="a new key version of an index (older ones stay active)"
    )
    rotated.add_argument("--index", type=_byte, required=True, help="key index, 1..255")
    rotated.add_argument("--version", type=_byte, help="default: the highest version + 1")
    rotated.add_argument("--retire", type=_byte, metavar="VERSION",
                         help="retire this version: cards on its keys no longer load")  # fmt: skip
    _add_source(rotated, required=False)
    rotated.set_defaults(command=_refusing(cmd_rotate_card_masters))

    keys.add_parser(
        "show-card-masters", help="every key index and version: status and KCVs, never a key"
    ).set_defaults(command=cmd_show_card_masters)
