"""Card cryptography of the e-purse: key diversification, session keys, MAC, TAC, LUKs.

Everything here follows `shared/CARD_PROTOCOL.md` ("Keys", "Load", "Purchase", "Virtual
cards") byte for byte. The gateway uses these functions as the issuer's security module, the
gate's SAM and the software card use them as the chip does.

This module must never log, print or persist a key, never compare MACs with `==` (use
`verify_mac`, which is constant time), and never import aiohttp, asyncpg or redis.

Performance: triple DES runs in OpenSSL through `cryptography`; creating a cipher context costs
about as much as ten block encryptions, so keys that are used again (master keys, card keys,
TAC keys) keep their encryptor. A MAC is one CBC encryption of the padded data, so a MAC over n
blocks costs about n DES block encryptions plus one call. Cipher contexts are stateful, so each
thread keeps its own (bounded) cache of them; every function here is safe to call from threads.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, modes

__all__ = [
    "MacError",
    "diversify",
    "double_key_from_f",
    "encrypt_block",
    "load_mac1_input",
    "load_mac2_input",
    "load_session_key",
    "load_tac_input",
    "luk_f",
    "luk_from_dpk",
    "luk_tac_key",
    "luk_tac_key_from_dtk",
    "mac",
    "purchase_mac1_input",
    "purchase_mac2_input",
    "purchase_session_key",
    "purchase_tac_input",
    "tac",
    "tac_key",
    "verify_mac",
]

BLOCK_BYTES = 8
DOUBLE_KEY_BYTES = 16
SINGLE_KEY_BYTES = 8
MAC_BYTES = 4
# Distinct keys whose encryptors are kept; session keys churn, master and card keys repeat.
cipher_cache_size_max = 1024

TX_TYPE_LOAD = 0x02
TX_TYPE_PURCHASE = 0x06
TX_TYPE_COMPOUND = 0x09


class MacError(Exception):
    """A MAC, MAC1, MAC2 or TAC did not verify. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__("MAC invalid")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


class _BlockCipher:
    """An ECB encryptor for one triple-DES key (24 bytes). Used by one thread only."""

    __slots__ = ("_enc",)

    def __init__(self, key24: bytes) -> None:
        self._enc = Cipher(TripleDES(key24), modes.ECB()).encryptor()  # noqa: S305 - the protocol encrypts single blocks

    def encrypt(self, data: bytes) -> bytes:
        return self._enc.update(data)


class _CbcMac:
    """A long-lived single-DES CBC encryptor used for CBC-MAC with IV 0. One thread only.

    The encryptor keeps chaining across calls; XOR-ing the first block of each new message with
    the last ciphertext block produced (`chain`) cancels that chaining, which is exactly a fresh
    IV of 0. This saves creating a cipher context per MAC (the dominant cost for short data).
    """

    __slots__ = ("chain", "ecb", "enc", "key8")

    def __init__(self, key8: bytes) -> None:
        self.enc = Cipher(TripleDES(key8 * 3), modes.CBC(bytes(BLOCK_BYTES))).encryptor()
        self.chain = 0
        # For one-block messages (a purchase MAC2 over the 4-byte amount): CBC with IV 0 over
        # one block is one ECB block, without the chaining bookkeeping. Made on first use.
        self.ecb: CipherContext | None = None
        self.key8 = key8


class _ThreadCache(threading.local):
    """Cipher contexts are stateful and not shareable between threads: each thread keeps its
    own, at most `cipher_cache_size_max` of each kind (emptied when full, which is rare)."""

    def __init__(self) -> None:
        self.ecb: dict[bytes, _BlockCipher] = {}
        self.mac: dict[bytes, _CbcMac] = {}


_cache = _ThreadCache()


def _double_key_cipher(key16: bytes) -> _BlockCipher:
    ciphers = _cache.ecb
    cipher = ciphers.get(key16)
    if cipher is None:
        if len(ciphers) >= cipher_cache_size_max:
            ciphers.clear()
        cipher = ciphers[key16] = _BlockCipher(key16 + key16[:8])
    return cipher


def _mac_engine(key8: bytes) -> _CbcMac:
    engines = _cache.mac
    engine = engines.get(key8)
    if engine is None:
        if len(engines) >= cipher_cache_size_max:
            engines.clear()
        engine = engines[key8] = _CbcMac(key8)
    return engine


def encrypt_block(key: bytes, data: bytes) -> bytes:
    """Two-key triple DES (K1 ‖ K2 ‖ K1) ECB of `data` (a multiple of 8 bytes)."""
    _check_len("key", key, DOUBLE_KEY_BYTES)
    if not data or len(data) % BLOCK_BYTES:
        raise ValueError("data must be a non-empty multiple of 8 bytes")
    return _double_key_cipher(bytes(key)).encrypt(bytes(data))


