"""`python -m hce`: software cards, a gate and an APDU decoder on the command line.

    python -m hce card new card.json --asn 31000000000000012345 --balance 4800 --test-keys
    python -m hce card show card.json
    python -m hce card balance card.json
    python -m hce card load card.json --amount 10000 --test-keys
    python -m hce gate tap card.json --fare 200 --test-keys
    python -m hce apdu decode 805000020B0100001C37000001000050

A card is its JSON state file (the file is the chip: it holds the card keys). `--test-keys`
uses the synthetic master keys of CARD_PROTOCOL.md's test vectors; real keys are given in hex.
This tool never talks to the gateway and never imports aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from hce import apdu as A
from hce.issuer import Issuer, LoadTransaction
from hce.sam import Psam
from hce.software_card import SoftwareCard
from hce.terminal import Decline, Gate, bcd_date, bcd_time

TEST_KEYS = {
    "mlk": "00112233445566778899AABBCCDDEEFF",
    "mpk": "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
    "mtk": "A0A1A2A3A4A5A6A7B0B1B2B3B4B5B6B7",
}


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def _hex(text: str, size: int | None = None, name: str = "value") -> bytes:
    try:
        value = bytes.fromhex(text.replace(" ", ""))
    except ValueError:
        raise CliError(f"{name} is not hex: {text!r}") from None
    if size is not None and len(value) != size:
        raise CliError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def _key(args: argparse.Namespace, name: str) -> bytes:
    given = getattr(args, name, None)
    if given:
        return _hex(given, 16, f"--{name}")
    if getattr(args, "test_keys", False):
        return bytes.fromhex(TEST_KEYS[name])
    raise CliError(f"give --{name} HEX or --test-keys")


def _load_card(path: str) -> SoftwareCard:
    try:
        return SoftwareCard.from_json(Path(path).read_text())
    except OSError as exc:
        raise CliError(f"cannot read card {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{path} is not a card: {exc}") from None


def _save_card(card: SoftwareCard, path: str) -> None:
    Path(path).write_text(card.to_json())


def _now(args: argparse.Namespace) -> datetime:
    if args.at:
        try:
            return datetime.fromisoformat(args.at)
        except ValueError:
            raise CliError(f"--at must be an ISO date-time, got {args.at!r}") from None
    return datetime.now()  # the command line is the edge where the clock is read


# --- card ----------------------------------------------------------------------------------


def cmd_card_new(args: argparse.Namespace) -> int:
    if Path(args.path).exists() and not args.force:
        raise CliError(f"{args.path} exists (use --force to overwrite)")
    try:
        card = SoftwareCard.issue(
            asn=_hex(args.asn, 10, "--asn"),
            master_load_key=_key(args, "mlk"),
            master_purchase_key=_key(args, "mpk"),
            master_tac_key=_key(args, "mtk"),
            balance_fen=args.balance,
            online_counter=args.online_counter,
            offline_counter=args.offline_counter,
            balance_max_fen=args.balance_max,
            card_type=args.card_type,
            valid_until=_hex(args.valid_until, 4, "--valid-until"),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _save_card(card, args.path)
    print(f"card {card.asn.hex().upper()} written to {args.path}")
    return 0


def cmd_card_show(args: argparse.Namespace) -> int:
    card = _load_card(args.path)
    info = card.issuer_info
    print(f"ASN              {info.asn.hex().upper()}")
    print(f"AID              {card.aid.hex().upper()}")
    print(f"issuer code      {info.issuer_code.hex().upper()}")
    print(f"card type        {info.card_type:02X}")
    print(f"valid            {info.valid_from.hex()} .. {info.valid_until.hex()}")
    print(f"balance          {card.balance_fen} fen (ceiling {card.balance_max_fen})")
    print(f"online counter   {card.online_counter}")
    print(f"offline counter  {card.offline_counter}")
    for n, record in enumerate(card.records, 1):
        print(
            f"record {n:<2}        counter {record.counter} type {record.tx_type:02X} "
            f"amount {record.amount_fen} terminal {record.terminal_id.hex().upper()} "
            f"at {record.date.hex()} {record.time.hex()}"
        )
    return 0


def _ok(answer: bytes, what: str) -> A.ResponseApdu:
    response = A.ResponseApdu.from_bytes(answer)
    if not response.ok:
        raise CliError(f"{what}: card answered {response.sw:04X} ({response.meaning})")
    return response


def cmd_card_balance(args: argparse.Namespace) -> int:
    card = _load_card(args.path)
    _ok(card.transmit(A.Select(card.aid).to_bytes()), "SELECT")
    data = _ok(card.transmit(A.GetBalance().to_bytes()), "GET BALANCE").data
    print(A.GetBalanceResponse.from_bytes(data).balance_fen)
    return 0


def cmd_card_load(args: argparse.Namespace) -> int:
    """A whole load the way the gateway does it over the air, with the issuer in process."""
    card = _load_card(args.path)
    issuer = Issuer(master_load_key=_key(args, "mlk"), master_tac_key=_key(args, "mtk"))
    now = _now(args)
    terminal = _hex(args.terminal, 6, "--terminal")
    _ok(card.transmit(A.Select(card.aid).to_bytes()), "SELECT")
    init = A.InitializeForLoad(1, args.amount, terminal)
    answer = A.InitializeForLoadResponse.from_bytes(
        _ok(card.transmit(init.to_bytes()), "INITIALIZE FOR LOAD").data
    )
    load = LoadTransaction.from_initialize(card.asn, init, answer)
    issuer.verify_load_mac1(load, answer.mac1)
    credit = issuer.credit_for_load(load, bcd_date(now), bcd_time(now))
    tac = _ok(card.transmit(credit.to_bytes()), "CREDIT FOR LOAD").data
    issuer.verify_load_tac(load, credit.date, credit.time, tac)
    _save_card(card, args.path)
    print(f"loaded {args.amount} fen, balance {card.balance_fen} fen, TAC {tac.hex().upper()}")
    return 0


# --- gate ----------------------------------------------------------------------------------


def cmd_gate_tap(args: argparse.Namespace) -> int:
    card = _load_card(args.path)
    sam = Psam(_key(args, "mpk"), serial=args.serial)
    deny = frozenset(_hex(a, 10, "--deny") for a in args.deny)
    gate = Gate(_hex(args.terminal, 6, "--terminal"), sam, card, deny_list=deny)
    result = gate.tap(args.fare, _now(args))
    _save_card(card, args.path)
    if isinstance(result, Decline):
        sw = f" (SW {result.sw:04X})" if result.sw is not None else ""
        print(f"declined: {result.reason.value}: {result.message}{sw}")
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    return 0


# --- apdu ----------------------------------------------------------------------------------


def _fields(obj: object) -> list[str]:
    lines = []
    assert dataclasses.is_dataclass(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bytes):
            shown = value.hex().upper()
        elif dataclasses.is_dataclass(value):
            shown = "\n" + "\n".join("    " + line for line in _fields(value))
        else:
            shown = str(value)
        lines.append(f"  {f.name}: {shown}")
    return lines


_Decoder = Callable[[bytes], object]
_RESPONSES_BY_LENGTH: dict[int, list[_Decoder]] = {
    4: [A.GetBalanceResponse.from_bytes, A.CreditForLoadResponse.from_bytes],
    8: [A.DebitForPurchaseResponse.from_bytes, A.GetTransactionProveResponse.from_bytes],
    15: [A.InitializeForPurchaseResponse.from_bytes],
    16: [A.InitializeForLoadResponse.from_bytes],
    23: [A.TransactionRecord.from_bytes],
    30: [A.IssuerInfo.from_bytes],
}


def _decode_command(raw: bytes) -> list[str]:
    apdu = A.CommandApdu.from_bytes(raw)
    command = A.parse_command(apdu)
    return [f"command {type(command).__name__} (ISO case {apdu.case})", *_fields(command)]


def _decode_response(raw: bytes) -> list[str]:
    response = A.ResponseApdu.from_bytes(raw)
    lines = [f"response SW {response.sw:04X}: {response.meaning}"]
    if not response.data:
        return lines
    candidates = list(_RESPONSES_BY_LENGTH.get(len(response.data), []))
    if response.data[:1] == b"\x6f":
        candidates.insert(0, A.SelectResponse.from_bytes)
    for decode in candidates:
        try:
            decoded = decode(response.data)
        except A.ApduError:
            continue
        lines.append(f"data as {type(decoded).__name__}:")
        lines.extend(_fields(decoded))
    if len(lines) == 1:
        lines.append(f"  data: {response.data.hex().upper()}")
    return lines


def cmd_apdu_decode(args: argparse.Namespace) -> int:
    raw = _hex(args.hex, name="APDU")
    if not args.response:
        try:
            print("\n".join(_decode_command(raw)))
            return 0
        except A.ApduError as exc:
            if args.command:
                raise CliError(f"not an e-purse command: {exc}") from None
    try:
        print("\n".join(_decode_response(raw)))
    except A.ApduError as exc:
        raise CliError(f"neither a command nor a response: {exc}") from None
    return 0


# --- wiring --------------------------------------------------------------------------------


def _key_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        parser.add_argument(f"--{name}", help=f"{name.upper()} master key, 32 hex digits")
    parser.add_argument(
        "--test-keys", action="store_true", help="use the CARD_PROTOCOL.md test master keys"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hce", description=__doc__.split("\n")[0])
    areas = parser.add_subparsers(dest="area", required=True)

    card = areas.add_parser("card", help="software cards kept in JSON files").add_subparsers(
        dest="action", required=True
    )
    new = card.add_parser("new", help="issue a new software card")
    new.add_argument("path")
    new.add_argument("--asn", required=True, help="10-byte ASN in hex")
    new.add_argument("--balance", type=int, default=0, help="balance in fen")
    new.add_argument("--balance-max", type=int, default=100_000, help="ceiling in fen")
    new.add_argument("--online-counter", type=int, default=0)
    new.add_argument("--offline-counter", type=int, default=0)
    new.add_argument("--card-type", type=lambda s: int(s, 16), default=0x01, help="hex, 01..80")
    new.add_argument("--valid-until", default="20341231", help="YYYYMMDD")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    _key_options(new, ("mlk", "mpk", "mtk"))
    new.set_defaults(run=cmd_card_new)

    show = card.add_parser("show", help="print a card's files and counters")
    show.add_argument("path")
    show.set_defaults(run=cmd_card_show)

    balance = card.add_parser("balance", help="SELECT + GET BALANCE")
    balance.add_argument("path")
    balance.set_defaults(run=cmd_card_balance)

    load = card.add_parser("load", help="load the card as the issuer would, over APDUs")
    load.add_argument("path")
    load.add_argument("--amount", type=int, required=True, help="fen")
    load.add_argument("--terminal", default="000000000001", help="6-byte terminal id, hex")
    load.add_argument("--at", help="ISO date-time of the load (default: now)")
    _key_options(load, ("mlk", "mtk"))
    load.set_defaults(run=cmd_card_load)

    gate = areas.add_parser("gate", help="a gate with its SAM").add_subparsers(
        dest="action", required=True
    )
    tap = gate.add_parser("tap", help="tap the card on a gate")
    tap.add_argument("path")
    tap.add_argument("--fare", type=int, required=True, help="fen")
    tap.add_argument("--terminal", default="112233445566", help="6-byte terminal id, hex")
    tap.add_argument("--serial", type=int, default=1, help="SAM terminal transaction serial")
    tap.add_argument("--at", help="ISO date-time of the tap (default: now)")
    tap.add_argument("--deny", action="append", default=[], help="deny-listed ASN (repeatable)")
    _key_options(tap, ("mpk",))
    tap.set_defaults(run=cmd_gate_tap)

    apdu = areas.add_parser("apdu", help="APDU tools").add_subparsers(dest="action", required=True)
    decode = apdu.add_parser("decode", help="name an APDU and print it field by field")
    decode.add_argument("hex")
    kind = decode.add_mutually_exclusive_group()
    kind.add_argument("--command", action="store_true", help="decode as a command only")
    kind.add_argument("--response", action="store_true", help="decode as a response only")
    decode.set_defaults(run=cmd_apdu_decode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
