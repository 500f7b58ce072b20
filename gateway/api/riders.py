"""Rider routes: sign-up, sessions (login, refresh, logout), profile, wallet and statement."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from gateway import errors, wallet
from gateway.api.routing import Call, RouteTable
from gateway.auth import riders
from gateway.auth.principal import PrincipalKind
from gateway.context import CONFIG, LOGIN_GUARD, POOL, REDIS, TOKEN_KEYS
from gateway.ledger.history import Entry

routes = RouteTable("riders")
RIDER = {PrincipalKind.RIDER}

Phone = Annotated[
    str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{7,14}$", description="E.164, e.g. +8613800138000")
]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
PAGE_ITEMS_MAX = 100


class NewRider(msgspec.Struct, forbid_unknown_fields=True):
    phone: Phone
    password: Password


class RiderOut(msgspec.Struct):
    id: int
    phone: str
    created_at: datetime


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    phone: Phone
    password: Password


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Tokens(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: str


class SessionOut(msgspec.Struct):
    id: str
    created_at: datetime
    last_used_at: datetime
    user_agent: str
    current: bool


class SessionList(msgspec.Struct):
    items: list[SessionOut]


class WalletOut(msgspec.Struct):
    balance_fen: int
    floor_fen: int
    currency: str


class WalletTransaction(msgspec.Struct):
    txn_id: int
    kind: str
    amount_fen: int
    balance_after_fen: int
    memo: str
    created_at: datetime


class Page(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=PAGE_ITEMS_MAX)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class WalletTransactions(msgspec.Struct):
    items: list[WalletTransaction]
    next_cursor: str | None


def _tokens(pair: riders.TokenPair) -> Tokens:
    return Tokens(
        pair.access_token, "Bearer", pair.expires_in, pair.refresh_token,
        pair.refresh_expires_in, pair.session_id,
    )  # fmt: skip


@routes.post("/v1/riders", body=NewRider, response=RiderOut, status=201,
             errors=("phone_taken", "weak_password"))  # fmt: skip
async def sign_up(call: Call) -> RiderOut:
    """Sign up with a phone number and a password; the wallet opens empty."""
    rider = await riders.sign_up(call.app[POOL], call.body.phone, call.body.password)
    return RiderOut(rider.id, rider.phone, rider.created_at)


@routes.post("/v1/sessions", body=Credentials, response=Tokens, status=201,
             errors=("invalid_credentials", "rate_limited"))  # fmt: skip
async def log_in(call: Call) -> Tokens:
    """Log in: an access token (15 min) and a refresh token, for one new session."""
    app = call.app
    pair = await riders.log_in(
        app[POOL], app[TOKEN_KEYS], app[LOGIN_GUARD], app[CONFIG], call.body.phone,
        call.body.password, call.request.remote or "", call.request.headers.get("User-Agent", ""),
    )  # fmt: skip
    return _tokens(pair)


@routes.post("/v1/sessions/refresh", body=RefreshRequest, response=Tokens,
             errors=("refresh_token_invalid",))  # fmt: skip
async def refresh(call: Call) -> Tokens:
    """Trade a refresh token (once) for a new pair; reusing one ends its session."""
    app = call.app
    pair = await riders.refresh(
        app[POOL], app[REDIS], app[TOKEN_KEYS], app[CONFIG], call.body.refresh_token
    )
    return _tokens(pair)


@routes.get("/v1/sessions", response=SessionList, principals=RIDER)
async def list_sessions(call: Call) -> SessionList:
    """The rider's active sessions (devices)."""
    assert call.principal is not None
    found = await riders.sessions(call.app[POOL], int(call.principal.id))
    return SessionList(
        [SessionOut(s.id, s.created_at, s.last_used_at, s.user_agent,
                    s.id == call.principal.session) for s in found]
    )  # fmt: skip


@routes.delete("/v1/sessions/current", status=204, principals=RIDER)
async def log_out(call: Call) -> web.Response:
    """Log out: this session's tokens stop working now."""
    assert call.principal is not None and call.principal.session is not None
    await _end_session(call, call.principal.session)
    return web.Response(status=204)


@routes.delete("/v1/sessions/{session_id}", status=204, principals=RIDER)
async def end_session(call: Call) -> web.Response:
    """End one of the rider's sessions (a lost phone, say)."""
    await _end_session(call, call.request.match_info["session_id"])
    return web.Response(status=204)


async def _end_session(call: Call, session_id: str) -> None:
    assert call.principal is not None
    app = call.app
    if not await riders.log_out(
        app[POOL], app[REDIS], app[CONFIG], int(call.principal.id), session_id
    ):
        raise errors.NOT_FOUND.error()


@routes.get("/v1/me", response=RiderOut, principals=RIDER)
async def me(call: Call) -> RiderOut:
    """The rider's profile."""
    assert call.principal is not None
    rider = await riders.get(call.app[POOL], int(call.principal.id))
    if rider is None:
        raise errors.NOT_FOUND.error()
    return RiderOut(rider.id, rider.phone, rider.created_at)


@routes.get("/v1/wallet", response=WalletOut, principals=RIDER)
async def get_wallet(call: Call) -> WalletOut:
    """The wallet's balance and floor, in fen."""
    assert call.principal is not None
    found = await wallet.wallet_of(call.app[POOL], int(call.principal.id))
    return WalletOut(found.balance_fen, found.floor_fen, found.currency)


def _cursor_out(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{entry_id}".encode()).decode().rstrip("=")


def _cursor_in(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        digits = text[1:]
        if text[:1] == "e" and digits.isascii() and digits.isdigit() and len(text) < 20:
            return int(text[1:])
    except (binascii.Error, UnicodeDecodeError):
        pass
    raise errors.VALIDATION_FAILED.error("The cursor is not one this API gave.", field="cursor")


@routes.get("/v1/wallet/transactions", query=Page, response=WalletTransactions, principals=RIDER)
async def wallet_transactions(call: Call) -> WalletTransactions:
    """The wallet's statement, newest first; pass `next_cursor` back as `cursor` for more."""
    assert call.principal is not None
    page: Page = call.query
    async with call.app[POOL].acquire() as conn:
        entries = await wallet.statement(
            conn, int(call.principal.id), page.limit + 1, _cursor_in(page.cursor)
        )
    more = len(entries) > page.limit
    entries = entries[: page.limit]
    return WalletTransactions(
        [_transaction(e) for e in entries],
        _cursor_out(entries[-1].entry_id) if more else None,
    )


@routes.get("/v1/wallet/transactions/{txn_id}", response=WalletTransaction, principals=RIDER)
async def wallet_transaction(call: Call) -> WalletTransaction:
    """One transaction of the wallet."""
    assert call.principal is not None
    async with call.app[POOL].acquire() as conn:
        entry = await wallet.statement_entry(conn, int(call.principal.id), call.path_int("txn_id"))
    return _transaction(entry)


def _transaction(entry: Entry) -> WalletTransaction:
    return WalletTransaction(
        entry.txn_id, entry.kind, entry.amount_fen, entry.balance_after_fen, entry.memo,
        entry.created_at,
    )  # fmt: skip
