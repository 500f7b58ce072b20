"""The phone's side against the real gateway: `hce.relay.RelayClient` (standard library HTTP,
blocking, so it runs in a thread beside the gateway's event loop) and `onecard phone load`, the
command an operator uses to show a load with a software card's state file."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import Config
from hce.relay import RelayClient
from hce.software_card import CardTorn, SoftwareCard
from tests.gateway.ota.test_loads import ledger_of_card, linked_rider, new_card, paid_card_topup
from tests.gateway.sandboxes import Sandboxes
from tests.gateway.topups.test_topups import status_of

ClientT = TestClient[Any, Any]


def base_url(gateway: ClientT) -> str:
    return str(gateway.make_url("")).rstrip("/")


async def test_the_relay_client_loads_and_a_torn_load_is_settled_by_the_next(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    card = new_card(balance_fen=1_000)
    rider = await linked_rider(gateway, card)
    first = await paid_card_topup(gateway, sandboxes, rider, card, 2_000)
    phone = RelayClient(base_url(gateway), rider.access, card)

    card.tear_after(1, commit=True)  # the card credits, then leaves the field
    with pytest.raises(CardTorn):
        await asyncio.to_thread(phone.load, first)
    assert await status_of(gateway, rider, first) == "pending_load"

    second = await paid_card_topup(gateway, sandboxes, rider, card, 3_000)
    result = await asyncio.to_thread(phone.load)  # the rider taps again: everything pending
    assert result.orders == (first, second) and result.held == ()
    assert result.loaded_fen == 5_000 and result.balance_fen == 6_000
    assert card.balance_fen == 6_000
    balances = await ledger_of_card(pool, card.asn.hex())
    assert balances["card_float"] == 6_000 and balances["pending_load"] == 0


async def test_onecard_phone_load_drives_a_software_card_file(
    gateway: ClientT, sandboxes: Sandboxes, config: Config, tmp_path: Path
) -> None:
    card = new_card(balance_fen=0)
    rider = await linked_rider(gateway, card)
    order = await paid_card_topup(gateway, sandboxes, rider, card, 4_000)
    state = tmp_path / "card.json"
    state.write_text(card.to_json())
    env = dict(os.environ, DATABASE_URL=config.database_url, REDIS_URL=config.redis_url,
               ONECARD_KEK=config.kek, ONECARD_TOKEN=rider.access)  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "phone", "load", "--card", str(state),
        "--order", str(order), "--api", base_url(gateway), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    printed = out.decode()
    assert process.returncode == 0, (printed, err.decode())
    assert "> 805000020B" in printed.upper()  # each APDU and status word is shown
    assert rider.access not in printed + err.decode()
    assert SoftwareCard.from_json(state.read_text()).balance_fen == 4_000  # the file is the chip
    assert await status_of(gateway, rider, order) == "loaded"
