"""`onecard partners ...`, `onecard terminals register`, `onecard admin create-token`,
`onecard keys rotate-token-signing`: identity commands for operators.

Secrets (partner secrets, generated terminal private keys, admin tokens) are printed once, to
stdout only, and never logged.
"""

from __future__ import annotations

import argparse
import getpass
import re
import time
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from gateway.auth import partners, service, terminals, tokens
from gateway.command import SubParsers, Tools, run_with_tools, subcommands
from gateway.config import Config, ConfigError
from gateway.keystore import KeyKind
from gateway.topups import partners as partner_topups

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError("a duration is a number and s, m, h or d: 8h, 30m")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _operator_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError("1-64 lower-case letters, digits, '.', '_' or '-'")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError("a positive whole number")
    return int(text)


FUNDING_FEN_MAX = 10**12  # ten billion yuan: a typo, not a funding


def _amount_fen(text: str) -> int:
    amount = _positive(text)
    if amount > FUNDING_FEN_MAX:
        raise argparse.ArgumentTypeError(f"at most {FUNDING_FEN_MAX} fen")
    return amount


def cmd_partners_create(args: argparse.Namespace, config: Config) -> int:
    partner, secret = run_with_tools(
        config, lambda t: partners.create(t.conn, t.keystore, args.name)
    )
    print(f"partner:  {partner.name}")
    print(f"key id:   {partner.key_id}")
    print(f"secret:   {secret}")
    print("The secret is shown this once; give it to the partner over a safe channel.")
    return 0


def cmd_partners_rotate(args: argparse.Namespace, config: Config) -> int:
    try:
        secret = run_with_tools(config, lambda t: partners.rotate(t.conn, t.keystore, args.key_id))
    except LookupError:
        print(f"no partner with key id {args.key_id}")
        return 1
    print(f"new secret: {secret}")
    print(f"The old secret keeps working for {partners.ROTATION_GRACE}.")
    return 0


def cmd_partners_set_status(args: argparse.Namespace, config: Config) -> int:
    status = "disabled" if args.action == "disable" else "active"
    changed = run_with_tools(config, lambda t: partners.set_status(t.conn, args.key_id, status))
    if not changed:
        print(f"no partner with key id {args.key_id}")
        return 1
    print(f"partner {args.key_id} is {status}")
    return 0


def cmd_partners_set_limit(args: argparse.Namespace, config: Config) -> int:
    if (args.per_s is None) != (args.burst is None):
        raise ConfigError("give both --per-s and --burst, or --default")
    changed = run_with_tools(
        config, lambda t: partners.set_limits(t.conn, args.key_id, args.per_s, args.burst)
    )
    if not changed:
        print(f"no partner with key id {args.key_id}")
        return 1
    limit = f"{args.per_s}/s, burst {args.burst}" if args.per_s else "the default for partners"
    print(f"partner {args.key_id}: {limit} (running gateways apply it within a minute)")
    return 0


