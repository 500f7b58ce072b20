"""The one ingest path for a gate's batch of taps, whatever their kind: set-based SQL.

A kind's own module checks each tap in Python first (a QR code's signatures and time window,
its deny-list entries, its fare ceiling, its rider's wallet) and hands over the taps whose
record verified, each with the refusal those checks made, if any. Then, inside the caller's
transaction, a fixed number of statements whatever the batch's size:

1. one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`: every tap claims
   its replay key and goes in whole: refused with its reason, or accepted with the id of the
   ledger txn that will pay it (drawn just before with `ledger.reserve_txn_ids`). Rows go in
   sorted by replay key, so two gates uploading overlapping batches take the keys in the same
   order and never deadlock: the second waits for the first to commit, then finds them taken;
2. for the keys already taken (rare), one SELECT of the earlier rows: `duplicate` when this
   terminal uploaded the tap and it was accepted, its stored refusal when it was refused,
   `replayed` when another terminal uploaded it;
3. one `ledger.post_batch` for the new taps not refused: one txn per tap from the rider's
   wallet to the gate operator's payable, judged in request order, so two taps of one rider are
   debited in order and a tap the wallet can no longer pay is refused `insufficient_balance`;
4. only when some wallet could not pay (rare), one UPDATE turning those taps into refusals.

A refused tap whose record verified is stored too: it was spent at the gate, so an upload from
another gate is a replay, and the same gate uploading again gets the same answer.

This module owns `taps`; it moves money only through `gateway.ledger.post_batch`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from gateway import db
from gateway.ledger import Transfer, TxnKind, post_batch, reserve_txn_ids
from gateway.taps.deny_list import UNPAID
from qr.reasons import Reason

TAPS_PER_BATCH_MAX: Final = 1000


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Kind:
    """A kind of tap: its name in `taps.kind`, and how its fares are posted."""

    name: str
    txn_kind: TxnKind
    label: str  # the txn memo: "<label>, gate <terminal> (<operator>)"

    def ref(self, replay_key: bytes) -> str:
        """The ref of the txn that pays a tap: `<kind>:<replay key hex>` (`qr:...` for rides)."""
        return f"{self.name}:{replay_key.hex()}"


QR: Final = Kind("qr", TxnKind.QR_RIDE, "QR ride")


@dataclass(frozen=True)
class Gate:
    terminal_id: str
    operator: str


@dataclass(frozen=True)
class Tap:
    """A tap whose record verified, with what its kind's checks decided."""

    replay_key: bytes
    record: bytes
    rider_id: int | None
    fare_fen: int
    tapped_at: int  # the gate's clock, unix s
    wallet: int | None  # the ledger account that pays; None when refused already
    refusal: str | None  # the reason it is refused before any money moves, else None


@dataclass(frozen=True)
class Result:
    status: Status
    reason: str | None = None
    tap_id: int | None = None


def refused(reason: str, tap_id: int | None = None) -> Result:
    return Result(Status.REJECTED, reason, tap_id)


@dataclass(frozen=True)
class Stored:
    results: list[Result]  # one per tap, in order
    unpaid: list[int]  # positions of the taps refused now because their wallet could not pay


_INSERT = """
INSERT INTO taps (kind, replay_key, record, rider_id, terminal_id, operator, fare_fen,
                  tapped_at, status, reason, txn_id)
SELECT $1, t.replay_key, t.record, t.rider_id, $2, $3, t.fare_fen, to_timestamp(t.tapped_at),
       CASE WHEN t.reason IS NULL THEN 'accepted' ELSE 'rejected' END, t.reason, t.txn_id
FROM unnest($4::bytea[], $5::bytea[], $6::bigint[], $7::integer[], $8::bigint[], $9::text[],
            $10::bigint[])
     AS t(replay_key, record, rider_id, fare_fen, tapped_at, reason, txn_id)
ORDER BY t.replay_key
ON CONFLICT (kind, replay_key) DO NOTHING
RETURNING id, replay_key
"""

_EARLIER = """
SELECT id, replay_key, terminal_id, status, reason FROM taps
WHERE kind = $1 AND replay_key = ANY($2::bytea[])
"""

_UNPAID = """
UPDATE taps SET status = 'rejected', reason = $2, txn_id = NULL WHERE id = ANY($1::bigint[])
"""


