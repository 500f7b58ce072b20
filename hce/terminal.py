"""A gate (validator) simulator: taps a card or phone and produces the tap record clearing needs.

`Gate.tap` runs SELECT → (READ BINARY 0015) → INITIALIZE FOR PURCHASE → DEBIT FOR PURCHASE
(CARD_PROTOCOL.md "Purchase") against anything with `transmit(bytes) -> bytes`: a software
card, a virtual card (HCE phone) or a PC/SC reader. Physical and virtual cards go through the
same code; a virtual card is recognised by the `DF 61` in its FCI.

A gate never holds load or TAC keys (its SAM holds the master purchase key only), never reads
the clock itself (`now` is passed in), and never imports aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hce import apdu as A
from hce import card_crypto as cc
from hce.readers import CardReader
from hce.sam import Psam
from hce.software_card import CITY_CARD_AID, CardTorn

__all__ = ["Decline", "DeclineReason", "Gate", "TapRecord", "bcd_date", "bcd_time"]

T_UNION_AID = bytes.fromhex("A000000632010105")
KEY_INDEX = 1


class DeclineReason(enum.Enum):
    INSUFFICIENT_BALANCE = "insufficient_balance"
    EXPIRED = "expired"
    DENY_LISTED = "deny_listed"
    BAD_MAC2 = "bad_mac2"
    CARD_ERROR = "card_error"
    CARD_REMOVED = "card_removed"


@dataclass(frozen=True, slots=True)
class Decline:
    """The gate stays shut. `sw` is the card's status word when the card refused."""

    reason: DeclineReason
    message: str
    sw: int | None = None


