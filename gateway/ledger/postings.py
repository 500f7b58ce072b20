"""Posting a txn: the one way money moves. This module owns `ledger_txns` and `ledger_entries`.

`post()` runs the `ledger_post` SQL function (migrations/0001_platform.sql): one round trip,
legs applied in account-id order with one conditional UPDATE each, then the txn and its entries.
It must be called inside the caller's transaction, next to the business row that caused it. A
failure (floor breach, unknown account, duplicate ref) raises and leaves that transaction
aborted: the caller rolls back and nothing of the posting or its cause is written.

`post_batch()` runs `ledger_post_batch` (migrations/0006_taps.sql): many two-leg txns of one
kind in one statement, for a gate's batch of taps. Each account is locked once and updated once
with its net change (an operator's payable once per batch, not once per ride); a posting whose
from-account cannot pay is refused alone, the others still post. Business rows that name their
txn can be written whole before the posting, with ids drawn by `reserve_txn_ids()`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from gateway.ledger.accounts import AccountKind


class TxnKind(enum.StrEnum):
    """What caused a txn. Each area adds its kinds here and in `ledger_txn_kinds` (its
    migration); with the txn's `ref` naming the business row, an event posts once."""

    ADJUSTMENT = "adjustment"  # an operator's correction of a wallet (ref adjustment:<id>)
    QR_RIDE = "qr_ride"  # a QR ride's fare (ref qr:<replay key hex>)
    TOPUP_PAID = "topup_paid"  # channel receivable -> wallet or pending load (ref topup:<id>)
    TOPUP_REFUND = "topup_refund"  # wallet or pending load -> receivable (ref refund:<id>)
    TOPUP_REFUND_FAILED = "topup_refund_failed"  # the refund's money back (ref refund:<id>)
    PARTNER_TOPUP = "partner_topup"  # partner float -> wallet or pending load (ref topup:<id>)
    PARTNER_FUNDING = "partner_funding"  # suspense -> partner float (ref partner-funding:<id>)
    OTA_LOAD = "ota_load"  # pending load -> card float, on a verified TAC (ref ota:<load id>)
    CARD_BALANCE_SEEN = "card_balance_seen"  # suspense <-> card float (ref card-seen:<load id>)


class LedgerError(Exception):
    """A posting was refused; nothing was written."""


class FloorBreach(LedgerError):
    def __init__(self, account_id: int) -> None:
        super().__init__(f"account {account_id} would fall below its floor")
        self.account_id = account_id


class UnknownAccount(LedgerError):
    def __init__(self, account_id: int) -> None:
        super().__init__(f"no ledger account {account_id}")
        self.account_id = account_id


class DuplicatePosting(LedgerError):
    """A txn with this (kind, ref) exists: the business event was already posted."""


@dataclass(frozen=True)
class Leg:
    account_id: int
    amount_fen: int


@dataclass(frozen=True)
class Posting:
    txn_id: int
    balances_fen: dict[int, int]  # account id -> balance after this txn


_POST = "SELECT txn_id, balances_fen FROM ledger_post($1, $2, $3, $4, $5)"


async def post(
    conn: asyncpg.Connection,
    kind: TxnKind,
    legs: list[Leg],
    *,
    ref: str,
    memo: str = "",
) -> Posting:
    """Post one txn of `legs`; `ref` names the business event, which posts once per kind
    (a second posting raises `DuplicatePosting`)."""
    # These are our own bugs, never client input: callers build legs from validated amounts.
    assert conn.is_in_transaction(), "post() belongs inside the caller's transaction"
    assert isinstance(kind, TxnKind) and ref, "every txn has a known kind and names its event"
    assert len(legs) >= 2, "a txn has two or more legs"
    assert sum(leg.amount_fen for leg in legs) == 0, "a txn's legs sum to zero"
    assert all(leg.amount_fen != 0 for leg in legs)
    assert len({leg.account_id for leg in legs}) == len(legs), "one leg per account"
    accounts = [leg.account_id for leg in legs]
    try:
        row = await conn.fetchrow(
            _POST, kind.value, ref, memo, accounts, [leg.amount_fen for leg in legs]
        )
    except asyncpg.PostgresError as exc:
        raise _ledger_error(exc) from None
    assert row is not None
    return Posting(row["txn_id"], dict(zip(accounts, row["balances_fen"], strict=True)))


