"""The HTTP platform from a client's side: error shape, limits, request ids, ops routes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway import transfer_routes

ClientT = TestClient[Any, Any]


@pytest.fixture
async def test_client(make_client: Any) -> ClientT:
    return await make_client(
        extra_routes=[transfer_routes.routes], setup=transfer_routes.install_authenticator
    )


def assert_error(payload: dict[str, Any], code: str) -> dict[str, Any]:
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"]
    return error


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [
        (b"{", "application/json", 400, "malformed_json", None),
        (b"\xff\xfe", "application/json", 400, "malformed_json", None),
        (b"[1, 2]", "application/json", 400, "validation_failed", "$"),
        (b'{"name": "a", "count": "3"}', "application/json", 400, "validation_failed", "count"),
        (b'{"name": "a", "count": true}', "application/json", 400, "validation_failed", "count"),
        (b'{"name": "a", "count": 1.5}', "application/json", 400, "validation_failed", "count"),
        (b'{"name": "a", "count": 101}', "application/json", 400, "validation_failed", "count"),
        (b'{"name": "a"}', "application/json", 400, "validation_failed", "count"),
        (b'{"name": "a", "count": 1, "admin": true}', "application/json", 400,
         "validation_failed", "admin"),
        (b'{"name": "a", "count": 1}', "text/plain", 415, "unsupported_media_type", None),
    ],
)  # fmt: skip
async def test_bad_bodies_get_the_error_shape(
    test_client: ClientT, body: bytes, content_type: str, status: int, code: str, field: str | None
) -> None:
    response = await test_client.post(
        "/test/echo", data=body, headers={"Content-Type": content_type}
    )
    assert response.status == status
    error = assert_error(await response.json(), code)
    if field is not None:
        assert error["details"]["field"] == field


async def test_a_valid_body_passes(test_client: ClientT) -> None:
    response = await test_client.post("/test/echo", json={"name": "a", "count": 3})
    assert response.status == 200
    assert await response.json() == {"name": "a", "count": 3, "tags": [], "nested": {}}


async def test_bad_query_parameters(test_client: ClientT) -> None:
    body = {"name": "a", "count": 3}
    for query in ("limit=0", "limit=abc", "other=1", "limit=1&limit=2"):
        response = await test_client.post(f"/test/echo?{query}", json=body)
        assert response.status == 400, query
        assert_error(await response.json(), "validation_failed")


async def test_an_oversize_body_is_413(make_client: Any) -> None:
    client = await make_client(extra_routes=[transfer_routes.routes], body_bytes_max=1024)
    response = await client.post(
        "/test/echo", data=b'{"name": "' + b"a" * 2000 + b'", "count": 1}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status == 413
    assert_error(await response.json(), "body_too_large")


async def test_the_default_body_limit_is_64_kib(test_client: ClientT) -> None:
    padding = "a" * (64 * 1024)
    response = await test_client.post("/test/echo", json={"name": padding, "count": 1})
    assert response.status == 413


async def test_unknown_routes_and_wrong_methods(test_client: ClientT) -> None:
    response = await test_client.get("/v1/nothing-here")
    assert response.status == 404
    assert_error(await response.json(), "not_found")
    response = await test_client.delete("/healthz")
    assert response.status == 405
    assert_error(await response.json(), "method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_unexpected_errors_are_500_without_a_trace(
    test_client: ClientT, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="onecard.http"):
        response = await test_client.get("/test/boom", headers={"X-Request-Id": "req-boom-1"})
    assert response.status == 500
    text = await response.text()
    assert "Traceback" not in text and "secret-token-abc" not in text
    error = assert_error(json.loads(text), "internal_error")
    assert error["request_id"] == "req-boom-1"
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "req-boom-1"]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log


async def test_request_ids_are_echoed_or_made(test_client: ClientT) -> None:
    response = await test_client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await test_client.get("/healthz", headers={"X-Request-Id": "bad id\twith tab"})
    assert response.headers["X-Request-Id"] != "bad id\twith tab"
    assert len(response.headers["X-Request-Id"]) == 32


async def test_health_readiness_and_metrics(test_client: ClientT) -> None:
    assert await (await test_client.get("/healthz")).json() == {"status": "ok"}
    ready = await test_client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "checks": {"postgresql": "ok", "redis": "ok"}}
    metrics = await (await test_client.get("/metrics")).text()
    assert 'onecard_http_requests_total{method="GET",route="/healthz",status="200"} 1' in metrics
    assert (
        'onecard_http_request_seconds_bucket{method="GET",route="/readyz",status="200",le="+Inf"} 1'
        in metrics
    )
    assert 'onecard_db_pool_connections{state="max"}' in metrics


async def test_readiness_names_what_is_down(make_client: Any) -> None:
    client = await make_client(redis_url="redis://127.0.0.1:1/0")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert await ready.json() == {
        "status": "unavailable",
        "checks": {"postgresql": "ok", "redis": "down"},
    }


async def test_openapi_is_built_from_the_handlers_schemas(test_client: ClientT) -> None:
    document = await (await test_client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    echo = document["paths"]["/test/echo"]["post"]
    schema_ref = echo["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.split("/")[-1]]
    assert schema["properties"]["count"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert schema["required"] == ["name", "count"]
    assert schema["additionalProperties"] is False
    assert echo["parameters"][0]["name"] == "limit"
    transfer = document["paths"]["/test/transfers"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in transfer["parameters"])
    assert {e["code"] for e in document["x-error-codes"]} >= {
        "idempotency_key_reused",
        "validation_failed",
        "internal_error",
    }


async def test_docs_render_offline(test_client: ClientT) -> None:
    page = await test_client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assert "/docs/docs.js" in html and "http://" not in html and "https://" not in html
    script = await test_client.get("/docs/docs.js")
    assert script.status == 200
    assert "openapi.json" in await script.text()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


# Examples per run come from the profile: 100 in make test, 20,000 in make fuzz.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"name": st.text(max_size=50), "count": json_values},
            optional={"tags": json_values, "nested": json_values, "extra": json_values},
        ).map(lambda v: json.dumps(v).encode()),
    ),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/xml"]),
    request_id=header_values,
    query=st.sampled_from(["", "?limit=5", "?limit=-1", "?limit=x", "?x=1"]),
)
async def test_fuzzed_requests_never_get_a_500(
    test_client: ClientT, body: bytes, content_type: str, request_id: str, query: str
) -> None:
    headers = {"X-Request-Id": request_id}
    if content_type:
        headers["Content-Type"] = content_type
    response = await test_client.post(f"/test/echo{query}", data=body, headers=headers)
    assert response.status < 500
    if response.status != 200:
        assert_error(await response.json(), (await response.json())["error"]["code"])
