"""A complete software e-purse card: the chip of `shared/CARD_PROTOCOL.md`, in Python.

It answers every command of the protocol with the status word a real card gives, keeps files
0015 and 0018, the balance, both counters and the last transaction proofs, and can be torn
(taken out of the field) in the middle of a load or purchase to test recovery. Its state is
JSON, so a card survives a process restart.

The card holds only its own derived keys (DLK, DPK, DTK), never a master key. `transmit` never
raises on any bytes it is given (every answer is data ‖ SW), except `CardTorn`, which stands
for "the reader lost the card and got no answer", and only when a tear was armed with
`tear_after`. This module never imports aiohttp, asyncpg or redis.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hce import apdu as A
from hce import card_crypto as cc
from hce.apdu import StatusWord as SW

__all__ = ["CardTorn", "SoftwareCard", "TransactionProof"]

CITY_CARD_AID = bytes.fromhex("A00000000386980701")
record_count_max = 10  # cyclic file 0018 holds this many records
proof_count_max = 10  # transaction proofs kept per counter (online, offline)
STATE_VERSION = 1
_STATE_BYTES_MAX = 1_000_000

RandomSource = Callable[[], bytes]
_T = TypeVar("_T")


class CardTorn(Exception):
    """The card left the field during a command: the reader got no answer.

    Raised by `transmit` only for a tear armed with `SoftwareCard.tear_after`. Whether the
    command was committed depends on how the tear was armed; the caller cannot know, exactly as
    with a real card, and must find out (GET BALANCE, GET TRANSACTION PROVE).
    """

    def __init__(self, committed: bool) -> None:
        super().__init__("card removed from the field; no answer")
        self.committed = committed


@dataclass(frozen=True, slots=True)
class TransactionProof:
    """MAC2 and TAC of one committed transaction, as GET TRANSACTION PROVE returns them."""

    tx_type: int
    counter: int
    mac2: bytes
    tac: bytes


@dataclass(slots=True)
class _LoadSession:
    amount_fen: int
    terminal_id: bytes
    balance_fen: int
    counter: int
    session_key: bytes


@dataclass(slots=True)
class _PurchaseSession:
    amount_fen: int
    terminal_id: bytes
    tx_type: int
    counter: int
    random: bytes


class _Answer(Exception):
    def __init__(self, sw: int) -> None:
        self.sw = sw


def purchase_proofs(
    purchase_key: bytes,
    tac_key: bytes,
    random: bytes,
    counter: int,
    amount_fen: int,
    tx_type: int,
    terminal_id: bytes,
    debit: A.DebitForPurchase,
) -> tuple[bytes, bytes]:
    """The card side of DEBIT FOR PURCHASE (CARD_PROTOCOL.md "Purchase", step 3): check MAC1,
    answer (MAC2, TAC). `purchase_key` is DPK on a card, the LUK on a phone. 9302 on a bad MAC1.
    """
    key = cc.purchase_session_key(purchase_key, random, counter, debit.terminal_serial)
    mac1_input = cc.purchase_mac1_input(amount_fen, tx_type, terminal_id, debit.date, debit.time)
    try:
        cc.verify_mac(key, mac1_input, debit.mac1)
    except cc.MacError:
        raise _Answer(SW.MAC_INVALID) from None
    tac_input = cc.purchase_tac_input(
        amount_fen, tx_type, terminal_id, debit.terminal_serial, debit.date, debit.time
    )
    return cc.mac(key, cc.purchase_mac2_input(amount_fen)), cc.tac(tac_key, tac_input)


def _default_random() -> bytes:
    return os.urandom(4)


class SoftwareCard:
    """A software e-purse card. Build with `issue` (from master keys) or `from_card_keys`."""

    def __init__(
        self,
        *,
        keys: cc.CardKeys,
        issuer_info: A.IssuerInfo,
        balance_fen: int,
        online_counter: int,
        offline_counter: int,
        balance_max_fen: int = 100_000,
        aid: bytes = CITY_CARD_AID,
        overdraft_limit_fen: int = 0,
        key_index: int = 1,
        key_version: int = 1,
        algorithm_id: int = 0,
        app_version: int = 1,
        records: Iterable[A.TransactionRecord] = (),
        proofs: Iterable[TransactionProof] = (),
        random: RandomSource | None = None,
    ) -> None:
        if not 0 <= balance_fen <= balance_max_fen <= 0xFFFFFFFF:
            raise ValueError("need 0 <= balance_fen <= balance_max_fen < 2**32")
        if not (0 <= online_counter <= 0xFFFF and 0 <= offline_counter <= 0xFFFF):
            raise ValueError("counters are unsigned 16-bit")
        if not 5 <= len(aid) <= 16:
            raise ValueError("an AID has 5 to 16 bytes")
        self._keys = keys
        self._tac_key = cc.tac_key(keys.dtk)
        self.issuer_info = issuer_info
        self.aid = bytes(aid)
        self._balance_fen = balance_fen
        self.balance_max_fen = balance_max_fen
        self._online_counter = online_counter
        self._offline_counter = offline_counter
        self.overdraft_limit_fen = overdraft_limit_fen
        self.key_index = key_index
        self.key_version = key_version
        self.algorithm_id = algorithm_id
        self.app_version = app_version
        self._records: deque[A.TransactionRecord] = deque(records, maxlen=record_count_max)
        self._proofs: dict[str, deque[TransactionProof]] = {
            "online": deque(maxlen=proof_count_max),
            "offline": deque(maxlen=proof_count_max),
        }
        for proof in proofs:
            self._proofs[_proof_kind(proof.tx_type)].append(proof)
        self._random = random or _default_random
        self._selected = False
        self._session: _LoadSession | _PurchaseSession | None = None
        self._tear_in = 0
        self._tear_commit = False

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def issue(
        cls,
        *,
        asn: bytes,
        master_load_key: bytes,
        master_purchase_key: bytes,
        master_tac_key: bytes,
        balance_fen: int = 0,
        online_counter: int = 0,
        offline_counter: int = 0,
        balance_max_fen: int = 100_000,
        aid: bytes = CITY_CARD_AID,
        random: RandomSource | None = None,
        **card_fields: Any,
    ) -> SoftwareCard:
        """Personalise a card: diversify the master keys for `asn`; keep only the card keys.

        `card_fields` (all optional) fill file 0015 and the card's settings: `issuer_code` (8
        bytes), `app_type`, `app_version`, `valid_from`, `valid_until` (BCD dates, 4 bytes),
        `card_type`, `deposit_yuan`, `overdraft_limit_fen`, `key_index`, `key_version`.
        """
        keys = cc.CardKeys.from_masters(asn, master_load_key, master_purchase_key, master_tac_key)
        return cls.from_card_keys(
            asn=asn,
            dlk=keys.dlk,
            dpk=keys.dpk,
            dtk=keys.dtk,
            balance_fen=balance_fen,
            online_counter=online_counter,
            offline_counter=offline_counter,
            balance_max_fen=balance_max_fen,
            aid=aid,
            random=random,
            **card_fields,
        )

    @classmethod
    def from_card_keys(
        cls,
        *,
        asn: bytes,
        dlk: bytes,
        dpk: bytes,
        dtk: bytes,
        balance_fen: int = 0,
        online_counter: int = 0,
        offline_counter: int = 0,
        balance_max_fen: int = 100_000,
        aid: bytes = CITY_CARD_AID,
        random: RandomSource | None = None,
        issuer_code: bytes = bytes.fromhex("3100000000000000"),
        app_type: int = 0x01,
        app_version: int = 0x01,
        valid_from: bytes = bytes.fromhex("20240101"),
        valid_until: bytes = bytes.fromhex("20341231"),
        card_type: int = 0x01,
        deposit_yuan: int = 0,
        overdraft_limit_fen: int = 0,
        key_index: int = 1,
        key_version: int = 1,
    ) -> SoftwareCard:
        """A card from its own keys (as read from a real card's personalisation log)."""
        info = A.IssuerInfo(
            issuer_code=issuer_code,
            app_type=app_type,
            app_version=app_version,
            asn=asn,
            valid_from=valid_from,
            valid_until=valid_until,
            card_type=card_type,
            deposit_yuan=deposit_yuan,
        )
        return cls(
            keys=cc.CardKeys(dlk=dlk, dpk=dpk, dtk=dtk),
            issuer_info=info,
            balance_fen=balance_fen,
            online_counter=online_counter,
            offline_counter=offline_counter,
            balance_max_fen=balance_max_fen,
            aid=aid,
            overdraft_limit_fen=overdraft_limit_fen,
            key_index=key_index,
            key_version=key_version,
            app_version=app_version,
            random=random,
        )

    # --- what a test or the CLI may look at ----------------------------------------------

    @property
    def asn(self) -> bytes:
        return self.issuer_info.asn

    @property
    def balance_fen(self) -> int:
        return self._balance_fen

    @property
    def online_counter(self) -> int:
        return self._online_counter

    @property
    def offline_counter(self) -> int:
        return self._offline_counter

    @property
    def records(self) -> list[A.TransactionRecord]:
        """Records of file 0018, newest first."""
        return list(self._records)

    @property
    def proofs(self) -> list[TransactionProof]:
        return [*self._proofs["online"], *self._proofs["offline"]]

    # --- the field -------------------------------------------------------------------------

    def tear_after(self, n: int = 1, *, commit: bool) -> None:
        """Arm a tear on the n-th next state-changing command (CREDIT FOR LOAD or DEBIT FOR
        PURCHASE; n = 1 is the next one).

        With `commit=True` the card finishes the command (commits it if it would succeed) and
        then leaves the field; with `commit=False` it leaves before doing anything. Either way
        that `transmit` raises `CardTorn` and the card is reset as after a power loss (no
        application selected, no transaction in progress).
        """
        if n < 1:
            raise ValueError("n counts from 1")
        self._tear_in = n
        self._tear_commit = commit

    def reset(self) -> None:
        """Power cycle: the card forgets the selected application and any open transaction."""
        self._selected = False
        self._session = None

    def transmit(self, capdu: bytes) -> bytes:
        """One command APDU in, `data ‖ SW1 SW2` out. Never raises except `CardTorn`."""
        try:
            cmd = A.CommandApdu.from_bytes(capdu)
        except A.ApduError:
            return _sw(SW.WRONG_LENGTH)
        if self._tear_in and (cmd.cla, cmd.ins) in _COMMITTING:
            self._tear_in -= 1
            if not self._tear_in:
                return self._tear(cmd)
        return self._answer(cmd)

    def _tear(self, cmd: A.CommandApdu) -> bytes:
        committed = False
        if self._tear_commit:
            before = (self._online_counter, self._offline_counter)
            self._answer(cmd)
            committed = before != (self._online_counter, self._offline_counter)
        self.reset()
        raise CardTorn(committed)

    def _answer(self, cmd: A.CommandApdu) -> bytes:
        pending, self._session = self._session, None
        try:
            handler = self._handler(cmd)
            return handler(cmd, pending) + _sw(SW.SUCCESS)
        except _Answer as answer:
            return _sw(answer.sw)
        except Exception:  # a bug must still leave the reader with an answer
            return b"\x6f\x00"

    def _handler(
        self, cmd: A.CommandApdu
    ) -> Callable[[A.CommandApdu, _LoadSession | _PurchaseSession | None], bytes]:
        if cmd.cla not in (A.CLA_ISO, A.CLA_EP):
            raise _Answer(SW.CLA_NOT_SUPPORTED)
        handlers = {
            (A.CLA_ISO, A.INS_SELECT): self._select,
            (A.CLA_ISO, A.INS_READ_BINARY): self._read_binary,
            (A.CLA_ISO, A.INS_READ_RECORD): self._read_record,
            (A.CLA_EP, A.INS_GET_BALANCE): self._get_balance,
            (A.CLA_EP, A.INS_INITIALIZE): self._initialize,
            (A.CLA_EP, A.INS_CREDIT_FOR_LOAD): self._credit_for_load,
            (A.CLA_EP, A.INS_DEBIT_FOR_PURCHASE): self._debit_for_purchase,
            (A.CLA_EP, A.INS_GET_TRANSACTION_PROVE): self._get_transaction_prove,
        }
        handler = handlers.get((cmd.cla, cmd.ins))
        if handler is not None:
            return handler
        if any(ins == cmd.ins for _, ins in handlers):
            raise _Answer(SW.CLA_NOT_SUPPORTED)  # a known instruction in the wrong class
        raise _Answer(SW.INS_NOT_SUPPORTED)

    def _require_selected(self) -> None:
        if not self._selected:
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)

    # --- SELECT, READ BINARY, READ RECORD, GET BALANCE ------------------------------------

    def _select(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        if (cmd.p1, cmd.p2) != (0x04, 0x00):
            raise _Answer(SW.WRONG_P1_P2)
        select = _parse(A.Select.from_apdu, cmd)
        if select.aid != self.aid:
            self._selected = False
            raise _Answer(SW.FILE_NOT_FOUND)
        self._selected = True
        return A.SelectResponse(self.aid, self.app_version, self.issuer_info).to_bytes()

    def _read_binary(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        self._require_selected()
        return read_issuer_file(cmd, self.issuer_info)

    def _read_record(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        self._require_selected()
        return read_transaction_record(cmd, self._records)

    def _get_balance(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        self._require_selected()
        if (cmd.p1, cmd.p2) != (0x00, A.P2_EP):
            raise _Answer(SW.WRONG_P1_P2)
        _parse(A.GetBalance.from_apdu, cmd)
        _check_le(cmd, 4)
        return A.GetBalanceResponse(self._balance_fen).to_bytes()

    # --- load (CARD_PROTOCOL.md "Load") ----------------------------------------------------

    def _initialize(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        self._require_selected()
        if cmd.p2 != A.P2_EP or cmd.p1 not in (0x00, 0x01, 0x03):
            raise _Answer(SW.WRONG_P1_P2)
        if cmd.p1 == A.P1_INIT_LOAD:
            return self._initialize_for_load(_parse(A.InitializeForLoad.from_apdu, cmd), cmd)
        return self._initialize_for_purchase(_parse(A.InitializeForPurchase.from_apdu, cmd), cmd)

    def _initialize_for_load(self, init: A.InitializeForLoad, cmd: A.CommandApdu) -> bytes:
        _check_le(cmd, A.InitializeForLoad.response_bytes)
        if init.key_index != self.key_index:
            raise _Answer(SW.KEY_INDEX_NOT_SUPPORTED)
        if self._online_counter == 0xFFFF:
            raise _Answer(SW.COUNTER_EXHAUSTED)
        if self._balance_fen + init.amount_fen > self.balance_max_fen:
            raise _Answer(SW.BALANCE_CEILING_EXCEEDED)
        random = self._next_random()
        key = cc.load_session_key(self._keys.dlk, random, self._online_counter)
        mac1 = cc.mac(key, cc.load_mac1_input(self._balance_fen, init.amount_fen, init.terminal_id))
        self._session = _LoadSession(
            init.amount_fen, init.terminal_id, self._balance_fen, self._online_counter, key
        )
        return A.InitializeForLoadResponse(
            self._balance_fen,
            self._online_counter,
            self.key_version,
            self.algorithm_id,
            random,
            mac1,
        ).to_bytes()

    def _credit_for_load(self, cmd: A.CommandApdu, pending: object) -> bytes:
        self._require_selected()
        if (cmd.p1, cmd.p2) != (0x00, 0x00):
            raise _Answer(SW.WRONG_P1_P2)
        credit = _parse(A.CreditForLoad.from_apdu, cmd)
        _check_le(cmd, 4)
        if not isinstance(pending, _LoadSession):
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)
        mac2_input = cc.load_mac2_input(
            pending.amount_fen, pending.terminal_id, credit.date, credit.time
        )
        try:
            cc.verify_mac(pending.session_key, mac2_input, credit.mac2)
        except cc.MacError:
            raise _Answer(SW.MAC_INVALID) from None
        new_balance = pending.balance_fen + pending.amount_fen
        tac = cc.tac(
            self._tac_key,
            cc.load_tac_input(
                new_balance,
                pending.counter,
                pending.amount_fen,
                pending.terminal_id,
                credit.date,
                credit.time,
            ),
        )
        self._commit(
            A.TransactionRecord(
                pending.counter,
                self.overdraft_limit_fen,
                pending.amount_fen,
                A.TX_TYPE_LOAD,
                pending.terminal_id,
                credit.date,
                credit.time,
            ),
            TransactionProof(A.TX_TYPE_LOAD, pending.counter, credit.mac2, tac),
            new_balance,
        )
        return A.CreditForLoadResponse(tac).to_bytes()

    # --- purchase (CARD_PROTOCOL.md "Purchase") --------------------------------------------

    def _initialize_for_purchase(self, init: A.InitializeForPurchase, cmd: A.CommandApdu) -> bytes:
        _check_le(cmd, A.InitializeForPurchase.response_bytes)
        if init.key_index != self.key_index:
            raise _Answer(SW.KEY_INDEX_NOT_SUPPORTED)
        if self._offline_counter == 0xFFFF:
            raise _Answer(SW.COUNTER_EXHAUSTED)
        # The overdraft limit is reported as the protocol asks, but this card never goes below 0.
        if init.amount_fen > self._balance_fen:
            raise _Answer(SW.INSUFFICIENT_BALANCE)
        random = self._next_random()
        self._session = _PurchaseSession(
            init.amount_fen, init.terminal_id, init.tx_type, self._offline_counter, random
        )
        return A.InitializeForPurchaseResponse(
            self._balance_fen,
            self._offline_counter,
            self.overdraft_limit_fen,
            self.key_version,
            self.algorithm_id,
            random,
        ).to_bytes()

    def _debit_for_purchase(self, cmd: A.CommandApdu, pending: object) -> bytes:
        self._require_selected()
        if (cmd.p1, cmd.p2) != (0x01, 0x00):
            raise _Answer(SW.WRONG_P1_P2)
        debit = _parse(A.DebitForPurchase.from_apdu, cmd)
        _check_le(cmd, 8)
        if not isinstance(pending, _PurchaseSession):
            raise _Answer(SW.CONDITIONS_NOT_SATISFIED)
        mac2, tac = purchase_proofs(
            self._keys.dpk, self._tac_key, pending.random, pending.counter, pending.amount_fen,
            pending.tx_type, pending.terminal_id, debit,
        )  # fmt: skip
        self._commit(
            A.TransactionRecord(
                pending.counter,
                self.overdraft_limit_fen,
                pending.amount_fen,
                pending.tx_type,
                pending.terminal_id,
                debit.date,
                debit.time,
            ),
            TransactionProof(pending.tx_type, pending.counter, mac2, tac),
            self._balance_fen - pending.amount_fen,
        )
        return A.DebitForPurchaseResponse(tac, mac2).to_bytes()

    def _commit(
        self, record: A.TransactionRecord, proof: TransactionProof, new_balance_fen: int
    ) -> None:
        assert 0 <= new_balance_fen <= self.balance_max_fen
        self._balance_fen = new_balance_fen
        if proof.tx_type == A.TX_TYPE_LOAD:
            assert record.counter == self._online_counter
            self._online_counter += 1
        else:
            assert record.counter == self._offline_counter
            self._offline_counter += 1
        self._records.appendleft(record)
        self._proofs[_proof_kind(proof.tx_type)].append(proof)

    # --- GET TRANSACTION PROVE ("Other commands") ------------------------------------------

    def _get_transaction_prove(self, cmd: A.CommandApdu, _pending: object) -> bytes:
        self._require_selected()
        if cmd.p1 != 0x00 or cmd.p2 not in _TX_TYPES:
            raise _Answer(SW.WRONG_P1_P2)
        ask = _parse(A.GetTransactionProve.from_apdu, cmd)
        _check_le(cmd, 8)
        for proof in self._proofs[_proof_kind(ask.tx_type)]:
            if proof.counter == ask.counter and proof.tx_type == ask.tx_type:
                return A.GetTransactionProveResponse(proof.mac2, proof.tac).to_bytes()
        raise _Answer(SW.NO_TRANSACTION_PROOF)

    def _next_random(self) -> bytes:
        random = bytes(self._random())
        if len(random) != 4:
            raise ValueError("the random source must give 4 bytes")
        return random

    # --- persistence -------------------------------------------------------------------------

    def to_json(self) -> str:
        """The card's persistent state (keys included: treat the file as the chip)."""
        info = self.issuer_info
        state = {
            "version": STATE_VERSION,
            "aid": self.aid.hex(),
            "issuer_info": info.to_bytes().hex(),
            "keys": {
                "dlk": self._keys.dlk.hex(),
                "dpk": self._keys.dpk.hex(),
                "dtk": self._keys.dtk.hex(),
            },
            "balance_fen": self._balance_fen,
            "balance_max_fen": self.balance_max_fen,
            "online_counter": self._online_counter,
            "offline_counter": self._offline_counter,
            "overdraft_limit_fen": self.overdraft_limit_fen,
            "key_index": self.key_index,
            "key_version": self.key_version,
            "algorithm_id": self.algorithm_id,
            "app_version": self.app_version,
            "records": [r.to_bytes().hex() for r in self._records],
            "proofs": [
                {"type": p.tx_type, "counter": p.counter, "mac2": p.mac2.hex(), "tac": p.tac.hex()}
                for p in self.proofs
            ],
        }
        return json.dumps(state, indent=2)

    @classmethod
    def from_json(cls, text: str, *, random: RandomSource | None = None) -> SoftwareCard:
        """Restore a card saved by `to_json`; `ValueError` for anything malformed."""
        if len(text) > _STATE_BYTES_MAX:
            raise ValueError("card state too large")
        try:
            state = json.loads(text)
            if state["version"] != STATE_VERSION:
                raise ValueError(f"unsupported card state version {state['version']!r}")
            keys = state["keys"]
            return cls(
                keys=cc.CardKeys(
                    dlk=bytes.fromhex(keys["dlk"]),
                    dpk=bytes.fromhex(keys["dpk"]),
                    dtk=bytes.fromhex(keys["dtk"]),
                ),
                issuer_info=A.IssuerInfo.from_bytes(bytes.fromhex(state["issuer_info"])),
                balance_fen=_int(state, "balance_fen"),
                online_counter=_int(state, "online_counter"),
                offline_counter=_int(state, "offline_counter"),
                balance_max_fen=_int(state, "balance_max_fen"),
                aid=bytes.fromhex(state["aid"]),
                overdraft_limit_fen=_int(state, "overdraft_limit_fen"),
                key_index=_int(state, "key_index"),
                key_version=_int(state, "key_version"),
                algorithm_id=_int(state, "algorithm_id"),
                app_version=_int(state, "app_version"),
                records=[
                    A.TransactionRecord.from_bytes(bytes.fromhex(r)) for r in state["records"]
                ],
                proofs=[
                    TransactionProof(
                        _int(p, "type"),
                        _int(p, "counter"),
                        bytes.fromhex(p["mac2"]),
                        bytes.fromhex(p["tac"]),
                    )
                    for p in state["proofs"]
                ],
                random=random,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed card state: {exc!r}") from None


_COMMITTING = {(A.CLA_EP, A.INS_CREDIT_FOR_LOAD), (A.CLA_EP, A.INS_DEBIT_FOR_PURCHASE)}
_TX_TYPES = (A.TX_TYPE_LOAD, A.TX_TYPE_PURCHASE, A.TX_TYPE_COMPOUND)


def _proof_kind(tx_type: int) -> str:
    return "online" if tx_type == A.TX_TYPE_LOAD else "offline"


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def read_issuer_file(cmd: A.CommandApdu, issuer_info: A.IssuerInfo) -> bytes:
    """READ BINARY of file 0015 (CARD_PROTOCOL.md "Applications and files"), for any card."""
    if not cmd.p1 & 0x80 or cmd.p1 & 0x60:
        raise _Answer(SW.WRONG_P1_P2)
    read = _parse(A.ReadBinary.from_apdu, cmd)
    if read.sfi != A.SFI_ISSUER_INFO:
        raise _Answer(SW.FILE_NOT_FOUND)
    content = issuer_info.to_bytes()
    if read.offset >= len(content):
        raise _Answer(SW.WRONG_OFFSET)
    want = len(content) - read.offset if cmd.le in (None, 256) else read.length
    if read.offset + want > len(content):
        raise _Answer(SW.WRONG_LENGTH)
    return content[read.offset : read.offset + want]


def read_transaction_record(cmd: A.CommandApdu, records: Sequence[A.TransactionRecord]) -> bytes:
    """READ RECORD of file 0018, newest first (CARD_PROTOCOL.md "Applications and files")."""
    if cmd.p2 & 0x07 != 4 or not cmd.p2 >> 3:
        raise _Answer(SW.WRONG_P1_P2)
    read = _parse(A.ReadRecord.from_apdu, cmd)
    if read.sfi != A.SFI_RECORDS:
        raise _Answer(SW.FILE_NOT_FOUND)
    _check_le(cmd, A.RECORD_BYTES)
    if not 1 <= read.record <= len(records):
        raise _Answer(SW.RECORD_NOT_FOUND)
    return records[read.record - 1].to_bytes()


def _check_le(cmd: A.CommandApdu, size: int) -> None:
    # Le may be absent (T=0 style), 00 (up to 256) or exactly the answer's length.
    if cmd.le not in (None, 256, size):
        raise _Answer(SW.WRONG_LENGTH)


def _parse(parse: Callable[[A.CommandApdu], _T], cmd: A.CommandApdu) -> _T:
    try:
        return parse(cmd)
    except A.ApduError:
        raise _Answer(SW.WRONG_LENGTH) from None


def _int(obj: dict[str, Any], name: str) -> int:
    value = obj[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    return value