@dataclass(frozen=True, slots=True)
class TapRecord:
    """One purchase as the gate uploads it to clearing (which checks the TAC)."""

    asn: bytes
    offline_counter: int
    amount_fen: int
    tx_type: int
    terminal_id: bytes
    terminal_serial: bytes
    date: bytes
    time: bytes
    tac: bytes
    balance_after_fen: int
    card_type: int
    luk_seq: int | None = None
    luk_until: bytes | None = None

    @property
    def luk(self) -> tuple[int, bytes] | None:
        if self.luk_seq is None or self.luk_until is None:
            return None
        return self.luk_seq, self.luk_until

    def tac_input(self) -> bytes:
        return cc.purchase_tac_input(
            self.amount_fen,
            self.tx_type,
            self.terminal_id,
            self.terminal_serial,
            self.date,
            self.time,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tap upload (bytes as upper-case hex)."""
        return {
            "asn": self.asn.hex().upper(),
            "offline_counter": self.offline_counter,
            "amount_fen": self.amount_fen,
            "tx_type": self.tx_type,
            "terminal_id": self.terminal_id.hex().upper(),
            "terminal_serial": self.terminal_serial.hex().upper(),
            "date": self.date.hex(),
            "time": self.time.hex(),
            "tac": self.tac.hex().upper(),
            "balance_after_fen": self.balance_after_fen,
            "card_type": self.card_type,
            "luk_seq": self.luk_seq,
            "luk_until": self.luk_until.hex() if self.luk_until is not None else None,
        }


def bcd_date(now: datetime) -> bytes:
    return bytes.fromhex(now.strftime("%Y%m%d"))


def bcd_time(now: datetime) -> bytes:
    return bytes.fromhex(now.strftime("%H%M%S"))


class _Refused(Exception):
    def __init__(self, decline: Decline) -> None:
        self.decline = decline


def _refuse(reason: DeclineReason, message: str, sw: int | None = None) -> _Refused:
    return _Refused(Decline(reason, message, sw))


class Gate:
    """A gate with its SAM and reader. Keep `sam.serial` across restarts."""

    def __init__(
        self,
        terminal_id: bytes,
        sam: Psam,
        reader: CardReader,
        *,
        deny_list: Container[bytes] = frozenset(),
        aids: Sequence[bytes] = (CITY_CARD_AID, T_UNION_AID),
        read_issuer_file: bool = False,
        compound: bool = False,
    ) -> None:
        if len(terminal_id) != 6:
            raise ValueError("a terminal id has 6 bytes")
        self.terminal_id = bytes(terminal_id)
        self.sam = sam
        self.reader = reader
        self.deny_list = deny_list
        self.aids = tuple(aids)
        self.read_issuer_file = read_issuer_file
        self.compound = compound

    def tap(self, fare_fen: int, now: datetime) -> TapRecord | Decline:
        """Charge `fare_fen` to the card in the field at time `now`."""
        try:
            return self._tap(fare_fen, now)
        except _Refused as refused:
            return refused.decline
        except CardTorn:
            return Decline(DeclineReason.CARD_REMOVED, "card left the field; tap again")

    def _send(self, command: bytes) -> A.ResponseApdu:
        try:
            return A.ResponseApdu.from_bytes(self.reader.transmit(command))
        except A.ApduError as exc:
            raise _refuse(DeclineReason.CARD_ERROR, f"unreadable answer: {exc}") from None

    def _select(self) -> A.SelectResponse:
        answer = A.ResponseApdu.status(A.StatusWord.FILE_NOT_FOUND)
        for aid in self.aids:
            answer = self._send(A.Select(aid).to_bytes())
            if answer.ok:
                try:
                    return A.SelectResponse.from_bytes(answer.data)
                except A.ApduError as exc:
                    raise _refuse(DeclineReason.CARD_ERROR, f"bad FCI: {exc}") from None
            if answer.sw != A.StatusWord.FILE_NOT_FOUND:
                # The application is there but refuses (e.g. a phone with no key left).
                raise _refuse(DeclineReason.CARD_ERROR, f"SELECT: {answer.meaning}", answer.sw)
        raise _refuse(DeclineReason.CARD_ERROR, "no e-purse application", answer.sw)

    def _issuer_info(self, fci: A.SelectResponse) -> A.IssuerInfo:
        if not self.read_issuer_file:
            return fci.issuer_info
        answer = self._send(A.ReadBinary().to_bytes())
        if not answer.ok:
            raise _refuse(DeclineReason.CARD_ERROR, "cannot read file 0015", answer.sw)
        try:
            return A.IssuerInfo.from_bytes(answer.data)
        except A.ApduError as exc:
            raise _refuse(DeclineReason.CARD_ERROR, f"bad file 0015: {exc}") from None

    def _check_card(self, info: A.IssuerInfo, fci: A.SelectResponse, today: bytes) -> None:
        if info.asn in self.deny_list:
            raise _refuse(DeclineReason.DENY_LISTED, "card is on the deny list")
        # BCD dates compare correctly as bytes.
        if not info.valid_from <= today <= info.valid_until:
            raise _refuse(DeclineReason.EXPIRED, "card outside its validity dates")
        if fci.key_info is not None and fci.key_info.until < today:
            raise _refuse(DeclineReason.EXPIRED, "virtual card key expired")

    def _initialize(self, fare_fen: int) -> A.InitializeForPurchaseResponse:
        init = A.InitializeForPurchase(KEY_INDEX, fare_fen, self.terminal_id, self.compound)
        answer = self._send(init.to_bytes())
        if answer.sw == A.StatusWord.INSUFFICIENT_BALANCE:
            raise _refuse(DeclineReason.INSUFFICIENT_BALANCE, "balance too low", answer.sw)
        if not answer.ok:
            raise _refuse(DeclineReason.CARD_ERROR, f"INITIALIZE: {answer.meaning}", answer.sw)
        try:
            result = A.InitializeForPurchaseResponse.from_bytes(answer.data)
        except A.ApduError as exc:
            raise _refuse(DeclineReason.CARD_ERROR, f"bad INITIALIZE answer: {exc}") from None
        if result.balance_fen < fare_fen:
            raise _refuse(DeclineReason.INSUFFICIENT_BALANCE, "balance too low")
        return result

    def _tap(self, fare_fen: int, now: datetime) -> TapRecord:
        date, time = bcd_date(now), bcd_time(now)
        fci = self._select()
        info = self._issuer_info(fci)
        self._check_card(info, fci, date)
        init = self._initialize(fare_fen)
        luk = (fci.key_info.seq, fci.key_info.until) if fci.key_info is not None else None
        tx_type = A.TX_TYPE_COMPOUND if self.compound else A.TX_TYPE_PURCHASE
        purchase = self.sam.begin_purchase(
            asn=info.asn,
            card_random=init.random,
            offline_counter=init.offline_counter,
            amount_fen=fare_fen,
            tx_type=tx_type,
            terminal_id=self.terminal_id,
            date=date,
            time=time,
            luk=luk,
        )
        debit = A.DebitForPurchase(purchase.terminal_serial, date, time, purchase.mac1)
        answer = self._send(debit.to_bytes())
        if not answer.ok:
            raise _refuse(DeclineReason.CARD_ERROR, f"DEBIT: {answer.meaning}", answer.sw)
        try:
            result = A.DebitForPurchaseResponse.from_bytes(answer.data)
            self.sam.verify_mac2(purchase, result.mac2)
        except (A.ApduError, cc.MacError):
            raise _refuse(DeclineReason.BAD_MAC2, "card answer failed MAC2") from None
        return TapRecord(
            asn=info.asn,
            offline_counter=init.offline_counter,
            amount_fen=fare_fen,
            tx_type=tx_type,
            terminal_id=self.terminal_id,
            terminal_serial=purchase.terminal_serial,
            date=date,
            time=time,
            tac=result.tac,
            balance_after_fen=init.balance_fen - fare_fen,
            card_type=info.card_type,
            luk_seq=luk[0] if luk else None,
            luk_until=luk[1] if luk else None,
        )
