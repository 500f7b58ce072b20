"""The PSAM of a gate: the secure module that holds the master purchase key.

It derives a card's DPK (and, for a virtual card, the LUK named by the card's `DF 61` seq and
until), the purchase session key SESPK, makes MAC1, checks MAC2, and keeps the terminal
transaction serial (CARD_PROTOCOL.md "Purchase" steps 2 and 4, "Virtual cards").

A SAM never holds the master load key or the master TAC key, never lets a session key out of
itself (the gate only sees MAC1 and a yes/no on MAC2), and never imports aiohttp, asyncpg or
redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hce import card_crypto as cc

__all__ = ["Psam", "SamPurchase"]

SERIAL_MODULUS = 1 << 32


@dataclass(frozen=True, slots=True)
class SamPurchase:
    """One purchase the SAM has authorised: its serial and MAC1. The session key stays inside."""

    terminal_serial: bytes
    mac1: bytes
    amount_fen: int
    _session_key: bytes = field(repr=False)


class Psam:
    """A purchase SAM. `serial` is the next terminal transaction serial (persist it)."""

    def __init__(self, master_purchase_key: bytes, *, serial: int = 1) -> None:
        if len(master_purchase_key) != cc.DOUBLE_KEY_BYTES:
            raise ValueError("the master purchase key has 16 bytes")
        if not 0 <= serial < SERIAL_MODULUS:
            raise ValueError("the terminal serial is 4 bytes")
        self._mpk = bytes(master_purchase_key)
        self._serial = serial

    @property
    def serial(self) -> int:
        return self._serial

    def purchase_key(self, asn: bytes, luk: tuple[int, bytes] | None = None) -> bytes:
        """DPK of the card, or for a virtual card the LUK of (seq, until). Stays in the SAM."""
        dpk = cc.diversify(self._mpk, asn)
        if luk is None:
            return dpk
        seq, until = luk
        return cc.luk_from_dpk(dpk, seq, until)

    def begin_purchase(
        self,
        *,
        asn: bytes,
        card_random: bytes,
        offline_counter: int,
        amount_fen: int,
        tx_type: int,
        terminal_id: bytes,
        date: bytes,
        time: bytes,
        luk: tuple[int, bytes] | None = None,
    ) -> SamPurchase:
        """Take the next serial, derive SESPK and make MAC1 for DEBIT FOR PURCHASE."""
        serial = self._serial.to_bytes(4, "big")
        self._serial = (self._serial + 1) % SERIAL_MODULUS
        key = cc.purchase_session_key(
            self.purchase_key(asn, luk), card_random, offline_counter, serial
        )
        mac1 = cc.mac(key, cc.purchase_mac1_input(amount_fen, tx_type, terminal_id, date, time))
        return SamPurchase(serial, mac1, amount_fen, key)

    def verify_mac2(self, purchase: SamPurchase, mac2: bytes) -> None:
        """Raise `card_crypto.MacError` unless the card's MAC2 is right (the card is genuine)."""
        cc.verify_mac(purchase._session_key, cc.purchase_mac2_input(purchase.amount_fen), mac2)
