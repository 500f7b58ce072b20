from __future__ import annotations

import pytest

from qr.format import OfflineCode, decode_code
from qr.phone import Phone, generate_device_key
from qr.signing import encode_public_key, issue_certificate, verify_challenge_signature
from qr.verify import MemoryReplayCache, verify
from tests.qr.keys import ISSUER, ISSUER_KEYS, KEY_ID, NOW, VALID_UNTIL, rider


def test_counter_increments_per_code() -> None:
    phone = rider()
    codes = [decode_code(phone.make_code(NOW)) for _ in range(3)]
    assert [c.counter for c in codes] == [0, 1, 2]  # type: ignore[union-attr]
    assert phone.counter == 3


def test_counter_wraps_at_65536() -> None:
    device = generate_device_key()
    cert = issue_certificate(ISSUER, KEY_ID, 5, device.public_key(), NOW - 10, NOW + 10, 100)
    phone = Phone(cert, device, counter=65_535)
    first = decode_code(phone.make_code(NOW))
    second = decode_code(phone.make_code(NOW))
    assert isinstance(first, OfflineCode) and isinstance(second, OfflineCode)
    assert (first.counter, second.counter, phone.counter) == (65_535, 0, 1)
    with pytest.raises(ValueError):
        Phone(cert, device, counter=65_536)


def test_codes_verify_and_each_is_distinct_for_replay() -> None:
    phone = rider(account_id=9)
    seen = MemoryReplayCache()
    for i in range(5):
        verdict = verify(phone.make_code(NOW), ISSUER_KEYS, NOW + i, seen=seen)
        assert verdict.ok and verdict.account_id == 9
    assert len(seen) == 5


def test_a_phone_refuses_a_certificate_for_another_key() -> None:
    with pytest.raises(ValueError):
        Phone(rider().certificate, generate_device_key())


def test_certificate_validity_and_renewal() -> None:
    phone = rider()
    assert phone.certificate_valid_at(NOW)
    assert not phone.certificate_valid_at(VALID_UNTIL)
    assert not phone.needs_renewal(NOW, margin_s=60)
    assert phone.needs_renewal(VALID_UNTIL - 60, margin_s=60)


def test_proof_of_possession_from_the_phone() -> None:
    phone = rider()
    challenge = bytes(range(32))
    signature = phone.sign_challenge(challenge)
    assert len(signature) == 64
    assert verify_challenge_signature(phone.certificate.device_public_key, challenge, signature)
    other = encode_public_key(generate_device_key().public_key())
    assert not verify_challenge_signature(other, challenge, signature)
