"""Riders, sessions, tokens and the wallet, from the mobile app's side."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth import tokens
from gateway.auth.service import IDENTITY
from gateway.config import Config
from gateway.keystore import Keystore, load_kek
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


async def error_code(response: Any) -> str:
    return (await response.json())["error"]["code"]


async def test_sign_up_opens_an_empty_wallet(client: ClientT) -> None:
    rider = await make.rider(client)
    me = await client.get("/v1/me", headers=rider.auth)
    assert me.status == 200
    assert (await me.json())["phone"] == rider.phone
    wallet = await client.get("/v1/wallet", headers=rider.auth)
    assert await wallet.json() == {"balance_fen": 0, "floor_fen": 0, "currency": "CNY"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"phone": "13800138000", "password": make.PASSWORD}, 400, "validation_failed"),
        ({"phone": "+0123456789", "password": make.PASSWORD}, 400, "validation_failed"),
        ({"phone": "+86138001380001234567", "password": make.PASSWORD}, 400, "validation_failed"),
        ({"phone": "NEW", "password": "short"}, 400, "weak_password"),
        ({"phone": "NEW", "password": "password123"}, 400, "weak_password"),
        ({"phone": "NEW", "password": "aaaaaaaaaaaa"}, 400, "weak_password"),
        ({"phone": "NEW", "password": make.PASSWORD, "balance_fen": 100000}, 400,
         "validation_failed"),
        ({"phone": "NEW", "password": make.PASSWORD, "status": "active"}, 400, "validation_failed"),
        ({"phone": "NEW", "password": 12345678}, 400, "validation_failed"),
    ],
)  # fmt: skip
async def test_bad_sign_ups_are_refused_and_change_nothing(
    client: ClientT, pool: asyncpg.Pool, body: dict[str, Any], status: int, code: str
) -> None:
    if body["phone"] == "NEW":
        body = {**body, "phone": make.new_phone()}
    before = await pool.fetchval("SELECT count(*) FROM riders")
    response = await client.post("/v1/riders", json=body)
    assert response.status == status
    assert await error_code(response) == code
    assert await pool.fetchval("SELECT count(*) FROM riders") == before


async def test_a_phone_signs_up_once(client: ClientT) -> None:
    rider = await make.rider(client)
    again = await client.post("/v1/riders", json={"phone": rider.phone, "password": make.PASSWORD})
    assert again.status == 409
    assert await error_code(again) == "phone_taken"


async def test_wrong_phone_and_wrong_password_look_the_same(client: ClientT) -> None:
    rider = await make.rider(client)
    wrong_password = await client.post(
        "/v1/sessions", json={"phone": rider.phone, "password": "not the password"}
    )
    unknown_phone = await client.post(
        "/v1/sessions", json={"phone": make.new_phone(), "password": make.PASSWORD}
    )
    first, second = await wrong_password.json(), await unknown_phone.json()
    assert wrong_password.status == unknown_phone.status == 401
    assert first["error"]["code"] == second["error"]["code"] == "invalid_credentials"
    assert first["error"]["message"] == second["error"]["message"]


async def test_failed_logins_are_limited_per_phone(make_client: Any) -> None:
    client = await make_client(login_failures_max=3)
    rider = await make.rider(client)
    for _ in range(3):
        response = await client.post(
            "/v1/sessions", json={"phone": rider.phone, "password": "nope-nope"}
        )
        assert response.status == 401
    blocked = await client.post(
        "/v1/sessions", json={"phone": rider.phone, "password": make.PASSWORD}
    )
    assert blocked.status == 429
    assert await error_code(blocked) == "rate_limited"
    assert 0 < int(blocked.headers["Retry-After"]) <= 900


async def test_failed_logins_are_limited_per_ip(make_client: Any, config: Config) -> None:
    # Its own key prefix (inside the session's): other tests fail logins from 127.0.0.1 too.
    client = await make_client(login_failures_ip_max=4, redis_prefix=config.redis_prefix + "ip:")
    rider = await make.rider(client)
    for _ in range(4):  # four different phones, one address
        response = await client.post(
            "/v1/sessions", json={"phone": make.new_phone(), "password": "nope-nope"}
        )
        assert response.status == 401
    blocked = await client.post(
        "/v1/sessions", json={"phone": rider.phone, "password": make.PASSWORD}
    )
    assert blocked.status == 429


async def test_refresh_rotates_and_reuse_revokes_the_family(client: ClientT) -> None:
    rider = await make.rider(client)
    first = await client.post("/v1/sessions/refresh", json={"refresh_token": rider.refresh})
    assert first.status == 200
    pair = await first.json()
    assert pair["refresh_token"] != rider.refresh and pair["session_id"] == rider.session
    new_auth = {"Authorization": f"Bearer {pair['access_token']}"}
    assert (await client.get("/v1/me", headers=new_auth)).status == 200
    # The old refresh token again: someone copied it. The whole session ends.
    reuse = await client.post("/v1/sessions/refresh", json={"refresh_token": rider.refresh})
    assert reuse.status == 401
    assert await error_code(reuse) == "refresh_token_invalid"
    newer = await client.post("/v1/sessions/refresh", json={"refresh_token": pair["refresh_token"]})
    assert newer.status == 401
    assert (await client.get("/v1/me", headers=new_auth)).status == 401
    assert (await client.get("/v1/me", headers=rider.auth)).status == 401


async def test_concurrent_refreshes_of_one_token_revoke_the_session(client: ClientT) -> None:
    rider = await make.rider(client)
    responses = await asyncio.gather(
        *(
            client.post("/v1/sessions/refresh", json={"refresh_token": rider.refresh})
            for _ in range(5)
        )
    )
    assert sorted(r.status for r in responses) == [200, 401, 401, 401, 401]
    winner = next(r for r in responses if r.status == 200)
    token = (await winner.json())["refresh_token"]
    again = await client.post("/v1/sessions/refresh", json={"refresh_token": token})
    assert again.status == 401


async def test_logout_ends_the_session_now(client: ClientT) -> None:
    rider = await make.rider(client)
    other = await client.post(
        "/v1/sessions", json={"phone": rider.phone, "password": make.PASSWORD}
    )
    other_auth = {"Authorization": f"Bearer {(await other.json())['access_token']}"}
    sessions = await (await client.get("/v1/sessions", headers=rider.auth)).json()
    assert len(sessions["items"]) == 2
    assert [s["current"] for s in sessions["items"]].count(True) == 1
    response = await client.delete("/v1/sessions/current", headers=rider.auth)
    assert response.status == 204
    assert (await client.get("/v1/me", headers=rider.auth)).status == 401
    refresh = await client.post("/v1/sessions/refresh", json={"refresh_token": rider.refresh})
    assert refresh.status == 401
    assert (await client.get("/v1/me", headers=other_auth)).status == 200  # the other device


def forge(claims: dict[str, Any], key: Any, algorithm: str, headers: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """A token "signed" with HS256 keyed by the public key: the classic confusion attack."""
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "."
    signing_input += b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_forged_and_broken_tokens_are_401(client: ClientT) -> None:
    rider = await make.rider(client)
    header = jwt.get_unverified_header(rider.access)
    claims = jwt.decode(rider.access, options={"verify_signature": False})
    now = int(time.time())
    current = await client.app[IDENTITY].token_keys.current()
    public_pem = current.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stranger = Ed25519PrivateKey.generate()
    head, _, signature = rider.access.split(".")
    tampered = b64(json.dumps({**claims, "sub": str(rider.id + 1)}).encode())
    nested = ("[" * 1500 + '"onecard-admin"' + "]" * 1500).encode()
    attacks = {
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"]}),
        "hs256 keyed with the public key": hs256_with(claims, public_pem, header["kid"]),
        "unknown kid": jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "0" * 16}),
        "another key, real kid": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": header["kid"]}
        ),
        "tampered payload": f"{head}.{tampered}.{signature}",
        "not a jwt": "abc.def",
        "deeply nested payload": f"{head}.{b64(nested)}.{signature}",
        "deeply nested header": f"{b64(nested)}.{tampered}.{signature}",
    }
    # Properly signed with the real key, but with a claim missing or wrong.
    for name, changes in {
        "missing exp": {"exp": None},
        "missing jti": {"jti": None},
        "missing iat": {"iat": None},
        "expired": {"iat": now - 3600, "nbf": now - 3600, "exp": now - 60},
        "wrong aud": {"aud": "someone-else"},
        "wrong iss": {"iss": "evil"},
    }.items():
        forged = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        attacks[name] = jwt.encode(forged, current.private, algorithm="EdDSA",
                                   headers={"kid": current.kid})  # fmt: skip
    for name, token in attacks.items():
        response = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401, name
        assert await error_code(response) == "token_invalid", name
    for broken in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer " + "a" * 5000):
        response = await client.get("/v1/me", headers={"Authorization": broken})
        assert response.status == 401, broken
    assert (await client.get("/v1/me", headers=rider.auth)).status == 200


async def test_a_rotated_signing_key_keeps_old_tokens_valid(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    old_kid = jwt.get_unverified_header(rider.access)["kid"]
    async with pool.acquire() as conn:
        new_kid = await tokens.rotate_signing_key(
            conn, Keystore(load_kek(config)), timedelta(hours=1)
        )
    await client.app[IDENTITY].token_keys.load()
    fresh = await client.post(
        "/v1/sessions", json={"phone": rider.phone, "password": make.PASSWORD}
    )
    fresh_token = (await fresh.json())["access_token"]
    assert jwt.get_unverified_header(fresh_token)["kid"] == new_kid != old_kid
    assert (await client.get("/v1/me", headers=rider.auth)).status == 200
    assert (
        await client.get("/v1/me", headers={"Authorization": f"Bearer {fresh_token}"})
    ).status == 200


async def test_wallet_statement_pages_newest_first(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    admin = await make.admin_token(pool, config)
    for n, amount in enumerate([500, 300, -200, 1000, -50]):
        response = await client.post(
            "/v1/admin/adjustments",
            json={"rider_id": rider.id, "amount_fen": amount, "reason": f"test {n}"},
            headers={**admin, "Idempotency-Key": f"adj-{rider.id}-{n}"},
        )
        assert response.status == 201, await response.text()
    wallet = await (await client.get("/v1/wallet", headers=rider.auth)).json()
    assert wallet["balance_fen"] == 1550
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (
            await client.get(f"/v1/wallet/transactions{query}", headers=rider.auth)
        ).json()
        seen.extend(item["amount_fen"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [-50, 1000, -200, 300, 500]
    for cursor in ("!!!", b64("e²".encode()), b64(b"e-1"), b64(b"x12")):
        bad = await client.get(f"/v1/wallet/transactions?cursor={cursor}", headers=rider.auth)
        assert bad.status == 400 and await error_code(bad) == "validation_failed", cursor
    for txn in ("%C2%B2", "12abc", "-1", "9" * 30):
        missing = await client.get(f"/v1/wallet/transactions/{txn}", headers=rider.auth)
        assert missing.status == 404 and await error_code(missing) == "not_found", txn
    too_many = await client.get("/v1/wallet/transactions?limit=101", headers=rider.auth)
    assert too_many.status == 400


async def test_an_adjustment_cannot_take_a_wallet_below_its_floor(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    admin = await make.admin_token(pool, config)
    response = await client.post(
        "/v1/admin/adjustments",
        json={"rider_id": rider.id, "amount_fen": -1, "reason": "overdraw"},
        headers={**admin, "Idempotency-Key": f"overdraw-{rider.id}"},
    )
    assert response.status == 422 and await error_code(response) == "insufficient_balance"
    assert (await (await client.get("/v1/wallet", headers=rider.auth)).json())["balance_fen"] == 0


async def test_per_principal_rate_limit(make_client: Any) -> None:
    client = await make_client(rate_rider_per_s=1, rate_rider_burst=3)
    rider = await make.rider(client)
    statuses = [(await client.get("/v1/me", headers=rider.auth)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await client.get("/v1/me", headers=rider.auth)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    other = await make.rider(client)  # buckets are per principal
    assert (await client.get("/v1/me", headers=other.auth)).status == 200


async def test_parallel_password_guesses_are_limited_too(make_client: Any, config: Config) -> None:
    # Its own key prefix: these 40 attempts from 127.0.0.1 must not count against other tests.
    client = await make_client(login_failures_max=5, redis_prefix=config.redis_prefix + "par:")
    rider = await make.rider(client)
    guesses = await asyncio.gather(
        *(
            client.post("/v1/sessions", json={"phone": rider.phone, "password": f"guess-{n:04d}"})
            for n in range(40)
        )
    )
    statuses = sorted(response.status for response in guesses)
    assert statuses.count(401) == 5 and statuses.count(429) == 35


async def test_sign_ups_and_logins_are_limited_per_address(
    make_client: Any, config: Config
) -> None:
    client = await make_client(
        rate_public_per_s=1, rate_public_burst=3, redis_prefix=config.redis_prefix + "addr:"
    )
    statuses = [
        (
            await client.post(
                "/v1/riders", json={"phone": make.new_phone(), "password": make.PASSWORD}
            )
        ).status
        for _ in range(4)
    ]
    assert statuses == [201, 201, 201, 429]
    login = await client.post("/v1/sessions", json={"phone": make.new_phone(), "password": "x" * 9})
    assert login.status == 429 and int(login.headers["Retry-After"]) >= 1
