"""Rider certificates: the gateway, as issuer, vouches for one device key of one rider.

A phone proves it holds its device key (signature over a challenge, see `challenges`); the
gateway then signs a certificate (`shared/QR_FORMAT.md`) valid `ONECARD_QR_CERTIFICATE_TTL_S`
whose single-ride ceiling is min(spendable wallet balance, `ONECARD_QR_RIDE_CEILING_FEN_MAX`).

One active device per rider: a certificate for another key revokes the previous device, whose
fingerprint goes on the deny list (`gateway.taps.deny_list`) until its last certificate
expires. A rider whose account is deny-listed for want of money and whose balance is back
above zero comes off the list here (and when asking for an online code). This module owns
`qr_devices` and `qr_certificates`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
import redis.asyncio as redis

from gateway import errors, wallet
from gateway.config import Config
from gateway.qr_codes import challenges
from gateway.qr_codes.issuer_keys import IssuerKeys
from gateway.taps import deny_list
from qr.format import RiderCertificate
from qr.signing import (
    InvalidPublicKey,
    decode_public_key,
    device_fingerprint,
    issue_certificate,
    verify_challenge_signature,
)

# Certificates start a little in the past, so a gate whose clock runs behind accepts them.
BACKDATE_S: Final = 60
LIFTED_REASON: Final = "balance_restored"
REVOKED_REASON: Final = "replaced_by_new_device"


@dataclass(frozen=True)
class Issued:
    certificate: RiderCertificate
    fingerprint: bytes
    revoked_fingerprint: bytes | None  # the device this certificate replaced


async def spendable_fen(conn: asyncpg.Connection, rider_id: int) -> int:
    """What the rider may ride on: balance above the floor; 422 when there is none.

    Lifts a deny-list entry made for want of money once the balance is back, so the rider can
    ride again; an entry made for any other reason stays until an operator lifts it.
    """
    found = await wallet.wallet_of(conn, rider_id)
    spendable = found.balance_fen - found.floor_fen
    if spendable <= 0:
        raise errors.INSUFFICIENT_BALANCE.error(balance_fen=found.balance_fen)
    reason = await deny_list.denial_reason(conn, rider_id)
    if reason == deny_list.UNPAID:
        async with conn.transaction():
            await deny_list.lift_account(conn, rider_id, LIFTED_REASON)
    elif reason is not None:
        raise errors.QR_ACCOUNT_DENIED.error()
    return spendable


_LOCK_RIDER = "SELECT pg_advisory_xact_lock(hashtext('qr_devices'), hashtext($1))"

_KEY_OF_ANOTHER_RIDER = """
SELECT 1 FROM qr_devices WHERE fingerprint = $1 AND rider_id <> $2 LIMIT 1
"""

_ACTIVE_DEVICE = """
SELECT id, public_key, fingerprint FROM qr_devices WHERE rider_id = $1 AND status = 'active'
"""

_REVOKE_DEVICE = """
UPDATE qr_devices SET status = 'revoked', revoked_at = now() WHERE id = $1
RETURNING (SELECT max(valid_until) FROM qr_certificates WHERE device_id = $1)
"""

_NEW_DEVICE = """
INSERT INTO qr_devices (rider_id, public_key, fingerprint) VALUES ($1, $2, $3) RETURNING id
"""

_NEW_CERTIFICATE = """
INSERT INTO qr_certificates (rider_id, device_id, issuer_key_id, valid_from, valid_until,
                             ceiling_fen)
VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6)
"""


async def certify(
    pool: asyncpg.Pool,
    client: redis.Redis,
    config: Config,
    keys: IssuerKeys,
    rider_id: int,
    device_public_key: bytes,
    challenge: bytes,
    signature: bytes,
    now: int,
) -> Issued:
    """Check the device key and its proof of possession (using up the challenge), then issue.

    400 `qr_device_key_invalid` for a key that is not a compressed P-256 point on the curve,
    400 `qr_challenge_invalid` for a challenge this rider does not hold unused, 422
    `qr_proof_invalid` for a signature that does not prove possession.
    """
    try:
        decode_public_key(device_public_key)
    except InvalidPublicKey:
        raise errors.QR_DEVICE_KEY_INVALID.error() from None
    await challenges.take_challenge(client, config.redis_prefix, rider_id, challenge)
    if not verify_challenge_signature(device_public_key, challenge, signature):
        raise errors.QR_PROOF_INVALID.error()
    return await issue(
        pool, keys, rider_id, device_public_key, config.qr_certificate_ttl_s,
        config.qr_ride_ceiling_fen_max, now,
    )  # fmt: skip


async def issue(
    pool: asyncpg.Pool,
    keys: IssuerKeys,
    rider_id: int,
    device_public_key: bytes,
    ttl_s: int,
    ceiling_fen_max: int,
    now: int,
) -> Issued:
    """A certificate for a device key whose possession was already proven."""
    key = await keys.current()
    fingerprint = device_fingerprint(device_public_key)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_RIDER, str(rider_id))
        ceiling = min(await spendable_fen(conn, rider_id), ceiling_fen_max)
        device_id, revoked = await _make_active(conn, rider_id, device_public_key, fingerprint)
        certificate = issue_certificate(
            key.private, key.key_id, rider_id, device_public_key,
            now - BACKDATE_S, now + ttl_s, ceiling,
        )  # fmt: skip
        await conn.execute(
            _NEW_CERTIFICATE, rider_id, device_id, key.key_id, certificate.valid_from,
            certificate.valid_until, ceiling,
        )  # fmt: skip
    return Issued(certificate, fingerprint, revoked)


async def _make_active(
    conn: asyncpg.Connection, rider_id: int, public_key: bytes, fingerprint: bytes
) -> tuple[int, bytes | None]:
    """(the device id of `public_key`, the fingerprint of the device it replaced, if any).

    A device key ever registered by another rider is refused for good (409): deny-list entries
    name devices by fingerprint, so letting a second rider register a revoked key (a stolen
    phone) would lift its revocation and revive the first rider's certificates.
    """
    if await conn.fetchval(_KEY_OF_ANOTHER_RIDER, fingerprint, rider_id):
        raise errors.QR_DEVICE_IN_USE.error()
    active = await conn.fetchrow(_ACTIVE_DEVICE, rider_id)
    if active is not None and active["public_key"] == public_key:
        return active["id"], None
    revoked = None
    if active is not None:
        last_valid_until = await conn.fetchval(_REVOKE_DEVICE, active["id"])
        if last_valid_until is not None and last_valid_until > datetime.now(UTC):
            await deny_list.revoke_device(
                conn, active["fingerprint"], last_valid_until, REVOKED_REASON
            )
        revoked = bytes(active["fingerprint"])
    # A key registered again by its own rider (back to an earlier phone) is trusted again.
    await deny_list.restore_device(conn, fingerprint, "registered_again")
    try:
        async with conn.transaction():
            device_id: int = await conn.fetchval(_NEW_DEVICE, rider_id, public_key, fingerprint)
    except asyncpg.UniqueViolationError:
        raise errors.QR_DEVICE_IN_USE.error() from None
    return device_id, revoked
