"""The tap store and its set-based ingest: whole batches by many riders, wallets debited in
order with their floors, overlapping uploads from two gates, the one deny list with cards and
virtual cards, the migration from qr_rides / qr_deny_list, and random batches whose money adds
up."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import db
from gateway.areas import ledger_checks
from gateway.auth import riders
from gateway.ledger.verify import verify_ledger
from gateway.qr_codes.certificates import issue
from gateway.qr_codes.service import QR_CODES
from gateway.taps import deny_list
from gateway.wallet import adjust
from qr.format import encode_text
from qr.phone import Phone, generate_device_key
from qr.signing import decode_public_key, encode_public_key, verify_raw
from tests.gateway import identity_helpers as make
from tests.gateway.conftest import scratch_database

ClientT = TestClient[Any, Any]
_numbers = itertools.count(int(time.time() * 1000) % 10**7)


async def funded_riders(
    client: ClientT, pool: asyncpg.Pool, balances_fen: Sequence[int]
) -> list[tuple[int, Phone]]:
    """Riders with these balances, each with a certified phone, made through the domain code
    (the sign-up route hashes a password per rider: too slow for hundreds)."""
    keys = client.server.app[QR_CODES].keys
    made = []
    for balance in balances_fen:
        async with pool.acquire() as conn, conn.transaction():
            rider = await riders.create(conn, f"+86136{next(_numbers):08d}", "test-no-login")
            await adjust(conn, rider.id, 2000, "test funding", "test")
        device = generate_device_key()
        issued = await issue(
            pool,
            keys,
            rider.id,
            encode_public_key(device.public_key()),
            3600,
            2000,
            int(time.time()),
        )
        async with pool.acquire() as conn, conn.transaction():
            if balance != 2000:  # certificates ask for money: the ceiling is 2000 fen for all
                await adjust(conn, rider.id, balance - 2000, "test balance", "test")
        made.append((rider.id, Phone(issued.certificate, device)))
    return made


async def balances(pool: asyncpg.Pool, rider_ids: Sequence[int]) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT owner, balance_fen FROM ledger_accounts WHERE kind = 'rider_wallet' "
        "AND owner = ANY($1)",
        [str(r) for r in rider_ids],
    )
    return {int(row["owner"]): row["balance_fen"] for row in rows}


async def payable(pool: asyncpg.Pool, operator: str) -> int:
    value = await pool.fetchval(
        "SELECT balance_fen FROM ledger_accounts WHERE kind = 'operator_payable' AND owner = $1",
        operator,
    )
    return int(value or 0)


def ride(phone: Phone, fare_fen: int, at: int) -> dict[str, Any]:
    return {"code": encode_text(phone.make_code(at)), "fare_fen": fare_fen, "tapped_at": at}


async def answers(response: Any) -> list[tuple[str, str | None]]:
    assert response.status == 200, await response.text()
    return [(r["status"], r["reason"]) for r in (await response.json())["results"]]


def paid_in_order(balance_fen: int, fares: Sequence[int]) -> list[bool]:
    """Which fares a wallet pays, judged one after another against what is left."""
    paid = []
    for fare in fares:
        paid.append(fare <= balance_fen)
        balance_fen -= fare if fare <= balance_fen else 0
    return paid


async def test_a_batch_of_a_thousand_rides_by_many_riders_debits_each_wallet_exactly(
    client: ClientT, pool: asyncpg.Pool
) -> None:
    start = [500 + 37 * (i % 20) for i in range(200)]
    made = await funded_riders(client, pool, start)
    gate = await make.terminal(pool, operator="bus-1000")
    now = int(time.time())
    fares = [(i * 53) % 190 + 10 for i in range(1000)]
    owners = [i % len(made) for i in range(1000)]  # five rides each, interleaved
    batch = [ride(made[o][1], fare, now) for o, fare in zip(owners, fares, strict=True)]
    got = await answers(await make.upload_rides(client, gate, batch))
    expected: list[tuple[str, str | None]] = [("accepted", None)] * 1000
    paid_total = 0
    for o in range(len(made)):
        mine = [i for i in range(1000) if owners[i] == o]
        for i, paid in zip(mine, paid_in_order(start[o], [fares[i] for i in mine]), strict=True):
            expected[i] = ("accepted", None) if paid else ("rejected", "insufficient_balance")
            paid_total += fares[i] if paid else 0
    assert got == expected
    assert ("rejected", "insufficient_balance") in got  # some wallets ran out
    after = await balances(pool, [rider_id for rider_id, _ in made])
    for o, (rider_id, _) in enumerate(made):
        spent = sum(fares[i] for i in range(1000) if owners[i] == o and got[i][0] == "accepted")
        assert after[rider_id] == start[o] - spent >= 0
    assert await payable(pool, "bus-1000") == paid_total
    txns = await pool.fetchval(
        "SELECT count(*) FROM ledger_txns t JOIN taps ON taps.txn_id = t.id "
        "WHERE taps.operator = 'bus-1000' AND t.kind = 'qr_ride' AND t.ref = "
        "'qr:' || encode(taps.replay_key, 'hex')"
    )
    assert txns == sum(1 for status, _ in got if status == "accepted")


async def test_a_riders_rides_in_one_batch_are_debited_in_order_above_the_floor(
    client: ClientT, pool: asyncpg.Pool
) -> None:
    [(rider_id, phone)] = await funded_riders(client, pool, [500])
    gate = await make.terminal(pool)
    now = int(time.time()) - 30  # tapped a while ago, uploaded now
    batch = [ride(phone, 300, now), ride(phone, 300, now), ride(phone, 150, now)]
    assert await answers(await make.upload_rides(client, gate, batch)) == [
        ("accepted", None), ("rejected", "insufficient_balance"), ("accepted", None),
    ]  # fmt: skip
    assert (await balances(pool, [rider_id]))[rider_id] == 50
    assert await deny_list.denial_reason(pool, rider_id) == "insufficient_balance"
    # The same code twice in one batch is one ride: the second answer is the re-upload's.
    code = ride(phone, 20, now)
    assert await answers(await make.upload_rides(client, gate, [code, code])) == [
        ("accepted", None), ("duplicate", None),
    ]  # fmt: skip
    assert (await balances(pool, [rider_id]))[rider_id] == 30


@pytest.mark.parametrize("redis_up", [True, False])
async def test_two_gates_uploading_overlapping_batches_at_once_debit_each_ride_once(
    client: ClientT, make_client: Any, pool: asyncpg.Pool, redis_up: bool
) -> None:
    made = await funded_riders(client, pool, [1000] * 40)
    gates = [await make.terminal(pool, operator="metro-overlap") for _ in range(2)]
    uploader = client if redis_up else await make_client(redis_url="redis://127.0.0.1:1/0")
    before = await payable(pool, "metro-overlap")
    now = int(time.time())
    codes = [ride(phone, 100, now) for _, phone in made for _ in range(2)]  # 80 rides
    first, second = codes[:60], codes[20:][::-1]  # 40 in both, in opposite orders
    overlap = {one["code"] for one in first} & {one["code"] for one in second}
    assert len(overlap) == 40
    for round_ in range(3):  # lock order is what would deadlock: give it a few chances
        results = await asyncio.gather(
            make.upload_rides(uploader, gates[0], first),
            make.upload_rides(uploader, gates[1], second),
        )
        a, b = [await answers(r) for r in results]
        by_code: dict[str, list[tuple[str, str | None]]] = {}
        for sent, got in ((first, a), (second, b)):
            for one, answer in zip(sent, got, strict=True):
                by_code.setdefault(one["code"], []).append(answer)
        assert len(by_code) == 80
        for code, per_code in by_code.items():
            if round_ == 0:
                expected = [("accepted", None)]
                expected += [("rejected", "replayed")] if code in overlap else []
            else:  # a gate's own rides are duplicates now, the other's still replays
                expected = [("duplicate", None)]
                expected += [("rejected", "replayed")] if code in overlap else []
            assert sorted(per_code) == sorted(expected), per_code
    after = await balances(pool, [rider_id for rider_id, _ in made])
    assert all(balance == 800 for balance in after.values())
    assert await payable(pool, "metro-overlap") - before == 80 * 100


async def test_the_deny_list_names_cards_and_virtual_cards_in_version_order(
    client: ClientT, pool: asyncpg.Pool
) -> None:
    gate = await make.terminal(pool)
    since = (await signed_delta(client, gate, "/v1/taps/deny-list?since=0"))["version"]
    card = bytes.fromhex("31000000000000012345")
    virtual = bytes.fromhex("31990000000000000042")
    async with pool.acquire() as conn, conn.transaction():
        assert await deny_list.deny_card(conn, deny_list.Kind.CARD, card, "reported_lost")
        assert not await deny_list.deny_card(conn, deny_list.Kind.CARD, card, "again")
        expires = datetime.now(UTC) + timedelta(days=1)
        assert await deny_list.deny_card(
            conn, deny_list.Kind.VIRTUAL_CARD, virtual, "wallet_below_floor", expires
        )
        assert await deny_list.lift_card(conn, deny_list.Kind.CARD, card, "found")
        assert not await deny_list.lift_card(conn, deny_list.Kind.CARD, card, "found")
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO deny_list (kind, action, card_number, reason) "
                "VALUES ('card', 'add', $1, 'too short')",
                b"\x31\x00",
            )
    assert await deny_list.card_denied(pool, deny_list.Kind.VIRTUAL_CARD, virtual)
    assert not await deny_list.card_denied(pool, deny_list.Kind.CARD, card)
    delta = await signed_delta(client, gate, f"/v1/taps/deny-list?since={since}")
    mine = [(e["kind"], e["action"], e["card_number"]) for e in delta["entries"]
            if e["card_number"] in (card.hex(), virtual.hex())]  # fmt: skip
    assert mine == [
        ("card", "add", card.hex()),
        ("virtual_card", "add", virtual.hex()),
        ("card", "remove", card.hex()),
    ]
    versions = [e["version"] for e in delta["entries"]]
    assert versions == sorted(versions) and delta["version"] == versions[-1]
    virtual_entry = next(e for e in delta["entries"] if e["kind"] == "virtual_card")
    assert virtual_entry["expires_at"] == int(expires.timestamp())
    # QR gates keep their list: accounts and devices only, with the fields they know.
    qr_delta = await signed_delta(client, gate, f"/v1/qr/deny-list?since={since}")
    assert {e["kind"] for e in qr_delta["entries"]} <= {"account", "device"}
    assert all("card_number" not in e for e in qr_delta["entries"])


async def signed_delta(client: ClientT, gate: make.TerminalKey, path: str) -> dict[str, Any]:
    """A deny list delta whose signature verifies with the issuer key it names."""
    response = await client.get(path, headers=gate.sign("GET", path))
    assert response.status == 200, await response.text()
    body = await response.read()
    keys_path = "/v1/qr/issuer-keys"
    listed = await (await client.get(keys_path, headers=gate.sign("GET", keys_path))).json()
    key_id = int(response.headers["OC-Signature-Key-Id"])
    public = next(k["public_key"] for k in listed["keys"] if k["key_id"] == key_id)
    signature = bytes.fromhex(response.headers["OC-Signature"])
    assert verify_raw(decode_public_key(bytes.fromhex(public)), signature, body)
    delta: dict[str, Any] = await response.json()
    return delta


@pytest.fixture
async def empty_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    async with scratch_database(server_urls[0], "onecard_taps", migrated=False) as dsn:
        yield dsn


async def test_the_migration_moves_qr_rides_and_deny_entries_into_the_one_store(
    empty_database: str, tmp_path: Path
) -> None:
    for source in sorted(db.MIGRATIONS_DIR.glob("*.sql")):
        if int(source.name[:4]) <= 4:
            shutil.copy(source, tmp_path / source.name)
    assert (await db.migrate(empty_database, tmp_path))[-1] == "0004_seams.sql"
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            "INSERT INTO qr_rides (replay_key, code, rider_id, terminal_id, operator, fare_fen, "
            "tapped_at, status, reason, txn_id) "
            "SELECT * FROM (VALUES ($1::bytea, $2::bytea, 7::bigint, 'AABBCCDDEEFF', 'metro', "
            "300, now(), 'accepted', NULL::text, 41::bigint), "
            "($3, $2, 7, 'AABBCCDDEEFF', 'metro', 900, now(), 'rejected', "
            "'insufficient_balance', NULL)) AS v",
            b"\x01" + bytes(14), b"code bytes", b"\x02" + bytes(8),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO qr_deny_list (kind, action, account_id, fingerprint, reason, expires_at) "
            "VALUES ('account', 'add', 7, NULL, 'insufficient_balance', NULL), "
            "('device', 'add', NULL, $1, 'replaced_by_new_device', now() + interval '1 day')",
            b"\x11" * 8,
        )
        old_rides = await conn.fetch("SELECT id, replay_key FROM qr_rides ORDER BY id")
        assert [r["id"] for r in old_rides] == [1, 2]
        applied = await db.migrate(empty_database)
        assert "0006_taps.sql" in applied
        assert await conn.fetchval("SELECT to_regclass('qr_rides')") is None
        assert await conn.fetchval("SELECT to_regclass('qr_deny_list')") is None
        taps = await conn.fetch(
            "SELECT id, kind, replay_key, record, rider_id, fare_fen, status, reason, txn_id "
            "FROM taps ORDER BY id"
        )
        assert [tuple(t) for t in taps] == [
            (1, "qr", b"\x01" + bytes(14), b"code bytes", 7, 300, "accepted", None, 41),
            (2, "qr", b"\x02" + bytes(8), b"code bytes", 7, 900, "rejected",
             "insufficient_balance", None),
        ]  # fmt: skip
        entries = await conn.fetch(
            "SELECT version, kind, account_id, fingerprint FROM deny_list ORDER BY version"
        )
        assert [tuple(e) for e in entries] == [
            (1, "account", 7, None),
            (2, "device", None, b"\x11" * 8),
        ]
        # Ids and versions carry on after the moved rows.
        next_tap = await conn.fetchval(
            "INSERT INTO taps (kind, replay_key, record, rider_id, terminal_id, operator, "
            "fare_fen, tapped_at, status) VALUES ('qr', $1, 'x', 7, 'T', 'metro', 1, now(), "
            "'accepted') RETURNING id",
            b"\x02" + b"\x01" * 8,
        )
        next_version = await conn.fetchval(
            "INSERT INTO deny_list (kind, action, account_id, reason) "
            "VALUES ('account', 'remove', 7, 'balance_restored') RETURNING version"
        )
        assert (next_tap, next_version) == (3, 3)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO taps (kind, replay_key, record, rider_id, terminal_id, operator, "
                "fare_fen, tapped_at, status) VALUES ('qr', $1, 'x', 7, 'T', 'metro', 1, now(), "
                "'accepted')",
                b"\x01" + bytes(14),
            )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def hypothesis_riders() -> list[tuple[int, Phone]]:
    return []  # filled on first use, kept for the module: riders cost a certificate each


rides_strategy = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 700)), min_size=1, max_size=24
)


@settings(
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tops=st.lists(st.integers(0, 1500), min_size=4, max_size=4), rides=rides_strategy)
async def test_random_batches_move_exactly_the_accepted_fares(
    client: ClientT,
    pool: asyncpg.Pool,
    hypothesis_riders: list[tuple[int, Phone]],
    tops: list[int],
    rides: list[tuple[int, int]],
) -> None:
    if not hypothesis_riders:
        hypothesis_riders.extend(await funded_riders(client, pool, [0] * 4))
    gate = await make.terminal(pool, operator="hypothesis")
    ids = [rider_id for rider_id, _ in hypothesis_riders]
    async with pool.acquire() as conn, conn.transaction():
        for rider_id, top in zip(ids, tops, strict=True):
            await deny_list.lift_account(conn, rider_id, "test")
            if top:
                await adjust(conn, rider_id, top, "test top-up", "test")
    before, payable_before = await balances(pool, ids), await payable(pool, "hypothesis")
    now = int(time.time())
    batch = [ride(hypothesis_riders[o][1], fare, now) for o, fare in rides]
    got = await answers(await make.upload_rides(client, gate, batch))
    after = await balances(pool, ids)
    accepted = [fare for (o, fare), (status, _) in zip(rides, got, strict=True)
                if status == "accepted"]  # fmt: skip
    assert sum(before.values()) - sum(after.values()) == sum(accepted)
    assert await payable(pool, "hypothesis") - payable_before == sum(accepted)
    for o, rider_id in enumerate(ids):
        fares = [fare for owner, fare in rides if owner == o]
        mine = [answer for (owner, _), answer in zip(rides, got, strict=True) if owner == o]
        paid = paid_in_order(before[rider_id], fares)
        assert mine == [
            ("accepted", None) if p else ("rejected", "insufficient_balance") for p in paid
        ]
        assert after[rider_id] >= 0


async def test_ledger_verify_proves_every_accepted_tap_was_paid_its_fare(
    client: ClientT, pool: asyncpg.Pool
) -> None:
    [(_, phone)] = await funded_riders(client, pool, [500])
    gate = await make.terminal(pool)
    now = int(time.time())
    answer = await make.upload_rides(client, gate, [ride(phone, 120, now)])
    tap_id = (await answer.json())["results"][0]["ride_id"]
    async with pool.acquire() as conn:
        assert await verify_ledger(conn, ledger_checks()) == []
        await conn.execute("UPDATE taps SET fare_fen = fare_fen + 1 WHERE id = $1", tap_id)
        try:
            problems = await verify_ledger(conn, ledger_checks())
        finally:
            await conn.execute("UPDATE taps SET fare_fen = fare_fen - 1 WHERE id = $1", tap_id)
    assert len(problems) == 1 and f"tap {tap_id} " in problems[0] and "121 fen" in problems[0]
