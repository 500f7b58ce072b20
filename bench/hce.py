"""Card crypto and purchase throughput: `python -m bench.hce`.

(1) MACs per second against raw single-DES block encryptions per second in the same run. The
    baseline is one 8-byte block through a prebuilt TripleDES(K K K) ECB encryptor per call;
    a MAC over n blocks should cost about n of those, so the figure that matters is the MAC
    rate per block as a fraction of the raw rate (target >= 0.5).
(2) Whole purchases (gate + SAM <-> software card, and <-> HCE virtual card, in process) per
    second, with p50 and p99 latency.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import date, datetime

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from hce import apdu as A
from hce import card_crypto as cc
from hce.sam import Psam
from hce.software_card import SoftwareCard
from hce.terminal import Gate, TapRecord
from hce.virtual_card import LukBatch, VirtualCard, derive_luks

MLK = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
MPK = bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F0")
MTK = bytes.fromhex("A0A1A2A3A4A5A6A7B0B1B2B3B4B5B6B7")
ASN = bytes.fromhex("31000000000000012345")
TERMINAL = bytes.fromhex("112233445566")
NOW = datetime(2026, 11, 23, 8, 15, 2)
run_seconds = 1.5  # per measured loop


def rate(fn: Callable[[], object], batch: int = 1000) -> float:
    """Calls per second of `fn`, measured for about `run_seconds`."""
    for _ in range(batch):  # warm caches
        fn()
    calls = 0
    started = time.perf_counter()
    deadline = started + run_seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def bench_mac() -> None:
    key8 = os.urandom(8)
    raw_encryptor = Cipher(TripleDES(key8 * 3), modes.ECB()).encryptor()
    block = os.urandom(8)
    raw = rate(lambda: raw_encryptor.update(block))
    print(f"raw single-DES block encryptions:  {raw:12,.0f} /s  (TripleDES(KKK) ECB, 1 block/call)")
    for size in (4, 8, 24, 56):
        data = os.urandom(size)
        blocks = size // 8 + 1  # `80` padding: 4 B -> 1 block, 8 B -> 2 blocks
        macs = rate(lambda data=data: cc.mac(key8, data))
        ratio = macs * blocks / raw
        print(
            f"MAC over {blocks} blocks ({size:2} B), same key: {macs:12,.0f} /s  "
            f"= {macs * blocks:12,.0f} blocks/s, {ratio:.2f} of raw per MAC block"
        )
    tac_input = cc.load_tac_input(14800, 3, 10000, TERMINAL, b"\x20\x26\x11\x23", b"\x08\x17\0")
    fresh_keys = [os.urandom(8) for _ in range(4096)]
    counter = iter(range(1 << 62))

    def fresh_key_mac() -> None:
        cc.mac(fresh_keys[next(counter) % 4096], tac_input)

    fresh = rate(fresh_key_mac)
    print(
        f"MAC over 4 blocks, a new session key each time (cache churn): {fresh:10,.0f} /s  "
        f"= {fresh * 4 / raw:.2f} of raw per block (includes creating a cipher context)"
    )


def _software_card() -> SoftwareCard:
    return SoftwareCard.issue(
        asn=ASN,
        master_load_key=MLK,
        master_purchase_key=MPK,
        master_tac_key=MTK,
        balance_fen=100_000,
    )


def _virtual_card() -> VirtualCard:
    info = A.IssuerInfo(bytes(8), 1, 1, ASN, b"\x20\x26\x01\x01", b"\x20\x30\x12\x31", 0x80, 0)
    luks = derive_luks(MPK, MTK, ASN, range(1, 33), b"\x20\x26\x12\x31", 2000, 10_000_000)
    batch = LukBatch(ASN, 0xFFFFFFFF, 0, luks)
    return VirtualCard(issuer_info=info, batch=batch, clock=lambda: date(2026, 11, 23))


def bench_taps(name: str, make_card: Callable[[], SoftwareCard | VirtualCard]) -> None:
    card = make_card()
    gate = Gate(TERMINAL, Psam(MPK), card)
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + run_seconds * 2
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        result = gate.tap(1, NOW)
        latencies.append(time.perf_counter() - t0)
        if not isinstance(result, TapRecord):
            card = make_card()  # counter or keys ran out: a fresh card, outside the figures
            gate.reader = card
            latencies.pop()
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"purchases, gate <-> {name}: {len(latencies) / elapsed:9,.0f} /s  "
        f"p50 {statistics.median(latencies) * 1e6:6.0f} us  p99 {p99 * 1e6:6.0f} us  "
        f"({len(latencies)} taps)"
    )


def main() -> None:
    bench_mac()
    bench_taps("software card", _software_card)
    bench_taps("HCE virtual card", _virtual_card)


if __name__ == "__main__":
    main()
