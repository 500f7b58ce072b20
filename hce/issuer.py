"""The issuer's security module: what the gateway computes for loads and checks for purchases.

For an over-the-air load (CARD_PROTOCOL.md "Load", DESIGN.md section 7) the gateway verifies the
card's MAC1, makes MAC2 for CREDIT FOR LOAD, verifies the TAC, and settles an interrupted load
from a GET TRANSACTION PROVE answer. For clearing it verifies the TAC of every purchase, physical
or virtual (LUK). Everything is a pure function of the stored facts of the transaction (no
session object to keep between HTTP requests): persist a `LoadTransaction` and call again.

This module never returns a master or card key, never compares MACs except in constant time,
raises one opaque `MacError` for every kind of bad MAC or TAC, and never imports aiohttp,
asyncpg or redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hce import apdu as A
from hce import card_crypto as cc
from hce.card_crypto import MacError
from hce.virtual_card import Luk, derive_luks

__all__ = ["Issuer", "LoadTransaction", "MacError", "PurchaseTransaction"]


@dataclass(frozen=True, slots=True)
class LoadTransaction:
    """The facts of one load the gateway keeps: what it asked and what INITIALIZE answered."""

    asn: bytes
    amount_fen: int
    terminal_id: bytes
    balance_fen: int
    online_counter: int
    random: bytes

    @classmethod
    def from_initialize(
        cls, asn: bytes, command: A.InitializeForLoad, answer: A.InitializeForLoadResponse
    ) -> LoadTransaction:
        return cls(
            asn=asn,
            amount_fen=command.amount_fen,
            terminal_id=command.terminal_id,
            balance_fen=answer.balance_fen,
            online_counter=answer.online_counter,
            random=answer.random,
        )

    @property
    def new_balance_fen(self) -> int:
        return self.balance_fen + self.amount_fen


@dataclass(frozen=True, slots=True)
class PurchaseTransaction:
    """The facts of one purchase a tap record carries (see `hce.terminal.TapRecord`)."""

    asn: bytes
    amount_fen: int
    tx_type: int
    terminal_id: bytes
    terminal_serial: bytes
    date: bytes
    time: bytes
    luk_seq: int | None = None
    luk_until: bytes | None = None


class Issuer:
    """Holds the master keys; derives each card's keys on demand and forgets them."""

    def __init__(
        self,
        *,
        master_load_key: bytes | None = None,
        master_purchase_key: bytes | None = None,
        master_tac_key: bytes | None = None,
    ) -> None:
        for name, key in (
            ("master load key", master_load_key),
            ("master purchase key", master_purchase_key),
            ("master TAC key", master_tac_key),
        ):
            if key is not None and len(key) != cc.DOUBLE_KEY_BYTES:
                raise ValueError(f"the {name} has 16 bytes")
        self._mlk = master_load_key
        self._mpk = master_purchase_key
        self._mtk = master_tac_key

    def __repr__(self) -> str:
        return "Issuer(<keys hidden>)"

    def _need(self, key: bytes | None, name: str) -> bytes:
        if key is None:
            raise RuntimeError(f"this issuer was built without the {name}")
        return key

    # --- loads -------------------------------------------------------------------------------

    def _seslk(self, load: LoadTransaction) -> bytes:
        dlk = cc.diversify(self._need(self._mlk, "master load key"), load.asn)
        return cc.load_session_key(dlk, load.random, load.online_counter)

    def verify_load_mac1(self, load: LoadTransaction, mac1: bytes) -> None:
        """Step 2: the INITIALIZE FOR LOAD answer came from the genuine card. `MacError` if not."""
        data = cc.load_mac1_input(load.balance_fen, load.amount_fen, load.terminal_id)
        cc.verify_mac(self._seslk(load), data, mac1)

    def load_mac2(self, load: LoadTransaction, date: bytes, time: bytes) -> bytes:
        """Step 2: MAC2 that lets the card credit `load.amount_fen`."""
        data = cc.load_mac2_input(load.amount_fen, load.terminal_id, date, time)
        return cc.mac(self._seslk(load), data)

    def credit_for_load(self, load: LoadTransaction, date: bytes, time: bytes) -> A.CreditForLoad:
        """Step 3: the CREDIT FOR LOAD command to hand to the card."""
        return A.CreditForLoad(date, time, self.load_mac2(load, date, time))

    def _dtk(self, asn: bytes) -> bytes:
        return cc.diversify(self._need(self._mtk, "master TAC key"), asn)

    def verify_load_tac(self, load: LoadTransaction, date: bytes, time: bytes, tac: bytes) -> None:
        """Step 4: the card credited; only after this is the load complete. `MacError` if not."""
        data = cc.load_tac_input(
            load.new_balance_fen,
            load.online_counter,
            load.amount_fen,
            load.terminal_id,
            date,
            time,
        )
        cc.verify_mac(cc.tac_key(self._dtk(load.asn)), data, tac)

    def verify_load_proof(
        self, load: LoadTransaction, date: bytes, time: bytes, mac2: bytes, tac: bytes
    ) -> None:
        """An unsure load, settled: the GET TRANSACTION PROVE answer (for `load.online_counter`,
        type 02) must carry the MAC2 we issued and a valid TAC. `MacError` if not."""
        cc.verify_mac(
            self._seslk(load),
            cc.load_mac2_input(load.amount_fen, load.terminal_id, date, time),
            mac2,
        )
        self.verify_load_tac(load, date, time, tac)

    # --- purchases -------------------------------------------------------------------------

    def purchase_tac_key(self, asn: bytes, luk: tuple[int, bytes] | None = None) -> bytes:
        """TAC key of a card, or of one LUK (seq, until) of a virtual card. Keep it inside."""
        dtk = self._dtk(asn)
        if luk is None:
            return cc.tac_key(dtk)
        return cc.luk_tac_key(dtk, luk[0], luk[1])

    def verify_purchase_tac(self, purchase: PurchaseTransaction, tac: bytes) -> None:
        """Clearing's check of a tap's TAC (physical card, or virtual with its LUK seq/until)."""
        luk = None
        if purchase.luk_seq is not None:
            if purchase.luk_until is None:
                raise ValueError("a LUK purchase needs luk_until")
            luk = (purchase.luk_seq, purchase.luk_until)
        data = cc.purchase_tac_input(
            purchase.amount_fen,
            purchase.tx_type,
            purchase.terminal_id,
            purchase.terminal_serial,
            purchase.date,
            purchase.time,
        )
        cc.verify_mac(self.purchase_tac_key(purchase.asn, luk), data, tac)

    # --- virtual cards -----------------------------------------------------------------------

    def derive_luks(
        self, asn: bytes, seqs: Iterable[int], until: bytes, max_taps: int, max_amount_fen: int
    ) -> tuple[Luk, ...]:
        """LUKs for a virtual card (seal them with `hce.virtual_card.seal_luk_batch`)."""
        return derive_luks(
            self._need(self._mpk, "master purchase key"),
            self._need(self._mtk, "master TAC key"),
            asn,
            seqs,
            until,
            max_taps,
            max_amount_fen,
        )
