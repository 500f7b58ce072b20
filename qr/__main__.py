"""`python -m qr`: inspect, verify and render QR ride codes from a shell.

    python -m qr verify CODE --issuer-keys keys.json [--now T] [--deny ID ...] [--revoked FP ...]
    python -m qr decode CODE
    python -m qr render CODE [--png out.png] [--svg out.svg] [--invert]

CODE is the text form (unpadded base64url), or `-` to read it from standard input. The issuer
keys file is a JSON object mapping key id to a public key as SEC1 hex or PEM. `verify` prints
the verdict as JSON and exits 0 only when the code is accepted, 1 otherwise; bad arguments exit
2. This tool only reads codes and keys: it must never hold or ask for a private key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from qr.format import Malformed, decode_code, decode_text
from qr.signing import InvalidPublicKey, load_public_key
from qr.verify import WINDOW_FUTURE_S_DEFAULT, WINDOW_PAST_S_DEFAULT, verify

KEY_FILE_BYTES_MAX = 1 << 20


class UsageError(Exception):
    """A bad argument or key file: reported on stderr with exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"python -m qr: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qr", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser("verify", help="verify a code as a gate would")
    check.add_argument("code", metavar="CODE")
    check.add_argument("--issuer-keys", required=True, type=Path, metavar="FILE")
    check.add_argument("--now", type=int, help="unix seconds (default: this machine's clock)")
    check.add_argument("--deny", type=int, nargs="*", default=[], metavar="ACCOUNT_ID")
    check.add_argument("--revoked", nargs="*", default=[], metavar="FINGERPRINT_HEX")
    check.add_argument("--window-past-s", type=int, default=WINDOW_PAST_S_DEFAULT)
    check.add_argument("--window-future-s", type=int, default=WINDOW_FUTURE_S_DEFAULT)
    check.set_defaults(handler=_verify)

    show = commands.add_parser("decode", help="print a code's fields as JSON")
    show.add_argument("code", metavar="CODE")
    show.set_defaults(handler=_decode)

    draw = commands.add_parser("render", help="write PNG / SVG, or draw in the terminal")
    draw.add_argument("code", metavar="CODE")
    draw.add_argument("--png", type=Path, metavar="FILE")
    draw.add_argument("--svg", type=Path, metavar="FILE")
    draw.add_argument("--invert", action="store_true", help="draw dark modules (light terminal)")
    draw.set_defaults(handler=_render)
    return parser


def _code_text(arg: str) -> str:
    return sys.stdin.readline().strip() if arg == "-" else arg.strip()


def _load_issuer_keys(path: Path) -> dict[int, ec.EllipticCurvePublicKey]:
    try:
        with path.open("rb") as f:
            raw = f.read(KEY_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > KEY_FILE_BYTES_MAX:
        raise UsageError(f"{path} is larger than {KEY_FILE_BYTES_MAX} bytes")
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(entries, dict):
        raise UsageError(f"{path} must hold a JSON object of key id -> public key")
    keys: dict[int, ec.EllipticCurvePublicKey] = {}
    for key_id, text in entries.items():
        if not key_id.isdigit() or not 0 <= int(key_id) <= 255 or not isinstance(text, str):
            raise UsageError(f"{path}: entry {key_id!r} must map a key id 0..255 to a string")
        try:
            keys[int(key_id)] = load_public_key(text)
        except InvalidPublicKey as exc:
            raise UsageError(f"{path}: key {key_id}: {exc}") from exc
    return keys


def _verify(args: argparse.Namespace) -> int:
    keys = _load_issuer_keys(args.issuer_keys)
    try:
        revoked = frozenset(bytes.fromhex(fp) for fp in args.revoked)
    except ValueError as exc:
        raise UsageError("--revoked takes device fingerprints in hex") from exc
    verdict = verify(
        _code_text(args.code),
        keys,
        now=int(time.time()) if args.now is None else args.now,
        deny=frozenset(args.deny),
        revoked_devices=revoked,
        window_past_s=args.window_past_s,
        window_future_s=args.window_future_s,
    )
    print(json.dumps(verdict.to_dict(), indent=2))
    return 0 if verdict.ok else 1


def _decode(args: argparse.Namespace) -> int:
    try:
        code = decode_code(_code_text(args.code))
    except Malformed as exc:
        print(json.dumps({"error": exc.reason.value, "message": str(exc)}, indent=2))
        return 1
    print(json.dumps(code.to_dict(), indent=2))
    return 0


def _render(args: argparse.Namespace) -> int:
    from qr.render import render_png, render_svg, render_terminal

    try:
        data = decode_text(_code_text(args.code))
        decode_code(data)
    except Malformed as exc:
        raise UsageError(f"CODE is not a QR ride code: {exc}") from exc
    if args.png is not None:
        args.png.write_bytes(render_png(data))
    if args.svg is not None:
        args.svg.write_bytes(render_svg(data))
    if args.png is None and args.svg is None:
        sys.stdout.write(render_terminal(data, invert=args.invert))
    return 0


if __name__ == "__main__":
    sys.exit(main())
