"""Route-level platform rules from a client's side: channel notifications with raw bodies,
public routes, HEAD on every GET, exact `Allow`, NUL and odd text refused at the edge."""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.api.routing import RouteTable
from gateway.auth.principal import PrincipalKind
from tests.gateway import channel_routes, transfer_routes
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


@pytest.fixture
async def test_client(make_client: Any) -> ClientT:
    def setup(app: Any) -> None:
        channel_routes.install_authenticator(app)
        transfer_routes.install_authenticator(app)

    return await make_client(
        extra_routes=[channel_routes.routes, transfer_routes.routes], setup=setup
    )


async def error_code(response: Any) -> str:
    return str((await response.json())["error"]["code"])


async def test_a_channel_notification_is_verified_over_its_exact_bytes(
    test_client: ClientT,
) -> None:
    body = urllib.parse.urlencode({"trade_status": "TRADE_SUCCESS", "total_amount": "88.88"})
    raw = body.encode()
    headers = {
        "Content-Type": channel_routes.FORM,
        channel_routes.SIGNATURE_HEADER: channel_routes.sign(raw),
    }
    response = await test_client.post("/test/channels/alipay/notify", data=raw, headers=headers)
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == f"success alipay {hashlib.sha256(raw).hexdigest()}"
    # The same notification as JSON is taken too; its signature covers its own bytes.
    as_json = b'{"trade_status":"TRADE_SUCCESS"}'
    response = await test_client.post(
        "/test/channels/wechatpay/notify", data=as_json,
        headers={"Content-Type": "application/json",
                 channel_routes.SIGNATURE_HEADER: channel_routes.sign(as_json)},
    )  # fmt: skip
    assert response.status == 200


async def test_a_tampered_or_foreign_notification_is_refused(test_client: ClientT) -> None:
    raw = b"trade_status=TRADE_SUCCESS&total_amount=88.88"
    signed = channel_routes.sign(raw)
    form = {"Content-Type": channel_routes.FORM}
    tampered = raw.replace(b"88.88", b"88.89")
    response = await test_client.post(
        "/test/channels/alipay/notify", data=tampered,
        headers={**form, channel_routes.SIGNATURE_HEADER: signed},
    )  # fmt: skip
    assert response.status == 401 and await error_code(response) == "bad_signature"
    response = await test_client.post(
        "/test/channels/alipay/notify", data=raw,
        headers={"Content-Type": "text/xml", channel_routes.SIGNATURE_HEADER: signed},
    )  # fmt: skip
    assert response.status == 415 and await error_code(response) == "unsupported_media_type"
    rider = await make.rider(test_client)
    response = await test_client.post(
        "/test/channels/alipay/notify", data=raw, headers={**form, **rider.auth}
    )
    # Whichever authenticator looks first (the channel's: no signature; the bearer's: not a
    # channel), a rider's token never passes for a channel.
    assert (response.status, await error_code(response)) in (
        (401, "bad_signature"),
        (403, "forbidden"),
    )


async def test_only_routes_declared_public_take_anonymous_callers(test_client: ClientT) -> None:
    # An unauthenticated POST to a route that names its callers is 401, never a log-in.
    response = await test_client.post("/v1/qr/challenges")
    assert response.status == 401 and await error_code(response) == "unauthenticated"
    assert (await test_client.get("/healthz")).status == 200
    with pytest.raises(AssertionError, match="declare it public"):

        @RouteTable("undeclared").post("/test/undeclared")
        async def undeclared(call: Any) -> None: ...

    with pytest.raises(AssertionError, match="declare it public"):

        @RouteTable("both").get("/test/both", public=True, principals={PrincipalKind.RIDER})
        async def both(call: Any) -> None: ...


async def test_head_answers_on_every_get_route(test_client: ClientT) -> None:
    rider = await make.rider(test_client)
    head = await test_client.head("/healthz")
    assert head.status == 200 and await head.read() == b""
    head = await test_client.head("/v1/wallet", headers=rider.auth)
    assert head.status == 200
    assert head.content_type == "application/json"
    assert await head.read() == b""
    assert (await test_client.head("/v1/wallet")).status == 401
    openapi = await (await test_client.get("/openapi.json")).json()
    for path, item in openapi["paths"].items():
        public = not item.get("get", {}).get("security")
        if "get" in item and public and "{" not in path and not path.startswith("/test/"):
            assert (await test_client.head(path)).status == 200, path


async def test_405_lists_exactly_the_methods_of_the_path(test_client: ClientT) -> None:
    response = await test_client.get("/v1/sessions/refresh")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await error_code(response) == "method_not_allowed"
    response = await test_client.post("/v1/wallet")
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"
    response = await test_client.put("/v1/sessions/3f0c4b5e-0000-4000-8000-000000000000")
    assert response.status == 405 and response.headers["Allow"] == "DELETE"


async def test_nul_in_any_text_is_refused_at_the_edge(test_client: ClientT) -> None:
    echo = "/test/echo"
    response = await test_client.post(
        echo,
        data=b'{"name": "a\\u0000b", "count": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400 and await error_code(response) == "validation_failed"
    assert (await response.json())["error"]["details"]["reason"] == "nul_character"
    # An escaped backslash followed by the letters u0000 is ordinary text.
    response = await test_client.post(
        echo, data=b'{"name": "a\\\\u0000b", "count": 1}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status == 200 and (await response.json())["name"] == "a\\u0000b"
    response = await test_client.post(f"{echo}?limit=1%00", json={"name": "x", "count": 1})
    assert response.status == 400 and await error_code(response) == "validation_failed"
    rider = await make.rider(test_client)
    response = await test_client.get("/v1/qr/codes/ab%00cd.png", headers=rider.auth)
    assert response.status == 400 and await error_code(response) == "validation_failed"
    response = await test_client.post(
        "/v1/riders", json={"phone": "+8613800000000", "password": "pass\u0000word long"}
    )
    assert response.status == 400 and await error_code(response) == "validation_failed"


@pytest.mark.parametrize(
    "cursor", ["%C3%A9", "%FF", "%00", "e%201", "ZQ", "ZTE5OTk5OTk5OTk5OTk5OTk5OTk5OQ"]
)
async def test_a_cursor_the_api_did_not_give_is_400(test_client: ClientT, cursor: str) -> None:
    rider = await make.rider(test_client)
    response = await test_client.get(f"/v1/wallet/transactions?cursor={cursor}", headers=rider.auth)
    assert response.status == 400, await response.text()
    assert await error_code(response) == "validation_failed"


async def test_an_empty_cursor_is_the_first_page(test_client: ClientT) -> None:
    rider = await make.rider(test_client)
    response = await test_client.get("/v1/wallet/transactions?cursor=", headers=rider.auth)
    assert response.status == 200 and (await response.json())["items"] == []


async def test_responses_carry_the_content_types_the_document_gives(
    test_client: ClientT,
) -> None:
    document = await (await test_client.get("/openapi.json")).json()
    for path in ("/docs", "/docs/docs.js", "/openapi.json", "/metrics", "/healthz"):
        documented = set(document["paths"][path]["get"]["responses"]["200"]["content"])
        response = await test_client.get(path)
        assert response.status == 200 and response.content_type in documented, path


async def test_the_document_says_text_never_holds_nul(test_client: ClientT) -> None:
    document = await (await test_client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    password = schemas["NewRider"]["properties"]["password"]
    assert password["pattern"] == "^[^\\u0000]*$" and password["minLength"] == 8
    assert schemas["Adjustment"]["properties"]["amount_fen"]["not"] == {"const": 0}
