"""Route tables: every endpoint declares its schemas, its callers and whether it moves money.

An area writes `routes = RouteTable("tag")` and decorates thin handlers:

    @routes.post("/v1/things", body=NewThing, response=Thing, status=201,
                 principals={PrincipalKind.RIDER}, idempotent=True)
    async def create_thing(call: Call) -> Thing:
        return await call.app[THINGS].create(call.conn, call.body)

Every route says who may call it: `principals={...}`, or `public=True` for routes anyone may
call (health, sign-up, log-in; public routes that write are limited per client address). A
route that takes a body in a channel's own format (a payment notification, form-encoded or
JSON, verified over its exact bytes) says `raw_body=True` and lists the media types it
`accepts`; its handler reads `call.raw`. Every GET route answers HEAD too.

A money route that calls out over the network (a payment channel) says
`idempotent=Idempotency.RECOVERY_POINTS` instead: its handler gets no transaction (`call.conn`
is None) but the claimed key, `call.recovery`, and works in phases, each its own transaction,
with outbound calls between them (see `gateway.idempotency`).

The wrapper reads the body (bounded), authenticates, checks the caller's kind, applies the rate
limit, decodes and validates path, query and body with the same msgspec types `/openapi.json`
is built from, runs the Idempotency-Key protocol on money routes (handing the handler the
connection of the transaction that also stores the answer, or the claimed key of a
recovery-point route), and encodes the result.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from gateway import errors, idempotency
from gateway.auth.principal import Principal, PrincipalKind
from gateway.context import AUTHENTICATORS, CONFIG, POOL, RATE_LIMITER
from gateway.idempotency import Idempotency as Idempotency  # re-exported for route tables
from gateway.idempotency import Recovery
from gateway.responses import JSON, json_response

Handler = Callable[["Call"], Awaitable[Any]]
_AT_PATH = re.compile(r"- at `\$(?P<path>[^`]*)`")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<field>[^`]*)`")
# A JSON string escape of NUL that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_TEMPLATE_PARAM = re.compile(r"\{[^}]+\}")
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class Call:
    """Everything a handler gets."""

    request: web.Request
    principal: Principal | None
    body: Any = None
    query: Any = None
    raw: bytes = b""
    # Money routes only: the connection of the transaction that will also store the answer
    # under the Idempotency-Key. Domain functions write through it; it commits after the
    # handler returns.
    conn: asyncpg.Connection | None = None
    # Recovery-point routes only: the claimed Idempotency-Key, through which the handler runs
    # its phases and outbound calls (see `recovery`).
    claimed: Recovery | None = None

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def caller(self) -> Principal:
        """The authenticated caller (routes that name principals always have one)."""
        assert self.principal is not None, "a public route has no caller"
        return self.principal

    @property
    def tx(self) -> asyncpg.Connection:
        """The money route's transaction (see `conn`)."""
        assert self.conn is not None, "only idempotent routes run in a transaction"
        return self.conn

    @property
    def recovery(self) -> Recovery:
        """A recovery-point route's claimed key (see `claimed`)."""
        assert self.claimed is not None, "only recovery-point routes have recovery points"
        return self.claimed

    def path_int(self, name: str) -> int:
        """A path parameter that must be a positive integer id; else 404 (nothing to find)."""
        raw = self.request.match_info[name]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise errors.NOT_FOUND.error()
        return int(raw)

    def path(self, name: str) -> str:
        return self.request.match_info[name]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type | None = None
    query: type | None = None
    response: Any = None
    status: int = 200
    principals: frozenset[PrincipalKind] = frozenset()
    public: bool = False
    # True (or Idempotency.ONE_TRANSACTION): effects and answer commit in one transaction;
    # Idempotency.RECOVERY_POINTS: a route that calls out, in phases.
    idempotent: bool | Idempotency = False
    content_type: str = JSON
    raw_body: bool = False
    accepts: tuple[str, ...] = (JSON,)
    errors: tuple[str, ...] = ()
    # A route whose bodies are legitimately larger than ONECARD_BODY_BYTES_MAX (a gate's batch
    # upload) names its own bound; every other route keeps the configured one.
    body_bytes_max: int | None = None

    def __post_init__(self) -> None:
        # Our own declarations, checked when the module is imported.
        assert self.public != bool(self.principals), (
            f"{self.method} {self.path}: name its principals or declare it public"
        )
        assert not self.idempotent or self.principals, "a money route names who may call it"
        assert isinstance(self.idempotent, bool | Idempotency)
        assert not (self.raw_body and self.body is not None), "a raw body has no schema"


