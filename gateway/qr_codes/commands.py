"""`onecard qr rotate-key`: a new QR issuer key for operators.

Nothing secret is printed: only the new key id and how long the old keys keep verifying.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from gateway.command import SubParsers, run_with_tools
from gateway.config import Config
from gateway.qr_codes import issuer_keys


def cmd_qr_rotate_key(args: argparse.Namespace, config: Config) -> int:
    ttl_s = config.qr_certificate_ttl_s
    try:
        key_id = run_with_tools(
            config,
            lambda t: issuer_keys.rotate_issuer_key(t.conn, t.keystore, timedelta(seconds=ttl_s)),
        )
    except issuer_keys.KeyIdsExhausted as exc:
        print(f"refused: {exc}")
        return 1
    print(f"new QR issuer key {key_id}; older keys verify the certificates they signed "
          f"for {ttl_s} s more")  # fmt: skip
    return 0


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("qr", help="QR ride codes").add_subparsers(required=True)
    group.add_parser(
        "rotate-key", help="a new issuer key; old ones verify until their certificates expire"
    ).set_defaults(command=cmd_qr_rotate_key)