def _ledger_error(exc: asyncpg.PostgresError) -> Exception:
    state = getattr(exc, "sqlstate", None)
    detail = getattr(exc, "detail", None) or "0"
    if state == "OC002":
        return FloorBreach(int(detail))
    if state == "OC003":
        return UnknownAccount(int(detail))
    if state == "23505" and getattr(exc, "constraint_name", "") == "ledger_txns_kind_ref_key":
        return DuplicatePosting(str(exc))
    unexpected: Exception = exc
    return unexpected


@dataclass(frozen=True)
class Transfer:
    """One two-leg txn of a batch: `amount_fen` from `from_account` to `to_account`, as txn
    `txn_id` when given (drawn with `reserve_txn_ids`), else under a new id."""

    from_account: int
    to_account: int
    amount_fen: int
    ref: str
    txn_id: int | None = None


_RESERVE = "SELECT ledger_reserve_txn_ids($1)"

_POST_BATCH = "SELECT ledger_post_batch($1, $2, $3, $4, $5, $6, $7)"


async def reserve_txn_ids(conn: asyncpg.Connection | asyncpg.Pool, count: int) -> list[int]:
    """`count` txn ids for a later `post_batch`, so that the business rows naming their txn
    can be written before it. An id never posted is a gap, like a rolled-back posting's."""
    assert count >= 0
    if count == 0:
        return []
    ids: list[int] = await conn.fetchval(_RESERVE, count)
    return ids


async def post_batch(
    conn: asyncpg.Connection, kind: TxnKind, transfers: Sequence[Transfer], *, memo: str = ""
) -> list[int | None]:
    """Post each transfer as its own txn, judged in order against running balances; the txn id
    of each, or None where the from-account would have fallen below its floor (that transfer
    alone is refused: nothing of it is written). `ref`s name the events, which post once per
    kind (one posted before raises `DuplicatePosting`, and nothing of the batch is written)."""
    assert conn.is_in_transaction(), "post_batch() belongs inside the caller's transaction"
    assert isinstance(kind, TxnKind), "every txn has a known kind"
    assert all(t.ref for t in transfers), "every txn names its event"
    assert len({t.ref for t in transfers}) == len(transfers), "one txn per event"
    assert all(t.amount_fen > 0 for t in transfers)
    assert all(t.from_account != t.to_account for t in transfers), "a txn moves between two"
    if not transfers:
        return []
    try:
        txn_ids: list[int | None] = await conn.fetchval(
            _POST_BATCH, kind.value, memo, [t.ref for t in transfers],
            [t.from_account for t in transfers], [t.to_account for t in transfers],
            [t.amount_fen for t in transfers], [t.txn_id for t in transfers],
        )  # fmt: skip
    except asyncpg.PostgresError as exc:
        raise _ledger_error(exc) from None
    assert len(txn_ids) == len(transfers)
    assert all(i is None or t.txn_id in (None, i) for t, i in zip(transfers, txn_ids, strict=True))
    return txn_ids


_ACCOUNTS_OF_OWNERS = """
SELECT owner, id FROM ledger_accounts WHERE kind = $1 AND owner = ANY($2) AND currency = 'CNY'
"""


async def accounts_of_owners(
    conn: asyncpg.Connection | asyncpg.Pool, kind: AccountKind, owners: Sequence[str]
) -> dict[str, int]:
    """owner -> account id of the accounts (kind, owner) that exist, in one query: the accounts
    a batch will post to. (A set-based `accounts.find_account`; it belongs in accounts.py.)"""
    if not owners:
        return {}
    rows = await conn.fetch(_ACCOUNTS_OF_OWNERS, kind.value, list(owners))
    return {row["owner"]: row["id"] for row in rows}
