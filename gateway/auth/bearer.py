"""`Authorization: Bearer <JWT>`: rider access tokens and operator (admin) tokens.

The audience tells which: `onecard-rider` tokens become rider principals, `onecard-admin`
tokens operator principals with their role. A token of any other shape is 401 `token_invalid`.
"""

from __future__ import annotations

import base64
import json

from aiohttp import web

from gateway import errors
from gateway.auth import tokens
from gateway.auth.principal import Principal, PrincipalKind

ADMIN_ROLES = ("admin", "auditor")
TOKEN_CHARS_MAX = 4096


class BearerAuthenticator:
    def __init__(self, keys: tokens.TokenKeys, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._verified = tokens.VerifiedTokens()

    def recognises(self, request: web.Request) -> bool:
        return "Authorization" in request.headers

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        scheme, _, token = request.headers["Authorization"].partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > TOKEN_CHARS_MAX:
            raise errors.TOKEN_INVALID.error(headers={"WWW-Authenticate": "Bearer"})
        audience = _audience(token)
        claims = await tokens.verify(self._keys, token, self._issuer, audience, self._verified)
        if audience == tokens.ADMIN_AUDIENCE:
            if claims.role not in ADMIN_ROLES:
                raise errors.TOKEN_INVALID.error()
            return Principal(PrincipalKind.ADMIN, claims.subject, role=claims.role)
        if not claims.subject.isdigit() or claims.session is None:
            raise errors.TOKEN_INVALID.error()
        return Principal(PrincipalKind.RIDER, claims.subject, session=claims.session)


def _audience(token: str) -> str:
    """Which audience to verify against; the signature check that follows is what counts.

    Operator tokens say so in their payload; reading it costs a base64 and a JSON parse, so
    only tokens that could be operators' (the word appears in the payload) pay for it.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise errors.TOKEN_INVALID.error()
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claimed = json.loads(payload).get("aud") if b"onecard-admin" in payload else None
    except (ValueError, AttributeError, RecursionError):
        raise errors.TOKEN_INVALID.error() from None
    return tokens.ADMIN_AUDIENCE if claimed == tokens.ADMIN_AUDIENCE else tokens.RIDER_AUDIENCE
