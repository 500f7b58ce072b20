"""The QR codes area's service: challenges, rider certificates, online codes, issuer keys.

Built once at start (`setup`): the issuer keys are loaded then, and reloaded as they rotate.
Handlers call one method of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from gateway.config import Config
from gateway.context import CONFIG, KEYSTORE, POOL, REDIS
from gateway.qr_codes import certificates, challenges, codes
from gateway.qr_codes.issuer_keys import IssuerKey, IssuerKeys


class QrCodes:
    def __init__(
        self, pool: asyncpg.Pool, client: redis.Redis, config: Config, keys: IssuerKeys
    ) -> None:
        self.pool = pool
        self.redis = client
        self.config = config
        self.keys = keys

    async def challenge(self, rider_id: int) -> bytes:
        return await challenges.new_challenge(self.redis, self.config.redis_prefix, rider_id)

    async def certify(
        self, rider_id: int, device_public_key: bytes, challenge: bytes, signature: bytes,
        now: int,
    ) -> certificates.Issued:  # fmt: skip
        return await certificates.certify(
            self.pool, self.redis, self.config, self.keys, rider_id, device_public_key,
            challenge, signature, now,
        )  # fmt: skip

    async def online_code(self, rider_id: int, now: int) -> codes.Issued:
        return await codes.issue(
            self.pool, self.redis, self.config.redis_prefix, self.keys, rider_id,
            self.config.qr_code_ttl_s, now,
        )  # fmt: skip

    async def image(self, rider_id: int, code_id: str, image_format: str) -> bytes:
        return await codes.image(
            self.redis, self.config.redis_prefix, rider_id, code_id, image_format
        )

    async def published_keys(self, now: int) -> list[IssuerKey]:
        return await self.keys.published(now)


QR_CODES = web.AppKey("qr_codes", QrCodes)


async def setup(app: web.Application) -> AsyncIterator[None]:
    """QR issuer keys, loaded (the first one made) at start and reloaded as they rotate."""
    keys = IssuerKeys(app[KEYSTORE], app[POOL])
    await keys.load()
    app[QR_CODES] = QrCodes(app[POOL], app[REDIS], app[CONFIG], keys)
    yield
