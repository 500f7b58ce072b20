from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from qr.signing import (
    InvalidPublicKey,
    decode_public_key,
    der_to_raw,
    device_fingerprint,
    encode_public_key,
    generate_private_key,
    issue_certificate,
    issue_online_code,
    load_public_key,
    raw_to_der,
    sign_challenge,
    sign_raw,
    verify_challenge_signature,
    verify_raw,
)
from tests.qr.keys import ISSUER, KEY_ID, NOW, x_not_on_curve


@given(
    st.binary(min_size=64, max_size=64),
    st.integers(0, 33),
    st.integers(0, 33),
)
def test_raw_to_der_matches_cryptography(random: bytes, r_zeros: int, s_zeros: int) -> None:
    # Leading zero bytes in r or s take the slow path: draw them often, not 1 time in 256.
    r = (b"\0" * r_zeros + random[:32])[:32]
    s = (b"\0" * s_zeros + random[32:])[:32]
    raw = r + s
    expected = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    assert raw_to_der(raw) == expected


@pytest.mark.parametrize("raw", [bytes(64), b"\x80" * 64, b"\x00" * 31 + b"\x7f" + b"\xff" * 32])
def test_raw_to_der_edge_values(raw: bytes) -> None:
    expected = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    assert raw_to_der(raw) == expected


def test_raw_signatures_are_64_bytes_left_padded_and_round_trip() -> None:
    key = generate_private_key()
    for i in range(40):  # some r or s below 2^248 needs left padding: covered over many
        message = b"m%d" % i
        raw = sign_raw(key, message)
        assert len(raw) == 64
        assert der_to_raw(raw_to_der(raw)) == raw
        assert verify_raw(key.public_key(), raw, message)
        assert not verify_raw(key.public_key(), raw, message + b"x")
    assert not verify_raw(key.public_key(), raw[:63], message)
    assert not verify_raw(key.public_key(), bytes(64), message)


def test_der_to_raw_pads_short_scalars() -> None:
    assert der_to_raw(encode_dss_signature(1, 2)) == (1).to_bytes(32, "big") + (2).to_bytes(
        32, "big"
    )


def test_public_key_round_trip_and_fingerprint() -> None:
    key = generate_private_key().public_key()
    data = encode_public_key(key)
    assert len(data) == 33 and data[0] in (2, 3)
    assert decode_public_key(data) == key
    assert device_fingerprint(data) == hashlib.sha256(data).digest()[:8]


@pytest.mark.parametrize(
    "data",
    [
        b"\x02" + x_not_on_curve(),
        b"\x03" + x_not_on_curve(),
        b"\x02" + b"\xff" * 32,  # x >= p
        b"\x04" + bytes(32),  # wrong prefix
        bytes(33),
        b"\x02" + bytes(31),
    ],
)
def test_points_not_on_the_curve_get_a_clear_error(data: bytes) -> None:
    with pytest.raises(InvalidPublicKey):
        decode_public_key(data)


def test_not_on_curve_message_says_so() -> None:
    with pytest.raises(InvalidPublicKey, match="not on the P-256 curve"):
        decode_public_key(b"\x02" + x_not_on_curve())


def test_other_curves_are_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidPublicKey):
        encode_public_key(other.public_key())
    with pytest.raises(InvalidPublicKey):
        sign_raw(other, b"x")


def test_load_public_key_accepts_hex_and_pem() -> None:
    key = generate_private_key().public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    uncompressed = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert load_public_key(encode_public_key(key).hex()) == key
    assert load_public_key(uncompressed.hex()) == key
    assert load_public_key(pem) == key
    bad_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    for bad in ["zz", bad_pem, "02" + x_not_on_curve().hex(), "04" + "00" * 64]:
        with pytest.raises(InvalidPublicKey):
            load_public_key(bad)


def test_issue_certificate_signs_the_documented_bytes() -> None:
    device = generate_private_key()
    cert = issue_certificate(ISSUER, KEY_ID, 99, device.public_key(), NOW, NOW + 60, 300)
    assert cert.device_public_key == encode_public_key(device.public_key())
    assert verify_raw(ISSUER.public_key(), cert.issuer_signature, cert.to_bytes()[:55])
    with pytest.raises(InvalidPublicKey):
        issue_certificate(ISSUER, KEY_ID, 99, b"\x02" + x_not_on_curve(), NOW, NOW + 60, 300)
    with pytest.raises(ValueError):
        issue_certificate(ISSUER, KEY_ID, 99, device.public_key(), NOW, NOW, 300)


def test_issue_online_code() -> None:
    code = issue_online_code(ISSUER, KEY_ID, 5, NOW)
    assert code.expires_at == NOW + 30
    assert verify_raw(ISSUER.public_key(), code.issuer_signature, code.to_bytes()[:29])
    other = issue_online_code(ISSUER, KEY_ID, 5, NOW)
    assert code.nonce != other.nonce
    assert (
        issue_online_code(ISSUER, KEY_ID, 5, NOW, ttl_s=10, nonce=b"12345678").expires_at
        == NOW + 10
    )


def test_proof_of_possession() -> None:
    device = generate_private_key()
    public = encode_public_key(device.public_key())
    challenge = b"c" * 32
    signature = sign_challenge(device, challenge)
    assert verify_challenge_signature(public, challenge, signature)
    assert verify_challenge_signature(device.public_key(), challenge, signature)
    assert not verify_challenge_signature(public, b"d" * 32, signature)
    assert not verify_challenge_signature(
        encode_public_key(ISSUER.public_key()), challenge, signature
    )
    assert not verify_challenge_signature(b"\x02" + x_not_on_curve(), challenge, signature)
    assert not verify_challenge_signature(public, b"short", signature)
    # Domain separated: a plain signature over the challenge is not a proof.
    assert not verify_challenge_signature(public, challenge, sign_raw(device, challenge))
    with pytest.raises(ValueError):
        sign_challenge(device, b"x" * 257)
