from datetime import date

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from hce import apdu as A
from hce import card_crypto as cc
from hce.issuer import Issuer
from hce.virtual_card import (
    EnvelopeError,
    LukBatch,
    VirtualCard,
    derive_luks,
    open_luk_batch,
    seal_luk_batch,
)

from .vectors import MLK, MPK, MTK, SELECT_CITY, h

ASN = h("31000000000099990001")
UNTIL = h("20261130")
DEVICE = ec.generate_private_key(ec.SECP256R1())
TODAY = date(2026, 11, 23)


def batch(**kw):
    fields = {
        "asn": ASN,
        "balance_ceiling_fen": 5000,
        "counter_start": 0,
        "luks": derive_luks(MPK, MTK, ASN, [1, 2, 3], UNTIL, 5, 1000),
    }
    fields.update(kw)
    return LukBatch(**fields)


def info():
    return A.IssuerInfo(h("3100000000000000"), 1, 1, ASN, h("20260101"), h("20301231"), 0x80, 0)


def phone(b=None, **kw):
    return VirtualCard(issuer_info=info(), batch=b or batch(), clock=lambda: TODAY, **kw)


def test_derive_luks_follows_the_spec():
    dpk = cc.diversify(MPK, ASN)
    dtk = cc.diversify(MTK, ASN)
    luk = derive_luks(MPK, MTK, ASN, [7], UNTIL, 5, 1000)[0]
    f = h("0007") + UNTIL + h("0000")
    assert luk.key == cc.encrypt_block(dpk, f + bytes(b ^ 0xFF for b in f))
    assert luk.tac_key == cc.tac_key(cc.encrypt_block(dtk, f + bytes(b ^ 0xFF for b in f)))
    issuer = Issuer(master_purchase_key=MPK, master_tac_key=MTK)
    assert issuer.derive_luks(ASN, [7], UNTIL, 5, 1000) == (luk,)
    assert issuer.purchase_tac_key(ASN, (7, UNTIL)) == luk.tac_key
    assert "key" not in repr(luk).replace("max_", "")


def test_batch_serialization_round_trip():
    b = batch(counter_start=42)
    raw = b.to_bytes()
    assert len(raw) == 18 + 3 * 36
    assert LukBatch.from_bytes(raw) == b
    with pytest.raises(EnvelopeError):
        LukBatch.from_bytes(raw[:-1])
    with pytest.raises(EnvelopeError):
        LukBatch.from_bytes(b"\x02" + raw[1:])


def test_envelope_seal_and_open():
    b = batch()
    envelope = seal_luk_batch(DEVICE.public_key(), b)
    assert envelope[0] == 1 and envelope[1:11] == ASN
    assert len(envelope) == 1 + 10 + 65 + 12 + len(b.to_bytes()) + 16
    assert open_luk_batch(DEVICE, envelope) == b
    assert open_luk_batch(DEVICE, envelope, asn=ASN) == b


def test_envelope_refuses_tampering_other_keys_and_other_cards():
    envelope = seal_luk_batch(DEVICE.public_key(), batch())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError):
        open_luk_batch(other, envelope)
    with pytest.raises(EnvelopeError):
        open_luk_batch(DEVICE, envelope, asn=h("31000000000099990002"))
    # The ASN is associated data: changing it in the header breaks the tag.
    swapped = envelope[:1] + h("31000000000099990002") + envelope[11:]
    with pytest.raises(EnvelopeError):
        open_luk_batch(DEVICE, swapped)
    for i in (0, 20, 90, len(envelope) - 1):
        tampered = bytearray(envelope)
        tampered[i] ^= 1
        with pytest.raises(EnvelopeError):
            open_luk_batch(DEVICE, bytes(tampered))
    with pytest.raises(EnvelopeError):
        open_luk_batch(DEVICE, envelope[:50])


@given(st.binary(max_size=200))
def test_open_never_crashes_on_garbage(raw):
    with pytest.raises(EnvelopeError):
        open_luk_batch(DEVICE, raw)


def test_select_announces_the_current_luk():
    card = phone()
    answer = A.ResponseApdu.from_bytes(card.transmit(SELECT_CITY))
    fci = A.SelectResponse.from_bytes(answer.data)
    assert fci.key_info == A.VirtualCardKeyInfo(1, UNTIL)
    assert fci.issuer_info.card_type == 0x80
    assert card.transmit(h("805C000204")) == h("000013889000")
    assert card.transmit(h("00B095001E"))[:-2] == info().to_bytes()


def test_virtual_card_refuses_what_a_phone_cannot_do():
    card = phone()
    card.transmit(SELECT_CITY)
    assert card.transmit(h("805000020B0100002710112233445566"))[-2:] == h("6A86")
    assert card.transmit(h("805200000B20261123081700DEADBEEF"))[-2:] == h("6D00")
    assert card.transmit(h("805401000F0000ABCD20261123081502B69B053C08"))[-2:] == h("6985")
    assert card.transmit(h("A0A4040000"))[-2:] == h("6E00")


def test_no_luk_left_means_6985():
    empty = VirtualCard(issuer_info=info(), clock=lambda: TODAY)
    assert empty.transmit(SELECT_CITY) == h("6985")
    assert empty.transmit(h("805001020B01000000C81122334455660F")) == h("6985")
    with pytest.raises(ValueError):
        empty.install(batch(asn=h("31000000000099990002")))


def test_install_envelope_and_counter_never_goes_back():
    card = phone(batch(counter_start=10))
    assert card.offline_counter == 10
    card.install_envelope(DEVICE, seal_luk_batch(DEVICE.public_key(), batch(counter_start=3)))
    assert card.offline_counter == 10
    assert [luk.seq for luk in card.usable_luks()] == [1, 2, 3]


def test_json_round_trip():
    card = phone()
    text = card.to_json()
    again = VirtualCard.from_json(text, clock=lambda: TODAY)
    assert again.to_json() == text
    with pytest.raises(ValueError):
        VirtualCard.from_json("{}")
    with pytest.raises(ValueError):
        VirtualCard(issuer_info=A.IssuerInfo(bytes(8), 1, 1, ASN, bytes(4), bytes(4), 1, 0))


@given(st.binary(max_size=48))
def test_transmit_never_raises(raw):
    card = phone()
    card.transmit(SELECT_CITY)
    answer = card.transmit(raw)
    assert len(answer) >= 2 and answer[-2:] != b"\x6f\x00"


def test_master_load_key_is_not_needed_for_luks():
    with pytest.raises(RuntimeError):
        Issuer(master_load_key=MLK).derive_luks(ASN, [1], UNTIL, 1, 1)
