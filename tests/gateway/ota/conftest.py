"""Every OTA test runs with the card master keys of CARD_PROTOCOL.md's test vectors in the
keystore, stored before any gateway of these tests starts (its security module reads them at
start)."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.config import Config
from gateway.keystore import KeyKind, Keystore, load_kek
from gateway.ota.ism import key_name
from tests.hce.vectors import MLK, MTK

KEY_INDEX = 1


@pytest.fixture(scope="session", autouse=True)
async def card_masters(pool: asyncpg.Pool, config: Config) -> None:
    """The synthetic master keys of CARD_PROTOCOL.md's vectors, as `onecard keys
    import-card-masters --test-keys` stores them, before any gateway of these tests starts."""
    keystore = Keystore(load_kek(config))
    async with pool.acquire() as conn, conn.transaction():
        name = key_name(KEY_INDEX, 1)
        if not await keystore.versions(conn, KeyKind.CARD_MASTER_LOAD, name):
            meta = {"test_keys": True}
            await keystore.put(conn, KeyKind.CARD_MASTER_LOAD, name, MLK, meta=meta)
            await keystore.put(conn, KeyKind.CARD_MASTER_TAC, name, MTK, meta=meta)
