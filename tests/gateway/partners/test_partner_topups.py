"""Partner top-ups from a prepaid float: to a wallet by phone or to a linked card, refused when
the float is short, replayed by Idempotency-Key, funded by operators from the shell."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Config
from gateway.topups import partners
from tests.gateway import identity_helpers as make
from tests.gateway.partners.conftest import ClientT, error_of, fund, linked_card, signed

PATH = "/v1/partner/topups"


def wallet(phone: str) -> dict[str, Any]:
    return {"wallet": {"phone": phone}}


async def top_up(
    client: ClientT, partner: make.PartnerKey, target: dict[str, Any], amount_fen: int = 5000,
    key: str | None = None,
) -> Any:  # fmt: skip
    body = {"target": target, "amount_fen": amount_fen}
    return await signed(client, partner, "POST", PATH, body, key=key or secrets.token_hex(8))


async def float_fen(client: ClientT, partner: make.PartnerKey) -> int:
    response = await signed(client, partner, "GET", "/v1/partner/float")
    assert response.status == 200
    return int((await response.json())["balance_fen"])


async def wallet_fen(client: ClientT, rider: make.RiderLogin) -> int:
    return int((await (await client.get("/v1/wallet", headers=rider.auth)).json())["balance_fen"])


async def partner_orders(pool: asyncpg.Pool, key_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM topup_orders WHERE partner_key_id = $1", key_id
    )
    return count


async def test_a_partner_tops_up_a_wallet_by_phone(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    rider = await make.rider(client)
    await fund(pool, partner.key_id, 320_000)  # 10,000 a lane: one lane pays the top-up
    response = await top_up(client, partner, wallet(rider.phone), 5000)
    assert response.status == 201, await response.text()
    topup = await response.json()
    assert topup["status"] == "credited" and topup["amount_fen"] == 5000
    assert topup["target"] == {"wallet": {"phone": rider.phone}}
    assert await wallet_fen(client, rider) == 5000
    assert await float_fen(client, partner) == 315_000
    entries = await pool.fetch(
        "SELECT a.kind, e.amount_fen FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id "
        "JOIN ledger_accounts a ON a.id = e.account_id WHERE t.kind = 'partner_topup' "
        "AND t.ref = $1 ORDER BY e.amount_fen",
        f"topup:{topup['id']}",
    )
    assert [(r["kind"], r["amount_fen"]) for r in entries] == [
        ("partner_float", -5000), ("rider_wallet", 5000),
    ]  # fmt: skip
    order = await pool.fetchrow(
        "SELECT source, state, channel, paid_fen FROM topup_orders WHERE id = $1", topup["id"]
    )
    assert dict(order) == {"source": "partner", "state": "credited", "channel": None,
                           "paid_fen": 5000}  # fmt: skip
    got = await signed(client, partner, "GET", f"{PATH}/{topup['id']}")
    assert got.status == 200 and (await got.json()) == topup
    other = await make.partner(pool, config)
    response = await signed(client, other, "GET", f"{PATH}/{topup['id']}")
    assert response.status == 404 and (await error_of(response))["code"] == "not_found"
    # The rider sees the top-up among their own.
    mine = await (await client.get("/v1/topups", headers=rider.auth)).json()
    assert [item["id"] for item in mine["items"]] == [topup["id"]]


async def test_a_partner_tops_up_a_linked_card(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    rider = await make.rider(client)
    asn = await linked_card(client, rider)
    await fund(pool, partner.key_id, 10_000)
    response = await top_up(client, partner, {"card": asn}, 3000)
    assert response.status == 201, await response.text()
    topup = await response.json()
    assert topup["status"] == "pending_load" and topup["target"] == {"card": asn}
    cards = await (await client.get("/v1/cards", headers=rider.auth)).json()
    assert cards["items"][0]["pending_fen"] == 3000
    assert await float_fen(client, partner) == 7000
    # The card's ceiling holds for partners too: 100,000 fen less what is pending.
    await fund(pool, partner.key_id, 200_000)
    response = await top_up(client, partner, {"card": asn}, 98_000)
    assert response.status == 422
    error = await error_of(response)
    assert error["code"] == "card_balance_ceiling" and error["details"]["room_fen"] == 97_000
    assert await float_fen(client, partner) == 207_000


async def test_an_empty_float_refuses_and_nothing_changes(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    rider = await make.rider(client)
    response = await top_up(client, partner, wallet(rider.phone), 5000)
    assert response.status == 422
    error = await error_of(response)
    assert error["code"] == "partner_float_insufficient"
    assert error["details"] == {"balance_fen": 0, "amount_fen": 5000}
    # An unknown phone gets the same answer: an empty float cannot probe for accounts.
    unknown = await top_up(client, partner, wallet("+8613700000002"), 5000)
    assert unknown.status == 422 and (await error_of(unknown)) | {"request_id": None} == (
        error | {"request_id": None}
    )
    await fund(pool, partner.key_id, 3000)
    key = secrets.token_hex(8)
    response = await top_up(client, partner, wallet(rider.phone), 5000, key=key)
    assert response.status == 422
    assert (await error_of(response))["details"]["balance_fen"] == 3000
    again = await top_up(client, partner, wallet(rider.phone), 5000, key=key)
    assert again.status == 422 and again.headers["Idempotent-Replayed"] == "true"
    assert await partner_orders(pool, partner.key_id) == 0
    assert await wallet_fen(client, rider) == 0
    assert await float_fen(client, partner) == 3000


async def test_the_same_key_gives_the_same_top_up_once(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    rider = await make.rider(client)
    await fund(pool, partner.key_id, 20_000)
    key = secrets.token_hex(8)
    first = await top_up(client, partner, wallet(rider.phone), 2000, key=key)
    again = await top_up(client, partner, wallet(rider.phone), 2000, key=key)
    assert first.status == again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await first.json()) == (await again.json())
    other = await top_up(client, partner, wallet(rider.phone), 3000, key=key)
    assert other.status == 422 and (await error_of(other))["code"] == "idempotency_key_reused"
    missing = await signed(client, partner, "POST", PATH, {"target": wallet(rider.phone),
                                                           "amount_fen": 2000})  # fmt: skip
    assert missing.status == 400
    assert (await error_of(missing))["code"] == "idempotency_key_required"
    assert await partner_orders(pool, partner.key_id) == 1
    assert await wallet_fen(client, rider) == 2000


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 5000, "memo": "x"},
         400, "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}, "card": "1" * 20}, "amount_fen": 5000},
         400, "validation_failed"),
        ({"target": {}, "amount_fen": 5000}, 400, "validation_failed"),
        ({"target": {"wallet": True}, "amount_fen": 5000}, 400, "validation_failed"),
        ({"target": {"wallet": {"phone": "13900000000"}}, "amount_fen": 5000}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000", "name": "x"}}, "amount_fen": 5000},
         400, "validation_failed"),
        ({"target": {"card": "12345"}, "amount_fen": 5000}, 400, "validation_failed"),
        ({"target": {"card": 12345678901234567890}, "amount_fen": 5000}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}}, 400, "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": "5000"}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 0}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": -500}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 50.5}, 400,
         "validation_failed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 999}, 422,
         "topup_amount_not_allowed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 1050}, 422,
         "topup_amount_not_allowed"),
        ({"target": {"wallet": {"phone": "+8613900000000"}}, "amount_fen": 100_100}, 422,
         "topup_amount_not_allowed"),
        ({"target": {"wallet": {"phone": "+8613700000001"}}, "amount_fen": 5000}, 404,
         "not_found"),
        ({"target": {"card": "9" * 20}, "amount_fen": 5000}, 404, "not_found"),
        ([], 400, "validation_failed"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client: ClientT, pool: asyncpg.Pool, config: Config, body: Any, status: int, code: str
) -> None:
    partner = await make.partner(pool, config)
    await fund(pool, partner.key_id, 100_000)
    response = await signed(client, partner, "POST", PATH, body, key=secrets.token_hex(8))
    assert response.status == status, await response.text()
    assert (await error_of(response))["code"] == code
    assert await partner_orders(pool, partner.key_id) == 0
    assert await float_fen(client, partner) == 100_000


async def test_malformed_json_and_a_rider_caller_are_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    response = await signed(client, partner, "POST", PATH, raw=b'{"target":', key="k1")
    assert response.status == 400 and (await error_of(response))["code"] == "malformed_json"
    rider = await make.rider(client)
    response = await client.post(
        PATH, json={"target": wallet(rider.phone), "amount_fen": 5000},
        headers={**rider.auth, "Idempotency-Key": "k2"},
    )  # fmt: skip
    assert response.status == 403 and (await error_of(response))["code"] == "forbidden"
    response = await signed(client, partner, "GET", f"{PATH}/abc")
    assert response.status == 404


async def test_a_hot_float_serves_concurrent_top_ups_and_never_goes_below_zero(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    """More is asked at once than the float holds: lanes run short and the rest is drawn from
    several lanes; exactly what the float holds is paid, and it ends at zero."""
    partner = await make.partner(pool, config)
    riders = [await make.rider(client) for _ in range(3)]
    await fund(pool, partner.key_id, 50_000)
    responses = await asyncio.gather(
        *(top_up(client, partner, wallet(riders[n % 3].phone), 2000) for n in range(30))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] * 25 + [422] * 5
    assert await float_fen(client, partner) == 0
    assert sum([await wallet_fen(client, r) for r in riders]) == 50_000
    lanes = await pool.fetchval(
        "SELECT count(*) FROM ledger_accounts WHERE kind = 'partner_float' "
        "AND (owner = $1 OR owner LIKE $1 || '/%') AND balance_fen = 0",
        partner.key_id,
    )
    assert lanes == partners.LANES


def onecard(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
               ONECARD_KEK=config.kek, ONECARD_REDIS_PREFIX=config.redis_prefix)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


async def test_operators_fund_a_float_from_the_shell(
    client: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    partner = await make.partner(pool, config)
    done = await asyncio.to_thread(
        onecard, config, "partners", "fund", partner.key_id, "--amount-fen", "12345",
        "--memo", "wire 2024-0042", "--operator", "ops-anna",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "float balance: 12345 fen" in done.stdout
    funding = await pool.fetchrow(
        "SELECT id, amount_fen, operator, memo FROM partner_fundings WHERE partner_key_id = $1",
        partner.key_id,
    )
    assert (funding["amount_fen"], funding["operator"], funding["memo"]) == (
        12345, "ops-anna", "wire 2024-0042",
    )  # fmt: skip
    txn = await pool.fetchrow(
        "SELECT t.memo, sum(e.amount_fen) FILTER (WHERE e.amount_fen > 0) AS credited "
        "FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id "
        "WHERE t.kind = 'partner_funding' AND t.ref = $1 GROUP BY t.id",
        f"partner-funding:{funding['id']}",
    )
    assert txn["credited"] == 12345 and "ops-anna" in txn["memo"]
    assert await float_fen(client, partner) == 12345
    again = await asyncio.to_thread(
        onecard, config, "partners", "fund", partner.key_id, "--amount-fen", "100"
    )
    assert again.returncode == 0, again.stderr
    assert await float_fen(client, partner) == 12445
    unknown = await asyncio.to_thread(
        onecard, config, "partners", "fund", "pk_nobody", "--amount-fen", "100"
    )
    assert unknown.returncode == 1 and "no partner" in unknown.stdout
    for bad in ("0", "-5", "1.5", "abc"):
        refused = await asyncio.to_thread(
            onecard, config, "partners", "fund", partner.key_id, "--amount-fen", bad
        )
        assert refused.returncode == 2, bad
    assert await float_fen(client, partner) == 12445


@given(
    st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
    st.integers(1, 10**8),
)
def test_a_funding_fills_the_emptiest_lanes_first(balances: list[int], amount: int) -> None:
    gifts = partners.pour(balances, amount)
    assert sum(gifts) == amount and min(gifts) >= 0
    after = [b + g for b, g in zip(balances, gifts, strict=True)]
    lowest = min(after)
    assert all(a <= lowest + 1 for a, g in zip(after, gifts, strict=True) if g > 0)
