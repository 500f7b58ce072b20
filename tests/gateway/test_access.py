"""Who may call what: partner and terminal signatures, kinds of caller, object ownership."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.auth import partners
from gateway.auth.signatures import canonical_request, sign_partner_request
from gateway.config import Config
from gateway.keystore import Keystore, load_kek
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


async def error_code(response: Any) -> str:
    return (await response.json())["error"]["code"]


def test_the_readme_partner_signature_example() -> None:
    """The worked example in README.md, computed by the helper partners use."""
    headers = sign_partner_request(
        "pk_0123456789abcdef", "example-secret-do-not-use", "POST",
        "/v1/partner/topups?b=2&a=1%20x", b'{"amount_fen":1000}',
        timestamp=1764000000, nonce="n-0001",
    )  # fmt: skip
    assert canonical_request(
        "POST", "/v1/partner/topups", [("b", "2"), ("a", "1 x")], "1764000000", "n-0001",
        b'{"amount_fen":1000}',
    ) == (
        b"POST\n/v1/partner/topups\na=1%20x&b=2\n1764000000\nn-0001\n"
        b"290c67f0190fc761107d19e4f589f5e63cb53dfcf20288ab92f491dac1be07f2"
    )  # fmt: skip
    assert headers == {
        "OC-Key-Id": "pk_0123456789abcdef",
        "OC-Timestamp": "1764000000",
        "OC-Nonce": "n-0001",
        "OC-Signature": "TBugKwYiFtP8Rq6benZqG0q1NPTJfdg5j2ZWQyuSICE=",
    }
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "TBugKwYiFtP8Rq6benZqG0q1NPTJfdg5j2ZWQyuSICE=" in readme


async def test_a_partner_signs_its_requests(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    path = "/v1/whoami?b=2&a=1"
    response = await client.get(path, headers=partner.sign("GET", path))
    assert response.status == 200, await response.text()
    assert await response.json() == {
        "kind": "partner",
        "id": partner.key_id,
        "role": None,
        "operator": None,
    }
    own = f"/v1/partners/{partner.key_id}"
    response = await client.get(own, headers=partner.sign("GET", own))
    assert response.status == 200 and (await response.json())["name"] == "Test Bank"


async def test_every_kind_of_partner_tampering_is_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    body = b'{"amount_fen": 100}'
    now = int(time.time())

    async def send(method: str, path: str, headers: dict[str, str], data: bytes = b"") -> Any:
        return await client.request(method, path, headers=headers, data=data)

    who = "/v1/whoami"
    signed = partner.sign("GET", who)
    cases = {
        "tampered body": (who, partner.sign("GET", who, body), b'{"amount_fen": 900}'),
        "tampered path": (who, partner.sign("GET", "/v1/me"), b""),
        "tampered query": (who + "?limit=2", partner.sign("GET", who + "?limit=1"), b""),
        "extra query": (who + "?x=1", partner.sign("GET", who), b""),
        "tampered timestamp": (
            who,
            {**partner.sign("GET", who, timestamp=now), "OC-Timestamp": str(now + 1)},
            b"",
        ),
        "tampered nonce": (who, {**partner.sign("GET", who), "OC-Nonce": "other"}, b""),
        "wrong secret": (who, make.PartnerKey(partner.key_id, "guess").sign("GET", who), b""),
        "unknown key id": (
            who,
            make.PartnerKey("pk_unknown", partner.secret).sign("GET", who),
            b"",
        ),
        "no signature": (who, {k: v for k, v in signed.items() if k != "OC-Signature"}, b""),
        "garbage timestamp": (who, {**partner.sign("GET", who), "OC-Timestamp": "soon"}, b""),
    }
    for name, (path, headers, data) in cases.items():
        response = await send("GET", path, headers, data)
        assert response.status == 401, name
        assert await error_code(response) == "bad_signature", name
    stale = partner.sign("GET", "/v1/whoami", timestamp=now - 301)
    response = await send("GET", "/v1/whoami", stale)
    assert response.status == 401 and await error_code(response) == "stale_request"
    future = partner.sign("GET", "/v1/whoami", timestamp=now + 301)
    assert await error_code(await send("GET", "/v1/whoami", future)) == "stale_request"
    once = partner.sign("GET", "/v1/whoami")
    assert (await send("GET", "/v1/whoami", once)).status == 200
    replay = await send("GET", "/v1/whoami", once)
    assert replay.status == 401 and await error_code(replay) == "replayed_request"


async def test_partner_rotation_and_disabling(
    make_client: Any, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    keystore = Keystore(load_kek(config))
    async with pool.acquire() as conn:
        new_secret = await partners.rotate(conn, keystore, partner.key_id)
    client = await make_client()
    rotated = make.PartnerKey(partner.key_id, new_secret)
    for key in (partner, rotated):  # the old secret works during the grace period
        response = await client.get("/v1/whoami", headers=key.sign("GET", "/v1/whoami"))
        assert response.status == 200
    async with pool.acquire() as conn:
        assert await partners.set_status(conn, partner.key_id, "disabled")
    client = await make_client()
    response = await client.get("/v1/whoami", headers=rotated.sign("GET", "/v1/whoami"))
    assert response.status == 401 and await error_code(response) == "bad_signature"


async def test_a_terminal_signs_its_requests(client: ClientT, pool: asyncpg.Pool) -> None:
    terminal = await make.terminal(pool, operator="bus-7")
    response = await client.get("/v1/whoami", headers=terminal.sign("GET", "/v1/whoami"))
    assert response.status == 200
    assert await response.json() == {
        "kind": "terminal",
        "id": terminal.id,
        "role": None,
        "operator": "bus-7",
    }
    other = await make.terminal(pool)
    forged = {**terminal.sign("GET", "/v1/whoami"), "OC-Terminal": other.id}
    assert await error_code(await client.get("/v1/whoami", headers=forged)) == "bad_signature"
    stale = terminal.sign("GET", "/v1/whoami", timestamp=int(time.time()) - 400)
    assert await error_code(await client.get("/v1/whoami", headers=stale)) == "stale_request"
    once = terminal.sign("GET", "/v1/whoami")
    assert (await client.get("/v1/whoami", headers=once)).status == 200
    assert await error_code(await client.get("/v1/whoami", headers=once)) == "replayed_request"


async def test_callers_of_the_wrong_kind_are_403_and_strangers_401(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    partner = await make.partner(pool, config)
    terminal = await make.terminal(pool)
    admin = await make.admin_token(pool, config)
    assert (await client.get("/v1/wallet")).status == 401
    assert (await client.get("/v1/wallet")).headers["WWW-Authenticate"] == "Bearer"
    for headers in (partner.sign("GET", "/v1/wallet"), terminal.sign("GET", "/v1/wallet"), admin):
        response = await client.get("/v1/wallet", headers=headers)
        assert response.status == 403 and await error_code(response) == "forbidden"
    path = f"/v1/admin/riders/{rider.id}"
    for headers in (rider.auth, partner.sign("GET", path), terminal.sign("GET", path)):
        assert (await client.get(path, headers=headers)).status == 403
    assert (await client.get(path, headers=admin)).status == 200


async def test_auditors_only_read(client: ClientT, pool: asyncpg.Pool, config: Config) -> None:
    rider = await make.rider(client)
    auditor = await make.admin_token(pool, config, role="auditor")
    assert (await client.get(f"/v1/admin/riders/{rider.id}/wallet", headers=auditor)).status == 200
    response = await client.post(
        "/v1/admin/adjustments",
        json={"rider_id": rider.id, "amount_fen": 100, "reason": "gift"},
        headers={**auditor, "Idempotency-Key": "auditor-1"},
    )
    assert response.status == 403
    assert (await (await client.get("/v1/wallet", headers=rider.auth)).json())["balance_fen"] == 0


async def test_bola_sweep_every_route_with_an_object_id(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    """Every route with an id in its path, tried by every principal that does not own it."""
    riders = [await make.rider(client) for _ in range(2)]
    partner_keys = [await make.partner(pool, config) for _ in range(2)]
    terminal_keys = [await make.terminal(pool) for _ in range(2)]
    admin = await make.admin_token(pool, config)
    for n, rider in enumerate(riders):
        response = await client.post(
            "/v1/admin/adjustments",
            json={"rider_id": rider.id, "amount_fen": 100 + n, "reason": "seed"},
            headers={**admin, "Idempotency-Key": f"bola-{rider.id}"},
        )
        assert response.status == 201
    txns = [
        (await (await client.get("/v1/wallet/transactions", headers=r.auth)).json())["items"][0][
            "txn_id"
        ]
        for r in riders
    ]
    qr_codes = [
        (await (await client.post("/v1/qr/codes", headers=r.auth)).json())["id"] for r in riders
    ]
    # Objects each principal owns, by path parameter.
    owned: list[dict[str, str]] = (
        [
            {
                "txn_id": str(txns[n]),
                "session_id": riders[n].session,
                "rider_id": str(riders[n].id),
                "code_id": qr_codes[n],
            }
            for n in range(2)
        ]
        + [{"key_id": p.key_id} for p in partner_keys]
        + [{"terminal_id": t.id} for t in terminal_keys]
    )

    def headers_of(index: int, method: str, path: str) -> dict[str, str]:
        if index < 2:
            return riders[index].auth
        if index < 4:
            return partner_keys[index - 2].sign(method, path)
        return terminal_keys[index - 4].sign(method, path)

    document = await (await client.get("/openapi.json")).json()
    swept = 0
    owners_own: list[tuple[str, str, int]] = []
    for template, item in document["paths"].items():
        if "{" not in template or template.startswith("/v1/admin/"):
            continue
        for method in item:
            for owner, objects in enumerate(owned):
                if not all(
                    f"{{{name}}}" not in template or name in objects for name in _params(template)
                ):
                    continue
                path = template
                for name, value in objects.items():
                    path = path.replace(f"{{{name}}}", value)
                for caller in range(len(owned)):
                    if caller == owner:
                        continue
                    response = await client.request(
                        method.upper(), path, headers=headers_of(caller, method.upper(), path)
                    )
                    assert response.status in (403, 404), (method, path, caller, response.status)
                    swept += 1
                owners_own.append((method.upper(), path, owner))
    # Each owner reaches its own objects (deletions last: they end the caller's session).
    for method, path, owner in sorted(owners_own, key=lambda call: call[0] == "DELETE"):
        own = await client.request(method, path, headers=headers_of(owner, method, path))
        assert own.status in (200, 204), (method, path, owner, await own.text())
    assert swept >= 4 * 5  # four routes with ids, five foreign callers each
    # The admin routes with ids exist for operators only.
    for path in (f"/v1/admin/riders/{riders[0].id}", f"/v1/admin/riders/{riders[0].id}/wallet"):
        for caller in range(6):
            assert (await client.get(path, headers=headers_of(caller, "GET", path))).status == 403


def _params(template: str) -> list[str]:
    # A parameter may share its segment with a suffix: /v1/qr/codes/{code_id}.png
    return [part[1 : part.index("}")] for part in template.split("/") if part.startswith("{")]


async def test_without_redis_riders_and_terminals_still_work_partners_wait(
    make_client: Any, client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    partner = await make.partner(pool, config)
    terminal = await make.terminal(pool)
    broken = await make_client(redis_url="redis://127.0.0.1:1/0")
    assert (await broken.get("/v1/me", headers=rider.auth)).status == 200
    login = await broken.post(
        "/v1/sessions", json={"phone": rider.phone, "password": make.PASSWORD}
    )
    assert login.status == 201
    assert (
        await broken.get("/v1/whoami", headers=terminal.sign("GET", "/v1/whoami"))
    ).status == 200
    response = await broken.get("/v1/whoami", headers=partner.sign("GET", "/v1/whoami"))
    assert response.status == 503 and await error_code(response) == "service_unavailable"
    metrics = await (await broken.get("/metrics")).text()
    assert 'onecard_redis_degraded_total{check="rate_limit"}' in metrics


def onecard(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
               ONECARD_KEK=config.kek, ONECARD_REDIS_PREFIX=config.redis_prefix)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


async def test_operator_commands_from_the_shell(
    client: ClientT, make_client: Any, config: Config
) -> None:
    created = await asyncio.to_thread(onecard, config, "partners", "create", "City App")
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    partner = make.PartnerKey(fields["key id"].strip(), fields["secret"].strip())
    assert (await client.get("/v1/whoami", headers=partner.sign("GET", "/v1/whoami"))).status == 200
    registered = await asyncio.to_thread(
        onecard, config, "terminals", "register", "--operator", "metro", "--id", "a1b2c3d4e5f6"
    )
    assert registered.returncode == 0, registered.stderr
    assert "A1B2C3D4E5F6" in registered.stdout and "private key:" in registered.stdout
    again = await asyncio.to_thread(
        onecard, config, "terminals", "register", "--operator", "metro", "--id", "A1B2C3D4E5F6"
    )
    assert again.returncode == 1 and "already registered" in again.stdout
    bad = await asyncio.to_thread(
        onecard, config, "terminals", "register", "--operator", "metro", "--id", "xyz"
    )
    assert bad.returncode == 1 and "12 hex digits" in bad.stdout
    token = await asyncio.to_thread(
        onecard,
        config,
        "admin",
        "create-token",
        "--role",
        "auditor",
        "--ttl",
        "30m",
        "--name",
        "li.wei",
    )
    assert token.returncode == 0, token.stderr
    auth = {"Authorization": f"Bearer {token.stdout.strip()}"}
    response = await client.get("/v1/whoami", headers=auth)
    assert await response.json() == {
        "kind": "admin",
        "id": "li.wei",
        "role": "auditor",
        "operator": None,
    }
    too_long = await asyncio.to_thread(
        onecard,
        config,
        "admin",
        "create-token",
        "--role",
        "admin",
        "--ttl",
        "30d",
        "--name",
        "li.wei",
    )
    assert too_long.returncode == 2 and "ONECARD_ADMIN_TOKEN_TTL_MAX_S" in too_long.stderr
    limited = await asyncio.to_thread(
        onecard, config, "partners", "set-limit", partner.key_id, "--per-s", "1", "--burst", "2"
    )
    assert limited.returncode == 0, limited.stderr
    fresh = await make_client()  # a gateway that has not cached the partner yet
    statuses = [
        (await fresh.get("/v1/whoami", headers=partner.sign("GET", "/v1/whoami"))).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    disabled = await asyncio.to_thread(onecard, config, "partners", "disable", partner.key_id)
    assert disabled.returncode == 0


async def test_a_disabled_rider_is_out_at_once_and_back_when_enabled(
    client: ClientT, config: Config
) -> None:
    rider = await make.rider(client)
    disabled = await asyncio.to_thread(onecard, config, "riders", "disable", rider.phone)
    assert disabled.returncode == 0, disabled.stderr
    assert (await client.get("/v1/wallet", headers=rider.auth)).status == 401
    refresh = await client.post("/v1/sessions/refresh", json={"refresh_token": rider.refresh})
    assert refresh.status == 401
    login = {"phone": rider.phone, "password": make.PASSWORD}
    assert (await client.post("/v1/sessions", json=login)).status == 401
    enabled = await asyncio.to_thread(onecard, config, "riders", "enable", rider.phone)
    assert enabled.returncode == 0, enabled.stderr
    assert (await client.post("/v1/sessions", json=login)).status == 201
    unknown = await asyncio.to_thread(onecard, config, "riders", "disable", "+8613000000000")
    assert unknown.returncode == 1


async def test_without_redis_a_logged_out_session_stays_logged_out(
    make_client: Any, client: ClientT
) -> None:
    rider = await make.rider(client)
    assert (await client.delete("/v1/sessions/current", headers=rider.auth)).status == 204
    broken = await make_client(redis_url="redis://127.0.0.1:1/0")
    response = await broken.get("/v1/me", headers=rider.auth)
    assert response.status == 401 and await error_code(response) == "token_invalid"
    other = await make.rider(client)
    assert (await broken.get("/v1/me", headers=other.auth)).status == 200
