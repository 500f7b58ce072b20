"""Serve the gateway with the recovery-point test route in its own process, so tests can kill
it with SIGKILL between recovery points.

Usage: python -m tests.gateway.serve_recovery_routes PORT (settings from the environment;
ONECARD_TEST_CHANNEL_URL names the stand-in channel).
"""

from __future__ import annotations

import os
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from tests.gateway import recovery_routes

CHANNEL_URL_ENV = "ONECARD_TEST_CHANNEL_URL"


def main() -> None:
    app = create_app(Config.from_env(), extra_routes=[recovery_routes.routes])
    recovery_routes.install(app, os.environ[CHANNEL_URL_ENV], killable=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
