"""The webhooks area's service: partners' endpoints, redelivery, and the delivery job.

Events are written by the areas whose objects change (`gateway.webhooks.outbox.record`, in
their transaction); this service sends them. The job (`DELIVER`) claims due deliveries, sends
each with no transaction open and no pooled connection held, and records the attempt in a new
transaction: at least once, retried with a doubling back-off until the event's window
(`ONECARD_WEBHOOK_RETRY_WINDOW_S`, 24 h) is over, then given up. URLs are checked when an
endpoint is registered and again before every send (`gateway.webhooks.addresses`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway import errors
from gateway.config import Config, allowed_networks_text
from gateway.context import CONFIG, KEYSTORE, METRICS, POOL
from gateway.keystore import Keystore
from gateway.metrics import Counter
from gateway.webhooks import addresses, delivery, endpoints, events, outbox
from gateway.webhooks.addresses import Network, UrlRefused
from gateway.webhooks.endpoints import Endpoint
from gateway.webhooks.outbox import Attempt, Delivery, Due
from gateway.workers import Periodic

log = logging.getLogger(__name__)

DELIVER_INTERVAL_S = 1.0
PURGE_INTERVAL_S = 3600.0
DELIVER_BATCH_MAX = 64
# A claim outlives the slowest attempt, so that no other runner sends it meanwhile.
CLAIM_MARGIN_S = 30.0


class Webhooks:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        keystore: Keystore,
        session: aiohttp.ClientSession,
        outcomes: Counter,
    ) -> None:
        self.pool = pool
        self.config = config
        self.keystore = keystore
        self.allowed: tuple[Network, ...] = addresses.allowed_networks(
            allowed_networks_text(config.webhook_allowed_hosts)
        )
        self._session = session
        self._outcomes = outcomes

    # ------------------------------------------------------------------ partners' endpoints
    async def create_endpoint(
        self, partner_key_id: str, url: str, event_types: list[str]
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (shown once); 400 `webhook_url_refused` with the
        reason when the URL may not receive webhooks."""
        try:
            await addresses.check(url, self.allowed)
        except UrlRefused as refused:
            details: dict[str, Any] = {"reason": refused.reason}
            if refused.address is not None:
                details["address"] = refused.address
            raise errors.WEBHOOK_URL_REFUSED.error(**details) from None
        async with self.pool.acquire() as conn, conn.transaction():
            return await endpoints.create(conn, self.keystore, partner_key_id, url, event_types)

    async def endpoints_of(self, partner_key_id: str) -> list[Endpoint]:
        return await endpoints.of_partner(self.pool, partner_key_id)

    async def delete_endpoint(self, partner_key_id: str, endpoint_id: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await endpoints.delete(conn, self.keystore, partner_key_id, endpoint_id)

    async def deliveries(
        self, partner_key_id: str, endpoint_id: int, limit: int, before_id: int | None
    ) -> list[Delivery]:
        async with self.pool.acquire() as conn:
            await endpoints.owned(conn, partner_key_id, endpoint_id)
            return await outbox.page(conn, endpoint_id, limit, before_id)

    async def redeliver(self, partner_key_id: str, endpoint_id: int, event_id: str | None) -> int:
        """Re-queue the endpoint's undelivered (pending or given up) events of the last
        REDELIVER_AGE_MAX_S, or the one event `event_id` even if it was delivered; how many.
        An event id the partner never had: 404."""
        number = None
        if event_id is not None:
            number = events.event_id_of(event_id)
            if number is None:
                raise errors.NOT_FOUND.error()
        async with self.pool.acquire() as conn, conn.transaction():
            await endpoints.owned(conn, partner_key_id, endpoint_id)
            if number is not None and not await outbox.event_exists(conn, partner_key_id, number):
                raise errors.NOT_FOUND.error()
            return await outbox.redeliver(
                conn, endpoint_id, number, self.config.webhook_retry_window_s
            )

    # ------------------------------------------------------------------ the delivery job
    async def deliver_due(self) -> int:
        """Claim up to DELIVER_BATCH_MAX due deliveries and attempt them all at once; how many
        were claimed."""
        hold_s = self.config.webhook_timeout_ms / 1000 + CLAIM_MARGIN_S
        due = await outbox.claim_due(self.pool, DELIVER_BATCH_MAX, hold_s)
        await asyncio.gather(*(self._attempt(item) for item in due))
        return len(due)

    async def _attempt(self, due: Due) -> None:
        async with self.pool.acquire() as conn:
            secret = await endpoints.secret(conn, self.keystore, due.endpoint_id)
        if not due.endpoint_active or secret is None:
            await outbox.cancel(self.pool, due.id)
            self._outcomes.inc(("cancelled",))
            return
        body = events.body(due.event_id, due.event_type, due.event_created_at, due.data)
        try:
            attempt = await delivery.send(
                self._session, self.allowed, due.url, secret, events.event_id_text(due.event_id),
                body, int(time.time()),
            )  # fmt: skip
        except Exception:  # our bug, not the receiver's: log it, and the delivery is retried
            log.exception("webhook attempt failed", extra={"delivery": due.id})
            attempt = Attempt(0, None, "internal")
        outcome = await outbox.finish(self.pool, due, attempt, self.config.webhook_retry_first_s)
        self._outcomes.inc((outcome or "superseded",))


WEBHOOKS = web.AppKey("webhooks", Webhooks)


async def setup(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    outcomes = app[METRICS].counter(
        "onecard_webhook_attempts_total", "Webhook delivery attempts by outcome", ("outcome",)
    )
    allowed = addresses.allowed_networks(allowed_networks_text(config.webhook_allowed_hosts))
    session = delivery.client_session(allowed, config.webhook_ca_file, config.webhook_timeout_ms)
    app[WEBHOOKS] = Webhooks(app[POOL], config, app[KEYSTORE], session, outcomes)
    yield
    await session.close()


async def _deliver(app: web.Application) -> None:
    webhooks = app[WEBHOOKS]
    while await webhooks.deliver_due() == DELIVER_BATCH_MAX:
        pass  # a backlog: keep going until it is drained


DELIVER = Periodic("webhooks-deliver", DELIVER_INTERVAL_S, _deliver)


async def _purge(app: web.Application) -> None:
    await outbox.purge(app[POOL])


PURGE = Periodic("webhooks-purge", PURGE_INTERVAL_S, _purge)
JOBS = (DELIVER, PURGE)
