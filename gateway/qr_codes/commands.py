"""`onecard qr rotate-key`: a new QR issuer key for operators.

Nothing secret is printed: only the new key id and how long the old keys keep verifying.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import asyncpg

from gateway.config import Config
from gateway.keystore import Keystore, load_kek
from gateway.qr_codes import issuer_keys


def _rotate(config: Config, verify_for: timedelta) -> int:
    from gateway.cli import run_async, services

    keystore = Keystore(load_kek(config))

    async def run(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return await issuer_keys.rotate_issuer_key(conn, keystore, verify_for)
        finally:
            await conn.close()

    with services(config) as ready:
        return run_async(run(ready.database_url))


def cmd_qr_rotate_key(args: argparse.Namespace, config: Config) -> int:
    ttl_s = config.qr_certificate_ttl_s
    try:
        key_id = _rotate(config, timedelta(seconds=ttl_s))
    except issuer_keys.KeyIdsExhausted as exc:
        print(f"refused: {exc}")
        return 1
    print(f"new QR issuer key {key_id}; older keys verify the certificates they signed "
          f"for {ttl_s} s more")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("qr", help="QR ride codes").add_subparsers(required=True)
    group.add_parser(
        "rotate-key", help="a new issuer key; old ones verify until their certificates expire"
    ).set_defaults(command=cmd_qr_rotate_key)
