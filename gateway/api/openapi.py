"""`/openapi.json`: OpenAPI 3.1 generated from the route tables and their msgspec types.

The schemas here are the very types the handlers decode with, so the document cannot drift
from what the gateway accepts. The error catalogue is published as `x-error-codes`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway import errors
from gateway.api.routing import Endpoint
from gateway.auth.principal import PrincipalKind

_PARAM = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_REF = "#/components/schemas/{name}"

_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "rider": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
              "description": "Rider access token from POST /v1/sessions."},
    "admin": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
              "description": "Operator token from `onecard admin create-token`."},
    "partner": {"type": "apiKey", "in": "header", "name": "OC-Signature",
                "description": "HMAC-SHA256 request signature with OC-Key-Id, OC-Timestamp, "
                               "OC-Nonce (README: partner signatures)."},
    "terminal": {"type": "apiKey", "in": "header", "name": "OC-Signature",
                 "description": "Ed25519 request signature with OC-Terminal, OC-Timestamp."},
    "channel": {"type": "apiKey", "in": "header", "name": "Signature",
                "description": "A payment channel's notification, signed in the channel's own "
                               "protocol over the exact body bytes."},
}  # fmt: skip


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any]
    request_id: str


class Error(msgspec.Struct):
    error: ErrorDetail


def build(endpoints: list[Endpoint], title: str, version: str) -> dict[str, Any]:
    types: list[Any] = [Error]
    for endpoint in endpoints:
        for kind in (endpoint.body, endpoint.response, endpoint.query):
            if kind is not None:
                types.append(kind)
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    _no_nul(components)
    schema_of = dict(zip(map(id, types), refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = _PARAM.sub(lambda m: "{" + m.group("name") + "}", endpoint.path)
        item = paths.setdefault(path, {})
        item[endpoint.method.lower()] = _operation(endpoint, path, schema_of, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
        "x-error-codes": [
            {"code": e.code, "status": e.status, "message": e.message}
            for e in errors.CATALOGUE.values()
        ],
    }


# Text never holds NUL (the platform refuses it, PostgreSQL cannot store it): say so in every
# string schema that does not already constrain its characters.
_NO_NUL = "^[^\\u0000]*$"


def _no_nul(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["pattern"] = _NO_NUL
        for value in schema.values():
            _no_nul(value)
    elif isinstance(schema, list):
        for value in schema:
            _no_nul(value)


def _operation(
    endpoint: Endpoint,
    path: str,
    schema_of: dict[int, Any],
    components: dict[str, Any],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "parameters": _parameters(endpoint, path, components),
        "responses": _responses(endpoint, schema_of),
    }
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[id(endpoint.body)]}},
        }
    elif endpoint.raw_body:
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": {"type": "string"}} for media in endpoint.accepts},
        }
    if endpoint.principals:
        operation["security"] = [{kind.value: []} for kind in sorted(endpoint.principals)]
        if PrincipalKind.ADMIN in endpoint.principals and endpoint.method != "GET":
            operation["description"] = "Operators with role admin only; auditors read."
    return operation


def _parameters(endpoint: Endpoint, path: str, components: dict[str, Any]) -> list[Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(path)
    ]
    if endpoint.query is not None:
        query_schema = components[endpoint.query.__name__]
        required = set(query_schema.get("required", []))
        for name, schema in query_schema.get("properties", {}).items():
            parameters.append(
                {"name": name, "in": "query", "required": name in required, "schema": schema}
            )
    if endpoint.idempotent:
        parameters.append(
            {"name": "Idempotency-Key", "in": "header", "required": True,
             "schema": {"type": "string", "minLength": 1, "maxLength": 255},
             "description": "Same key and request: the stored answer. Required: this moves money."}
        )  # fmt: skip
    return parameters


def _responses(endpoint: Endpoint, schema_of: dict[int, Any]) -> dict[str, Any]:
    error = {
        "description": "Error",
        "content": {"application/json": {"schema": schema_of[id(Error)]}},
    }
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        ok["content"] = {endpoint.content_type: {"schema": schema_of[id(endpoint.response)]}}
    elif endpoint.status != 204:
        ok["content"] = {endpoint.content_type: {}}
    responses: dict[str, Any] = {str(endpoint.status): ok}
    if endpoint.body is not None or endpoint.query is not None or endpoint.idempotent:
        responses["400"] = error
    if endpoint.principals:
        responses["401"] = error
        responses["403"] = error
        responses["429"] = error
    if endpoint.idempotent:
        responses["409"] = error
        responses["422"] = error
    for code in endpoint.errors:
        responses.setdefault(str(errors.CATALOGUE[code].status), error)
    responses["default"] = error
    return responses
