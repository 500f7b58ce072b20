"""What an area of the gateway declares (DESIGN.md section 2, "Adding an area").

An area (identity, wallet, QR codes, taps, top-ups, ...) is one `Area` value in
`gateway/areas.py`: its route tables, its setup (a cleanup context that builds the area's
service object once and stores it under the area's own typed `AppKey`), its `onecard`
commands, its periodic background jobs and its `ledger verify` checks. Nothing else in the
platform names an area.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from gateway.api.routing import RouteTable
from gateway.command import SubParsers
from gateway.workers import Periodic

Setup = Callable[[web.Application], AsyncIterator[None]]
Commands = Callable[["SubParsers[argparse.ArgumentParser]"], None]
LedgerCheck = Callable[[asyncpg.Connection], Awaitable[list[str]]]


@dataclass(frozen=True)
class Area:
    name: str
    routes: tuple[RouteTable, ...] = ()
    setup: Setup | None = None
    commands: Commands | None = None
    jobs: tuple[Periodic, ...] = ()
    ledger_checks: tuple[LedgerCheck, ...] = ()
