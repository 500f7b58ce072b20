"""Serve the gateway with the test transfer route in its own process, so tests can kill -9 it.

Usage: python -m tests.gateway.serve_with_test_routes PORT (settings from the environment).
"""

from __future__ import annotations

import sys

from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from tests.gateway import transfer_routes


def main() -> None:
    app = create_app(Config.from_env(), extra_routes=[transfer_routes.routes])
    transfer_routes.install_authenticator(app)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
