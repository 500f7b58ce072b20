"""The HCE virtual card: the e-purse applet a phone runs, and its limited-use keys (LUKs).

`VirtualCard` answers a gate's SELECT (FCI with `DF 61 06 seq ‖ until`, card type 80 in file
0015), READ BINARY 0015, GET BALANCE, INITIALIZE FOR PURCHASE and DEBIT FOR PURCHASE exactly as
CARD_PROTOCOL.md "Virtual cards" says, with the current LUK. It moves to the next LUK when one
runs out of taps, amount or days, and answers 6985 when no LUK is left. It does not know the
wallet balance; it reports the ceiling the gateway provisioned, less what it has spent since.

LUK batches travel from the gateway to the phone in a sealed envelope (`seal_luk_batch`,
`open_luk_batch`); the gateway makes them with `derive_luks`.

Envelope layout, version 1 (all lengths fixed except the ciphertext):

    version 01 (1) ‖ ASN (10) ‖ ephemeral P-256 public key, SEC1 uncompressed (65)
    ‖ nonce (12) ‖ AES-256-GCM ciphertext of the serialized batch ‖ tag (16)

The AES key is HKDF-SHA256(ECDH(ephemeral, device), salt none, info "onecard-luk-v1", 32
bytes); the associated data is the first 76 bytes (version ‖ ASN ‖ ephemeral key), which binds
the ASN. Serialized batch, version 1:

    version 01 (1) ‖ ASN (10) ‖ balance ceiling fen (4) ‖ first offline counter (2) ‖ n (1)
    ‖ n × [ seq (2) ‖ until BCD (4) ‖ max taps (2) ‖ max amount fen (4) ‖ LUK (16)
            ‖ TAC key (8) ]

A phone never holds DPK, DTK or any master key, never reuses an offline counter, and this
module never imports aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date as Date
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hce import apdu as A
from hce import card_crypto as cc
from hce.apdu import StatusWord as SW
from hce.software_card import (
    CITY_CARD_AID,
    _Answer,
    _check_le,
    _default_random,
    _int,
    _parse,
    _sw,
    purchase_proofs,
    read_issuer_file,
    read_transaction_record,
    record_count_max,
)

__all__ = [
    "EnvelopeError",
    "Luk",
    "LukBatch",
    "VirtualCard",
    "derive_luks",
    "open_luk_batch",
    "seal_luk_batch",
]

ENVELOPE_VERSION = 1
BATCH_VERSION = 1
HKDF_INFO = b"onecard-luk-v1"
VIRTUAL_CARD_TYPE = 0x80
luk_batch_size_max = 32
_POINT_BYTES = 65
_NONCE_BYTES = 12
_HEADER_BYTES = 1 + 10 + _POINT_BYTES
_LUK_BYTES = 36
_BATCH_HEAD_BYTES = 18


class EnvelopeError(ValueError):
    """A LUK envelope or batch that cannot be opened or read. Deliberately says little."""


@dataclass(frozen=True, slots=True)
class Luk:
    """One limited-use key: the LUK (used where a card uses DPK) and its TAC key."""

    seq: int
    until: bytes
    max_taps: int
    max_amount_fen: int
    key: bytes = field(repr=False)
    tac_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= 0xFFFF or len(self.until) != 4:
            raise ValueError("seq is 2 bytes, until a 4-byte BCD date")
        if not 0 < self.max_taps <= 0xFFFF or not 0 < self.max_amount_fen <= 0xFFFFFFFF:
            raise ValueError("max_taps and max_amount_fen must be positive and fit their fields")
        if len(self.key) != 16 or len(self.tac_key) != 8:
            raise ValueError("a LUK has 16 bytes and its TAC key 8")

    def to_bytes(self) -> bytes:
        return (
            self.seq.to_bytes(2, "big")
            + self.until
            + self.max_taps.to_bytes(2, "big")
            + self.max_amount_fen.to_bytes(4, "big")
            + self.key
            + self.tac_key
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Luk:
        return cls(
            seq=int.from_bytes(raw[0:2], "big"),
            until=raw[2:6],
            max_taps=int.from_bytes(raw[6:8], "big"),
            max_amount_fen=int.from_bytes(raw[8:12], "big"),
            key=raw[12:28],
            tac_key=raw[28:36],
        )


@dataclass(frozen=True, slots=True)
class LukBatch:
    """What the gateway provisions to one phone for one virtual card."""

    asn: bytes
    balance_ceiling_fen: int
    counter_start: int
    luks: tuple[Luk, ...]

    def __post_init__(self) -> None:
        if len(self.asn) != 10:
            raise ValueError("an ASN has 10 bytes")
        if not 0 <= self.balance_ceiling_fen <= 0xFFFFFFFF or not 0 <= self.counter_start <= 0xFFFF:
            raise ValueError("balance ceiling is 4 bytes and the counter 2")
        if not 0 < len(self.luks) <= luk_batch_size_max:
            raise ValueError(f"a batch holds 1 to {luk_batch_size_max} LUKs")

    def to_bytes(self) -> bytes:
        head = bytes((BATCH_VERSION,)) + self.asn + self.balance_ceiling_fen.to_bytes(4, "big")
        head += self.counter_start.to_bytes(2, "big") + bytes((len(self.luks),))
        return head + b"".join(luk.to_bytes() for luk in self.luks)

    @classmethod
    def from_bytes(cls, raw: bytes) -> LukBatch:
        if len(raw) < _BATCH_HEAD_BYTES or raw[0] != BATCH_VERSION:
            raise EnvelopeError("not a version 1 LUK batch")
        count = raw[17]
        if len(raw) != _BATCH_HEAD_BYTES + count * _LUK_BYTES:
            raise EnvelopeError("LUK batch length does not match its count")
        luks = tuple(
            Luk.from_bytes(raw[i : i + _LUK_BYTES])
            for i in range(_BATCH_HEAD_BYTES, len(raw), _LUK_BYTES)
        )
        try:
            return cls(
                raw[1:11],
                int.from_bytes(raw[11:15], "big"),
                int.from_bytes(raw[15:17], "big"),
                luks,
            )
        except ValueError as exc:
            raise EnvelopeError(f"invalid LUK batch: {exc}") from None


def derive_luks(
    master_purchase_key: bytes,
    master_tac_key: bytes,
    asn: bytes,
    seqs: Iterable[int],
    until: bytes,
    max_taps: int,
    max_amount_fen: int,
) -> tuple[Luk, ...]:
    """The gateway's LUK issuance: LUK and TAC key for each seq, valid through `until`."""
    dpk = cc.diversify(master_purchase_key, asn)
    dtk = cc.diversify(master_tac_key, asn)
    return tuple(
        Luk(
            seq=seq,
            until=bytes(until),
            max_taps=max_taps,
            max_amount_fen=max_amount_fen,
            key=cc.luk_from_dpk(dpk, seq, until),
            tac_key=cc.luk_tac_key(dtk, seq, until),
        )
        for seq in seqs
    )


