"""Partners' webhook endpoints: where to send which events, and the secret that signs them.

The secret is made here, stored in the keystore (kind `webhook_secret`, name `webhook:<id>`)
and shown to the partner once, in the answer to the create. A partner sees and deletes only
its own endpoints (anyone else's: 404); a deleted endpoint keeps its row and delivery history,
its secret is revoked and its pending deliveries are cancelled. This module owns
`webhook_endpoints`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway import db, errors
from gateway.keystore import KeyKind, Keystore
from gateway.webhooks import outbox

ENDPOINTS_MAX = 10  # active endpoints per partner
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True)
class Endpoint:
    id: int
    partner_key_id: str
    url: str
    events: list[str]
    status: str
    created_at: datetime


_COLUMNS = "id, partner_key_id, url, events, status, created_at"


def secret_name(endpoint_id: int) -> str:
    return f"webhook:{endpoint_id}"


async def create(
    conn: asyncpg.Connection, keystore: Keystore, partner_key_id: str, url: str, events: list[str]
) -> tuple[Endpoint, str]:
    """A new endpoint and its secret (to show once); 422 `webhook_limit_reached` when the
    partner has ENDPOINTS_MAX already. The URL was checked by the caller."""
    db.assert_in_transaction(conn)
    # One partner's creates queue here, so that two at once cannot both pass the count.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook-endpoints:' || $1))",
                       partner_key_id)  # fmt: skip
    count = await conn.fetchval(
        "SELECT count(*) FROM webhook_endpoints WHERE partner_key_id = $1 AND status = 'active'",
        partner_key_id,
    )
    if count >= ENDPOINTS_MAX:
        raise errors.WEBHOOK_LIMIT_REACHED.error(endpoints_max=ENDPOINTS_MAX)
    row = await conn.fetchrow(
        f"INSERT INTO webhook_endpoints (partner_key_id, url, events) VALUES ($1, $2, $3) "  # noqa: S608
        f"RETURNING {_COLUMNS}",
        partner_key_id, url, events,
    )  # fmt: skip
    endpoint = Endpoint(**dict(row))
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    await keystore.put(conn, KeyKind.WEBHOOK_SECRET, secret_name(endpoint.id), secret.encode())
    return endpoint, secret


async def owned(
    conn: asyncpg.Connection | asyncpg.Pool, partner_key_id: str, endpoint_id: int
) -> Endpoint:
    """The partner's own active endpoint; 404 for any other (another's, deleted, unknown)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM webhook_endpoints "  # noqa: S608
        "WHERE id = $1 AND partner_key_id = $2 AND status = 'active'",
        endpoint_id, partner_key_id,
    )  # fmt: skip
    if row is None:
        raise errors.NOT_FOUND.error()
    return Endpoint(**dict(row))


async def of_partner(
    conn: asyncpg.Connection | asyncpg.Pool, partner_key_id: str
) -> list[Endpoint]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM webhook_endpoints "  # noqa: S608
        "WHERE partner_key_id = $1 AND status = 'active' ORDER BY id",
        partner_key_id,
    )
    return [Endpoint(**dict(row)) for row in rows]


async def delete(
    conn: asyncpg.Connection, keystore: Keystore, partner_key_id: str, endpoint_id: int
) -> None:
    """Delete the partner's endpoint: nothing more is sent to it; 404 for any other."""
    db.assert_in_transaction(conn)
    deleted = await conn.fetchval(
        "UPDATE webhook_endpoints SET status = 'deleted', deleted_at = now() "
        "WHERE id = $1 AND partner_key_id = $2 AND status = 'active' RETURNING id",
        endpoint_id, partner_key_id,
    )  # fmt: skip
    if deleted is None:
        raise errors.NOT_FOUND.error()
    await outbox.cancel_endpoint(conn, endpoint_id)
    for key in await keystore.versions(conn, KeyKind.WEBHOOK_SECRET, secret_name(endpoint_id)):
        await keystore.set_status(conn, key.id, "revoked")


async def secret(conn: asyncpg.Connection, keystore: Keystore, endpoint_id: int) -> str | None:
    """The endpoint's signing secret; None once it was deleted."""
    key = await keystore.active(conn, KeyKind.WEBHOOK_SECRET, secret_name(endpoint_id))
    return None if key is None else key.secret.decode()
