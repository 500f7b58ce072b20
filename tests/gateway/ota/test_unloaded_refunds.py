"""Card top-ups nobody comes to load are refunded after `ota_refund_after_days`, the way they
were paid (the channel, or the partner's float), by a worker; the rider sees it on the order.
The worker's clock is the test's: `Ota.refund_unloaded(now)`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.channels.types import Channel
from gateway.config import Config
from gateway.ota.service import OTA
from gateway.topups.service import TOPUPS
from tests.gateway import identity_helpers as make
from tests.gateway.ota.test_loads import (
    Phone,
    card_with_paid_topup,
    ledger_of_card,
    linked_rider,
    new_card,
    paid_card_topup,
)
from tests.gateway.partners.conftest import fund, signed
from tests.gateway.sandboxes import GatewayFactory, Sandboxes, until
from tests.gateway.topups.test_topups import misbehave, status_of

ClientT = TestClient[Any, Any]
DAYS = 30


def later(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def test_a_top_up_never_loaded_goes_back_through_its_channel_after_n_days(
    gateway: ClientT, sandboxes: Sandboxes, pool: asyncpg.Pool
) -> None:
    card = new_card()
    rider = await linked_rider(gateway, card)
    order = await paid_card_topup(gateway, sandboxes, rider, card, 3_000, Channel.WECHATPAY)
    ota = gateway.server.app[OTA]

    await ota.refund_unloaded(later(DAYS - 1))
    assert await status_of(gateway, rider, order) == "pending_load"  # not yet

    await ota.refund_unloaded(later(DAYS + 1))

    async def refunded() -> bool:
        return await status_of(gateway, rider, order) == "refunded"

    await until(refunded)
    shown = await (await gateway.get(f"/v1/topups/{order}", headers=rider.auth)).json()
    assert shown["refunded_fen"] == 3_000
    trade = next(t for t in sandboxes.states[Channel.WECHATPAY].trades.values()
                 if t.refunds and t.amount_fen == 3_000 and t.state == "refunded")  # fmt: skip
    assert sum(r.amount_fen for r in trade.refunds.values()) == 3_000
    assert (await ledger_of_card(pool, card.asn.hex()))["pending_load"] == 0
    # Nothing is left to load, and a second run finds nothing.
    assert (await Phone(gateway, rider, card).start()).status == 422
    assert await ota.refund_unloaded(later(DAYS + 1)) == 0


async def test_a_top_up_that_may_be_on_the_chip_is_not_refunded(
    gateway: ClientT, sandboxes: Sandboxes
) -> None:
    card, rider, order = await card_with_paid_topup(gateway, sandboxes)
    phone = Phone(gateway, rider, card)
    session = await phone.until_credit(order)
    phone.transmit(session)  # CREDIT reached the card; its TAC never reached us
    await gateway.server.app[OTA].refund_unloaded(later(DAYS + 1))
    assert await status_of(gateway, rider, order) == "pending_load"
    done = await Phone(gateway, rider, card).load()
    assert done["done"]["orders"] == [order] and card.balance_fen == 7_000


async def test_a_refund_the_channel_did_not_take_is_sent_again_by_the_reconciler(
    make_gateway: GatewayFactory, sandboxes: Sandboxes
) -> None:
    gateway = await make_gateway(topup_query_after_s=1)
    card = new_card()
    rider = await linked_rider(gateway, card)
    order = await paid_card_topup(gateway, sandboxes, rider, card, 2_000, Channel.ALIPAY)
    await misbehave(sandboxes, Channel.ALIPAY, ["error_5xx"], errors=3)  # the send fails
    await gateway.server.app[OTA].refund_unloaded(later(DAYS + 1))
    assert await status_of(gateway, rider, order) == "refunding"

    async def refunded() -> bool:
        await gateway.server.app[TOPUPS].reconcile_refunds()
        return await status_of(gateway, rider, order) == "refunded"

    await until(refunded, timeout_s=30)


async def test_a_partners_top_up_never_loaded_goes_back_to_its_float(
    gateway: ClientT, pool: asyncpg.Pool, config: Config
) -> None:
    # Not the session's `client`: a gateway left running would reconcile other tests' orders
    # with its own settings.
    client = gateway
    partner = await make.partner(pool, config)
    card = new_card()
    rider = await linked_rider(client, card)
    await fund(pool, partner.key_id, 10_000)
    body = {"target": {"card": card.asn.hex()}, "amount_fen": 4_000}
    made = await signed(client, partner, "POST", "/v1/partner/topups", body, key="unloaded-1")
    assert made.status == 201, await made.text()
    order = (await made.json())["id"]

    await client.server.app[OTA].refund_unloaded(later(DAYS + 1))

    assert await status_of(client, rider, order) == "refunded"
    balance = await signed(client, partner, "GET", "/v1/partner/float")
    assert (await balance.json())["balance_fen"] == 10_000
    assert (await ledger_of_card(pool, card.asn.hex()))["pending_load"] == 0
