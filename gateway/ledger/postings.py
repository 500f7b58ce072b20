"""Posting a txn: the one way money moves. This module owns `ledger_txns` and `ledger_entries`.

`post()` runs the `ledger_post` SQL function (migrations/0001_platform.sql): one round trip,
legs applied in account-id order with one conditional UPDATE each, then the txn and its entries.
It must be called inside the caller's transaction, next to the business row that caused it. A
failure (floor breach, unknown account, duplicate ref) raises and leaves that transaction
aborted: the caller rolls back and nothing of the posting or its cause is written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import asyncpg


class TxnKind(enum.StrEnum):
    """What caused a txn. Each area adds its kinds here and in `ledger_txn_kinds` (its
    migration); with the txn's `ref` naming the business row, an event posts once."""

    ADJUSTMENT = "adjustment"  # an operator's correction of a wallet (ref adjustment:<id>)
    QR_RIDE = "qr_ride"  # a QR ride's fare (ref qr:<replay key hex>)


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
