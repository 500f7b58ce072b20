"""Rider routes: sign-up, sessions (login, refresh, logout) and profile."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from gateway import errors
from gateway.api.routing import Call, RouteTable
from gateway.auth.passwords import PASSWORD_CHARS_MAX, PASSWORD_CHARS_MIN
from gateway.auth.principal import PrincipalKind
from gateway.auth.service import IDENTITY, TokenPair

routes = RouteTable("riders")
RIDER = {PrincipalKind.RIDER}

Phone = Annotated[
    str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{7,14}$", description="E.164, e.g. +8613800138000")
]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=PASSWORD_CHARS_MAX)]
# Decoded as any password (a short one is then 400 `weak_password`, a stable answer), but
# documented with the length a new password needs.
NewPassword = Annotated[
    str,
    msgspec.Meta(
        max_length=PASSWORD_CHARS_MAX, extra_json_schema={"minLength": PASSWORD_CHARS_MIN},
        description="at least 8 characters, at least 4 different ones, not a common password",
    ),
]  # fmt: skip


class NewRider(msgspec.Struct, forbid_unknown_fields=True):
    phone: Phone
    password: NewPassword


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


def _tokens(pair: TokenPair) -> Tokens:
    return Tokens(
        pair.access_token, "Bearer", pair.expires_in, pair.refresh_token,
        pair.refresh_expires_in, pair.session_id,
    )  # fmt: skip


@routes.post("/v1/riders", body=NewRider, response=RiderOut, status=201, public=True,
             errors=("phone_taken", "weak_password"))  # fmt: skip
async def sign_up(call: Call) -> RiderOut:
    """Sign up with a phone number and a password; the wallet opens empty."""
    rider = await call.app[IDENTITY].sign_up(call.body.phone, call.body.password)
    return RiderOut(rider.id, rider.phone, rider.created_at)


@routes.post("/v1/sessions", body=Credentials, response=Tokens, status=201, public=True,
             errors=("invalid_credentials", "rate_limited"))  # fmt: skip
async def log_in(call: Call) -> Tokens:
    """Log in: an access token (15 min) and a refresh token, for one new session."""
    pair = await call.app[IDENTITY].log_in(
        call.body.phone, call.body.password, call.request.remote or "",
        call.request.headers.get("User-Agent", ""),
    )  # fmt: skip
    return _tokens(pair)


@routes.post("/v1/sessions/refresh", body=RefreshRequest, response=Tokens, public=True,
             errors=("refresh_token_invalid",))  # fmt: skip
async def refresh(call: Call) -> Tokens:
    """Trade a refresh token (once) for a new pair; reusing one ends its session."""
    return _tokens(await call.app[IDENTITY].refresh(call.body.refresh_token))


@routes.get("/v1/sessions", response=SessionList, principals=RIDER)
async def list_sessions(call: Call) -> SessionList:
    """The rider's active sessions (devices)."""
    found = await call.app[IDENTITY].sessions(int(call.caller.id))
    return SessionList(
        [SessionOut(s.id, s.created_at, s.last_used_at, s.user_agent,
                    s.id == call.caller.session) for s in found]
    )  # fmt: skip


@routes.delete("/v1/sessions/current", status=204, principals=RIDER)
async def log_out(call: Call) -> web.Response:
    """Log out: this session's tokens stop working now."""
    assert call.caller.session is not None
    await _end_session(call, call.caller.session)
    return web.Response(status=204)


@routes.delete("/v1/sessions/{session_id}", status=204, principals=RIDER)
async def end_session(call: Call) -> web.Response:
    """End one of the rider's sessions (a lost phone, say)."""
    await _end_session(call, call.path("session_id"))
    return web.Response(status=204)


async def _end_session(call: Call, session_id: str) -> None:
    if not await call.app[IDENTITY].log_out(int(call.caller.id), session_id):
        raise errors.NOT_FOUND.error()


@routes.get("/v1/me", response=RiderOut, principals=RIDER)
async def me(call: Call) -> RiderOut:
    """The rider's profile."""
    rider = await call.app[IDENTITY].rider(int(call.caller.id))
    return RiderOut(rider.id, rider.phone, rider.created_at)
