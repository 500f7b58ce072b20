"""`onecard phone load`: be a rider's phone and load a physical card over the air through a
running gateway (`hce.relay`), printing every APDU as it goes.

    ONECARD_TOKEN=<rider access token> onecard phone load --card card.json --order 42
    onecard phone load --reader pcsc:ACR122 --all --api https://gateway.example

The card is a software card's state file (`python -m hce card new`; the file is the chip: it is
written back after every run, torn or failed too, atomically) or a real card on a PC/SC reader.
The token is read from the environment only, never from the command line (argv is visible to
every user of the machine), and is never printed.

Exit status: 0 the session finished (loaded, or nothing to load), 1 the gateway refused, failed
or could not be reached, 2 a usage error (no card file, no token, a card that is no e-purse),
3 the card left the field (the gateway settles the load at the card's next contact).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.command import SubParsers
from gateway.config import Config
from hce.readers import CardReader, PcscReader, ReaderError
from hce.relay import (
    RETRY_COUNT_DEFAULT,
    CardError,
    Exchange,
    GatewayProtocolError,
    GatewayUnreachable,
    LoadFailed,
    LoadResult,
    RelayClient,
)
from hce.software_card import CardTorn, SoftwareCard

TOKEN_ENV_DEFAULT = "ONECARD_TOKEN"  # noqa: S105 - the name of a variable, not a token
EXIT_LOADED = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_TORN = 3


class UsageError(Exception):
    """Printed as one line; exit status 2."""


def default_api(config: Config) -> str:
    """The gateway this configuration serves: http://{host}:{port}, a wildcard listening
    address (0.0.0.0, ::) reached through loopback."""
    host = config.host
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{config.port}"


# --- the card: a state file or a PC/SC reader -------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one, never a
    mix: a temporary file beside it, flushed to disk, renamed over it (its mode kept)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk; not every system can
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _software_card(path: Path, tear_after: int | None, tear_commit: bool) -> SoftwareCard:
    try:
        card = SoftwareCard.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read card {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a card: {exc}") from None
    if tear_after is not None:
        card.tear_after(tear_after, commit=tear_commit)
    return card


@contextlib.contextmanager
def _open_card(args: argparse.Namespace) -> Iterator[CardReader]:
    if args.tear_commit and args.tear_after is None:
        raise UsageError("--tear-commit goes with --tear-after")
    if args.card is not None:
        path = Path(args.card)
        card = _software_card(path, args.tear_after, args.tear_commit)
        try:
            yield card
        finally:  # the file is the chip: what happened to it stays, torn or failed too
            write_atomically(path, card.to_json())
        return
    if args.tear_after is not None:
        raise UsageError("--tear-after works on a software card (--card) only")
    kind, _, name = args.reader.partition(":")
    if kind != "pcsc":
        raise UsageError(f"--reader is pcsc or pcsc:NAME, got {args.reader!r}")
    try:
        reader = PcscReader(name)
    except ReaderError as exc:
        raise UsageError(str(exc)) from None
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):  # the card may be gone already
            reader.close()


# --- printing --------------------------------------------------------------------------------


def print_exchange(exchange: Exchange) -> None:
    """`> command` then `< data SW (meaning)`, as each exchange with the card happens."""
    print(f"> {exchange.command_hex}")
    if exchange.answer is None:
        print("< no answer", flush=True)
        return
    if exchange.sw is None:
        print(f"< {exchange.answer_hex} ({exchange.meaning})", flush=True)
        return
    data = exchange.data.hex().upper()
    print(f"< {data + ' ' if data else ''}{exchange.sw:04X} ({exchange.meaning})", flush=True)


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


def print_summary(result: LoadResult) -> None:
    balance = "unknown" if result.balance_fen is None else f"{result.balance_fen} fen"
    if result.loaded_fen or result.orders:
        print(f"loaded {result.loaded_fen} fen; balance {balance}")
    else:
        print(f"nothing loaded; balance {balance}")
    print(f"orders loaded: {_ids(result.orders)}")
    print(f"held for an operator: {_ids(result.held)}")
    print(f"session {result.session_id} ({result.state or 'done'})")


def _fail(text: str) -> None:
    one_line = " ".join(text.split())  # a gateway's message may hold line breaks
    print(f"onecard phone: {one_line}", file=sys.stderr, flush=True)


# --- the command -----------------------------------------------------------------------------


def _token(name: str) -> str:
    token = os.environ.get(name, "").strip()
    if not token:
        raise UsageError(f"no token: set {name} to the rider's access token")
    return token


def _run(client: RelayClient, args: argparse.Namespace) -> int:
    try:
        result = client.load(args.order) if args.order is not None else client.load()
    except LoadFailed as exc:
        reason = exc.details.get("reason")
        because = f" ({reason})" if isinstance(reason, str) and reason else ""
        _fail(f"load refused: {exc.code}: {exc.message}{because}")
        return EXIT_REFUSED
    except GatewayUnreachable as exc:
        left = client.session_id
        settled = f"; session {left} is settled at the card's next contact" if left else ""
        _fail(f"{exc}{settled}")
        return EXIT_REFUSED
    except GatewayProtocolError as exc:
        where = f" (session {client.session_id})" if client.session_id else ""
        _fail(f"the gateway's answer was not understood: {exc}{where}")
        return EXIT_REFUSED
    except CardError as exc:
        _fail(f"this card cannot be loaded: {exc}")
        return EXIT_USAGE
    except (CardTorn, ReaderError):
        if client.session_id is None:
            _fail("the card left the field before the load began; nothing was loaded")
        else:
            _fail(
                f"the card left the field during session {client.session_id}; "
                "the load will be settled at the next tap"
            )
        return EXIT_TORN
    print_summary(result)
    return EXIT_LOADED


def cmd_phone_load(args: argparse.Namespace, config: Config) -> int:
    try:
        token = _token(args.token_env)
        with _open_card(args) as reader:
            try:
                api = args.api or default_api(config)
                client = RelayClient(api, token, reader, retries=args.retries, log=print_exchange)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            return _run(client, args)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except OSError as exc:  # the card file could not be written back
        _fail(f"cannot save the card state: {exc}")
        return EXIT_USAGE


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError("a positive whole number")
    return int(text)


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    phone = sub.add_parser("phone", help="act as a rider's phone (over-the-air card loading)")
    actions = phone.add_subparsers(required=True)
    load = actions.add_parser("load", help="load a card through the gateway, APDU by APDU")
    card = load.add_mutually_exclusive_group(required=True)
    card.add_argument("--card", metavar="CARD.json", help="a software card's state file")
    card.add_argument("--reader", metavar="pcsc[:NAME]", help="a card on a PC/SC reader")
    what = load.add_mutually_exclusive_group(required=True)
    what.add_argument("--order", type=_positive, metavar="ID", help="one paid top-up order")
    what.add_argument("--all", action="store_true", help="every load pending for the card")
    load.add_argument("--api", metavar="URL", help="the gateway (default http://HOST:PORT)")
    load.add_argument(
        "--token-env",
        default=TOKEN_ENV_DEFAULT,
        metavar="NAME",
        help=f"the environment variable that holds the token (default {TOKEN_ENV_DEFAULT})",
    )
    load.add_argument(
        "--retries",
        type=int,
        default=RETRY_COUNT_DEFAULT,
        metavar="N",
        help=f"re-sends of a request the gateway did not answer (default {RETRY_COUNT_DEFAULT})",
    )
    load.add_argument(
        "--tear-after",
        type=_positive,
        metavar="N",
        help="(testing) the software card leaves the field at its N-th CREDIT FOR LOAD",
    )
    load.add_argument(
        "--tear-commit", action="store_true", help="(testing) ... after committing that CREDIT"
    )
    load.set_defaults(command=cmd_phone_load)