def _invert(block: bytes) -> bytes:
    return (int.from_bytes(block, "big") ^ 0xFFFFFFFFFFFFFFFF).to_bytes(BLOCK_BYTES, "big")


def double_key_from_f(key: bytes, f: bytes) -> bytes:
    """`3DES(key, F) ‖ 3DES(key, NOT F)`: the diversification rule (one ECB call)."""
    _check_len("F", f, BLOCK_BYTES)
    return encrypt_block(key, f + _invert(f))


def diversify(master_key: bytes, asn: bytes) -> bytes:
    """Card key (DLK, DPK, DTK) from a master key and the ASN (CARD_PROTOCOL.md "Keys")."""
    if len(asn) < BLOCK_BYTES:
        raise ValueError("ASN must be at least 8 bytes")
    return double_key_from_f(master_key, asn[-BLOCK_BYTES:])


def load_session_key(dlk: bytes, random: bytes, online_counter: int) -> bytes:
    """SESLK = 3DES(DLK, random(4) ‖ online counter(2) ‖ 80 00)."""
    _check_len("random", random, 4)
    return encrypt_block(dlk, random + online_counter.to_bytes(2, "big") + b"\x80\x00")


def purchase_session_key(
    dpk: bytes, random: bytes, offline_counter: int, terminal_serial: bytes
) -> bytes:
    """SESPK = 3DES(DPK, random(4) ‖ offline counter(2) ‖ rightmost 2 bytes of the serial).

    For a virtual card pass the LUK as `dpk`.
    """
    _check_len("random", random, 4)
    _check_len("terminal serial", terminal_serial, 4)
    data = random + offline_counter.to_bytes(2, "big") + terminal_serial[-2:]
    return encrypt_block(dpk, data)


_PAD_TAILS = tuple(b"\x80" + bytes(7 - r) for r in range(BLOCK_BYTES))


def _pad(data: bytes) -> bytes:
    return data + _PAD_TAILS[len(data) % BLOCK_BYTES]


def mac(session_key: bytes, data: bytes) -> bytes:
    """Single-DES CBC-MAC, IV 0, `80 00..` padding always added; leftmost 4 bytes."""
    # The hot path of every transaction: kept flat on purpose (see the module docstring).
    try:
        engine = _cache.mac[session_key]
    except (KeyError, TypeError):
        engine = _mac_engine(_key8(session_key))
    if type(data) is not bytes:
        data = bytes(data)
    padded = data + _PAD_TAILS[len(data) % BLOCK_BYTES]
    if len(padded) == BLOCK_BYTES:
        ecb = engine.ecb
        if ecb is None:
            ecb = engine.ecb = Cipher(TripleDES(engine.key8 * 3), modes.ECB()).encryptor()  # noqa: S305 (one block: the MAC rule)
        return ecb.update(padded)[:MAC_BYTES]
    chain = engine.chain
    if chain:  # cancel the encryptor's chaining: IV 0 for this message
        head = int.from_bytes(padded[:BLOCK_BYTES], "big") ^ chain
        padded = head.to_bytes(BLOCK_BYTES, "big") + padded[BLOCK_BYTES:]
    last = engine.enc.update(padded)[-BLOCK_BYTES:]
    engine.chain = int.from_bytes(last, "big")
    return last[:MAC_BYTES]


def _key8(key: bytes) -> bytes:
    if len(key) != SINGLE_KEY_BYTES:
        raise ValueError(f"a MAC key must be 8 bytes, got {len(key)}")
    return bytes(key)


def verify_mac(key: bytes, data: bytes, expected: bytes) -> None:
    """Raise `MacError` unless `expected` is MAC(key, data); compares in constant time."""
    if not hmac.compare_digest(mac(key, data), bytes(expected)):
        raise MacError()


def tac_key(dtk: bytes) -> bytes:
    """TAC key = DTK left 8 bytes XOR DTK right 8 bytes (also for LUK_TAC)."""
    _check_len("DTK", dtk, DOUBLE_KEY_BYTES)
    left = int.from_bytes(dtk[:8], "big")
    right = int.from_bytes(dtk[8:], "big")
    return (left ^ right).to_bytes(SINGLE_KEY_BYTES, "big")


def tac(tac_key_: bytes, data: bytes) -> bytes:
    """TAC = MAC keyed with the TAC key."""
    return mac(tac_key_, data)


# --- MAC and TAC inputs (CARD_PROTOCOL.md "Load" and "Purchase") ---------------------------


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("amounts and balances are unsigned 32-bit fen")
    return value.to_bytes(4, "big")


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError("counters are unsigned 16-bit")
    return value.to_bytes(2, "big")


