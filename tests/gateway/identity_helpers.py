"""Making riders, partners, terminals and operators for tests, through the real code paths."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import partners, terminals, tokens
from gateway.auth.signatures import sign_partner_request, sign_terminal_request
from gateway.config import Config
from gateway.keystore import KeyKind, Keystore, load_kek

PASSWORD = "correct horse battery"
_phones = itertools.count(int(time.time() * 1000) % 10**9)


def new_phone() -> str:
    return f"+86139{next(_phones) % 10**8:08d}"


@dataclass
class RiderLogin:
    id: int
    phone: str
    access: str
    refresh: str
    session: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


async def rider(client: TestClient[Any, Any], phone: str | None = None) -> RiderLogin:
    phone = phone or new_phone()
    created = await client.post("/v1/riders", json={"phone": phone, "password": PASSWORD})
    assert created.status == 201, await created.text()
    rider_id = (await created.json())["id"]
    login = await client.post("/v1/sessions", json={"phone": phone, "password": PASSWORD})
    assert login.status == 201, await login.text()
    body = await login.json()
    return RiderLogin(
        rider_id, phone, body["access_token"], body["refresh_token"], body["session_id"]
    )


@dataclass
class PartnerKey:
    key_id: str
    secret: str

    def sign(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
        return sign_partner_request(self.key_id, self.secret, method, path, body, **kw)


async def partner(pool: asyncpg.Pool, config: Config) -> PartnerKey:
    async with pool.acquire() as conn:
        made, secret = await partners.create(conn, Keystore(load_kek(config)), "Test Bank")
    return PartnerKey(made.key_id, secret)


@dataclass
class TerminalKey:
    id: str
    operator: str
    private: Ed25519PrivateKey

    def sign(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
        return sign_terminal_request(self.id, self.private, method, path, body, **kw)


async def terminal(pool: asyncpg.Pool, operator: str = "metro") -> TerminalKey:
    async with pool.acquire() as conn:
        made, private = await terminals.register(conn, secrets.token_hex(6).upper(), operator)
    assert private is not None
    return TerminalKey(made.id, made.operator, private)


async def admin_token(pool: asyncpg.Pool, config: Config, role: str = "admin") -> dict[str, str]:
    keystore = Keystore(load_kek(config))
    async with pool.acquire() as conn:
        await tokens.ensure_signing_key(conn, keystore)
        stored = await keystore.active(conn, KeyKind.TOKEN_SIGNING, tokens.KEY_NAME)
    assert stored is not None
    token = tokens.sign_with(
        stored, config.jwt_issuer, tokens.ADMIN_AUDIENCE, f"ops-{role}", 3600, int(time.time()),
        {"role": role},
    )  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


async def fund(
    client: TestClient[Any, Any], pool: asyncpg.Pool, config: Config, rider_id: int, amount_fen: int
) -> None:
    """Credit a rider's wallet the way operators do: POST /v1/admin/adjustments."""
    response = await client.post(
        "/v1/admin/adjustments",
        json={"rider_id": rider_id, "amount_fen": amount_fen, "reason": "test funding"},
        headers={**await admin_token(pool, config), "Idempotency-Key": secrets.token_hex(8)},
    )
    assert response.status == 201, await response.text()


# --- QR ride codes -------------------------------------------------------------------------
async def qr_certificate(
    client: TestClient[Any, Any], login: RiderLogin, device: Any | None = None
) -> tuple[Any, dict[str, Any]]:
    """A phone (`qr.phone.Phone`) certified for the rider: challenge, proof, certificate."""
    from qr.format import RiderCertificate
    from qr.phone import Phone, generate_device_key
    from qr.signing import encode_public_key, sign_challenge

    device = device or generate_device_key()
    response = await client.post("/v1/qr/challenges", headers=login.auth)
    assert response.status == 201, await response.text()
    challenge = bytes.fromhex((await response.json())["challenge"])
    response = await client.post(
        "/v1/qr/certificates",
        headers=login.auth,
        json={
            "challenge": challenge.hex(),
            "device_public_key": encode_public_key(device.public_key()).hex(),
            "signature": sign_challenge(device, challenge).hex(),
        },
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    return Phone(RiderCertificate.from_text(body["certificate"]), device), body


async def upload_rides(
    client: TestClient[Any, Any], gate: TerminalKey, rides: list[dict[str, Any]]
) -> Any:
    """POST /v1/qr/rides signed by the gate; the response (not read)."""
    import json

    body = json.dumps({"rides": rides}).encode()
    headers = {**gate.sign("POST", "/v1/qr/rides", body), "Content-Type": "application/json"}
    return await client.post("/v1/qr/rides", data=body, headers=headers)