async def store(
    conn: asyncpg.Connection, kind: Kind, gate: Gate, taps: Sequence[Tap], payable: int
) -> Stored:
    """Store a batch of taps of one kind and post their fares to `payable` (the gate operator's
    account); the answer for each tap, in order. Replay keys are unique within the batch."""
    db.assert_in_transaction(conn)
    assert len(taps) <= TAPS_PER_BATCH_MAX, "the route refuses larger batches"
    assert len({t.replay_key for t in taps}) == len(taps), "the caller merges repeated taps"
    assert all((t.refusal is None) == (t.wallet is not None) for t in taps)
    if not taps:
        return Stored([], [])
    txn_ids = await _txn_ids(conn, taps)
    rows = await conn.fetch(
        _INSERT, kind.name, gate.terminal_id, gate.operator,
        [t.replay_key for t in taps], [t.record for t in taps], [t.rider_id for t in taps],
        [t.fare_fen for t in taps], [t.tapped_at for t in taps], [t.refusal for t in taps],
        txn_ids,
    )  # fmt: skip
    new = {bytes(row["replay_key"]): row["id"] for row in rows}
    tap_ids = [new.get(t.replay_key) for t in taps]
    results: list[Result | None] = [
        None if tap_id is None or tap.refusal is None else refused(tap.refusal, tap_id)
        for tap, tap_id in zip(taps, tap_ids, strict=True)
    ]
    taken = [i for i, tap_id in enumerate(tap_ids) if tap_id is None]
    if taken:
        for i, result in zip(taken, await _earlier(conn, kind, gate, taps, taken), strict=True):
            results[i] = result
    to_pay = [i for i, result in enumerate(results) if result is None]
    paying = [_Paying(taps[i], tap_ids[i], txn_ids[i]) for i in to_pay]
    unpaid_at = {to_pay[j] for j in await _post(conn, kind, gate, payable, paying)}
    for i in to_pay:
        accepted = Result(Status.ACCEPTED, None, tap_ids[i])
        results[i] = refused(UNPAID, tap_ids[i]) if i in unpaid_at else accepted
    assert all(result is not None for result in results)
    return Stored([r for r in results if r is not None], sorted(unpaid_at))


async def _txn_ids(conn: asyncpg.Connection, taps: Sequence[Tap]) -> list[int | None]:
    """The id of the ledger txn that will pay each tap not refused already, drawn now so that
    its row goes in whole."""
    payable = [i for i, tap in enumerate(taps) if tap.refusal is None]
    txn_ids: list[int | None] = [None] * len(taps)
    for i, txn_id in zip(payable, await reserve_txn_ids(conn, len(payable)), strict=True):
        txn_ids[i] = txn_id
    return txn_ids


async def _earlier(
    conn: asyncpg.Connection, kind: Kind, gate: Gate, taps: Sequence[Tap], taken: list[int]
) -> list[Result]:
    """The answers for taps whose replay key an earlier upload took."""
    rows = await conn.fetch(_EARLIER, kind.name, [taps[i].replay_key for i in taken])
    earlier = {bytes(row["replay_key"]): row for row in rows}
    answers = []
    for i in taken:
        row = earlier.get(taps[i].replay_key)
        assert row is not None, "a conflicting tap row exists once the insert skipped it"
        if row["terminal_id"] != gate.terminal_id:
            answers.append(refused(Reason.REPLAYED))
        elif row["status"] == Status.ACCEPTED:
            answers.append(Result(Status.DUPLICATE, None, row["id"]))
        else:
            answers.append(refused(row["reason"], row["id"]))
    return answers


@dataclass(frozen=True)
class _Paying:
    """A new tap whose fare is to be posted, with its row and the txn its row names."""

    tap: Tap
    tap_id: int | None
    txn_id: int | None


async def _post(
    conn: asyncpg.Connection, kind: Kind, gate: Gate, payable: int, paying: list[_Paying]
) -> list[int]:
    """Post the fares of new taps as the txns their rows name; the positions (in `paying`) of
    those whose wallet could not pay, whose rows become refusals."""
    if not paying:
        return []
    transfers = []
    for one in paying:
        tap = one.tap
        assert tap.wallet is not None and one.txn_id is not None
        ref = kind.ref(tap.replay_key)
        transfers.append(Transfer(tap.wallet, payable, tap.fare_fen, ref, one.txn_id))
    memo = f"{kind.label}, gate {gate.terminal_id} ({gate.operator})"
    posted = await post_batch(conn, kind.txn_kind, transfers, memo=memo)
    unpaid = [j for j, txn_id in enumerate(posted) if txn_id is None]
    if unpaid:
        await conn.execute(_UNPAID, [paying[j].tap_id for j in unpaid], UNPAID)
    return unpaid
