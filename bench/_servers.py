"""The two servers bench/http.py compares, each run in its own process.

    python -m bench._servers gateway PORT   the gateway (create_app) plus one JSON route that
                                            reads one ledger account: one PostgreSQL round trip
    python -m bench._servers bare PORT      a bare aiohttp + asyncpg app doing the same

Both use the same event loop (uvloop when installed) and the same pool size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import asyncpg
import msgspec
from aiohttp import web

from gateway.api.routing import Call, RouteTable
from gateway.app import create_app
from gateway.config import Config
from gateway.context import POOL

POOL_SIZE = 10
ACCOUNT_QUERY = "SELECT id, kind, owner, balance_fen FROM ledger_accounts WHERE id = $1"

routes = RouteTable("bench")


class Account(msgspec.Struct):
    id: int
    kind: str
    owner: str
    balance_fen: int


@routes.get("/bench/accounts/{account_id}", response=Account, public=True)
async def read_account(call: Call) -> Account:
    """One ledger account: one PostgreSQL round trip."""
    row = await call.app[POOL].fetchrow(ACCOUNT_QUERY, call.path_int("account_id"))
    return Account(row["id"], row["kind"], row["owner"], row["balance_fen"])


def gateway_app() -> web.Application:
    config = Config.from_env().replace(db_pool_size_min=POOL_SIZE, db_pool_size_max=POOL_SIZE)
    return create_app(config, extra_routes=[routes])


def bare_app() -> web.Application:
    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def account(request: web.Request) -> web.Response:
        row = await request.app[pool_key].fetchrow(
            ACCOUNT_QUERY, int(request.match_info["account_id"])
        )
        return web.json_response(dict(row))

    async def lifespan(app: web.Application) -> object:
        app[pool_key] = await asyncpg.create_pool(
            os.environ["DATABASE_URL"], min_size=POOL_SIZE, max_size=POOL_SIZE
        )
        yield
        await app[pool_key].close()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/bench/accounts/{account_id}", account)
    app.cleanup_ctx.append(lifespan)  # type: ignore[arg-type]
    return app


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = gateway_app() if kind == "gateway" else bare_app()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
