"""Partner webhooks over real HTTPS: written with the top-up, signed, verified by the test
receiver, retried after failures with the same event id, redelivered on request, and never
sent to addresses inside the operator's network unless allow-listed."""

from __future__ import annotations

import secrets
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.config import Config
from gateway.keystore import KeyKind, Keystore, load_kek
from gateway.topups import orders, partners
from gateway.webhooks import addresses, delivery, outbox, signing
from gateway.webhooks.addresses import UrlRefused
from tests.gateway import identity_helpers as make
from tests.gateway.partners.conftest import (
    ClientT,
    Receiver,
    error_of,
    fund,
    linked_card,
    signed,
)
from tests.gateway.sandboxes import until

HOOKS = "/v1/partner/webhooks"
ALL_EVENTS = ["topup.paid", "topup.credited", "topup.loaded", "topup.refunded", "topup.closed"]


async def subscribe(
    client: ClientT, partner: make.PartnerKey, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = await signed(client, partner, "POST", HOOKS, {"url": url, "events": events or
                                                              ALL_EVENTS})  # fmt: skip
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def partner_top_up(
    client: ClientT, pool: asyncpg.Pool, config: Config, partner: make.PartnerKey
) -> dict[str, Any]:
    rider = await make.rider(client)
    await fund(pool, partner.key_id, 10_000)
    body = {"target": {"wallet": {"phone": rider.phone}}, "amount_fen": 5000}
    response = await signed(
        client, partner, "POST", "/v1/partner/topups", body, key=secrets.token_hex(8)
    )
    assert response.status == 201, await response.text()
    topup: dict[str, Any] = await response.json()
    return topup


async def deliveries(client: ClientT, partner: make.PartnerKey, hook_id: int) -> list[Any]:
    response = await signed(client, partner, "GET", f"{HOOKS}/{hook_id}/deliveries")
    assert response.status == 200, await response.text()
    items: list[Any] = (await response.json())["items"]
    return items


async def test_a_top_up_is_told_to_the_receiver_signed(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner = await make.partner(wpool, webhook_config)
    hook = await subscribe(gateway, partner, receiver.url, ["topup.paid", "topup.credited"])
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"
    topup = await partner_top_up(gateway, wpool, webhook_config, partner)

    async def both() -> bool:
        return len(receiver.got) >= 2

    await until(both)
    assert len(receiver.got) == 2
    now = int(time.time())
    types = []
    for got in receiver.got:
        header = got.headers[signing.HEADER]
        assert signing.verify(hook["secret"], header, got.body, now=now)
        assert not signing.verify(hook["secret"], header, got.body + b" ", now=now)
        assert not signing.verify("whsec_other", header, got.body, now=now)
        assert not signing.verify(hook["secret"], header, got.body, now=now + 3600)
        event = got.json
        assert got.headers[delivery.EVENT_ID_HEADER] == event["id"]
        assert event["id"].startswith("evt_") and event["created_at"]
        assert event["data"]["topup"]["id"] == topup["id"]
        assert event["data"]["topup"]["amount_fen"] == 5000
        types.append((event["type"], event["data"]["topup"]["status"]))
    assert sorted(types) == [("topup.credited", "credited"), ("topup.paid", "paid")]
    assert len({got.json["id"] for got in receiver.got}) == 2

    async def logged() -> bool:
        return all(d["status"] == "delivered" for d in await deliveries(gateway, partner,
                                                                         hook["id"]))  # fmt: skip

    await until(logged)
    listed = await deliveries(gateway, partner, hook["id"])
    assert len(listed) == 2 and all(d["attempts"] == 1 for d in listed)


async def test_a_failing_receiver_is_retried_with_the_same_event(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    receiver.answers = [500, 503]
    partner = await make.partner(wpool, webhook_config)
    hook = await subscribe(gateway, partner, receiver.url, ["topup.credited"])
    await partner_top_up(gateway, wpool, webhook_config, partner)

    async def delivered() -> bool:
        found = await deliveries(gateway, partner, hook["id"])
        return bool(found) and found[0]["status"] == "delivered"

    await until(delivered, timeout_s=20)
    assert len(receiver.got) == 3
    assert len({got.body for got in receiver.got}) == 1, "the same body every time"
    assert len({got.json["id"] for got in receiver.got}) == 1
    stamps = [got.headers[signing.HEADER] for got in receiver.got]
    assert all(signing.verify(hook["secret"], s, receiver.got[0].body, now=int(time.time()))
               for s in stamps)  # fmt: skip
    (item,) = await deliveries(gateway, partner, hook["id"])
    assert item["attempts"] == 3 and item["last_status"] == 200
    log = await wpool.fetch(
        "SELECT a.status_code, a.error, a.outcome FROM webhook_attempts a "
        "JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 "
        "ORDER BY a.id",
        hook["id"],
    )
    assert [tuple(r) for r in log] == [
        (500, "status:500", "retry"), (503, "status:503", "retry"), (200, None, "delivered"),
    ]  # fmt: skip


async def test_redeliver_sends_an_event_again(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner = await make.partner(wpool, webhook_config)
    hook = await subscribe(gateway, partner, receiver.url, ["topup.paid"])
    await partner_top_up(gateway, wpool, webhook_config, partner)

    async def got(count: int) -> Any:
        async def enough() -> bool:
            return len(receiver.got) >= count

        return enough

    await until(await got(1))
    event_id = receiver.got[0].json["id"]
    path = f"{HOOKS}/{hook['id']}/redeliver"
    nothing = await signed(gateway, partner, "POST", path, {})
    assert nothing.status == 202 and (await nothing.json()) == {"requeued": 0}
    again = await signed(gateway, partner, "POST", path, {"event_id": event_id})
    assert again.status == 202 and (await again.json()) == {"requeued": 1}
    await until(await got(2))
    assert receiver.got[1].body == receiver.got[0].body
    for bad in ({"event_id": "evt_999999999"}, {"event_id": "42"}, {"event_id": 42},
                {"events": []}):  # fmt: skip
        response = await signed(gateway, partner, "POST", path, bad)
        assert response.status in (400, 404), bad
    other = await make.partner(wpool, webhook_config)
    response = await signed(gateway, other, "POST", path, {"event_id": event_id})
    assert response.status == 404 and (await error_of(response))["code"] == "not_found"
    # An event of another partner is not this partner's to redeliver.
    other_hook = await subscribe(gateway, other, receiver.url, ["topup.paid"])
    response = await signed(
        gateway, other, "POST", f"{HOOKS}/{other_hook['id']}/redeliver", {"event_id": event_id}
    )
    assert response.status == 404


async def test_redeliver_requeues_what_was_given_up(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner = await make.partner(wpool, webhook_config)
    hook = await subscribe(gateway, partner, receiver.url, ["topup.credited"])
    # The receiver was down for the whole window: the delivery was given up.
    await wpool.execute("UPDATE webhook_endpoints SET url = $2 WHERE id = $1",
                       hook["id"], receiver.url.replace("/hooks/", "/gone/"))  # fmt: skip
    await partner_top_up(gateway, wpool, webhook_config, partner)
    await wpool.execute(
        "UPDATE webhook_deliveries SET give_up_at = now() WHERE endpoint_id = $1", hook["id"]
    )

    async def given_up() -> bool:
        found = await deliveries(gateway, partner, hook["id"])
        return bool(found) and found[0]["status"] == "failed"

    await until(given_up)
    (item,) = await deliveries(gateway, partner, hook["id"])
    assert item["last_status"] == 404 and item["next_attempt_at"] is None
    await wpool.execute("UPDATE webhook_endpoints SET url = $2 WHERE id = $1",
                       hook["id"], receiver.url)  # fmt: skip
    response = await signed(gateway, partner, "POST", f"{HOOKS}/{hook['id']}/redeliver", {})
    assert (await response.json()) == {"requeued": 1}

    async def delivered() -> bool:
        return (await deliveries(gateway, partner, hook["id"]))[0]["status"] == "delivered"

    await until(delivered)
    assert [got.json["type"] for got in receiver.got][-1] == "topup.credited"


async def test_endpoints_are_listed_and_deleted_by_their_owner_only(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner, other = (
        await make.partner(wpool, webhook_config),
        await make.partner(wpool, webhook_config),
    )
    hook = await subscribe(gateway, partner, receiver.url)
    listed = await (await signed(gateway, partner, "GET", HOOKS)).json()
    assert [(h["id"], h["url"], h["events"]) for h in listed["items"]] == [
        (hook["id"], receiver.url, ALL_EVENTS)
    ]
    assert "secret" not in listed["items"][0]
    assert (await (await signed(gateway, other, "GET", HOOKS)).json()) == {"items": []}
    for method, path in (("DELETE", f"{HOOKS}/{hook['id']}"),
                         ("GET", f"{HOOKS}/{hook['id']}/deliveries"),
                         ("POST", f"{HOOKS}/{hook['id']}/redeliver")):  # fmt: skip
        response = await signed(gateway, other, method, path, {} if method == "POST" else None)
        assert response.status == 404, (method, path)
    deleted = await signed(gateway, partner, "DELETE", f"{HOOKS}/{hook['id']}")
    assert deleted.status == 204
    assert (await (await signed(gateway, partner, "GET", HOOKS)).json()) == {"items": []}
    again = await signed(gateway, partner, "DELETE", f"{HOOKS}/{hook['id']}")
    assert again.status == 404
    keystore = Keystore(load_kek(webhook_config))
    async with wpool.acquire() as conn:
        keys = await keystore.versions(conn, KeyKind.WEBHOOK_SECRET, f"webhook:{hook['id']}")
    assert [k.status for k in keys] == ["revoked"]
    # Nothing is sent to a deleted endpoint.
    await partner_top_up(gateway, wpool, webhook_config, partner)
    assert (
        await wpool.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", hook["id"]
        )
        == 0
    )


async def test_a_partner_has_a_bounded_number_of_endpoints(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner = await make.partner(wpool, webhook_config)
    for _ in range(10):
        await subscribe(gateway, partner, receiver.url, ["topup.paid"])
    response = await signed(gateway, partner, "POST", HOOKS,
                            {"url": receiver.url, "events": ["topup.paid"]})  # fmt: skip
    assert response.status == 422
    assert (await error_of(response))["code"] == "webhook_limit_reached"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "not_https"),
        ("ftp://example.com/hook", "not_https"),
        ("https://user:pw@example.com/hook", "malformed"),
        ("https:///hook", "malformed"),
        ("https://example.com:99999/", "malformed"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://172.16.0.9/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://[fd12:3456::1]/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://169.254.10.10/", "link_local"),
        ("https://[fe80::1]/", "link_local"),
        ("https://100.64.0.1/", "shared"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("https://no-such-host.invalid/hook", "unresolvable"),
    ],
)
async def test_urls_inside_the_network_are_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config, url: str, reason: str
) -> None:
    """The session's gateway allow-lists nothing."""
    partner = await make.partner(pool, config)
    response = await signed(client, partner, "POST", HOOKS, {"url": url, "events": ["topup.paid"]})
    assert response.status == 400, await response.text()
    error = await error_of(response)
    assert error["code"] == "webhook_url_refused" and error["details"]["reason"] == reason
    listed = await (await signed(client, partner, "GET", HOOKS)).json()
    assert listed == {"items": []}


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://example.com/", "events": []},
        {"url": "https://example.com/", "events": ["topup.eaten"]},
        {"url": "https://example.com/", "events": ["topup.paid", "topup.paid"]},
        {"url": "https://example.com/"},
        {"url": "", "events": ["topup.paid"]},
        {"url": "https://example.com/" + "a" * 2048, "events": ["topup.paid"]},
        {"url": "https://example.com/", "events": ["topup.paid"], "secret": "mine"},
    ],
)
async def test_bad_webhook_bodies_are_refused(
    client: ClientT, pool: asyncpg.Pool, config: Config, body: dict[str, Any]
) -> None:
    partner = await make.partner(pool, config)
    response = await signed(client, partner, "POST", HOOKS, body)
    assert response.status == 400 and (await error_of(response))["code"] == "validation_failed"


def test_metadata_addresses_need_an_exact_allow_list_entry() -> None:
    import ipaddress

    wide = addresses.allowed_networks(["169.254.0.0/16"])
    exact = addresses.allowed_networks(["169.254.169.254"])
    metadata = ipaddress.ip_address("169.254.169.254")
    assert addresses.refusal(metadata, wide) == "metadata"
    assert addresses.refusal(metadata, exact) is None
    assert addresses.refusal(ipaddress.ip_address("169.254.1.1"), wide) is None
    assert addresses.refusal(ipaddress.ip_address("8.8.8.8"), ()) is None
    assert addresses.refusal(ipaddress.ip_address("2001:4860:4860::8888"), ()) is None


async def test_a_name_that_now_resolves_inside_is_refused_at_delivery(
    certificate: Any, receiver: Receiver
) -> None:
    """DNS rebinding: the check and the connection at delivery see the name's address now."""
    with pytest.raises(UrlRefused) as refused:
        await addresses.check("https://localhost/hook", ())
    assert refused.value.reason == "loopback"
    port = receiver.url.split(":")[2].split("/")[0]
    session = delivery.client_session((), str(certificate.cert_file), 2000)
    try:
        attempt = await delivery.send(
            session, (), f"https://localhost:{port}/hooks/onecard", "whsec_x", "evt_1", b"{}",
            int(time.time()),
        )  # fmt: skip
        assert attempt.error == "refused:loopback" and receiver.got == []
        # The resolver itself refuses too, should a name change between check and connect.
        with pytest.raises(aiohttp.ClientConnectorError) as failed:
            await session.post(f"https://localhost:{port}/hooks/onecard", data=b"{}")
        assert isinstance(failed.value.os_error, addresses.AddressRefused)
        allowed = addresses.allowed_networks(["127.0.0.1", "::1"])
        trusting = delivery.client_session(allowed, str(certificate.cert_file), 2000)
        try:
            ok = await delivery.send(
                trusting, allowed, f"https://localhost:{port}/hooks/onecard", "whsec_x", "evt_1",
                b"{}", int(time.time()),
            )  # fmt: skip
        finally:
            await trusting.close()
        assert ok.error is None and len(receiver.got) == 1
    finally:
        await session.close()


async def test_an_untrusted_certificate_is_never_accepted(receiver: Receiver) -> None:
    allowed = addresses.allowed_networks(["127.0.0.1"])
    session = delivery.client_session(allowed, "", 2000)
    try:
        attempt = await delivery.send(
            session, allowed, receiver.url, "whsec_x", "evt_1", b"{}", int(time.time())
        )
    finally:
        await session.close()
    assert attempt.error == "tls" and receiver.got == []


def test_a_signature_header_is_checked_strictly() -> None:
    body, secret, now = b'{"id":"evt_1"}', "whsec_abc", 1_764_000_000
    header = signing.header(secret, now, body)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert signing.verify(secret, header, body, now=now)
    assert signing.verify(secret, f"{header},v1=00", body, now=now)
    for bad in ("", "t=,v1=", f"v1={header.split('v1=')[1]}", f"t={now}",
                f"t={now},t={now},v1={header.split('v1=')[1]}", "x" * 1000,
                header.replace(f"t={now}", f"t={now + 1}")):  # fmt: skip
        assert not signing.verify(secret, bad, body, now=now), bad


async def test_old_finished_events_are_purged_with_their_log(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    partner = await make.partner(wpool, webhook_config)
    hook = await subscribe(gateway, partner, receiver.url, ["topup.paid", "topup.credited"])
    await partner_top_up(gateway, wpool, webhook_config, partner)

    async def delivered() -> bool:
        found = await deliveries(gateway, partner, hook["id"])
        return len(found) == 2 and all(d["status"] == "delivered" for d in found)

    await until(delivered)
    events = await wpool.fetch(
        "SELECT id, type FROM webhook_events WHERE partner_key_id = $1", partner.key_id
    )
    pending = next(e["id"] for e in events if e["type"] == "topup.paid")
    await wpool.execute(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = 'infinity' "
        "WHERE event_id = $1",
        pending,
    )
    await wpool.execute(
        "UPDATE webhook_events SET created_at = now() - interval '31 days' "
        "WHERE partner_key_id = $1",
        partner.key_id,
    )
    assert await outbox.purge(wpool) >= 1
    left = await wpool.fetch(
        "SELECT e.id, count(a.id) AS logged FROM webhook_events e "
        "JOIN webhook_deliveries d ON d.event_id = e.id "
        "LEFT JOIN webhook_attempts a ON a.delivery_id = d.id "
        "WHERE e.partner_key_id = $1 GROUP BY e.id",
        partner.key_id,
    )
    assert [(r["id"], r["logged"]) for r in left] == [(pending, 1)]
    await wpool.execute("UPDATE webhook_deliveries SET state = 'cancelled' WHERE event_id = $1",
                        pending)  # fmt: skip


async def test_later_areas_tell_webhooks_through_order_moved(
    gateway: ClientT, receiver: Receiver, wpool: asyncpg.Pool, webhook_config: Config
) -> None:
    """What the OTA area will do when a partner's card top-up is loaded onto the chip."""
    partner = await make.partner(wpool, webhook_config)
    await subscribe(gateway, partner, receiver.url, ["topup.loaded"])
    rider = await make.rider(gateway)
    asn = await linked_card(gateway, rider)
    await fund(wpool, partner.key_id, 10_000)
    body = {"target": {"card": asn}, "amount_fen": 2000}
    response = await signed(gateway, partner, "POST", "/v1/partner/topups", body, key="load-1")
    topup = await response.json()
    async with wpool.acquire() as conn, conn.transaction():
        order = await orders.lock(conn, topup["id"])
        loaded = await orders.move(conn, order, orders.State.LOADED)
        await partners.order_moved(conn, loaded, webhook_config)

    async def told() -> bool:
        return len(receiver.got) == 1

    await until(told)
    event = receiver.got[0].json
    assert event["type"] == "topup.loaded"
    assert event["data"]["topup"]["status"] == "loaded"
    assert event["data"]["topup"]["target"] == {"card": asn}