def _operator_of(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        raise ConfigError("cannot tell who you are: pass --operator NAME") from None


def cmd_partners_fund(args: argparse.Namespace, config: Config) -> int:
    operator = _operator_of(args)
    if len(args.memo) > partner_topups.MEMO_CHARS_MAX:
        raise ConfigError(f"--memo is longer than {partner_topups.MEMO_CHARS_MAX} characters")

    async def work(t: Tools) -> partner_topups.Funded:
        async with t.conn.transaction():
            return await partner_topups.fund(
                t.conn, args.key_id, args.amount_fen, operator, args.memo
            )

    try:
        funded = run_with_tools(config, work)
    except LookupError:
        print(f"no partner with key id {args.key_id}")
        return 1
    print(f"funded {args.key_id} with {args.amount_fen} fen by {operator} "
          f"(funding {funded.funding_id}, ledger txn {funded.txn_id})")  # fmt: skip
    print(f"float balance: {funded.balance_fen} fen")
    return 0


def cmd_riders_set_status(args: argparse.Namespace, config: Config) -> int:
    status = "disabled" if args.action == "disable" else "active"
    changed = run_with_tools(
        config, lambda t: service.set_rider_status(t.pool, t.redis, t.config, args.phone, status)
    )
    if not changed:
        print(f"no rider with phone {args.phone}")
        return 1
    ended = "; every session ended" if status == "disabled" else ""
    print(f"rider {args.phone} is {status}{ended}")
    return 0


def cmd_terminals_register(args: argparse.Namespace, config: Config) -> int:
    public_key = bytes.fromhex(args.public_key) if args.public_key else None

    async def work(t: Tools) -> Any:
        return await terminals.register(t.conn, args.id, args.operator, public_key)

    try:
        terminal, private = run_with_tools(config, work)
    except ValueError as exc:
        print(f"refused: {exc}")
        return 1
    except asyncpg.UniqueViolationError:
        print(f"terminal {args.id.upper()} is already registered")
        return 1
    print(f"terminal:    {terminal.id} (operator {terminal.operator})")
    print(f"public key:  {terminal.public_key.hex()}")
    if private is not None:
        print(f"private key: {terminals.private_key_text(private)}")
        print("The private key is shown this once and not kept; install it on the terminal.")
    return 0


def cmd_admin_create_token(args: argparse.Namespace, config: Config) -> int:
    if args.ttl > config.admin_token_ttl_max_s:
        raise ConfigError(
            f"--ttl is longer than ONECARD_ADMIN_TOKEN_TTL_MAX_S ({config.admin_token_ttl_max_s} s)"
        )

    async def work(t: Tools) -> str:
        await tokens.ensure_signing_key(t.conn, t.keystore)
        active = await t.keystore.versions(t.conn, KeyKind.TOKEN_SIGNING, tokens.KEY_NAME)
        key = next(k for k in active if k.status == "active")
        return tokens.sign_with(
            key, config.jwt_issuer, tokens.ADMIN_AUDIENCE, args.name, args.ttl,
            int(time.time()), {"role": args.role},
        )  # fmt: skip

    print(run_with_tools(config, work))
    return 0


def cmd_keys_rotate_token_signing(args: argparse.Namespace, config: Config) -> int:
    longest = max(config.access_token_ttl_s, config.admin_token_ttl_max_s)
    grace = timedelta(seconds=longest + tokens.LEEWAY_S)
    kid = run_with_tools(config, lambda t: tokens.rotate_signing_key(t.conn, t.keystore, grace))
    print(f"new token signing key {kid}; old keys verify for {longest} s more")
    return 0


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("partners", help="partners and their keys").add_subparsers(required=True)
    create = group.add_parser("create", help="a new partner; prints key id and secret once")
    create.add_argument("name")
    create.set_defaults(command=cmd_partners_create)
    rotate = group.add_parser("rotate", help="a new secret for a partner")
    rotate.add_argument("key_id")
    rotate.set_defaults(command=cmd_partners_rotate)
    for action in ("disable", "enable"):
        parser = group.add_parser(action, help=f"{action} a partner")
        parser.add_argument("key_id")
        parser.set_defaults(command=cmd_partners_set_status, action=action)

    limit = group.add_parser("set-limit", help="a partner's own rate limit")
    limit.add_argument("key_id")
    limit.add_argument("--per-s", type=_positive, help="requests per second")
    limit.add_argument("--burst", type=_positive, help="bucket size")
    limit.set_defaults(command=cmd_partners_set_limit)

    fund = group.add_parser("fund", help="put money into a partner's prepaid float")
    fund.add_argument("key_id")
    fund.add_argument("--amount-fen", type=_amount_fen, required=True, help="how much, in fen")
    fund.add_argument("--memo", default="", help="what it is for: the bank transfer's reference")
    fund.add_argument("--operator", type=_operator_name, help="who funds it (default: your user)")
    fund.set_defaults(command=cmd_partners_fund)

    group = sub.add_parser("riders", help="rider accounts").add_subparsers(required=True)
    for action in ("disable", "enable"):
        parser = group.add_parser(action, help=f"{action} a rider (by phone, E.164)")
        parser.add_argument("phone")
        parser.set_defaults(command=cmd_riders_set_status, action=action)

    group = sub.add_parser("terminals", help="gates and kiosks").add_subparsers(required=True)
    register_terminal = group.add_parser("register", help="register a terminal")
    register_terminal.add_argument("--operator", required=True, help="transport operator code")
    register_terminal.add_argument("--id", required=True, help="terminal id, 12 hex digits")
    register_terminal.add_argument("--public-key", help="its Ed25519 public key (hex); "
                                   "omit to generate a key pair")  # fmt: skip
    register_terminal.set_defaults(command=cmd_terminals_register)

    group = sub.add_parser("admin", help="operator access").add_subparsers(required=True)
    token = group.add_parser("create-token", help="an operator token (printed)")
    token.add_argument("--role", choices=["admin", "auditor"], required=True)
    token.add_argument("--ttl", type=parse_duration, default="8h", help="e.g. 8h, 30m")
    token.add_argument(
        "--name", required=True, type=_operator_name,
        help="who it is for: the token subject, their own idempotency keys and rate limit",
    )  # fmt: skip
    token.set_defaults(command=cmd_admin_create_token)

    subcommands(sub, "keys", "key management").add_parser(
        "rotate-token-signing", help="a new JWT signing key; old ones verify until tokens expire"
    ).set_defaults(command=cmd_keys_rotate_token_signing)
