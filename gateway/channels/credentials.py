"""A channel's merchant credentials in the keystore: what the channel's console gave us.

One keystore entry per channel (kind `channel_private`, name = the channel), holding the whole
credential mapping encrypted (private keys, the APIv3 key, ids, the channel's public keys and
base URL). Importing again makes a new version; the newest active one is used. `public_view`
is what may be shown: every field but the secret ones.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from gateway import db
from gateway.channels.types import Channel
from gateway.keystore import KeyKind, Keystore

SECRET_MARKERS = ("private", "apiv3_key", "secret")


def is_secret(field: str) -> bool:
    return any(marker in field for marker in SECRET_MARKERS)


def public_view(credentials: dict[str, Any]) -> dict[str, Any]:
    """The fields safe to print or log: ids, URLs, public keys and certificates."""
    return {k: v for k, v in credentials.items() if not is_secret(k)}


async def store(
    conn: asyncpg.Connection, keystore: Keystore, channel: Channel, credentials: dict[str, Any]
) -> int:
    """A new version of the channel's credentials, the older ones retired; its version."""
    db.assert_in_transaction(conn)
    for old in await keystore.versions(conn, KeyKind.CHANNEL_PRIVATE, channel.value):
        if old.status == "active":
            await keystore.set_status(conn, old.id, "retired")
    stored = await keystore.put(
        conn, KeyKind.CHANNEL_PRIVATE, channel.value, json.dumps(credentials).encode(),
        meta=public_view(credentials),
    )  # fmt: skip
    return stored.version


async def load(
    conn: asyncpg.Connection | asyncpg.Pool, keystore: Keystore, channel: Channel
) -> dict[str, Any] | None:
    """The channel's current credentials, or None when none were imported."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            return await load(held, keystore, channel)
    found = await keystore.active(conn, KeyKind.CHANNEL_PRIVATE, channel.value)
    if found is None:
        return None
    loaded: dict[str, Any] = json.loads(found.secret)
    return loaded