def _aes_key(shared: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(shared)


def seal_luk_batch(device_public_key: ec.EllipticCurvePublicKey, batch: LukBatch) -> bytes:
    """Encrypt a batch to the phone's P-256 device key (layout in the module docstring)."""
    if not isinstance(device_public_key.curve, ec.SECP256R1):
        raise ValueError("device keys are P-256")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    header = bytes((ENVELOPE_VERSION,)) + batch.asn + point
    nonce = os.urandom(_NONCE_BYTES)
    key = _aes_key(ephemeral.exchange(ec.ECDH(), device_public_key))
    return header + nonce + AESGCM(key).encrypt(nonce, batch.to_bytes(), header)


def open_luk_batch(
    device_private_key: ec.EllipticCurvePrivateKey, envelope: bytes, *, asn: bytes | None = None
) -> LukBatch:
    """Decrypt a batch sealed to this device; `EnvelopeError` for anything wrong.

    Pass `asn` to insist that the envelope is for that virtual card.
    """
    envelope = bytes(envelope)
    if len(envelope) < _HEADER_BYTES + _NONCE_BYTES + 16 or envelope[0] != ENVELOPE_VERSION:
        raise EnvelopeError("not a version 1 LUK envelope")
    header = envelope[:_HEADER_BYTES]
    if asn is not None and header[1:11] != asn:
        raise EnvelopeError("envelope is for another card")
    nonce = envelope[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), header[11:])
        key = _aes_key(device_private_key.exchange(ec.ECDH(), point))
        plain = AESGCM(key).decrypt(nonce, envelope[_HEADER_BYTES + _NONCE_BYTES :], header)
    except (ValueError, InvalidTag):
        raise EnvelopeError("LUK envelope does not open") from None
    batch = LukBatch.from_bytes(plain)
    if batch.asn != header[1:11]:
        raise EnvelopeError("LUK batch is for another card")
    return batch