@dataclass
class RouteTable:
    tag: str
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(self, method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            principals = frozenset(options.pop("principals", ()))
            summary = options.pop("summary", None) or (handler.__doc__ or "").strip()
            if "accepts" in options:
                options["accepts"] = tuple(options["accepts"])
            self.endpoints.append(
                Endpoint(method, path, handler, summary.split("\n")[0], self.tag,
                         principals=principals, **options)
            )  # fmt: skip
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)

    def install(self, app: web.Application) -> None:
        for endpoint in self.endpoints:
            if endpoint.method == "GET":
                app.router.add_get(endpoint.path, _wrap(endpoint), allow_head=True)
            else:
                app.router.add_route(endpoint.method, endpoint.path, _wrap(endpoint))


def client_max_size(config_bytes_max: int, tables: Iterable[RouteTable]) -> int:
    """What aiohttp may read at most: the largest bound any route allows."""
    bounds = [e.body_bytes_max or 0 for table in tables for e in table.endpoints]
    return max([config_bytes_max, *bounds])


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The raw body, refused (413) as soon as it is declared or turns out larger than `limit`
    (the configured ONECARD_BODY_BYTES_MAX unless the route names its own)."""
    limit = limit or request.app[CONFIG].body_bytes_max
    if (request.content_length or 0) > limit:
        raise errors.BODY_TOO_LARGE.error(limit_bytes=limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.BODY_TOO_LARGE.error(limit_bytes=limit) from None
    if len(body) > limit:  # chunked bodies declare no length
        raise errors.BODY_TOO_LARGE.error(limit_bytes=limit)
    return body


def decode_body(raw: bytes, schema: type, request: web.Request) -> Any:
    if not raw:
        raw = b"{}" if request.content_type in ("", JSON, "application/octet-stream") else raw
    elif request.content_type not in (JSON, "application/octet-stream", ""):
        raise errors.UNSUPPORTED_MEDIA_TYPE.error()
    try:
        value: Any = msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError:
        raise errors.MALFORMED_JSON.error() from None
    if b"u0000" in raw and _JSON_NUL.search(raw):
        raise _nul_refused("body")
    return value


def decode_query(request: web.Request, schema: type) -> Any:
    query = request.query
    if len(query) != len(set(query.keys())):
        raise errors.VALIDATION_FAILED.error("A query parameter is repeated.")
    if any("\x00" in k or "\x00" in v for k, v in query.items()):
        raise _nul_refused("query")
    try:
        return msgspec.convert(dict(query), type=schema, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, where="query") from None


def _nul_refused(where: str) -> errors.ApiError:
    """Text never holds NUL (PostgreSQL cannot store it): refused here, once, for every route."""
    return errors.VALIDATION_FAILED.error(
        "Text must not contain the NUL character.", where=where, reason="nul_character"
    )


def validation_error(exc: msgspec.ValidationError, where: str = "body") -> errors.ApiError:
    text = str(exc)
    at = _AT_PATH.search(text)
    path = at.group("path").lstrip(".") if at else ""
    named = _NAMED_FIELD.search(text)
    if named:
        path = f"{path}.{named.group('field')}" if path else named.group("field")
    details: dict[str, Any] = {
        "where": where,
        "reason": text.split(" - at ")[0],
        "field": path or "$",
    }
    return errors.VALIDATION_FAILED.error(**details)


async def authenticate(
    request: web.Request, raw_body: bytes, allowed: frozenset[PrincipalKind]
) -> Principal:
    """Who is calling; 401 with no or bad credentials, 403 for the wrong kind of caller."""
    for authenticator in request.app[AUTHENTICATORS]:
        if authenticator.recognises(request):
            principal: Principal = await authenticator.authenticate(request, raw_body)
            break
    else:
        raise errors.UNAUTHENTICATED.error(headers={"WWW-Authenticate": "Bearer"})
    if principal.kind not in allowed:
        raise errors.FORBIDDEN.error()
    if (principal.kind is PrincipalKind.ADMIN and principal.role != "admin"
            and request.method not in READ_METHODS):  # fmt: skip
        raise errors.FORBIDDEN.error("Auditors only read.")
    limiter = request.app.get(RATE_LIMITER)
    if limiter is not None:
        await limiter.check(principal)
    return principal


def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await read_body(request, endpoint.body_bytes_max) if request.can_read_body else b""
        if any("\x00" in value for value in request.match_info.values()):
            raise _nul_refused("path")
        principal = None
        if endpoint.principals:
            principal = await authenticate(request, raw, endpoint.principals)
        elif request.method not in READ_METHODS:
            # Public writes (sign-up, log-in) cost a password hash each: limited per address.
            limiter = request.app.get(RATE_LIMITER)
            if limiter is not None:
                await limiter.check_address(request.remote or "")
        call = Call(request, principal, raw=raw)
        if endpoint.query is not None:
            call.query = decode_query(request, endpoint.query)
        # Bad input is refused before an Idempotency-Key is claimed: nothing ran, nothing is kept.
        if endpoint.raw_body:
            if raw and request.content_type not in endpoint.accepts:
                raise errors.UNSUPPORTED_MEDIA_TYPE.error(accepts=list(endpoint.accepts))
        elif endpoint.body is not None:
            call.body = decode_body(raw, endpoint.body, request)
        elif raw.strip():
            raise errors.VALIDATION_FAILED.error("This route takes no body.", where="body")
        if endpoint.idempotent is Idempotency.RECOVERY_POINTS:
            return await _respond_resumably(endpoint, call)
        if endpoint.idempotent:
            return await _respond_once(endpoint, call)
        return await _respond(endpoint, call)

    handle.__name__ = endpoint.handler.__name__
    return handle


async def _respond_once(endpoint: Endpoint, call: Call) -> web.StreamResponse:
    """A money route: its effects and its stored answer commit in one transaction."""

    async def respond(conn: asyncpg.Connection) -> web.StreamResponse:
        call.conn = conn
        try:
            return await _respond(endpoint, call)
        finally:
            call.conn = None

    app = call.app
    return await idempotency.run_in_transaction(
        call.request, app[POOL], app[CONFIG], call.caller.key, call.raw, respond
    )


async def _respond_resumably(endpoint: Endpoint, call: Call) -> web.StreamResponse:
    """A money route that calls out: its phases commit one by one, its answer at the end."""

    async def respond(recovery: Recovery) -> web.StreamResponse:
        call.claimed = recovery
        try:
            return await _respond(endpoint, call)
        finally:
            call.claimed = None

    app = call.app
    return await idempotency.run_with_recovery_points(
        call.request, app[POOL], app[CONFIG], call.caller.key, call.raw, respond
    )


async def _respond(endpoint: Endpoint, call: Call) -> web.StreamResponse:
    result = await endpoint.handler(call)
    if isinstance(result, web.StreamResponse):
        return result
    return json_response(result, endpoint.status)


def all_endpoints(tables: Iterable[RouteTable]) -> list[Endpoint]:
    return [endpoint for table in tables for endpoint in table.endpoints]


def allowed_methods(endpoints: Iterable[Endpoint]) -> Callable[[str], list[str]]:
    """What `Allow` says for a path: the methods of the route the path names.

    A fixed route (`/v1/sessions/refresh`) is that route alone, even where a template
    (`/v1/sessions/{session_id}`) would match it too, as aiohttp resolves it.
    """
    fixed: dict[str, set[str]] = {}
    templates: list[tuple[re.Pattern[str], str]] = []
    for e in endpoints:
        if "{" in e.path:
            pattern = re.compile("^" + _TEMPLATE_PARAM.sub("[^/]+", re.escape(e.path).replace(
                r"\{", "{").replace(r"\}", "}")) + "$")  # fmt: skip
            templates.append((pattern, e.method))
        else:
            fixed.setdefault(e.path, set()).add(e.method)

    def methods(path: str) -> list[str]:
        found = fixed.get(path) or {m for pattern, m in templates if pattern.match(path)}
        if "GET" in found:
            found = found | {"HEAD"}
        return sorted(found)

    return methods
