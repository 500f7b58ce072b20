"""QR rides uploaded by gates: one debit per code, replays refused with or without Redis, every
refusal reason, the deny list on an empty wallet, bounded batches."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.qr_codes.service import QR_CODES
from qr.format import encode_text
from qr.phone import Phone, generate_device_key
from qr.signing import generate_private_key, issue_certificate, issue_online_code
from tests.gateway import identity_helpers as make

ClientT = TestClient[Any, Any]


def ride(code: bytes | str, fare_fen: int, tapped_at: int) -> dict[str, Any]:
    text = code if isinstance(code, str) else encode_text(code)
    return {"code": text, "fare_fen": fare_fen, "tapped_at": tapped_at}


async def results(response: Any) -> list[tuple[str, str | None]]:
    assert response.status == 200, await response.text()
    return [(r["status"], r["reason"]) for r in (await response.json())["results"]]


async def balance(client: ClientT, rider: make.RiderLogin) -> int:
    body = await (await client.get("/v1/wallet", headers=rider.auth)).json()
    return int(body["balance_fen"])


async def funded_phone(
    client: ClientT, pool: asyncpg.Pool, config: Config, amount_fen: int
) -> tuple[make.RiderLogin, Phone]:
    rider = await make.rider(client)
    await make.fund(client, pool, config, rider.id, amount_fen)
    phone, _ = await make.qr_certificate(client, rider)
    return rider, phone


async def test_a_ride_debits_once_and_the_same_batch_again_is_duplicate(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 1000)
    gate = await make.terminal(pool, operator="metro-line-2")
    now = int(time.time())
    online = await (await client.post("/v1/qr/codes", headers=rider.auth)).json()
    batch = [ride(phone.make_code(now), 300, now), ride(online["code"], 200, now)]
    first = await make.upload_rides(client, gate, batch)
    assert await results(first) == [("accepted", None), ("accepted", None)]
    ride_ids = [r["ride_id"] for r in (await first.json())["results"]]
    assert await balance(client, rider) == 500
    again = await make.upload_rides(client, gate, batch)
    assert await results(again) == [("duplicate", None), ("duplicate", None)]
    metrics = await (await client.get("/metrics")).text()
    assert 'onecard_qr_rides_total{status="accepted",reason=""}' in metrics
    assert 'onecard_qr_rides_total{status="duplicate",reason=""}' in metrics
    assert [r["ride_id"] for r in (await again.json())["results"]] == ride_ids
    assert await balance(client, rider) == 500
    statement = await (await client.get("/v1/wallet/transactions", headers=rider.auth)).json()
    rides = [t for t in statement["items"] if t["kind"] == "qr_ride"]
    assert sorted(t["amount_fen"] for t in rides) == [-300, -200]
    assert all(gate.id in t["memo"] for t in rides)
    async with pool.acquire() as conn:
        payable = await conn.fetchval(
            "SELECT balance_fen FROM ledger_accounts "
            "WHERE kind = 'operator_payable' AND owner = $1",
            "metro-line-2",
        )
    assert payable == 500


async def test_replays_across_gates_are_refused_even_after_redis_forgets(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 1000)
    gates = [await make.terminal(pool) for _ in range(3)]
    now = int(time.time())
    code = phone.make_code(now)
    assert await results(await make.upload_rides(client, gates[0], [ride(code, 100, now)])) == [
        ("accepted", None)
    ]
    # Same code at another gate: refused by Redis at once.
    assert await results(await make.upload_rides(client, gates[1], [ride(code, 100, now)])) == [
        ("rejected", "replayed")
    ]
    # Forget every ride Redis holds for this test session (only this session's keys).
    client_redis = redis.Redis.from_url(config.redis_url)
    keys = [k async for k in client_redis.scan_iter(match=f"{config.redis_prefix}qr-ride:*")]
    assert keys
    await client_redis.delete(*keys)
    await client_redis.aclose()
    assert await results(await make.upload_rides(client, gates[2], [ride(code, 100, now)])) == [
        ("rejected", "replayed")
    ]
    assert await results(await make.upload_rides(client, gates[0], [ride(code, 100, now)])) == [
        ("duplicate", None)
    ]
    assert await balance(client, rider) == 900


async def test_concurrent_uploads_of_the_same_rides_from_two_gates_debit_once(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 2000)
    gates = [await make.terminal(pool) for _ in range(2)]
    now = int(time.time())
    batch = [ride(phone.make_code(now), 100, now) for _ in range(5)]
    answers = await asyncio.gather(*(make.upload_rides(client, g, batch) for g in gates))
    for per_code in zip(*[await results(a) for a in answers], strict=True):
        assert sorted(per_code) == [("accepted", None), ("rejected", "replayed")], per_code
    assert await balance(client, rider) == 2000 - 5 * 100


async def test_concurrent_uploads_without_redis_still_debit_once(
    client: ClientT, make_client: Any, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 1000)
    gates = [await make.terminal(pool) for _ in range(2)]
    no_redis = await make_client(redis_url="redis://127.0.0.1:1/0")
    now = int(time.time())
    batch = [ride(phone.make_code(now), 70, now) for _ in range(5)]
    answers = await asyncio.gather(*(make.upload_rides(no_redis, g, batch) for g in gates))
    for per_code in zip(*[await results(a) for a in answers], strict=True):
        assert sorted(per_code) == [("accepted", None), ("rejected", "replayed")], per_code
    assert await balance(client, rider) == 1000 - 5 * 70


async def test_an_unpaid_fare_is_refused_and_the_account_deny_listed(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 500)
    gate = await make.terminal(pool)
    now = int(time.time())
    upload = [ride(phone.make_code(now), 300, now), ride(phone.make_code(now), 300, now)]
    assert await results(await make.upload_rides(client, gate, upload)) == [
        ("accepted", None), ("rejected", "insufficient_balance")
    ]  # fmt: skip
    assert await balance(client, rider) == 200
    path = "/v1/qr/deny-list?since=0"
    delta = await (await client.get(path, headers=gate.sign("GET", path))).json()
    mine = [e for e in delta["entries"] if e["account_id"] == rider.id]
    assert [(e["kind"], e["action"]) for e in mine] == [("account", "add")]
    # The gate uploading the refused ride again gets the same answer; nothing is debited.
    assert (await results(await make.upload_rides(client, gate, upload)))[1] == (
        "rejected", "insufficient_balance"
    )  # fmt: skip
    later = int(time.time())
    assert await results(
        await make.upload_rides(client, gate, [ride(phone.make_code(later), 10, later)])
    ) == [("rejected", "account_denied")]
    # Money back, a new code: off the list, riding again.
    await make.fund(client, pool, config, rider.id, 1000)
    assert (await client.post("/v1/qr/codes", headers=rider.auth)).status == 201
    since = mine[-1]["version"]
    path = f"/v1/qr/deny-list?since={since}"
    delta = await (await client.get(path, headers=gate.sign("GET", path))).json()
    assert [
        (e["account_id"], e["action"]) for e in delta["entries"] if e["account_id"] == rider.id
    ] == [(rider.id, "remove")]
    await asyncio.sleep(1.01)  # a tap in a second after the lift
    after = int(time.time())
    assert await results(
        await make.upload_rides(client, gate, [ride(phone.make_code(after), 10, after)])
    ) == [("accepted", None)]
    assert await balance(client, rider) == 1190


async def test_every_refusal_reason_surfaces_and_nothing_is_debited(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 1000)
    gate = await make.terminal(pool)
    issuer = await client.server.app[QR_CODES].keys.current()
    now = int(time.time())
    device = generate_device_key()

    def cert_phone(valid_from: int, valid_until: int, key: Any = issuer.private) -> Phone:
        cert = issue_certificate(
            key, issuer.key_id, rider.id, device.public_key(), valid_from, valid_until, 500
        )
        return Phone(cert, device)

    foreign = generate_private_key()
    unknown_id = Phone(
        issue_certificate(foreign, 250, rider.id, device.public_key(), now - 60, now + 600, 500),
        device,
    )
    tampered = bytearray(phone.make_code(now))
    tampered[-1] ^= 1
    stale_online = issue_online_code(issuer.private, issuer.key_id, rider.id, now - 100)
    future_online = issue_online_code(issuer.private, issuer.key_id, rider.id, now + 60)
    too_old = now - config.qr_ride_age_max_s - 10
    forged = cert_phone(now - 60, now + 600, foreign)
    cases = [
        (ride("not a code!", 100, now), "malformed"),
        (ride("T0MBAQ", 100, now), "malformed"),
        (ride(unknown_id.make_code(now), 100, now), "unknown_issuer_key"),
        (ride(forged.make_code(now), 1, now), "bad_issuer_signature"),
        (ride(cert_phone(now - 600, now - 60).make_code(now), 100, now), "certificate_expired"),
        (ride(cert_phone(now + 60, now + 600).make_code(now), 1, now), "certificate_not_yet_valid"),
        (ride(phone.make_code(now - 120), 100, now), "code_expired"),
        (ride(phone.make_code(now + 30), 100, now), "code_from_future"),
        (ride(bytes(tampered), 100, now), "bad_device_signature"),
        (ride(stale_online.to_bytes(), 100, now), "code_expired"),
        (ride(future_online.to_bytes(), 100, now), "code_from_future"),
        (ride(phone.make_code(now), 100, now + 3600), "tap_time_out_of_window"),
        (ride(phone.make_code(now), 100, too_old), "tap_time_out_of_window"),
        (ride(phone.make_code(now), phone.certificate.ceiling_fen + 1, now), "fare_above_ceiling"),
        (ride(issue_online_code(issuer.private, issuer.key_id, rider.id, now).to_bytes(),
              config.qr_ride_ceiling_fen_max + 1, now), "fare_above_ceiling"),
    ]  # fmt: skip
    response = await make.upload_rides(client, gate, [r for r, _ in cases])
    assert await results(response) == [("rejected", reason) for _, reason in cases]
    assert await balance(client, rider) == 1000


async def test_a_full_batch_of_a_thousand_offline_rides_fits_one_request(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 100_000)
    gate = await make.terminal(pool)
    now = int(time.time())
    batch = [ride(phone.make_code(now), 7, now) for _ in range(1000)]
    response = await make.upload_rides(client, gate, batch)
    assert len(json.dumps({"rides": batch})) > 64 * 1024  # above the default body bound
    assert await results(response) == [("accepted", None)] * 1000
    assert await balance(client, rider) == 100_000 - 7_000
    huge = [ride("A" * 300, 7, now)] * 2000  # 1,000 rides are < 400 KiB; this is > 512 KiB
    response = await make.upload_rides(client, gate, huge)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "body_too_large"


async def test_batches_are_bounded_and_malformed_entries_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    rider, phone = await funded_phone(client, pool, config, 1000)
    gate = await make.terminal(pool)
    now = int(time.time())
    response = await make.upload_rides(client, gate, [ride("A", 1, now)] * 1001)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "qr_batch_too_large"
    good = ride(phone.make_code(now), 100, now)
    for bad in (
        {**good, "fare_fen": 0},
        {**good, "fare_fen": "100"},
        {"code": good["code"], "fare_fen": 100},
        {**good, "tapped_at": -1},
        {**good, "code": "A" * 1000},
        {**good, "gate": "extra"},
    ):
        response = await make.upload_rides(client, gate, [good, bad])
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "validation_failed"
    assert await results(await make.upload_rides(client, gate, [])) == []
    # Riders do not upload rides.
    response = await client.post("/v1/qr/rides", json={"rides": [good]}, headers=rider.auth)
    assert response.status == 403
    assert await balance(client, rider) == 1000


async def test_uploads_of_unknown_key_ids_never_exhaust_the_pool(
    make_client: Any, pool: asyncpg.Pool
) -> None:
    """Each upload of a code with an unknown issuer key id reloads the keys, which takes a
    connection: uploads must not hold one while they wait for it (a pool of 2, 4 uploads)."""
    from gateway.qr_codes import issuer_keys
    from qr.phone import Phone, generate_device_key
    from qr.signing import generate_private_key, issue_certificate

    client = await make_client(db_pool_size_min=1, db_pool_size_max=2)
    gate = await make.terminal(pool)
    await asyncio.sleep(issuer_keys.RELOAD_INTERVAL_S + 0.5)  # the keys may be reloaded now
    now = int(time.time())
    device = generate_device_key()
    certificate = issue_certificate(
        generate_private_key(), 250, 1, device.public_key(), now - 60, now + 600, 500
    )
    code = Phone(certificate, device).make_code(now)
    uploads = [make.upload_rides(client, gate, [ride(code, 100, now)]) for _ in range(4)]
    responses = await asyncio.wait_for(asyncio.gather(*uploads), 15)
    for response in responses:
        assert await results(response) == [("rejected", "unknown_issuer_key")]
