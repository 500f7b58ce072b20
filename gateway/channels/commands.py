"""`onecard channels import|show`: a channel's merchant credentials into the keystore, and
what may be shown of them (ids, URLs and public keys; never a private key)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.channels import credentials
from gateway.channels.sandbox import run
from gateway.channels.types import Channel
from gateway.command import SubParsers, Tools, run_with_tools
from gateway.config import Config

FETCH_TIMEOUT_S = 10
SANDBOX_HOST = "127.0.0.1"


def fetch_sandbox_credentials(base_url: str) -> dict[str, Any]:
    """What a sandbox's developer console gives its test merchant."""
    url = base_url.rstrip("/") + "/sandbox/credentials"
    if not url.startswith(("http://127.", "http://localhost", "https://")):
        raise ValueError("a sandbox is on this machine (http://127.0.0.1:PORT) or on https")
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310
        found: dict[str, Any] = json.loads(response.read())
    return found


@contextlib.contextmanager
def sandboxes_beside(config: Config) -> Iterator[dict[str, str]]:
    """When configured (`ONECARD_SANDBOXES`), the three sandboxes in child processes, their
    test merchants' credentials in the keystore (stored again only when they changed);
    channel -> base URL. Nothing at all when not configured: production talks to the real
    channels."""
    if not config.sandboxes:
        yield {}
        return
    ports = {
        Channel.ALIPAY.value: config.sandbox_alipay_port,
        Channel.WECHATPAY.value: config.sandbox_wechatpay_port,
        Channel.UNIONPAY.value: config.sandbox_unionpay_port,
    }
    with run.running(ports, SANDBOX_HOST, config.data_dir) as urls:
        given = {Channel(name): fetch_sandbox_credentials(url) for name, url in urls.items()}
        run_with_tools(config, lambda t: _store_changed(t, given))
        for name, url in urls.items():
            print(f"{name} sandbox: {url}/sandbox/credentials", flush=True)
        yield urls


async def _store_changed(t: Tools, given: dict[Channel, dict[str, Any]]) -> None:
    async with t.conn.transaction():
        for channel, found in given.items():
            if await credentials.load(t.conn, t.keystore, channel) != found:
                await credentials.store(t.conn, t.keystore, channel, found)


def cmd_channels_import(args: argparse.Namespace, config: Config) -> int:
    channel = Channel(args.channel)
    if args.from_sandbox:
        given = fetch_sandbox_credentials(args.from_sandbox)
    else:
        given = json.loads(Path(args.file).read_text())
    if not isinstance(given, dict):
        print("refused: the credentials are a JSON object", file=sys.stderr)
        return 1

    async def work(t: Tools) -> int:
        async with t.conn.transaction():
            return await credentials.store(t.conn, t.keystore, channel, given)

    version = run_with_tools(config, work)
    print(f"{channel.value}: credentials version {version} stored; running gateways use them "
          "after a restart")  # fmt: skip
    return 0


def cmd_channels_show(args: argparse.Namespace, config: Config) -> int:
    async def work(t: Tools) -> dict[str, Any]:
        shown = {}
        for channel in Channel:
            found = await credentials.load(t.conn, t.keystore, channel)
            shown[channel.value] = None if found is None else credentials.public_view(found)
        return shown

    print(json.dumps(run_with_tools(config, work), indent=2, ensure_ascii=False))
    return 0


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("channels", help="payment channel credentials").add_subparsers(
        required=True
    )
    imported = group.add_parser("import", help="store a channel's merchant credentials")
    imported.add_argument("channel", choices=[c.value for c in Channel])
    source = imported.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="a JSON file of the credentials")
    source.add_argument("--from-sandbox", metavar="URL", help="a sandbox's base URL")
    imported.set_defaults(command=cmd_channels_import)
    rotated = group.add_parser(
        "rotate", help="a new version of a channel's credentials (the old one is retired)"
    )
    rotated.add_argument("channel", choices=[c.value for c in Channel])
    rotated.add_argument("--file", required=True, help="a JSON file of the new credentials")
    rotated.set_defaults(command=cmd_channels_import, from_sandbox=None)
    group.add_parser("show", help="public halves of every channel's credentials").set_defaults(
        command=cmd_channels_show
    )
