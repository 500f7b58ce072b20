"""Partners' top-ups and webhooks over real sockets: a gateway whose webhook client trusts a
self-signed certificate made here, an HTTPS receiver presenting it on 127.0.0.1 (allow-listed),
and helpers that sign partners' requests."""

from __future__ import annotations

import ipaddress
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import create_app
from gateway.areas import ledger_checks
from gateway.config import Config
from gateway.ledger.verify import verify_ledger
from gateway.topups import partners
from hce.apdu import IssuerInfo
from tests.gateway import identity_helpers as make
from tests.gateway.conftest import scratch_database

ClientT = TestClient[Any, Any]


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made with `cryptography`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onecard test receiver")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "receiver.pem", folder / "receiver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A partner's HTTPS webhook receiver: records every request, answers `answers` in turn
    (then 200)."""

    url: str
    got: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)


@pytest.fixture
async def receiver(certificate: Certificate) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    state = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        state.got.append(Received(dict(request.headers), await request.read()))
        status = state.answers.pop(0) if state.answers else 200
        return web.Response(status=status, text="ok" if status < 300 else "no")

    app = web.Application()
    app.router.add_post("/hooks/onecard", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=context)
    state.url = f"https://127.0.0.1:{server.port}/hooks/onecard"
    yield state
    await server.close()


@pytest.fixture(scope="session")
async def webhook_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A database of its own for the tests that deliver webhooks: every gateway's delivery job
    claims every due delivery of its database, and the session's other gateways allow-list
    nothing, so they would refuse (and push back) deliveries to the test receiver."""
    async with scratch_database(server_urls[0], "onecard_test_webhooks", migrated=True) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def webhook_config(config: Config, webhook_database: str, certificate: Certificate) -> Config:
    """Webhooks to 127.0.0.1 allowed, the test certificate trusted, retries after 1 s."""
    return config.replace(
        database_url=webhook_database, webhook_allowed_hosts="127.0.0.1",
        webhook_ca_file=str(certificate.cert_file), webhook_retry_first_s=1,
    )  # fmt: skip


@pytest.fixture(scope="session")
async def wpool(webhook_database: str) -> AsyncIterator[asyncpg.Pool]:
    found = await asyncpg.create_pool(webhook_database, min_size=1, max_size=10)
    assert found is not None
    yield found
    await found.close()


@pytest.fixture
async def gateway(webhook_config: Config, wpool: asyncpg.Pool) -> AsyncIterator[ClientT]:
    """The gateway on the webhook tests' database, its jobs running; its ledger verifies."""
    client: ClientT = TestClient(TestServer(create_app(webhook_config)))
    await client.start_server()
    yield client
    await client.close()
    async with wpool.acquire() as conn:
        problems = await verify_ledger(conn, ledger_checks())
    assert problems == [], problems


async def signed(
    client: ClientT, partner: make.PartnerKey, method: str, path: str,
    body: Any = None, key: str | None = None, raw: bytes | None = None,
) -> Any:  # fmt: skip
    """A partner's signed request; `key`: its Idempotency-Key."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    headers = partner.sign(method, path, data)
    if data:
        headers["Content-Type"] = "application/json"
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.request(method, path, data=data, headers=headers)


async def fund(pool: asyncpg.Pool, key_id: str, amount_fen: int) -> partners.Funded:
    async with pool.acquire() as conn, conn.transaction():
        return await partners.fund(conn, key_id, amount_fen, "test-ops", "test funding")


async def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = (await response.json())["error"]
    return error


def card_file(asn: str) -> str:
    today = datetime.now(UTC).date()
    info = IssuerInfo(
        bytes.fromhex("3100000000000000"), 1, 1, bytes.fromhex(asn),
        bytes.fromhex(f"{today - timedelta(days=365):%Y%m%d}"),
        bytes.fromhex(f"{today + timedelta(days=365 * 5):%Y%m%d}"), 1, 0,
    )  # fmt: skip
    return info.to_bytes().hex()


async def linked_card(client: ClientT, rider: make.RiderLogin) -> str:
    asn = f"{secrets.randbelow(10**20):020d}"
    response = await client.post(
        "/v1/cards", json={"asn": asn, "file_0015_hex": card_file(asn)}, headers=rider.auth
    )
    assert response.status == 201, await response.text()
    return asn
