"""The issuer's security module (ISM) for over-the-air loads: the card master keys, kept inside.

For a load (CARD_PROTOCOL.md "Load", "Other commands"; DESIGN.md sections 6 and 7) the gateway
verifies the card's MAC1, makes MAC2, verifies the TAC, and settles an unsure load from the GET
TRANSACTION PROVE answer. A card's keys are diversified from a master load key (MLK) and a master
TAC key (MTK) picked by a key index (the gateway's choice, in INITIALIZE FOR LOAD) and a key
version (the card's, in its answer): the module holds one pair per (index, version), each inside
one `hce.issuer.Issuer`.

Keys live encrypted in the keystore, kinds `card_master_load` and `card_master_tac`, both named
`key_name(index, version)` = "IIVV" in hex with a dot ("01.02"). The newest active keystore
version of a name is the one used, so storing a name again replaces its keys; retiring marks
every version of both kinds, and a retired pair no longer loads. The operator's commands are in
`gateway/ota/keys.py`.

This module never returns, prints or logs a master, card or session key (only key check
values, KCVs, are shown), raises one opaque `MacError` for every bad MAC or TAC, and raises
`UnknownCardKey` for an (index, version) it does not hold.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from time import monotonic
from typing import Final

import asyncpg

from gateway.keystore import KeyKind, Keystore, StoredKey
from hce import card_crypto as cc
from hce.card_crypto import MacError
from hce.issuer import Issuer, LoadTransaction

__all__ = [
    "CardKeyError",
    "CardMasters",
    "MacError",
    "Rotated",
    "SecurityModule",
    "UnknownCardKey",
    "card_masters",
    "import_card_masters",
    "key_check_value",
    "key_name",
    "retire_card_masters",
    "rotate_card_masters",
]

KEY_BYTE_MIN: Final = 1  # key indexes and key versions are one byte; 0 is not used
KEY_BYTE_MAX: Final = 255
KINDS: Final = (KeyKind.CARD_MASTER_LOAD, KeyKind.CARD_MASTER_TAC)
KCV_BYTES: Final = 3
# An (index, version) a card reports and the module lacks re-reads the keystore at most this
# often: a version imported after start is found, a flood of made-up versions costs nothing.
RELOAD_INTERVAL_S: Final = 5.0
# Far more pairs than any issuer keeps; more means the table is not what this module wrote.
card_key_pairs_max: Final = 1024
LOCK: Final = "card_masters"

_NAME = re.compile(r"([0-9A-F]{2})\.([0-9A-F]{2})")

# The keystore stores and decrypts; it has no listing of the names of a kind. This reads names
# only (never a secret); every key is then read and decrypted through the keystore.
_NAMES = """
SELECT DISTINCT name FROM secret_keys WHERE kind = ANY($1::text[]) ORDER BY name LIMIT $2
"""


class CardKeyError(ValueError):
    """An operator's request on the card master keys that cannot be done (the message says
    why; it never holds key material)."""


class UnknownCardKey(LookupError):
    """No active card master keys for this (key index, key version)."""

    def __init__(self, key_index: int, key_version: int) -> None:
        super().__init__(f"no card master keys for key index {key_index} version {key_version}")
        self.key_index = key_index
        self.key_version = key_version


def key_name(key_index: int, key_version: int) -> str:
    """The keystore name of a pair: "01.02" for index 1, version 2."""
    _check_byte("key index", key_index)
    _check_byte("key version", key_version)
    return f"{key_index:02X}.{key_version:02X}"


def _check_byte(what: str, value: int) -> None:
    if not KEY_BYTE_MIN <= value <= KEY_BYTE_MAX:
        raise CardKeyError(f"a {what} is {KEY_BYTE_MIN}..{KEY_BYTE_MAX}, not {value}")


def _parse_name(name: str) -> tuple[int, int] | None:
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    index, version = int(match.group(1), 16), int(match.group(2), 16)
    if not (KEY_BYTE_MIN <= index <= KEY_BYTE_MAX and KEY_BYTE_MIN <= version <= KEY_BYTE_MAX):
        return None
    return index, version


def key_check_value(key: bytes) -> str:
    """KCV: the first 3 bytes of 3DES(key, 8 zero bytes), hex. Identifies a key, reveals none."""
    return cc.encrypt_block(key, bytes(cc.BLOCK_BYTES))[:KCV_BYTES].hex().upper()


@dataclass(frozen=True, slots=True)
class CardMasters:
    """What may be shown of one (index, version) pair: never a key."""

    key_index: int
    key_version: int
    status: str  # active, retired, revoked; "incomplete" when the two kinds disagree
    mlk_kcv: str | None
    mtk_kcv: str | None
    test_keys: bool
    created_at: datetime | None


def _shown(index: int, version: int, mlk: StoredKey | None, mtk: StoredKey | None) -> CardMasters:
    if mlk is not None and mtk is not None and mlk.status == mtk.status:
        status = mlk.status
    else:
        status = "incomplete"
    first = mlk or mtk
    return CardMasters(
        index,
        version,
        status,
        None if mlk is None else key_check_value(mlk.secret),
        None if mtk is None else key_check_value(mtk.secret),
        first is not None and first.meta.get("test_keys") is True,
        None if first is None else first.created_at,
    )


@dataclass(frozen=True, slots=True)
class _Pair:
    issuer: Issuer
    shown: CardMasters


class SecurityModule:
    """The active card master keys, by (key index, key version); loads' MACs and TACs."""

    def __init__(
        self,
        keystore: Keystore,
        pairs: Mapping[tuple[int, int], _Pair],
        reload_interval_s: float = RELOAD_INTERVAL_S,
    ) -> None:
        self._keystore = keystore
        self._pairs = dict(pairs)
        self._reload_interval_s = reload_interval_s
        self._loaded_at = monotonic()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SecurityModule({len(self._pairs)} card key pairs, <keys hidden>)"

    __str__ = __repr__

    @classmethod
    async def load(
        cls,
        conn: asyncpg.Connection,
        keystore: Keystore,
        reload_interval_s: float = RELOAD_INTERVAL_S,
    ) -> SecurityModule:
        """Every active (index, version) of the keystore."""
        return cls(keystore, await _read_active(conn, keystore), reload_interval_s)

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Read the keystore again: new pairs come in, retired ones go."""
        self._pairs = await _read_active(conn, self._keystore)
        self._loaded_at = monotonic()

    async def knows_or_reload(
        self, conn: asyncpg.Connection, key_index: int, key_version: int
    ) -> bool:
        """`knows`, after reading the keystore again when it does not (a version imported
        since the last read). Reads the database only for an unknown pair, and then at most
        once every `reload_interval_s`."""
        if self.knows(key_index, key_version):
            return True
        async with self._lock:
            fresh = monotonic() - self._loaded_at < self._reload_interval_s
            if not fresh and not self.knows(key_index, key_version):
                await self.reload(conn)
        return self.knows(key_index, key_version)

    def knows(self, key_index: int, key_version: int) -> bool:
        return (key_index, key_version) in self._pairs

    def _issuer(self, key_index: int, key_version: int) -> Issuer:
        pair = self._pairs.get((key_index, key_version))
        if pair is None:
            raise UnknownCardKey(key_index, key_version)
        return pair.issuer

    def verify_mac1(
        self, key_index: int, key_version: int, load: LoadTransaction, mac1: bytes
    ) -> None:
        """The INITIALIZE FOR LOAD answer came from the genuine card; `MacError` if not."""
        self._issuer(key_index, key_version).verify_load_mac1(load, mac1)

    def mac2(
        self, key_index: int, key_version: int, load: LoadTransaction, date: bytes, time: bytes
    ) -> bytes:
        """MAC2 of CREDIT FOR LOAD (date BCD 4 bytes, time BCD 3 bytes)."""
        return self._issuer(key_index, key_version).load_mac2(load, date, time)

    def verify_tac(
        self,
        key_index: int,
        key_version: int,
        load: LoadTransaction,
        date: bytes,
        time: bytes,
        tac: bytes,
    ) -> None:
        """The card credited the load (the CREDIT FOR LOAD answer); `MacError` if not."""
        self._issuer(key_index, key_version).verify_load_tac(load, date, time, tac)

    def verify_proof(
        self,
        key_index: int,
        key_version: int,
        load: LoadTransaction,
        date: bytes,
        time: bytes,
        mac2: bytes,
        tac: bytes,
    ) -> None:
        """An unsure load, settled by GET TRANSACTION PROVE: the card's MAC2 is the one issued
        for this load and its TAC is valid. `MacError` if not."""
        self._issuer(key_index, key_version).verify_load_proof(load, date, time, mac2, tac)

    def key_check_values(self) -> list[CardMasters]:
        """The pairs this module holds, by index and version: KCVs and status, never a key."""
        return [self._pairs[ids].shown for ids in sorted(self._pairs)]


async def _names(conn: asyncpg.Connection) -> list[tuple[int, int, str]]:
    rows = await conn.fetch(_NAMES, [kind.value for kind in KINDS], card_key_pairs_max + 1)
    if len(rows) > card_key_pairs_max:
        raise CardKeyError(f"more than {card_key_pairs_max} card master key names")
    found = []
    for row in rows:
        ids = _parse_name(row["name"])
        if ids is not None:
            found.append((*ids, row["name"]))
    return found


async def _read_active(
    conn: asyncpg.Connection, keystore: Keystore
) -> dict[tuple[int, int], _Pair]:
    pairs = {}
    for index, version, name in await _names(conn):
        mlk = await keystore.active(conn, KeyKind.CARD_MASTER_LOAD, name)
        mtk = await keystore.active(conn, KeyKind.CARD_MASTER_TAC, name)
        if mlk is None or mtk is None:
            continue  # retired, or half a pair: no load can use it
        issuer = Issuer(master_load_key=mlk.secret, master_tac_key=mtk.secret)
        pairs[index, version] = _Pair(issuer, _shown(index, version, mlk, mtk))
    return pairs


def _newest_active_first(versions: list[StoredKey]) -> StoredKey | None:
    active = [key for key in versions if key.status == "active"]
    shown = active or versions
    return shown[0] if shown else None


async def card_masters(conn: asyncpg.Connection, keystore: Keystore) -> list[CardMasters]:
    """Every stored pair, retired ones too, by index and version; what the operator may see."""
    shown = []
    for index, version, name in await _names(conn):
        mlk = _newest_active_first(await keystore.versions(conn, KeyKind.CARD_MASTER_LOAD, name))
        mtk = _newest_active_first(await keystore.versions(conn, KeyKind.CARD_MASTER_TAC, name))
        shown.append(_shown(index, version, mlk, mtk))
    return shown


def _check_keys(mlk: bytes, mtk: bytes) -> None:
    for what, key in (("master load key", mlk), ("master TAC key", mtk)):
        if len(key) != cc.DOUBLE_KEY_BYTES:
            raise CardKeyError(f"the {what} has {cc.DOUBLE_KEY_BYTES} bytes, not {len(key)}")


async def _lock(conn: asyncpg.Connection) -> None:
    # Operators importing at once: the check of what exists and the store are one step.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", LOCK)


async def _exists(conn: asyncpg.Connection, keystore: Keystore, name: str) -> bool:
    for kind in KINDS:
        if await keystore.versions(conn, kind, name):
            return True
    return False


async def _store(
    conn: asyncpg.Connection,
    keystore: Keystore,
    index: int,
    version: int,
    mlk: bytes,
    mtk: bytes,
    test_keys: bool,
) -> CardMasters:
    name = key_name(index, version)
    meta = {"test_keys": test_keys}
    stored_mlk = await keystore.put(conn, KeyKind.CARD_MASTER_LOAD, name, mlk, meta=meta)
    stored_mtk = await keystore.put(conn, KeyKind.CARD_MASTER_TAC, name, mtk, meta=meta)
    return _shown(index, version, stored_mlk, stored_mtk)


async def import_card_masters(
    conn: asyncpg.Connection,
    keystore: Keystore,
    key_index: int,
    key_version: int,
    *,
    mlk: bytes,
    mtk: bytes,
    test_keys: bool = False,
) -> CardMasters:
    """Store the MLK and MTK of a new (index, version); `CardKeyError` when it exists (in any
    status: replacing keys is `rotate_card_masters`)."""
    name = key_name(key_index, key_version)
    _check_keys(mlk, mtk)
    async with conn.transaction():
        await _lock(conn)
        if await _exists(conn, keystore, name):
            raise CardKeyError(
                f"card master keys for key index {key_index} version {key_version} exist; "
                "a new version is `onecard keys rotate-card-masters`"
            )
        return await _store(conn, keystore, key_index, key_version, mlk, mtk, test_keys)


@dataclass(frozen=True, slots=True)
class Rotated:
    shown: CardMasters
    replaced: bool  # the (index, version) existed and its keys were replaced
    others_active: tuple[int, ...]  # the index's other versions that still load


async def rotate_card_masters(
    conn: asyncpg.Connection,
    keystore: Keystore,
    key_index: int,
    *,
    mlk: bytes,
    mtk: bytes,
    key_version: int | None = None,
    test_keys: bool = False,
) -> Rotated:
    """A new version of `key_index` (by default its highest version + 1); its other versions
    stay active, for the cards in the field that carry keys diversified from them. A
    `key_version` that exists gets these keys instead of its old ones."""
    _check_byte("key index", key_index)
    _check_keys(mlk, mtk)
    async with conn.transaction():
        await _lock(conn)
        mine = [c for c in await card_masters(conn, keystore) if c.key_index == key_index]
        if key_version is None:
            key_version = max((c.key_version for c in mine), default=0) + 1
            if key_version > KEY_BYTE_MAX:
                raise CardKeyError(
                    f"key index {key_index} has version {KEY_BYTE_MAX}: give --version"
                )
        replaced = any(c.key_version == key_version for c in mine)
        shown = await _store(conn, keystore, key_index, key_version, mlk, mtk, test_keys)
    others = tuple(
        c.key_version for c in mine if c.status == "active" and c.key_version != key_version
    )
    return Rotated(shown, replaced, others)


async def retire_card_masters(
    conn: asyncpg.Connection, keystore: Keystore, key_index: int, key_version: int
) -> bool:
    """Retire every keystore version of the pair: it no longer loads. False when nothing was
    active; `UnknownCardKey` when the pair was never stored."""
    name = key_name(key_index, key_version)
    retired = False
    async with conn.transaction():
        await _lock(conn)
        if not await _exists(conn, keystore, name):
            raise UnknownCardKey(key_index, key_version)
        for kind in KINDS:
            for stored in await keystore.versions(conn, kind, name):
                if stored.status == "active":
                    await keystore.set_status(conn, stored.id, "retired")
                    retired = True
    return retired
