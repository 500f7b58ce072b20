from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qr.format import (
    CERT_BYTES,
    OFFLINE_CODE_BYTES,
    ONLINE_CODE_BYTES,
    Malformed,
    OfflineCode,
    OnlineCode,
    RiderCertificate,
    decode_code,
    decode_text,
    encode_text,
)
from qr.reasons import Reason

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
certificates = st.builds(
    RiderCertificate,
    issuer_key_id=u8,
    account_id=u64,
    device_public_key=st.binary(min_size=33, max_size=33),
    valid_from=u32,
    valid_until=u32,
    ceiling_fen=u32,
    issuer_signature=st.binary(min_size=64, max_size=64),
)
offline_codes = st.builds(
    OfflineCode,
    certificate=certificates,
    generated_at=u32,
    counter=u16,
    device_signature=st.binary(min_size=64, max_size=64),
)
online_codes = st.builds(
    OnlineCode,
    issuer_key_id=u8,
    account_id=u64,
    issued_at=u32,
    expires_at=u32,
    nonce=st.binary(min_size=8, max_size=8),
    issuer_signature=st.binary(min_size=64, max_size=64),
)


@given(certificates)
def test_certificate_round_trip(cert: RiderCertificate) -> None:
    data = cert.to_bytes()
    assert len(data) == CERT_BYTES == 119
    assert data[0] == 0x01
    assert RiderCertificate.from_bytes(data) == cert
    assert RiderCertificate.from_text(cert.to_text()) == cert
    assert cert.signed_part() == data[:55]
    assert data[55:] == cert.issuer_signature


@given(offline_codes)
def test_offline_code_round_trip(code: OfflineCode) -> None:
    data = code.to_bytes()
    assert len(data) == OFFLINE_CODE_BYTES == 193
    assert data[:4] == b"OC\x01\x01"
    assert data[4:123] == code.certificate.to_bytes()
    assert OfflineCode.from_bytes(data) == code
    assert decode_code(data) == code
    assert decode_code(code.to_text()) == code
    assert code.signed_part() == data[:129]


@given(online_codes)
def test_online_code_round_trip(code: OnlineCode) -> None:
    data = code.to_bytes()
    assert len(data) == ONLINE_CODE_BYTES == 93
    assert data[:4] == b"OC\x01\x02"
    assert OnlineCode.from_bytes(data) == code
    assert decode_code(data) == code
    assert OnlineCode.from_text(code.to_text()) == code
    assert code.signed_part() == data[:29]


def test_field_offsets_match_the_documented_layout() -> None:
    cert = RiderCertificate(
        0x11, 0x0102030405060708, b"\x02" + bytes(range(32)), 1, 2, 3, b"S" * 64
    )
    data = cert.to_bytes()
    assert data[1] == 0x11
    assert data[2:10] == bytes.fromhex("0102030405060708")
    assert data[10:43] == cert.device_public_key
    assert data[43:47] == (1).to_bytes(4, "big")
    assert data[47:51] == (2).to_bytes(4, "big")
    assert data[51:55] == (3).to_bytes(4, "big")
    code = OfflineCode(cert, 0xA0B0C0D0, 0xBEEF, b"D" * 64).to_bytes()
    assert code[123:127] == bytes.fromhex("A0B0C0D0") and code[127:129] == bytes.fromhex("BEEF")
    assert code[129:] == b"D" * 64
    online = OnlineCode(9, 5, 100, 130, b"NNNNNNNN", b"S" * 64).to_bytes()
    assert online[4] == 9 and online[5:13] == (5).to_bytes(8, "big")
    assert online[13:17] == (100).to_bytes(4, "big") and online[17:21] == (130).to_bytes(4, "big")
    assert online[21:29] == b"NNNNNNNN" and online[29:] == b"S" * 64


@given(st.one_of(offline_codes, online_codes), st.data())
def test_any_wrong_length_is_malformed(code: OfflineCode | OnlineCode, data: st.DataObject) -> None:
    raw = code.to_bytes()
    size = data.draw(st.integers(0, 300).filter(lambda n: n != len(raw)))
    mutated = (raw * 2)[:size]
    with pytest.raises(Malformed):
        decode_code(mutated)
    with pytest.raises(Malformed):
        type(code).from_bytes(mutated)


@given(st.one_of(offline_codes, online_codes), st.data())
def test_any_wrong_magic_version_or_type_is_malformed(
    code: OfflineCode | OnlineCode, data: st.DataObject
) -> None:
    raw = code.to_bytes()
    index = data.draw(st.integers(0, 3))
    value = data.draw(u8.filter(lambda v: v != raw[index]))
    mutated = raw[:index] + bytes([value]) + raw[index + 1 :]
    with pytest.raises(Malformed) as caught:
        decode_code(mutated)
    assert caught.value.reason == Reason.MALFORMED == "malformed"


@given(offline_codes, u8.filter(lambda v: v != 1))
def test_wrong_certificate_version_is_malformed(code: OfflineCode, version: int) -> None:
    raw = code.to_bytes()
    with pytest.raises(Malformed):
        decode_code(raw[:4] + bytes([version]) + raw[5:])
    with pytest.raises(Malformed):
        RiderCertificate.from_bytes(bytes([version]) + raw[5:123])


@given(st.binary(max_size=200))
def test_text_form_is_unpadded_base64url(data: bytes) -> None:
    text = encode_text(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert decode_text(text) == data


@pytest.mark.parametrize(
    "text",
    ["AA==", "A", "AAA=", "AA AA", "AA\n", "AB+/", "é", "AB", "A" * 300, "AAF"],
)
def test_text_that_is_not_canonical_unpadded_base64url_is_malformed(text: str) -> None:
    # "AB" and "AAF" carry non-zero trailing bits: another spelling of the same bytes.
    with pytest.raises(Malformed):
        decode_text(text)


@given(st.text(max_size=300))
def test_random_text_decodes_or_is_malformed(text: str) -> None:
    try:
        decode_code(text)
    except Malformed:
        pass


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issuer_key_id", 256),
        ("account_id", -1),
        ("account_id", 1 << 64),
        ("valid_until", 1 << 32),
        ("device_public_key", bytes(32)),
        ("issuer_signature", bytes(63)),
        ("ceiling_fen", True),
    ],
)
def test_certificate_fields_are_range_checked(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "issuer_key_id": 1,
        "account_id": 1,
        "device_public_key": bytes(33),
        "valid_from": 0,
        "valid_until": 1,
        "ceiling_fen": 0,
        "issuer_signature": bytes(64),
    }
    fields[field] = value
    with pytest.raises(ValueError):
        RiderCertificate(**fields)  # type: ignore[arg-type]


def test_code_fields_are_range_checked() -> None:
    cert = RiderCertificate(1, 1, bytes(33), 0, 1, 0, bytes(64))
    with pytest.raises(ValueError):
        OfflineCode(cert, 0, 1 << 16, bytes(64))
    with pytest.raises(ValueError):
        OnlineCode(1, 1, 0, 30, bytes(7), bytes(64))