def _terminal(terminal_id: bytes) -> bytes:
    _check_len("terminal id", terminal_id, 6)
    return bytes(terminal_id)


def _date_time(date: bytes, time: bytes) -> bytes:
    _check_len("date", date, 4)
    _check_len("time", time, 3)
    return bytes(date) + bytes(time)


def load_mac1_input(balance_fen: int, amount_fen: int, terminal_id: bytes) -> bytes:
    """MAC1 input of a load: balance ‖ amount ‖ 02 ‖ terminal."""
    return _u32(balance_fen) + _u32(amount_fen) + b"\x02" + _terminal(terminal_id)


def load_mac2_input(amount_fen: int, terminal_id: bytes, date: bytes, time: bytes) -> bytes:
    """MAC2 input of a load: amount ‖ 02 ‖ terminal ‖ date ‖ time."""
    return _u32(amount_fen) + b"\x02" + _terminal(terminal_id) + _date_time(date, time)


def load_tac_input(
    new_balance_fen: int,
    online_counter: int,
    amount_fen: int,
    terminal_id: bytes,
    date: bytes,
    time: bytes,
) -> bytes:
    """TAC input of a load: new balance ‖ online counter ‖ amount ‖ 02 ‖ terminal ‖ date ‖ time.

    The counter is the one INITIALIZE FOR LOAD returned.
    """
    return (
        _u32(new_balance_fen)
        + _u16(online_counter)
        + _u32(amount_fen)
        + b"\x02"
        + _terminal(terminal_id)
        + _date_time(date, time)
    )


def purchase_mac1_input(
    amount_fen: int, tx_type: int, terminal_id: bytes, date: bytes, time: bytes
) -> bytes:
    """MAC1 input of a purchase: amount ‖ type ‖ terminal ‖ date ‖ time."""
    return _u32(amount_fen) + bytes([tx_type]) + _terminal(terminal_id) + _date_time(date, time)


def purchase_mac2_input(amount_fen: int) -> bytes:
    """MAC2 input of a purchase: amount."""
    return _u32(amount_fen)


def purchase_tac_input(
    amount_fen: int,
    tx_type: int,
    terminal_id: bytes,
    terminal_serial: bytes,
    date: bytes,
    time: bytes,
) -> bytes:
    """TAC input of a purchase: amount ‖ type ‖ terminal ‖ terminal serial ‖ date ‖ time."""
    _check_len("terminal serial", terminal_serial, 4)
    return (
        _u32(amount_fen)
        + bytes([tx_type])
        + _terminal(terminal_id)
        + bytes(terminal_serial)
        + _date_time(date, time)
    )


# --- Limited-use keys of virtual cards (CARD_PROTOCOL.md "Virtual cards") -------------------


def luk_f(seq: int, until: bytes) -> bytes:
    """F = seq(2) ‖ until(4, BCD date) ‖ 00 00."""
    _check_len("until", until, 4)
    return _u16(seq) + bytes(until) + b"\x00\x00"


def luk_from_dpk(dpk: bytes, seq: int, until: bytes) -> bytes:
    """LUK = 3DES(DPK, F) ‖ 3DES(DPK, NOT F); used wherever a card uses DPK."""
    return double_key_from_f(dpk, luk_f(seq, until))


def luk_tac_key_from_dtk(dtk: bytes, seq: int, until: bytes) -> bytes:
    """LUK_TAC = 3DES(DTK, F) ‖ 3DES(DTK, NOT F) (16 bytes)."""
    return double_key_from_f(dtk, luk_f(seq, until))


def luk_tac_key(dtk: bytes, seq: int, until: bytes) -> bytes:
    """The 8-byte TAC key of a LUK: LUK_TAC left XOR right."""
    return tac_key(luk_tac_key_from_dtk(dtk, seq, until))


@dataclass(frozen=True, slots=True)
class CardKeys:
    """The three per-card keys (what a chip holds). Built from masters or given directly."""

    dlk: bytes
    dpk: bytes
    dtk: bytes

    def __post_init__(self) -> None:
        for name in ("dlk", "dpk", "dtk"):
            _check_len(name.upper(), getattr(self, name), DOUBLE_KEY_BYTES)

    @classmethod
    def from_masters(
        cls,
        asn: bytes,
        master_load_key: bytes,
        master_purchase_key: bytes,
        master_tac_key: bytes,
    ) -> CardKeys:
        return cls(
            dlk=diversify(master_load_key, asn),
            dpk=diversify(master_purchase_key, asn),
            dtk=diversify(master_tac_key, asn),
        )

    def __repr__(self) -> str:  # keys never end up in logs or tracebacks
        return "CardKeys(<hidden>)"
