"""The issuer's security module: CARD_PROTOCOL.md's load vectors with the keys in the keystore,
unknown and retired key versions, and that no key ever shows."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gateway.config import Config
from gateway.keystore import KeyKind, Keystore, load_kek
from gateway.ota import ism
from gateway.ota.ism import CardKeyError, MacError, SecurityModule, UnknownCardKey
from hce.issuer import LoadTransaction
from tests.hce import vectors as V

# The load of CARD_PROTOCOL.md's synthetic vectors.
LOAD = LoadTransaction(
    asn=V.ASN,
    amount_fen=10000,
    terminal_id=V.TERMINAL,
    balance_fen=4800,
    online_counter=3,
    random=V.LOAD_RANDOM,
)
OTHER_CARD = dataclasses.replace(LOAD, asn=bytes.fromhex("31000000000000054321"))

_USED_NAMES = "SELECT DISTINCT name FROM secret_keys WHERE kind LIKE 'card_master_%'"


async def fresh_index(conn: asyncpg.Connection) -> int:
    """A key index no test has stored keys under yet (the test database lives a session)."""
    used = {int(row["name"][:2], 16) for row in await conn.fetch(_USED_NAMES) if "." in row["name"]}
    return next(index for index in range(255, 0, -1) if index not in used)


def secret_hex(*keys: bytes) -> list[str]:
    """Every spelling of these keys and their halves that must never be shown."""
    spelled = []
    for key in keys:
        for part in (key, key[:8], key[8:]):
            spelled += [part.hex(), part.hex().upper()]
    return spelled


@pytest.fixture
def keystore(config: Config) -> Keystore:
    return Keystore(load_kek(config))


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


async def store(
    conn: asyncpg.Connection,
    keystore: Keystore,
    index: int,
    version: int,
    mlk: bytes = V.MLK,
    mtk: bytes = V.MTK,
) -> ism.CardMasters:
    return await ism.import_card_masters(
        conn, keystore, index, version, mlk=mlk, mtk=mtk, test_keys=mlk == V.MLK
    )


async def test_the_load_vectors_through_keys_in_the_keystore(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    await store(conn, keystore, index, 1)
    module = await SecurityModule.load(conn, keystore)
    assert module.knows(index, 1)
    module.verify_mac1(index, 1, LOAD, V.LOAD_MAC1)
    assert module.mac2(index, 1, LOAD, V.DATE, V.LOAD_TIME) == V.LOAD_MAC2
    module.verify_tac(index, 1, LOAD, V.DATE, V.LOAD_TIME, V.LOAD_TAC)
    module.verify_proof(index, 1, LOAD, V.DATE, V.LOAD_TIME, V.LOAD_MAC2, V.LOAD_TAC)


async def test_a_wrong_mac_card_or_key_is_one_opaque_error(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    await store(conn, keystore, index, 1)
    await store(conn, keystore, index, 2, secrets.token_bytes(16), secrets.token_bytes(16))
    module = await SecurityModule.load(conn, keystore)
    flipped = bytes([V.LOAD_MAC1[0] ^ 1]) + V.LOAD_MAC1[1:]
    at = (V.DATE, V.LOAD_TIME)
    refused = [
        lambda: module.verify_mac1(index, 1, LOAD, flipped),
        lambda: module.verify_mac1(index, 1, LOAD, V.LOAD_MAC1[:3]),
        lambda: module.verify_mac1(index, 1, OTHER_CARD, V.LOAD_MAC1),
        lambda: module.verify_mac1(index, 2, LOAD, V.LOAD_MAC1),  # other keys
        lambda: module.verify_tac(index, 1, OTHER_CARD, *at, V.LOAD_TAC),
        lambda: module.verify_tac(index, 2, LOAD, *at, V.LOAD_TAC),
        lambda: module.verify_tac(index, 1, LOAD, *at, bytes(4)),
        lambda: module.verify_proof(index, 1, LOAD, *at, bytes(4), V.LOAD_TAC),
        lambda: module.verify_proof(index, 1, LOAD, *at, V.LOAD_MAC2, bytes(4)),
        lambda: module.verify_proof(index, 2, LOAD, *at, V.LOAD_MAC2, V.LOAD_TAC),
    ]
    for attempt in refused:
        with pytest.raises(MacError) as caught:
            attempt()
        assert str(caught.value) == "MAC invalid"
    assert module.mac2(index, 2, LOAD, *at) != V.LOAD_MAC2
    assert module.mac2(index, 1, OTHER_CARD, *at) != V.LOAD_MAC2


async def test_an_unknown_version_is_found_once_imported_and_reloaded(
    conn: asyncpg.Connection, keystore: Keystore, config: Config
) -> None:
    index = await fresh_index(conn)
    await store(conn, keystore, index, 1)
    module = await SecurityModule.load(conn, keystore, reload_interval_s=3600)
    with pytest.raises(UnknownCardKey) as caught:
        module.verify_mac1(index, 7, LOAD, V.LOAD_MAC1)
    assert (caught.value.key_index, caught.value.key_version) == (index, 7)
    for call in (
        lambda: module.mac2(index, 7, LOAD, V.DATE, V.LOAD_TIME),
        lambda: module.verify_tac(index, 7, LOAD, V.DATE, V.LOAD_TIME, V.LOAD_TAC),
        lambda: module.verify_proof(index, 7, LOAD, V.DATE, V.LOAD_TIME, V.LOAD_MAC2, V.LOAD_TAC),
    ):
        with pytest.raises(UnknownCardKey):
            call()

    await store(conn, keystore, index, 7)  # a card reports a version imported after start
    assert not module.knows(index, 7)
    # Just loaded: an unknown version does not read the database (a closed connection would
    # fail if it did), and neither does a known one.
    closed = await asyncpg.connect(config.database_url)
    await closed.close()
    assert not await module.knows_or_reload(closed, index, 7)
    assert await module.knows_or_reload(closed, index, 1)
    await module.reload(conn)
    assert module.knows(index, 7)
    module.verify_mac1(index, 7, LOAD, V.LOAD_MAC1)

    eager = await SecurityModule.load(conn, keystore, reload_interval_s=0)
    await store(conn, keystore, index, 8)
    assert await eager.knows_or_reload(conn, index, 8)


async def test_a_retired_version_no_longer_loads_and_others_stay(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    await store(conn, keystore, index, 1)
    rotated = await ism.rotate_card_masters(conn, keystore, index, mlk=V.MLK, mtk=V.MTK)
    assert (rotated.shown.key_version, rotated.replaced, rotated.others_active) == (2, False, (1,))
    module = await SecurityModule.load(conn, keystore)
    assert module.knows(index, 1) and module.knows(index, 2)

    assert await ism.retire_card_masters(conn, keystore, index, 1)
    assert not await ism.retire_card_masters(conn, keystore, index, 1)  # already retired
    with pytest.raises(UnknownCardKey):
        await ism.retire_card_masters(conn, keystore, index, 99)
    await module.reload(conn)
    assert not module.knows(index, 1) and module.knows(index, 2)
    fresh = await SecurityModule.load(conn, keystore)
    assert not fresh.knows(index, 1)
    with pytest.raises(UnknownCardKey):
        fresh.verify_mac1(index, 1, LOAD, V.LOAD_MAC1)
    fresh.verify_mac1(index, 2, LOAD, V.LOAD_MAC1)
    shown = {c.key_version: c.status for c in await ism.card_masters(conn, keystore)
             if c.key_index == index}  # fmt: skip
    assert shown == {1: "retired", 2: "active"}
    # The next version is the highest + 1, retired or not.
    again = await ism.rotate_card_masters(conn, keystore, index, mlk=V.MLK, mtk=V.MTK)
    assert (again.shown.key_version, again.others_active) == (3, (2,))


async def test_storing_a_version_again_replaces_its_keys(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    mlk, mtk = secrets.token_bytes(16), secrets.token_bytes(16)
    await store(conn, keystore, index, 1, mlk, mtk)
    with pytest.raises(CardKeyError, match="exist"):
        await store(conn, keystore, index, 1)
    rotated = await ism.rotate_card_masters(
        conn, keystore, index, mlk=V.MLK, mtk=V.MTK, key_version=1, test_keys=True
    )
    assert rotated.replaced and rotated.shown.test_keys
    module = await SecurityModule.load(conn, keystore)
    module.verify_mac1(index, 1, LOAD, V.LOAD_MAC1)  # the newest keystore version wins
    assert await ism.retire_card_masters(conn, keystore, index, 1)
    await module.reload(conn)
    assert not module.knows(index, 1)  # every keystore version was retired, not only the newest


async def test_half_a_pair_is_shown_but_never_loads(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    await keystore.put(conn, KeyKind.CARD_MASTER_LOAD, ism.key_name(index, 1), V.MLK)
    module = await SecurityModule.load(conn, keystore)
    assert not module.knows(index, 1)
    [shown] = [c for c in await ism.card_masters(conn, keystore) if c.key_index == index]
    assert (shown.status, shown.mtk_kcv) == ("incomplete", None)


def kcv(key: bytes) -> str:
    encryptor = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
    return encryptor.update(bytes(8))[:3].hex().upper()


async def test_keys_never_show_only_their_check_values(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    mlk, mtk = secrets.token_bytes(16), secrets.token_bytes(16)
    stored = await store(conn, keystore, index, 1, mlk, mtk)
    await store(conn, keystore, index, 2)
    module = await SecurityModule.load(conn, keystore)
    shown = [c for c in module.key_check_values() if c.key_index == index]
    assert [(c.key_version, c.mlk_kcv, c.mtk_kcv, c.test_keys, c.status) for c in shown] == [
        (1, kcv(mlk), kcv(mtk), False, "active"),
        (2, kcv(V.MLK), kcv(V.MTK), True, "active"),
    ]
    assert stored == shown[0]
    texts = [repr(module), str(module), repr(shown), repr(await ism.card_masters(conn, keystore))]
    texts += [repr(vars(module)), repr(list(vars(module)["_pairs"].values()))]
    for text in texts:
        for secret in secret_hex(mlk, mtk, V.MLK, V.MTK):
            assert secret not in text


def test_key_names_and_their_limits() -> None:
    assert ism.key_name(1, 2) == "01.02"
    assert ism.key_name(255, 16) == "FF.10"
    for index, version in ((0, 1), (1, 0), (256, 1), (1, 256)):
        with pytest.raises(CardKeyError):
            ism.key_name(index, version)


async def test_keys_of_the_wrong_length_are_refused(
    conn: asyncpg.Connection, keystore: Keystore
) -> None:
    index = await fresh_index(conn)
    with pytest.raises(CardKeyError, match="16 bytes"):
        await store(conn, keystore, index, 1, V.MLK[:8])
    with pytest.raises(CardKeyError, match="16 bytes"):
        await ism.rotate_card_masters(conn, keystore, index, mlk=V.MLK, mtk=V.MTK + b"\x00")
    assert await fresh_index(conn) == index  # nothing stored