@dataclass(slots=True)
class _Usage:
    taps: int = 0
    amount_fen: int = 0
    retired: bool = False


@dataclass(slots=True)
class _Session:
    luk: Luk
    amount_fen: int
    terminal_id: bytes
    tx_type: int
    counter: int
    random: bytes


def _bcd_today(today: Date) -> bytes:
    return bytes.fromhex(today.strftime("%Y%m%d"))


class VirtualCard:
    """The phone's e-purse applet. `transmit` never raises, on any bytes."""

    def __init__(
        self,
        *,
        issuer_info: A.IssuerInfo,
        batch: LukBatch | None = None,
        offline_counter: int = 0,
        clock: Callable[[], Date] = Date.today,
        aid: bytes = CITY_CARD_AID,
        app_version: int = 1,
        key_index: int = 1,
        key_version: int = 1,
        algorithm_id: int = 0,
        random: Callable[[], bytes] | None = None,
    ) -> None:
        if issuer_info.card_type != VIRTUAL_CARD_TYPE:
            raise ValueError("a virtual card has card type 80 in file 0015")
        self.issuer_info = issuer_info
        self.aid = bytes(aid)
        self.app_version = app_version
        self.key_index = key_index
        self.key_version = key_version
        self.algorithm_id = algorithm_id
        self._clock = clock
        self._random = random or _default_random
        self._offline_counter = offline_counter
        self._batch: LukBatch | None = None
        self._usage: dict[int, _Usage] = {}
        self._spent_fen = 0
        self._records: deque[A.TransactionRecord] = deque(maxlen=record_count_max)
        self._selected: Luk | None = None
        self._session: _Session | None = None
        if batch is not None:
            self.install(batch)

    @property
    def asn(self) -> bytes:
        return self.issuer_info.asn

    @property
    def offline_counter(self) -> int:
        return self._offline_counter

    @property
    def balance_fen(self) -> int:
        """What the applet reports: the provisioned ceiling less what it spent since."""
        if self._batch is None:
            return 0
        return max(0, self._batch.balance_ceiling_fen - self._spent_fen)

    def install(self, batch: LukBatch) -> None:
        """Replace the LUK batch (a refill). The offline counter never goes back."""
        if batch.asn != self.asn:
            raise ValueError("LUK batch is for another card")
        self._batch = batch
        self._usage = {luk.seq: _Usage() for luk in batch.luks}
        self._spent_fen = 0
        self._offline_counter = max(self._offline_counter, batch.counter_start)
        self._selected = None
        self._session = None

    def install_envelope(
        self, device_private_key: ec.EllipticCurvePrivateKey, envelope: bytes
    ) -> None:
        self.install(open_luk_batch(device_private_key, envelope, asn=self.asn))

    def usable_luks(self, today: Date | None = None) -> list[Luk]:
        """LUKs that can still pay, in the order they will be used."""
        if self._batch is None:
            return []
        bcd = _bcd_today(today or self._clock())
        return [luk for luk in self._batch.luks if self._usable(luk, bcd)]

    def _usable(self, luk: Luk, today: bytes) -> bool:
        use = self._usage[luk.seq]
        return (
            not use.retired
            and use.taps < luk.max_taps
            and use.amount_fen < luk.max_amount_fen
            and luk.until >= today
        )

    # --- the APDU interface ----------------------------------------------------------------

    def transmit(self, capdu: bytes) -> bytes:
        """One command APDU in, `data ‖ SW1 SW2` out."""
        try:
            cmd = A.CommandApdu.from_bytes(capdu)
        except A.ApduError:
            return _sw(SW.WRONG_LENGTH)
        session, self._session = self._session, None
        try:
            return self._dispatch(cmd, session) + _sw(SW.SUCCESS)
        except _Answer as answer:
            return _sw(answer.sw)
        except Exception:  # a bug must still leave the gate with an answer
            return b"\x6f\x00"

    def _dispatch(self, cmd: A.CommandApdu, session: _Session | None) -> bytes:
        key = (cmd.cla, cmd.ins)
        if cmd.cla not in (A.CLA_ISO, A.CLA_EP):
            raise _Answer(SW.CLA_NOT_SUPPORTED)
        if key == (A.CLA_ISO, A.INS_SELECT):
            return self._select(cmd)
        if key not in _SUPPORTED:
            raise _Answer(SW.INS_NOT_SUPPORTED)
        if self._selected is None:
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)
        if key == (A.CLA_ISO, A.INS_READ_BINARY):
            return self._read_binary(cmd)
        if key == (A.CLA_ISO, A.INS_READ_RECORD):
            return self._read_record(cmd)
        if key == (A.CLA_EP, A.INS_GET_BALANCE):
            _parse(A.GetBalance.from_apdu, cmd)
            return A.GetBalanceResponse(self.balance_fen).to_bytes()
        if key == (A.CLA_EP, A.INS_INITIALIZE):
            return self._initialize(cmd, self._selected)
        return self._debit(cmd, session)

    def _select(self, cmd: A.CommandApdu) -> bytes:
        if (cmd.p1, cmd.p2) != (0x04, 0x00):
            raise _Answer(SW.WRONG_P1_P2)
        select = _parse(A.Select.from_apdu, cmd)
        self._selected = None
        if select.aid != self.aid:
            raise _Answer(SW.FILE_NOT_FOUND)
        luks = self.usable_luks()
        if not luks:
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)
        self._selected = luks[0]
        key_info = A.VirtualCardKeyInfo(luks[0].seq, luks[0].until)
        return A.SelectResponse(self.aid, self.app_version, self.issuer_info, key_info).to_bytes()

    def _read_binary(self, cmd: A.CommandApdu) -> bytes:
        return read_issuer_file(cmd, self.issuer_info)

    def _read_record(self, cmd: A.CommandApdu) -> bytes:
        return read_transaction_record(cmd, self._records)

    def _initialize(self, cmd: A.CommandApdu, luk: Luk) -> bytes:
        if cmd.p2 != A.P2_EP or cmd.p1 not in (A.P1_INIT_PURCHASE, A.P1_INIT_COMPOUND):
            raise _Answer(SW.WRONG_P1_P2)  # a phone cannot be loaded: only purchases
        init = _parse(A.InitializeForPurchase.from_apdu, cmd)
        _check_le(cmd, A.InitializeForPurchase.response_bytes)
        if init.key_index != self.key_index:
            raise _Answer(SW.KEY_INDEX_NOT_SUPPORTED)
        if self._offline_counter == 0xFFFF:
            raise _Answer(SW.COUNTER_EXHAUSTED)
        if init.amount_fen > self.balance_fen:
            raise _Answer(SW.INSUFFICIENT_BALANCE)
        use = self._usage[luk.seq]
        if use.amount_fen + init.amount_fen > luk.max_amount_fen:
            # This LUK cannot cover the fare: retire it so the next tap uses the next LUK.
            use.retired = True
            self._selected = None
            raise _Answer(SW.INSUFFICIENT_BALANCE)
        random = bytes(self._random())
        self._session = _Session(
            luk, init.amount_fen, init.terminal_id, init.tx_type, self._offline_counter, random
        )
        return A.InitializeForPurchaseResponse(
            self.balance_fen, self._offline_counter, 0, self.key_version, self.algorithm_id, random
        ).to_bytes()

    def _debit(self, cmd: A.CommandApdu, session: _Session | None) -> bytes:
        if (cmd.cla, cmd.ins) != (A.CLA_EP, A.INS_DEBIT_FOR_PURCHASE):
            raise _Answer(SW.INS_NOT_SUPPORTED)
        if (cmd.p1, cmd.p2) != (0x01, 0x00):
            raise _Answer(SW.WRONG_P1_P2)
        debit = _parse(A.DebitForPurchase.from_apdu, cmd)
        _check_le(cmd, 8)
        if session is None:
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)
        mac2, tac = purchase_proofs(
            session.luk.key, session.luk.tac_key, session.random, session.counter,
            session.amount_fen, session.tx_type, session.terminal_id, debit,
        )  # fmt: skip
        use = self._usage[session.luk.seq]
        use.taps += 1
        use.amount_fen += session.amount_fen
        self._spent_fen += session.amount_fen
        self._offline_counter = session.counter + 1
        self._records.appendleft(
            A.TransactionRecord(
                session.counter,
                0,
                session.amount_fen,
                session.tx_type,
                session.terminal_id,
                debit.date,
                debit.time,
            )
        )
        return A.DebitForPurchaseResponse(tac, mac2).to_bytes()

    # --- persistence (the phone's own storage) ---------------------------------------------

    def to_json(self) -> str:
        state = {
            "version": 1,
            "issuer_info": self.issuer_info.to_bytes().hex(),
            "aid": self.aid.hex(),
            "offline_counter": self._offline_counter,
            "batch": self._batch.to_bytes().hex() if self._batch else None,
            "usage": {
                str(seq): [u.taps, u.amount_fen, u.retired] for seq, u in self._usage.items()
            },
            "spent_fen": self._spent_fen,
            "records": [r.to_bytes().hex() for r in self._records],
        }
        return json.dumps(state, indent=2)

    @classmethod
    def from_json(
        cls,
        text: str,
        *,
        clock: Callable[[], Date] = Date.today,
        random: Callable[[], bytes] | None = None,
    ) -> VirtualCard:
        try:
            state: dict[str, Any] = json.loads(text)
            if state["version"] != 1:
                raise ValueError("unsupported virtual card state version")
            card = cls(
                issuer_info=A.IssuerInfo.from_bytes(bytes.fromhex(state["issuer_info"])),
                aid=bytes.fromhex(state["aid"]),
                clock=clock,
                random=random,
            )
            if state["batch"] is not None:
                card.install(LukBatch.from_bytes(bytes.fromhex(state["batch"])))
                for seq, (taps, amount, retired) in state["usage"].items():
                    card._usage[int(seq)] = _Usage(int(taps), int(amount), bool(retired))
            card._offline_counter = _int(state, "offline_counter")
            card._spent_fen = _int(state, "spent_fen")
            for raw in reversed(state["records"]):
                card._records.appendleft(A.TransactionRecord.from_bytes(bytes.fromhex(raw)))
            return card
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed virtual card state: {exc!r}") from None


_SUPPORTED = {
    (A.CLA_ISO, A.INS_READ_BINARY),
    (A.CLA_ISO, A.INS_READ_RECORD),
    (A.CLA_EP, A.INS_GET_BALANCE),
    (A.CLA_EP, A.INS_INITIALIZE),
    (A.CLA_EP, A.INS_DEBIT_FOR_PURCHASE),
}
