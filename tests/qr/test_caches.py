from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import qr.verify
from qr.reasons import Reason
from qr.signing import decode_public_key, encode_public_key, generate_private_key
from qr.verify import CertificateCache, MemoryReplayCache, verify
from tests.qr.keys import ISSUER, ISSUER_KEYS, KEY_ID, NOW, flip, rider, signed_offline

# --- replay cache ------------------------------------------------------------------------


def test_replay_cache_detects_a_repeat() -> None:
    cache = MemoryReplayCache(max_entries=10)
    assert cache.add_if_absent(b"k", 100, 50)
    assert not cache.add_if_absent(b"k", 100, 60)
    assert cache.add_if_absent(b"other", 100, 60)
    assert len(cache) == 2


def test_replay_cache_entries_expire_at_their_time() -> None:
    cache = MemoryReplayCache(max_entries=10)
    assert cache.add_if_absent(b"k", 100, 50)
    assert not cache.add_if_absent(b"k", 200, 99)
    assert cache.add_if_absent(b"k", 200, 100)  # expired at 100: a new entry
    assert cache.expired == 1 and len(cache) == 1
    assert cache.add_if_absent(b"gone", 10, 150)  # already past: accepted, not stored
    assert len(cache) == 1


def test_replay_cache_drops_expired_before_evicting_live_entries() -> None:
    cache = MemoryReplayCache(max_entries=100)
    for i in range(100):
        cache.add_if_absent(b"old%d" % i, 10, 0)
    for i in range(100):
        assert cache.add_if_absent(b"new%d" % i, 20, 10)
    assert cache.evicted == 0 and cache.expired == 100 and len(cache) == 100


def test_replay_cache_stays_bounded_under_a_flood() -> None:
    cache = MemoryReplayCache(max_entries=1_000)
    flood = 100_000
    for i in range(flood):
        assert cache.add_if_absent(i.to_bytes(8, "big"), NOW + 60, NOW)
        assert len(cache) <= 1_000
    assert cache.evicted == flood - 1_000
    assert len(cache._expiry) <= 2 * 1_000  # expiry records bounded too
    # Oldest evicted first: the newest keys are still remembered, the first ones are not.
    assert not cache.add_if_absent((flood - 1).to_bytes(8, "big"), NOW + 60, NOW)
    assert cache.add_if_absent((0).to_bytes(8, "big"), NOW + 60, NOW)


def test_replay_cache_rejects_a_useless_size() -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(max_entries=0)


def test_verify_records_offline_replay_until_the_window_closes() -> None:
    phone = rider()
    seen = MemoryReplayCache()
    code = phone.make_code(NOW)
    assert verify(code, ISSUER_KEYS, NOW, seen=seen).ok
    expiry = seen._entries[verify(code, ISSUER_KEYS, NOW).replay_key]  # type: ignore[index]
    assert expiry == NOW + 60 + 1
    assert verify(code, ISSUER_KEYS, NOW + 60, seen=seen).reason == Reason.REPLAYED
    assert verify(code, ISSUER_KEYS, NOW + 61, seen=seen).reason == Reason.CODE_EXPIRED


# --- certificate cache -------------------------------------------------------------------


@pytest.fixture
def ecdsa_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every ECDSA verification `verify` makes."""
    count = [0]
    real: Callable[[ec.EllipticCurvePublicKey, bytes, bytes], bool] = qr.verify.verify_raw

    def counting(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
        count[0] += 1
        return real(key, signature, message)

    monkeypatch.setattr(qr.verify, "verify_raw", counting)
    return count


def test_a_repeat_rider_costs_one_ecdsa_verification(ecdsa_count: list[int]) -> None:
    cache = CertificateCache()
    phone = rider()
    assert verify(phone.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache).ok
    assert ecdsa_count[0] == 2
    assert verify(phone.make_code(NOW + 1), ISSUER_KEYS, NOW + 1, cert_cache=cache).ok
    assert ecdsa_count[0] == 3
    assert cache.hits == 1 and cache.misses == 1


def test_a_tampered_certificate_never_hits_the_cache(ecdsa_count: list[int]) -> None:
    cache = CertificateCache()
    phone = rider(ceiling_fen=500)
    assert verify(phone.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache).ok
    code = phone.make_code(NOW)
    for index in (4 + 1 + 8, 4 + 51 + 3, 4 + 100):  # device key, ceiling, issuer signature
        ecdsa_count[0] = 0
        verdict = verify(flip(code, index), ISSUER_KEYS, NOW, cert_cache=cache)
        assert verdict.reason in {Reason.BAD_ISSUER_SIGNATURE, Reason.MALFORMED}
        assert ecdsa_count[0] <= 1
    assert len(cache) == 1  # failures are never cached


def test_a_changed_issuer_key_does_not_reuse_entries(ecdsa_count: list[int]) -> None:
    cache = CertificateCache()
    code = rider().make_code(NOW)
    assert verify(code, ISSUER_KEYS, NOW, cert_cache=cache).ok
    rotated = {KEY_ID: generate_private_key().public_key()}
    ecdsa_count[0] = 0
    assert verify(code, rotated, NOW, cert_cache=cache).reason == Reason.BAD_ISSUER_SIGNATURE
    assert ecdsa_count[0] == 1
    # An equal key in a new object still hits: the entry is keyed by the key's bytes.
    same_key_again = {KEY_ID: decode_public_key(encode_public_key(ISSUER.public_key()))}
    ecdsa_count[0] = 0
    assert verify(code, same_key_again, NOW, cert_cache=cache).ok
    assert ecdsa_count[0] == 1


def test_certificate_cache_is_a_bounded_lru() -> None:
    cache = CertificateCache(max_entries=2)
    a, b, c = rider(1), rider(2), rider(3)
    for phone in (a, b, a, c):  # a used again before c arrives: b is least recent
        assert verify(phone.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache).ok
    assert len(cache) == 2
    hits = cache.hits
    verify(a.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache)
    assert cache.hits == hits + 1
    verify(b.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache)
    assert cache.hits == hits + 1  # b had been evicted


def test_cache_can_be_disabled(ecdsa_count: list[int]) -> None:
    cache = CertificateCache(max_entries=0)
    phone = rider()
    for _ in range(3):
        assert verify(phone.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache).ok
    assert ecdsa_count[0] == 6 and len(cache) == 0


def test_cached_certificate_still_checks_time_and_device(ecdsa_count: list[int]) -> None:
    cache = CertificateCache()
    phone = rider(valid_from=NOW - 10, valid_until=NOW + 10)
    assert verify(phone.make_code(NOW), ISSUER_KEYS, NOW, cert_cache=cache).ok
    late = phone.make_code(NOW + 10)
    assert verify(late, ISSUER_KEYS, NOW + 10, cert_cache=cache).reason == (
        Reason.CERTIFICATE_EXPIRED
    )
    forged = signed_offline(phone.certificate, generate_private_key(), NOW, 9)
    assert verify(forged, ISSUER_KEYS, NOW, cert_cache=cache).reason == (
        Reason.BAD_DEVICE_SIGNATURE
    )
