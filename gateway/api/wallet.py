"""Wallet routes: a rider's balance and statement; operators' view and adjustments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from gateway import errors
from gateway.api import paging
from gateway.api.routing import Call, RouteTable
from gateway.auth.principal import PrincipalKind
from gateway.ledger.history import Entry
from gateway.wallet import WALLETS

routes = RouteTable("wallet")
RIDER = {PrincipalKind.RIDER}
ADMIN = {PrincipalKind.ADMIN}
ADJUSTMENT_FEN_MAX = 100_000_000  # ¥1,000,000: far above any wallet, below any overflow
CURSOR_KIND = "e"  # positions are ledger entry ids


class WalletOut(msgspec.Struct):
    balance_fen: int
    floor_fen: int
    currency: str


class WalletTransaction(msgspec.Struct):
    txn_id: int
    kind: str
    amount_fen: int
    balance_after_fen: int
    memo: str
    created_at: datetime


class WalletTransactions(msgspec.Struct):
    items: list[WalletTransaction]
    next_cursor: str | None


class Adjustment(msgspec.Struct, forbid_unknown_fields=True):
    rider_id: Annotated[int, msgspec.Meta(ge=1)]
    amount_fen: Annotated[
        int,
        msgspec.Meta(
            ge=-ADJUSTMENT_FEN_MAX, le=ADJUSTMENT_FEN_MAX, description="not 0: it moves money",
            extra_json_schema={"not": {"const": 0}},
        ),
    ]  # fmt: skip
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]


class Adjusted(msgspec.Struct):
    adjustment_id: int
    txn_id: int
    rider_id: int
    amount_fen: int
    balance_fen: int


@routes.get("/v1/wallet", response=WalletOut, principals=RIDER)
async def get_wallet(call: Call) -> WalletOut:
    """The wallet's balance and floor, in fen."""
    found = await call.app[WALLETS].wallet(int(call.caller.id))
    return WalletOut(found.balance_fen, found.floor_fen, found.currency)


@routes.get(
    "/v1/wallet/transactions", query=paging.PageQuery, response=WalletTransactions,
    principals=RIDER,
)  # fmt: skip
async def wallet_transactions(call: Call) -> WalletTransactions:
    """The wallet's statement, newest first; pass `next_cursor` back as `cursor` for more."""
    query: paging.PageQuery = call.query
    entries = await call.app[WALLETS].statement(
        int(call.caller.id), query.limit + 1, paging.cursor_in(CURSOR_KIND, query.cursor)
    )
    shown, cursor = paging.page(entries, query.limit, CURSOR_KIND, lambda e: e.entry_id)
    return WalletTransactions([_transaction(e) for e in shown], cursor)


@routes.get("/v1/wallet/transactions/{txn_id}", response=WalletTransaction, principals=RIDER)
async def wallet_transaction(call: Call) -> WalletTransaction:
    """One transaction of the wallet."""
    entry = await call.app[WALLETS].statement_entry(int(call.caller.id), call.path_int("txn_id"))
    return _transaction(entry)


@routes.get("/v1/admin/riders/{rider_id}/wallet", response=WalletOut, principals=ADMIN)
async def admin_get_wallet(call: Call) -> WalletOut:
    """A rider's wallet, for operators."""
    found = await call.app[WALLETS].wallet(call.path_int("rider_id"))
    return WalletOut(found.balance_fen, found.floor_fen, found.currency)


@routes.post(
    "/v1/admin/adjustments", body=Adjustment, response=Adjusted, status=201, principals=ADMIN,
    idempotent=True, errors=("insufficient_balance", "not_found"),
)  # fmt: skip
async def adjust_wallet(call: Call) -> Adjusted:
    """Credit or debit a rider's wallet against suspense, with a reason (role admin)."""
    body: Adjustment = call.body
    if body.amount_fen == 0:
        raise errors.VALIDATION_FAILED.error("An adjustment moves money.", field="amount_fen")
    done = await call.app[WALLETS].adjust(
        call.tx, body.rider_id, body.amount_fen, body.reason, call.caller.id
    )
    return Adjusted(done.adjustment_id, done.txn_id, body.rider_id, body.amount_fen,
                    done.balance_fen)  # fmt: skip


def _transaction(entry: Entry) -> WalletTransaction:
    return WalletTransaction(
        entry.txn_id, entry.kind, entry.amount_fen, entry.balance_after_fen, entry.memo,
        entry.created_at,
    )  # fmt: skip
