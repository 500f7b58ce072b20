"""QR ride codes from the rider's and the gate's side: certificates, one device per rider,
issuer keys and their rotation, online codes and their images, the signed deny list."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.config import Config
from qr.format import OnlineCode, encode_text
from qr.phone import generate_device_key
from qr.signing import (
    decode_public_key,
    device_fingerprint,
    encode_public_key,
    sign_challenge,
    verify_raw,
)
from qr.verify import verify
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


async def error_code(response: Any) -> str:
    return (await response.json())["error"]["code"]


async def published_keys(client: ClientT, gate: make.TerminalKey) -> dict[int, Any]:
    response = await client.get(
        "/v1/qr/issuer-keys", headers=gate.sign("GET", "/v1/qr/issuer-keys")
    )
    assert response.status == 200, await response.text()
    return {
        k["key_id"]: decode_public_key(bytes.fromhex(k["public_key"]))
        for k in (await response.json())["keys"]
    }


async def deny_delta(client: ClientT, gate: make.TerminalKey, since: int = 0) -> dict[str, Any]:
    path = f"/v1/qr/deny-list?since={since}"
    response = await client.get(path, headers=gate.sign("GET", path))
    assert response.status == 200, await response.text()
    key_id = int(response.headers["OC-Signature-Key-Id"])
    signature = bytes.fromhex(response.headers["OC-Signature"])
    body = await response.read()
    keys = await published_keys(client, gate)
    assert verify_raw(keys[key_id], signature, body), "the deny list is signed by an issuer key"
    assert not verify_raw(keys[key_id], signature, body + b" ")
    result: dict[str, Any] = await response.json()
    return result


async def test_a_proven_device_gets_a_certificate_gates_verify(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    await make.fund(client, pool, config, rider.id, 5000)
    phone, body = await make.qr_certificate(client, rider)
    cert = phone.certificate
    now = int(time.time())
    assert cert.account_id == body["account_id"] == rider.id
    assert cert.ceiling_fen == body["ceiling_fen"] == config.qr_ride_ceiling_fen_max  # 2000 < 5000
    assert cert.valid_until - now in range(
        config.qr_certificate_ttl_s - 5, config.qr_certificate_ttl_s + 1
    )
    assert cert.valid_from <= now
    assert body["device_fingerprint"] == device_fingerprint(cert.device_public_key).hex()
    assert body["revoked_device_fingerprint"] is None
    gate = await make.terminal(pool)
    verdict = verify(phone.make_code(now), await published_keys(client, gate), now)
    assert verdict.ok and verdict.account_id == rider.id, verdict
    # A small balance makes a small ceiling.
    poorer = await make.rider(client)
    await make.fund(client, pool, config, poorer.id, 150)
    assert (await make.qr_certificate(client, poorer))[0].certificate.ceiling_fen == 150


async def test_bad_proofs_keys_and_challenges_are_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, other = await make.rider(client), await make.rider(client)
    await make.fund(client, pool, config, rider.id, 500)
    device = generate_device_key()
    public = encode_public_key(device.public_key()).hex()

    async def challenge(login: make.RiderLogin = rider) -> bytes:
        response = await client.post("/v1/qr/challenges", headers=login.auth)
        assert response.status == 201
        return bytes.fromhex((await response.json())["challenge"])

    async def certify(body: dict[str, str], login: make.RiderLogin = rider) -> Any:
        return await client.post("/v1/qr/certificates", headers=login.auth, json=body)

    # A signature over another challenge, or by another key, proves nothing.
    first, second = await challenge(), await challenge()
    wrong = sign_challenge(device, second).hex()
    response = await certify(
        {"challenge": first.hex(), "device_public_key": public, "signature": wrong}
    )
    assert response.status == 422 and await error_code(response) == "qr_proof_invalid"
    # ... and the challenge is used up by the attempt.
    right = sign_challenge(device, first).hex()
    response = await certify(
        {"challenge": first.hex(), "device_public_key": public, "signature": right}
    )
    assert response.status == 400 and await error_code(response) == "qr_challenge_invalid"
    other_key = sign_challenge(generate_device_key(), second).hex()
    response = await certify(
        {"challenge": second.hex(), "device_public_key": public, "signature": other_key}
    )
    assert response.status == 422
    # A challenge is single use.
    third = await challenge()
    good = {"challenge": third.hex(), "device_public_key": public,
            "signature": sign_challenge(device, third).hex()}  # fmt: skip
    assert (await certify(good)).status == 201
    response = await certify(good)
    assert response.status == 400 and await error_code(response) == "qr_challenge_invalid"
    # Another rider's challenge, or one never handed out.
    theirs = await challenge(other)
    response = await certify({"challenge": theirs.hex(), "device_public_key": public,
                              "signature": sign_challenge(device, theirs).hex()})  # fmt: skip
    assert response.status == 400 and await error_code(response) == "qr_challenge_invalid"
    made_up = os.urandom(32)
    response = await certify({"challenge": made_up.hex(), "device_public_key": public,
                              "signature": sign_challenge(device, made_up).hex()})  # fmt: skip
    assert response.status == 400 and await error_code(response) == "qr_challenge_invalid"
    # A compressed point whose x is not on the curve, and one with a bad prefix.
    off_curve = next(
        candidate for x in range(1, 100)
        if not _on_curve(candidate := bytes([2]) + x.to_bytes(32, "big"))
    )  # fmt: skip
    for key in (off_curve, bytes([5]) + bytes.fromhex(public)[1:]):
        fresh = await challenge()
        response = await certify({"challenge": fresh.hex(), "device_public_key": key.hex(),
                                  "signature": sign_challenge(device, fresh).hex()})  # fmt: skip
        assert response.status == 400 and await error_code(response) == "qr_device_key_invalid"
    # Shapes the schema refuses.
    shaped = {"challenge": first.hex(), "device_public_key": public, "signature": right}
    for bad in ({**shaped, "challenge": "zz"}, {**shaped, "device_public_key": public[:-2]},
                {**shaped, "x": "1"}):  # fmt: skip
        response = await certify(bad)
        assert response.status == 400 and await error_code(response) == "validation_failed"
    # Nothing to ride on: no certificate.
    broke = await make.rider(client)
    fresh = await challenge(broke)
    response = await certify({"challenge": fresh.hex(), "device_public_key": public,
                              "signature": sign_challenge(device, fresh).hex()}, broke)  # fmt: skip
    assert response.status == 422 and await error_code(response) == "insufficient_balance"
    # Terminals and anonymous callers do not get challenges.
    gate = await make.terminal(pool)
    assert (
        await client.post("/v1/qr/challenges", headers=gate.sign("POST", "/v1/qr/challenges"))
    ).status == 403
    assert (await client.post("/v1/qr/challenges")).status == 401


def _on_curve(point: bytes) -> bool:
    try:
        decode_public_key(point)
    except ValueError:
        return False
    return True


async def test_one_device_per_rider_the_old_one_is_deny_listed(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider = await make.rider(client)
    await make.fund(client, pool, config, rider.id, 1000)
    gate = await make.terminal(pool)
    since = (await deny_delta(client, gate, 0))["version"]
    old_phone, _ = await make.qr_certificate(client, rider)
    # The same device again: a new certificate, nothing revoked.
    _, again = await make.qr_certificate(client, rider, old_phone._device_key)
    assert again["revoked_device_fingerprint"] is None
    new_phone, body = await make.qr_certificate(client, rider)
    old_fp = device_fingerprint(old_phone.certificate.device_public_key).hex()
    assert body["revoked_device_fingerprint"] == old_fp
    delta = await deny_delta(client, gate, since)
    mine = [e for e in delta["entries"] if e["device_fingerprint"] == old_fp]
    assert len(mine) == 1 and mine[0]["kind"] == "device" and mine[0]["action"] == "add"
    assert mine[0]["expires_at"] == old_phone.certificate.valid_until
    assert delta["version"] >= mine[0]["version"] > since and delta["more"] is False
    assert (await deny_delta(client, gate, delta["version"]))["entries"] == []
    for since in ("-1", "x", "9" * 25):
        path = f"/v1/qr/deny-list?since={since}"
        response = await client.get(path, headers=gate.sign("GET", path))
        assert response.status == 400 and await error_code(response) == "validation_failed"
    # Gates and the gateway refuse the old device's codes now, and take the new one's.
    now = int(time.time())
    response = await make.upload_rides(client, gate, [
        {"code": encode_text(old_phone.make_code(now)), "fare_fen": 200, "tapped_at": now},
        # Another second: (account, generated at, counter) is the replay key, whatever device.
        {"code": encode_text(new_phone.make_code(now - 1)), "fare_fen": 200, "tapped_at": now},
    ])  # fmt: skip
    results = (await response.json())["results"]
    assert [(r["status"], r["reason"]) for r in results] == [
        ("rejected", "device_revoked"),
        ("accepted", None),
    ]
    # A device key speaks for one rider only.
    other = await make.rider(client)
    await make.fund(client, pool, config, other.id, 100)
    response = await client.post("/v1/qr/challenges", headers=other.auth)
    challenge = bytes.fromhex((await response.json())["challenge"])
    response = await client.post("/v1/qr/certificates", headers=other.auth, json={
        "challenge": challenge.hex(),
        "device_public_key": new_phone.certificate.device_public_key.hex(),
        "signature": sign_challenge(new_phone._device_key, challenge).hex(),
    })  # fmt: skip
    assert response.status == 409 and await error_code(response) == "qr_device_in_use"


async def test_a_stolen_revoked_device_key_cannot_be_revived_by_another_rider(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    victim = await make.rider(client)
    await make.fund(client, pool, config, victim.id, 1000)
    gate = await make.terminal(pool)
    stolen_phone, _ = await make.qr_certificate(client, victim)
    await make.qr_certificate(client, victim)  # the victim's new phone revokes the stolen one
    thief = await make.rider(client)
    await make.fund(client, pool, config, thief.id, 100)
    response = await client.post("/v1/qr/challenges", headers=thief.auth)
    challenge = bytes.fromhex((await response.json())["challenge"])
    response = await client.post("/v1/qr/certificates", headers=thief.auth, json={
        "challenge": challenge.hex(),
        "device_public_key": stolen_phone.certificate.device_public_key.hex(),
        "signature": sign_challenge(stolen_phone._device_key, challenge).hex(),
    })  # fmt: skip
    assert response.status == 409 and await error_code(response) == "qr_device_in_use"
    now = int(time.time())
    code = encode_text(stolen_phone.make_code(now))
    response = await make.upload_rides(
        client, gate, [{"code": code, "fare_fen": 600, "tapped_at": now}]
    )
    results = (await response.json())["results"]
    assert [(r["status"], r["reason"]) for r in results] == [("rejected", "device_revoked")]
    wallet = await (await client.get("/v1/wallet", headers=victim.auth)).json()
    assert wallet["balance_fen"] == 1000


async def test_only_a_deny_for_want_of_money_lifts_itself(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    from gateway.taps import deny_list

    rider = await make.rider(client)
    await make.fund(client, pool, config, rider.id, 500)
    async with pool.acquire() as conn, conn.transaction():
        await deny_list.deny_account(conn, rider.id, "fraud_suspected")
    response = await client.post("/v1/qr/codes", headers=rider.auth)
    assert response.status == 403 and await error_code(response) == "qr_account_denied"
    device = generate_device_key()
    challenge = bytes.fromhex(
        (await (await client.post("/v1/qr/challenges", headers=rider.auth)).json())["challenge"]
    )
    response = await client.post("/v1/qr/certificates", headers=rider.auth, json={
        "challenge": challenge.hex(),
        "device_public_key": encode_public_key(device.public_key()).hex(),
        "signature": sign_challenge(device, challenge).hex(),
    })  # fmt: skip
    assert response.status == 403 and await error_code(response) == "qr_account_denied"
    async with pool.acquire() as conn:
        assert await deny_list.denial_reason(conn, rider.id) == "fraud_suspected"


async def test_issuer_keys_are_for_terminals_with_etag(client: ClientT, pool: asyncpg.Pool) -> None:
    gate = await make.terminal(pool)
    path = "/v1/qr/issuer-keys"
    response = await client.get(path, headers=gate.sign("GET", path))
    assert response.status == 200
    etag = response.headers["ETag"]
    keys = (await response.json())["keys"]
    assert keys and all(1 <= k["key_id"] <= 255 and len(k["public_key"]) == 66 for k in keys)
    assert sum(k["valid_until"] is None for k in keys) == 1  # the current key
    response = await client.get(path, headers={**gate.sign("GET", path), "If-None-Match": etag})
    assert response.status == 304 and response.headers["ETag"] == etag
    assert await response.read() == b""
    stale = {**gate.sign("GET", path), "If-None-Match": '"something-else"'}
    assert (await client.get(path, headers=stale)).status == 200
    rider = await make.rider(client)
    assert (await client.get(path, headers=rider.auth)).status == 403
    assert (await client.get(path)).status == 401


async def test_rotation_new_key_id_old_certificates_keep_verifying(
    make_client: Any, pool: asyncpg.Pool, config: Config
) -> None:
    before = await make_client()
    rider = await make.rider(before)
    await make.fund(before, pool, config, rider.id, 1000)
    old_phone, _ = await make.qr_certificate(before, rider)
    gate = await make.terminal(pool)
    path = "/v1/qr/issuer-keys"
    etag = (await before.get(path, headers=gate.sign("GET", path))).headers["ETag"]
    rotated = await asyncio.to_thread(_onecard, config, "qr", "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    new_id = int(rotated.stdout.split("new QR issuer key ")[1].split(";")[0])
    assert new_id != old_phone.certificate.issuer_key_id
    after = await make_client()
    response = await after.get(path, headers={**gate.sign("GET", path), "If-None-Match": etag})
    assert response.status == 200 and response.headers["ETag"] != etag
    listed = {k["key_id"]: k for k in (await response.json())["keys"]}
    old = listed[old_phone.certificate.issuer_key_id]
    assert listed[new_id]["valid_until"] is None
    assert old["valid_until"] >= old_phone.certificate.valid_until  # verifies its certificates
    new_phone, _ = await make.qr_certificate(after, rider, generate_device_key())
    assert new_phone.certificate.issuer_key_id == new_id
    code = await after.post("/v1/qr/codes", headers=rider.auth)
    assert OnlineCode.from_text((await code.json())["code"]).issuer_key_id == new_id
    # Codes under the old certificate still verify at a gate holding the published keys.
    now = int(time.time())
    keys = await published_keys(after, gate)
    assert verify(old_phone.make_code(now), keys, now).ok
    assert verify(new_phone.make_code(now), keys, now).ok
    response = await make.upload_rides(after, gate, [
        {"code": encode_text(new_phone.make_code(now)), "fare_fen": 100, "tapped_at": now},
    ])  # fmt: skip
    assert (await response.json())["results"][0]["status"] == "accepted"


def _onecard(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
               ONECARD_KEK=config.kek, ONECARD_REDIS_PREFIX=config.redis_prefix)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_online_codes_and_their_images_are_the_riders_own(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, other = await make.rider(client), await make.rider(client)
    response = await client.post("/v1/qr/codes", headers=rider.auth)
    assert response.status == 422 and await error_code(response) == "insufficient_balance"
    await make.fund(client, pool, config, rider.id, 300)
    response = await client.post("/v1/qr/codes", headers=rider.auth)
    assert response.status == 201, await response.text()
    body = await response.json()
    code = OnlineCode.from_text(body["code"])
    now = int(time.time())
    assert code.account_id == rider.id and body["id"] == code.nonce.hex()
    assert code.expires_at - code.issued_at == config.qr_code_ttl_s == 30
    assert abs(code.issued_at - now) <= 2
    png = await client.get(body["png_url"], headers=rider.auth)
    assert png.status == 200 and png.content_type == "image/png"
    assert (await png.read()).startswith(b"\x89PNG\r\n\x1a\n")
    svg = await client.get(body["svg_url"], headers=rider.auth)
    assert svg.status == 200 and svg.content_type == "image/svg+xml"
    assert b"<svg" in await svg.read()
    for url in (body["png_url"], body["svg_url"]):
        response = await client.get(url, headers=other.auth)
        assert response.status == 404 and await error_code(response) == "not_found"
    for url in ("/v1/qr/codes/0123456789abcdef.png", "/v1/qr/codes/nothex.svg"):
        assert (await client.get(url, headers=rider.auth)).status == 404
    gate = await make.terminal(pool)
    assert verify(body["code"], await published_keys(client, gate), now).ok
