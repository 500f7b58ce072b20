"""ISO 7816-4 APDUs and the e-purse command set of `shared/CARD_PROTOCOL.md`, as typed objects.

`CommandApdu` / `ResponseApdu` parse and build short APDUs (cases 1-4); one class per e-purse
command and one per answer, each parsing with explicit lengths and rejecting anything else with
`ApduError`. The software card, the virtual card, the gate and the gateway all go through here.

This module must never do cryptography or I/O, never import aiohttp, asyncpg or redis, and never
accept a malformed APDU silently.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

__all__ = [
    "ApduError",
    "CommandApdu",
    "CreditForLoad",
    "CreditForLoadResponse",
    "DebitForPurchase",
    "DebitForPurchaseResponse",
    "GetBalance",
    "GetBalanceResponse",
    "GetTransactionProve",
    "GetTransactionProveResponse",
    "InitializeForLoad",
    "InitializeForLoadResponse",
    "InitializeForPurchase",
    "InitializeForPurchaseResponse",
    "IssuerInfo",
    "ReadBinary",
    "ReadRecord",
    "ResponseApdu",
    "Select",
    "SelectResponse",
    "StatusWord",
    "TransactionRecord",
    "VirtualCardKeyInfo",
    "parse_command",
]

CLA_ISO = 0x00
CLA_EP = 0x80
INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_READ_RECORD = 0xB2
INS_INITIALIZE = 0x50
INS_CREDIT_FOR_LOAD = 0x52
INS_DEBIT_FOR_PURCHASE = 0x54
INS_GET_TRANSACTION_PROVE = 0x5A
INS_GET_BALANCE = 0x5C

P1_INIT_LOAD = 0x00
P1_INIT_PURCHASE = 0x01
P1_INIT_COMPOUND = 0x03
P2_EP = 0x02

SFI_ISSUER_INFO = 0x15
SFI_RECORDS = 0x18
ISSUER_INFO_BYTES = 30
RECORD_BYTES = 23
short_data_bytes_max = 255
short_le_max = 256

TX_TYPE_LOAD = 0x02
TX_TYPE_PURCHASE = 0x06
TX_TYPE_COMPOUND = 0x09


class ApduError(ValueError):
    """Bytes that are not a well-formed APDU, or not the command/answer they claim to be."""


class StatusWord(enum.IntEnum):
    """Status words of CARD_PROTOCOL.md "Status words" (plus the ISO ones the cards use)."""

    SUCCESS = 0x9000
    MAC_INVALID = 0x9302
    INSUFFICIENT_BALANCE = 0x9401
    COUNTER_EXHAUSTED = 0x9402
    KEY_INDEX_NOT_SUPPORTED = 0x9403
    NO_TRANSACTION_PROOF = 0x9406
    BALANCE_CEILING_EXCEEDED = 0x6A80
    CONDITIONS_NOT_SATISFIED = 0x6985
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    WRONG_P1_P2 = 0x6A86
    WRONG_OFFSET = 0x6B00
    WRONG_LENGTH = 0x6700
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00

    @property
    def meaning(self) -> str:
        return _SW_MEANINGS[self]

    @classmethod
    def describe(cls, sw: int) -> str:
        """A readable meaning for any SW, known or not."""
        try:
            return cls(sw).meaning
        except ValueError:
            return "unknown status"


_SW_MEANINGS = {
    StatusWord.SUCCESS: "success",
    StatusWord.MAC_INVALID: "MAC (or TAC) invalid",
    StatusWord.INSUFFICIENT_BALANCE: "insufficient balance",
    StatusWord.COUNTER_EXHAUSTED: "transaction counter exhausted",
    StatusWord.KEY_INDEX_NOT_SUPPORTED: "key index not supported",
    StatusWord.NO_TRANSACTION_PROOF: "no transaction proof for that counter",
    StatusWord.BALANCE_CEILING_EXCEEDED: "amount would exceed the balance ceiling",
    StatusWord.CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    StatusWord.FILE_NOT_FOUND: "file or application not found",
    StatusWord.RECORD_NOT_FOUND: "record not found",
    StatusWord.WRONG_P1_P2: "incorrect P1 P2",
    StatusWord.WRONG_OFFSET: "offset outside the file",
    StatusWord.WRONG_LENGTH: "wrong length",
    StatusWord.INS_NOT_SUPPORTED: "instruction not supported",
    StatusWord.CLA_NOT_SUPPORTED: "class not supported",
}


def _byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ApduError(f"{name} must be one byte, got {value}")


def _fixed(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ApduError(f"{name} must be {size} bytes, got {len(value)}")
    return bytes(value)


def _u32(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ApduError(f"{name} must be an unsigned 32-bit value")
    return value.to_bytes(4, "big")


def _u16(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ApduError(f"{name} must be an unsigned 16-bit value")
    return value.to_bytes(2, "big")


# --- ISO 7816-4 framing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """`CLA INS P1 P2 [Lc data] [Le]` (ISO 7816-4), short lengths only. `le` is 1..256 (Le byte
    00 means 256) or None (absent)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            _byte(name, getattr(self, name))
        if len(self.data) > short_data_bytes_max:
            raise ApduError("command data longer than 255 bytes (extended APDUs unsupported)")
        if self.le is not None and not 1 <= self.le <= short_le_max:
            raise ApduError("Le must be 1..256")

    @property
    def case(self) -> int:
        """ISO 7816-3 case: 1 no data no Le, 2 Le only, 3 data only, 4 both."""
        if self.data:
            return 4 if self.le is not None else 3
        return 2 if self.le is not None else 1

    def to_bytes(self) -> bytes:
        out = bytes((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out += bytes((len(self.data),)) + self.data
        if self.le is not None:
            out += bytes((self.le % 256,))
        return out

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandApdu:
        raw = bytes(raw)
        if len(raw) < 4:
            raise ApduError(f"a command APDU has at least 4 bytes, got {len(raw)}")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        lc = body[0]
        if lc == 0:
            raise ApduError("Lc 00 (extended length) is not supported")
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, body[1:])
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, body[1:-1], body[-1] or 256)
        raise ApduError(f"Lc {lc} does not match the {len(body) - 1} bytes that follow it")


