"""A payment-channel notification route for testing the platform's raw-body routes and the
`channel` principal: form-encoded or JSON bodies, authenticated by a signature over the exact
bytes, answered in the channel's own way (`success`)."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from gateway import errors
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import Principal, PrincipalKind
from gateway.context import AUTHENTICATORS

routes = RouteTable("test-channels")
SECRET = b"test channel secret"
SIGNATURE_HEADER = "Test-Signature"
FORM = "application/x-www-form-urlencoded"


def sign(body: bytes) -> str:
    return hmac.new(SECRET, body, hashlib.sha256).hexdigest()


class TestChannelAuthenticator:
    """Recognises the test channel's notify route; checks its signature over the raw body."""

    def recognises(self, request: web.Request) -> bool:
        resource = request.match_info.route.resource
        return resource is not None and resource.canonical.startswith("/test/channels/")

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(sign(body).encode(), given.encode()):
            raise errors.BAD_SIGNATURE.error()
        return Principal(PrincipalKind.CHANNEL, request.match_info["channel"])


@routes.post(
    "/test/channels/{channel}/notify", principals={PrincipalKind.CHANNEL}, raw_body=True,
    accepts=(FORM, "application/json"), content_type="text/plain",
)  # fmt: skip
async def notify(call: Call) -> web.Response:
    """Take a channel's notification; answer as the channel expects."""
    digest = hashlib.sha256(call.raw).hexdigest()
    return web.Response(text=f"success {call.caller.id} {digest}", content_type="text/plain")


def install_authenticator(app: web.Application) -> None:
    app[AUTHENTICATORS].append(TestChannelAuthenticator())