@dataclass(frozen=True, slots=True)
class ResponseApdu:
    """`data ‖ SW1 SW2`."""

    data: bytes
    sw: int

    def __post_init__(self) -> None:
        if not 0 <= self.sw <= 0xFFFF:
            raise ApduError("SW must be two bytes")

    @property
    def ok(self) -> bool:
        return self.sw == StatusWord.SUCCESS

    @property
    def meaning(self) -> str:
        return StatusWord.describe(self.sw)

    def to_bytes(self) -> bytes:
        return bytes(self.data) + self.sw.to_bytes(2, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResponseApdu:
        raw = bytes(raw)
        if len(raw) < 2:
            raise ApduError(f"a response APDU has at least 2 bytes (SW), got {len(raw)}")
        return cls(raw[:-2], int.from_bytes(raw[-2:], "big"))

    @classmethod
    def status(cls, sw: int) -> ResponseApdu:
        return cls(b"", sw)


def _expect(apdu: CommandApdu, cla: int, ins: int, name: str) -> None:
    if apdu.cla != cla or apdu.ins != ins:
        raise ApduError(f"not a {name} command (CLA {apdu.cla:02X} INS {apdu.ins:02X})")


def _expect_data(apdu: CommandApdu, size: int, name: str) -> bytes:
    if len(apdu.data) != size:
        raise ApduError(f"{name} carries {size} bytes of data, got {len(apdu.data)}")
    return apdu.data


# --- files (CARD_PROTOCOL.md "Applications and files") ---------------------------------------


@dataclass(frozen=True, slots=True)
class IssuerInfo:
    """File 0015, card issuer information, 30 bytes (CARD_PROTOCOL.md "Applications and files")."""

    issuer_code: bytes
    app_type: int
    app_version: int
    asn: bytes
    valid_from: bytes
    valid_until: bytes
    card_type: int
    deposit_yuan: int

    def __post_init__(self) -> None:
        _fixed("issuer code", self.issuer_code, 8)
        _fixed("ASN", self.asn, 10)
        _fixed("valid from", self.valid_from, 4)
        _fixed("valid until", self.valid_until, 4)
        for name in ("app_type", "app_version", "card_type", "deposit_yuan"):
            _byte(name, getattr(self, name))

    def to_bytes(self) -> bytes:
        return (
            self.issuer_code
            + bytes((self.app_type, self.app_version))
            + self.asn
            + self.valid_from
            + self.valid_until
            + bytes((self.card_type, self.deposit_yuan))
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> IssuerInfo:
        raw = _fixed("file 0015", raw, ISSUER_INFO_BYTES)
        return cls(raw[0:8], raw[8], raw[9], raw[10:20], raw[20:24], raw[24:28], raw[28], raw[29])


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """One record of file 0018, 23 bytes (CARD_PROTOCOL.md "Applications and files")."""

    counter: int
    overdraft_limit_fen: int
    amount_fen: int
    tx_type: int
    terminal_id: bytes
    date: bytes
    time: bytes

    def to_bytes(self) -> bytes:
        if not 0 <= self.overdraft_limit_fen <= 0xFFFFFF:
            raise ApduError("overdraft limit is 3 bytes")
        _byte("type", self.tx_type)
        return (
            _u16("counter", self.counter)
            + self.overdraft_limit_fen.to_bytes(3, "big")
            + _u32("amount", self.amount_fen)
            + bytes((self.tx_type,))
            + _fixed("terminal id", self.terminal_id, 6)
            + _fixed("date", self.date, 4)
            + _fixed("time", self.time, 3)
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> TransactionRecord:
        raw = _fixed("transaction record", raw, RECORD_BYTES)
        return cls(
            counter=int.from_bytes(raw[0:2], "big"),
            overdraft_limit_fen=int.from_bytes(raw[2:5], "big"),
            amount_fen=int.from_bytes(raw[5:9], "big"),
            tx_type=raw[9],
            terminal_id=raw[10:16],
            date=raw[16:20],
            time=raw[20:23],
        )


# --- SELECT (CARD_PROTOCOL.md "Applications and files"; "Virtual cards" for DF 61) ----------


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT by name: `00 A4 04 00 Lc AID 00` (CARD_PROTOCOL.md "Applications and files")."""

    aid: bytes

    def to_apdu(self) -> CommandApdu:
        if not 5 <= len(self.aid) <= 16:
            raise ApduError("an AID has 5 to 16 bytes")
        return CommandApdu(CLA_ISO, INS_SELECT, 0x04, 0x00, self.aid, 256)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> Select:
        _expect(apdu, CLA_ISO, INS_SELECT, "SELECT")
        if apdu.p1 != 0x04 or apdu.p2 != 0x00:
            raise ApduError("only SELECT by name (P1 04, P2 00) is supported")
        if not 5 <= len(apdu.data) <= 16:
            raise ApduError("an AID has 5 to 16 bytes")
        return cls(apdu.data)


@dataclass(frozen=True, slots=True)
class VirtualCardKeyInfo:
    """`DF 61 06 seq(2) ‖ until(4)`: which LUK a virtual card uses (CARD_PROTOCOL.md
    "Virtual cards")."""

    seq: int
    until: bytes

    def to_bytes(self) -> bytes:
        return _u16("seq", self.seq) + _fixed("until", self.until, 4)

    @classmethod
    def from_bytes(cls, raw: bytes) -> VirtualCardKeyInfo:
        raw = _fixed("DF 61", raw, 6)
        return cls(int.from_bytes(raw[:2], "big"), raw[2:])


def _tlv(tag: bytes, value: bytes) -> bytes:
    if len(value) > 0x7F:
        raise ApduError("TLV value too long for a one-byte length")
    return tag + bytes((len(value),)) + value


def _parse_tlvs(raw: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(raw):
        tag_end = i + 1
        if raw[i] & 0x1F == 0x1F:  # multi-byte tag
            while tag_end < len(raw) and raw[tag_end] & 0x80:
                tag_end += 1
            tag_end += 1
        if tag_end >= len(raw):
            raise ApduError("TLV truncated in its tag or length")
        length = raw[tag_end]
        if length & 0x80:
            raise ApduError("long TLV lengths are not used in the FCI")
        end = tag_end + 1 + length
        if end > len(raw):
            raise ApduError("TLV value runs past the end")
        out.append((raw[i:tag_end], raw[tag_end + 1 : end]))
        i = end
    return out


@dataclass(frozen=True, slots=True)
class SelectResponse:
    """FCI: `6F { 84 AID, A5 { 9F08 version, 9F0C file 0015, [DF61 seq‖until] } }`
    (CARD_PROTOCOL.md "Applications and files", "Virtual cards")."""

    aid: bytes
    app_version: int
    issuer_info: IssuerInfo
    key_info: VirtualCardKeyInfo | None = None

    def to_bytes(self) -> bytes:
        inner = _tlv(b"\x9f\x08", bytes((self.app_version,)))
        inner += _tlv(b"\x9f\x0c", self.issuer_info.to_bytes())
        if self.key_info is not None:
            inner += _tlv(b"\xdf\x61", self.key_info.to_bytes())
        return _tlv(b"\x6f", _tlv(b"\x84", self.aid) + _tlv(b"\xa5", inner))

    @classmethod
    def from_bytes(cls, raw: bytes) -> SelectResponse:
        top = _parse_tlvs(bytes(raw))
        if len(top) != 1 or top[0][0] != b"\x6f":
            raise ApduError("FCI must be one 6F template")
        fields = dict(_parse_tlvs(top[0][1]))
        if b"\x84" not in fields or b"\xa5" not in fields:
            raise ApduError("FCI lacks 84 (AID) or A5 (proprietary template)")
        prop = dict(_parse_tlvs(fields[b"\xa5"]))
        version = prop.get(b"\x9f\x08")
        info = prop.get(b"\x9f\x0c")
        if version is None or len(version) != 1 or info is None:
            raise ApduError("FCI lacks 9F08 (version) or 9F0C (file 0015)")
        key = prop.get(b"\xdf\x61")
        return cls(
            aid=fields[b"\x84"],
            app_version=version[0],
            issuer_info=IssuerInfo.from_bytes(info),
            key_info=VirtualCardKeyInfo.from_bytes(key) if key is not None else None,
        )


# --- READ BINARY / READ RECORD (CARD_PROTOCOL.md "Applications and files", "Other commands") -


@dataclass(frozen=True, slots=True)
class ReadBinary:
    """READ BINARY by SFI: `00 B0 (80|SFI) offset Le`; file 0015 is `00 B0 95 00 1E`
    (CARD_PROTOCOL.md "Applications and files", "Other commands")."""

    sfi: int = SFI_ISSUER_INFO
    offset: int = 0
    length: int = ISSUER_INFO_BYTES

    def to_apdu(self) -> CommandApdu:
        if not 1 <= self.sfi <= 30 or not 0 <= self.offset <= 0xFF:
            raise ApduError("SFI must be 1..30 and offset one byte")
        return CommandApdu(CLA_ISO, INS_READ_BINARY, 0x80 | self.sfi, self.offset, le=self.length)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> ReadBinary:
        _expect(apdu, CLA_ISO, INS_READ_BINARY, "READ BINARY")
        if apdu.data:
            raise ApduError("READ BINARY carries no data")
        if not apdu.p1 & 0x80 or apdu.p1 & 0x60:
            raise ApduError("only READ BINARY by SFI (P1 100xxxxx) is supported")
        return cls(apdu.p1 & 0x1F, apdu.p2, apdu.le or 256)


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """READ RECORD: `00 B2 nn (SFI<<3|4) Le`; records of 0018 are `00 B2 nn C4 17`
    (CARD_PROTOCOL.md "Applications and files", "Other commands")."""

    record: int
    sfi: int = SFI_RECORDS
    length: int = RECORD_BYTES

    def to_apdu(self) -> CommandApdu:
        _byte("record number", self.record)
        if not 1 <= self.sfi <= 30:
            raise ApduError("SFI must be 1..30")
        return CommandApdu(
            CLA_ISO, INS_READ_RECORD, self.record, (self.sfi << 3) | 4, le=self.length
        )

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> ReadRecord:
        _expect(apdu, CLA_ISO, INS_READ_RECORD, "READ RECORD")
        if apdu.data:
            raise ApduError("READ RECORD carries no data")
        if apdu.p2 & 0x07 != 4 or not apdu.p2 >> 3:
            raise ApduError("only READ RECORD by number with an SFI (P2 xxxxx100) is supported")
        return cls(apdu.p1, apdu.p2 >> 3, apdu.le or 256)


# --- GET BALANCE (CARD_PROTOCOL.md "Other commands") -----------------------------------------


@dataclass(frozen=True, slots=True)
class GetBalance:
    """GET BALANCE: `80 5C 00 02 04` (CARD_PROTOCOL.md "Other commands")."""

    def to_apdu(self) -> CommandApdu:
        return CommandApdu(CLA_EP, INS_GET_BALANCE, 0x00, P2_EP, le=4)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> GetBalance:
        _expect(apdu, CLA_EP, INS_GET_BALANCE, "GET BALANCE")
        if apdu.p1 != 0x00 or apdu.p2 != P2_EP:
            raise ApduError("GET BALANCE has P1 00 P2 02")
        if apdu.data:
            raise ApduError("GET BALANCE carries no data")
        return cls()


@dataclass(frozen=True, slots=True)
class GetBalanceResponse:
    """Answer to GET BALANCE: balance(4) (CARD_PROTOCOL.md "Other commands")."""

    balance_fen: int

    def to_bytes(self) -> bytes:
        return _u32("balance", self.balance_fen)

    @classmethod
    def from_bytes(cls, raw: bytes) -> GetBalanceResponse:
        return cls(int.from_bytes(_fixed("GET BALANCE answer", raw, 4), "big"))


# --- INITIALIZE FOR LOAD / PURCHASE (CARD_PROTOCOL.md "Load" step 1, "Purchase" step 1) -----


def _initialize_data(key_index: int, amount_fen: int, terminal_id: bytes) -> bytes:
    _byte("key index", key_index)
    return bytes((key_index,)) + _u32("amount", amount_fen) + _fixed("terminal id", terminal_id, 6)


@dataclass(frozen=True, slots=True)
class InitializeForLoad:
    """INITIALIZE FOR LOAD: `80 50 00 02 0B` key index ‖ amount ‖ terminal, Le 10
    (CARD_PROTOCOL.md "Load" step 1)."""

    key_index: int
    amount_fen: int
    terminal_id: bytes

    response_bytes: ClassVar[int] = 16

    def to_apdu(self) -> CommandApdu:
        data = _initialize_data(self.key_index, self.amount_fen, self.terminal_id)
        return CommandApdu(CLA_EP, INS_INITIALIZE, P1_INIT_LOAD, P2_EP, data, self.response_bytes)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> InitializeForLoad:
        _expect(apdu, CLA_EP, INS_INITIALIZE, "INITIALIZE")
        if apdu.p1 != P1_INIT_LOAD or apdu.p2 != P2_EP:
            raise ApduError("INITIALIZE FOR LOAD has P1 00 P2 02")
        data = _expect_data(apdu, 11, "INITIALIZE FOR LOAD")
        return cls(data[0], int.from_bytes(data[1:5], "big"), data[5:11])


@dataclass(frozen=True, slots=True)
class InitializeForLoadResponse:
    """balance ‖ online counter ‖ key version ‖ algorithm id ‖ random ‖ MAC1, 16 bytes
    (CARD_PROTOCOL.md "Load" step 1)."""

    balance_fen: int
    online_counter: int
    key_version: int
    algorithm_id: int
    random: bytes
    mac1: bytes

    def to_bytes(self) -> bytes:
        _byte("key version", self.key_version)
        _byte("algorithm id", self.algorithm_id)
        return (
            _u32("balance", self.balance_fen)
            + _u16("online counter", self.online_counter)
            + bytes((self.key_version, self.algorithm_id))
            + _fixed("random", self.random, 4)
            + _fixed("MAC1", self.mac1, 4)
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> InitializeForLoadResponse:
        raw = _fixed("INITIALIZE FOR LOAD answer", raw, 16)
        return cls(
            int.from_bytes(raw[0:4], "big"),
            int.from_bytes(raw[4:6], "big"),
            raw[6],
            raw[7],
            raw[8:12],
            raw[12:16],
        )


@dataclass(frozen=True, slots=True)
class InitializeForPurchase:
    """INITIALIZE FOR PURCHASE: `80 50 01 02 0B` key index ‖ amount ‖ terminal, Le 0F; P1 03
    for a compound purchase (CARD_PROTOCOL.md "Purchase" step 1)."""

    key_index: int
    amount_fen: int
    terminal_id: bytes
    compound: bool = False

    response_bytes: ClassVar[int] = 15

    @property
    def tx_type(self) -> int:
        return TX_TYPE_COMPOUND if self.compound else TX_TYPE_PURCHASE

    def to_apdu(self) -> CommandApdu:
        data = _initialize_data(self.key_index, self.amount_fen, self.terminal_id)
        p1 = P1_INIT_COMPOUND if self.compound else P1_INIT_PURCHASE
        return CommandApdu(CLA_EP, INS_INITIALIZE, p1, P2_EP, data, self.response_bytes)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> InitializeForPurchase:
        _expect(apdu, CLA_EP, INS_INITIALIZE, "INITIALIZE")
        if apdu.p1 not in (P1_INIT_PURCHASE, P1_INIT_COMPOUND) or apdu.p2 != P2_EP:
            raise ApduError("INITIALIZE FOR PURCHASE has P1 01 (or 03) P2 02")
        data = _expect_data(apdu, 11, "INITIALIZE FOR PURCHASE")
        return cls(
            data[0], int.from_bytes(data[1:5], "big"), data[5:11], apdu.p1 == P1_INIT_COMPOUND
        )


@dataclass(frozen=True, slots=True)
class InitializeForPurchaseResponse:
    """balance ‖ offline counter ‖ overdraft limit(3) ‖ key version ‖ algorithm id ‖ random,
    15 bytes (CARD_PROTOCOL.md "Purchase" step 1)."""

    balance_fen: int
    offline_counter: int
    overdraft_limit_fen: int
    key_version: int
    algorithm_id: int
    random: bytes

    def to_bytes(self) -> bytes:
        if not 0 <= self.overdraft_limit_fen <= 0xFFFFFF:
            raise ApduError("overdraft limit is 3 bytes")
        _byte("key version", self.key_version)
        _byte("algorithm id", self.algorithm_id)
        return (
            _u32("balance", self.balance_fen)
            + _u16("offline counter", self.offline_counter)
            + self.overdraft_limit_fen.to_bytes(3, "big")
            + bytes((self.key_version, self.algorithm_id))
            + _fixed("random", self.random, 4)
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> InitializeForPurchaseResponse:
        raw = _fixed("INITIALIZE FOR PURCHASE answer", raw, 15)
        return cls(
            int.from_bytes(raw[0:4], "big"),
            int.from_bytes(raw[4:6], "big"),
            int.from_bytes(raw[6:9], "big"),
            raw[9],
            raw[10],
            raw[11:15],
        )


# --- CREDIT FOR LOAD (CARD_PROTOCOL.md "Load" step 3) ----------------------------------------


@dataclass(frozen=True, slots=True)
class CreditForLoad:
    """CREDIT FOR LOAD: `80 52 00 00 0B` date ‖ time ‖ MAC2, Le 04 (CARD_PROTOCOL.md "Load")."""

    date: bytes
    time: bytes
    mac2: bytes

    def to_apdu(self) -> CommandApdu:
        data = _fixed("date", self.date, 4) + _fixed("time", self.time, 3)
        data += _fixed("MAC2", self.mac2, 4)
        return CommandApdu(CLA_EP, INS_CREDIT_FOR_LOAD, 0x00, 0x00, data, 4)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> CreditForLoad:
        _expect(apdu, CLA_EP, INS_CREDIT_FOR_LOAD, "CREDIT FOR LOAD")
        if apdu.p1 != 0x00 or apdu.p2 != 0x00:
            raise ApduError("CREDIT FOR LOAD has P1 00 P2 00")
        data = _expect_data(apdu, 11, "CREDIT FOR LOAD")
        return cls(data[0:4], data[4:7], data[7:11])


@dataclass(frozen=True, slots=True)
class CreditForLoadResponse:
    """Answer to CREDIT FOR LOAD: TAC(4) (CARD_PROTOCOL.md "Load" step 3)."""

    tac: bytes

    def to_bytes(self) -> bytes:
        return _fixed("TAC", self.tac, 4)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CreditForLoadResponse:
        return cls(_fixed("CREDIT FOR LOAD answer", raw, 4))


# --- DEBIT FOR PURCHASE (CARD_PROTOCOL.md "Purchase" step 3) ---------------------------------


@dataclass(frozen=True, slots=True)
class DebitForPurchase:
    """DEBIT FOR PURCHASE: `80 54 01 00 0F` serial ‖ date ‖ time ‖ MAC1, Le 08
    (CARD_PROTOCOL.md "Purchase" step 3)."""

    terminal_serial: bytes
    date: bytes
    time: bytes
    mac1: bytes

    def to_apdu(self) -> CommandApdu:
        data = _fixed("terminal serial", self.terminal_serial, 4)
        data += _fixed("date", self.date, 4) + _fixed("time", self.time, 3)
        data += _fixed("MAC1", self.mac1, 4)
        return CommandApdu(CLA_EP, INS_DEBIT_FOR_PURCHASE, 0x01, 0x00, data, 8)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> DebitForPurchase:
        _expect(apdu, CLA_EP, INS_DEBIT_FOR_PURCHASE, "DEBIT FOR PURCHASE")
        if apdu.p1 != 0x01 or apdu.p2 != 0x00:
            raise ApduError("DEBIT FOR PURCHASE has P1 01 P2 00")
        data = _expect_data(apdu, 15, "DEBIT FOR PURCHASE")
        return cls(data[0:4], data[4:8], data[8:11], data[11:15])


@dataclass(frozen=True, slots=True)
class DebitForPurchaseResponse:
    """Answer to DEBIT FOR PURCHASE: TAC(4) ‖ MAC2(4) (CARD_PROTOCOL.md "Purchase" step 3)."""

    tac: bytes
    mac2: bytes

    def to_bytes(self) -> bytes:
        return _fixed("TAC", self.tac, 4) + _fixed("MAC2", self.mac2, 4)

    @classmethod
    def from_bytes(cls, raw: bytes) -> DebitForPurchaseResponse:
        raw = _fixed("DEBIT FOR PURCHASE answer", raw, 8)
        return cls(raw[0:4], raw[4:8])


# --- GET TRANSACTION PROVE (CARD_PROTOCOL.md "Other commands") -------------------------------


@dataclass(frozen=True, slots=True)
class GetTransactionProve:
    """GET TRANSACTION PROVE: `80 5A 00 type 02` counter, Le 08 (CARD_PROTOCOL.md "Other
    commands")."""

    tx_type: int
    counter: int

    def to_apdu(self) -> CommandApdu:
        _byte("transaction type", self.tx_type)
        data = _u16("counter", self.counter)
        return CommandApdu(CLA_EP, INS_GET_TRANSACTION_PROVE, 0x00, self.tx_type, data, 8)

    def to_bytes(self) -> bytes:
        return self.to_apdu().to_bytes()

    @classmethod
    def from_apdu(cls, apdu: CommandApdu) -> GetTransactionProve:
        _expect(apdu, CLA_EP, INS_GET_TRANSACTION_PROVE, "GET TRANSACTION PROVE")
        if apdu.p1 != 0x00:
            raise ApduError("GET TRANSACTION PROVE has P1 00")
        data = _expect_data(apdu, 2, "GET TRANSACTION PROVE")
        return cls(apdu.p2, int.from_bytes(data, "big"))


@dataclass(frozen=True, slots=True)
class GetTransactionProveResponse:
    """MAC2(4) ‖ TAC(4) of the transaction with that counter (CARD_PROTOCOL.md "Other
    commands")."""

    mac2: bytes
    tac: bytes

    def to_bytes(self) -> bytes:
        return _fixed("MAC2", self.mac2, 4) + _fixed("TAC", self.tac, 4)

    @classmethod
    def from_bytes(cls, raw: bytes) -> GetTransactionProveResponse:
        raw = _fixed("GET TRANSACTION PROVE answer", raw, 8)
        return cls(raw[0:4], raw[4:8])


CommandType: TypeAlias = (
    Select
    | ReadBinary
    | ReadRecord
    | GetBalance
    | InitializeForLoad
    | InitializeForPurchase
    | CreditForLoad
    | DebitForPurchase
    | GetTransactionProve
)


def parse_command(apdu: CommandApdu) -> CommandType:
    """The typed e-purse command an APDU is; `ApduError` when it is none of them."""
    key = (apdu.cla, apdu.ins)
    if key == (CLA_EP, INS_INITIALIZE):
        if apdu.p1 == P1_INIT_LOAD:
            return InitializeForLoad.from_apdu(apdu)
        return InitializeForPurchase.from_apdu(apdu)
    parser = _PARSERS.get(key)
    if parser is None:
        raise ApduError(f"no e-purse command has CLA {apdu.cla:02X} INS {apdu.ins:02X}")
    return parser(apdu)


_PARSERS: dict[tuple[int, int], Callable[[CommandApdu], CommandType]] = {
    (CLA_ISO, INS_SELECT): Select.from_apdu,
    (CLA_ISO, INS_READ_BINARY): ReadBinary.from_apdu,
    (CLA_ISO, INS_READ_RECORD): ReadRecord.from_apdu,
    (CLA_EP, INS_GET_BALANCE): GetBalance.from_apdu,
    (CLA_EP, INS_CREDIT_FOR_LOAD): CreditForLoad.from_apdu,
    (CLA_EP, INS_DEBIT_FOR_PURCHASE): DebitForPurchase.from_apdu,
    (CLA_EP, INS_GET_TRANSACTION_PROVE): GetTransactionProve.from_apdu,
}
