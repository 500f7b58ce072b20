"""Gate + SAM against software cards and virtual cards, end to end."""

import dataclasses
from datetime import date, datetime

import pytest

from hce import apdu as A
from hce.issuer import Issuer, MacError, PurchaseTransaction
from hce.readers import CardReader
from hce.sam import Psam
from hce.software_card import SoftwareCard
from hce.terminal import Decline, DeclineReason, Gate, TapRecord
from hce.virtual_card import LukBatch, VirtualCard, derive_luks

from .cards import vector_card
from .vectors import ASN, MLK, MPK, MTK, PURCHASE_TAC, TERMINAL, h

NOW = datetime(2026, 11, 23, 8, 15, 2)
ISSUER = Issuer(master_load_key=MLK, master_purchase_key=MPK, master_tac_key=MTK)
VIRTUAL_ASN = h("31000000000099990001")


def gate_for(card, **kw):
    return Gate(TERMINAL, Psam(MPK, serial=0xABCD), card, **kw)


def check_tac(record: TapRecord):
    ISSUER.verify_purchase_tac(
        PurchaseTransaction(
            record.asn,
            record.amount_fen,
            record.tx_type,
            record.terminal_id,
            record.terminal_serial,
            record.date,
            record.time,
            record.luk_seq,
            record.luk_until,
        ),
        record.tac,
    )


def test_gate_reproduces_the_purchase_vector():
    card = vector_card()
    assert isinstance(card, CardReader)
    record = gate_for(card, read_issuer_file=True).tap(200, NOW)
    assert isinstance(record, TapRecord)
    assert record.tac == PURCHASE_TAC
    assert record.terminal_serial == h("0000ABCD")
    assert (record.asn, record.offline_counter, record.amount_fen) == (ASN, 7, 200)
    assert (record.balance_after_fen, record.tx_type, record.card_type) == (4800, 6, 1)
    assert record.luk is None
    assert record.to_dict()["tac"] == "9329C905"
    check_tac(record)
    assert card.balance_fen == 4800


def test_sam_serial_increments_and_counter_moves():
    card = vector_card(random=None)
    gate = gate_for(card)
    first, second = gate.tap(100, NOW), gate.tap(100, NOW)
    assert isinstance(first, TapRecord) and isinstance(second, TapRecord)
    assert second.offline_counter == first.offline_counter + 1
    assert int.from_bytes(second.terminal_serial, "big") == 0xABCE
    assert gate.sam.serial == 0xABCF
    check_tac(first)
    check_tac(second)


def test_compound_purchase():
    card = vector_card(random=None)
    record = gate_for(card, compound=True).tap(150, NOW)
    assert isinstance(record, TapRecord) and record.tx_type == 0x09
    check_tac(record)


def declined(result, reason):
    assert isinstance(result, Decline), result
    assert result.reason is reason
    return result


def test_decline_insufficient_balance():
    card = vector_card(balance_fen=100)
    result = declined(gate_for(card).tap(200, NOW), DeclineReason.INSUFFICIENT_BALANCE)
    assert result.sw == 0x9401
    assert card.balance_fen == 100


def test_decline_expired_card():
    card = vector_card(valid_until=h("20251231"))
    declined(gate_for(card).tap(200, NOW), DeclineReason.EXPIRED)
    early = vector_card(valid_from=h("20270101"))
    declined(gate_for(early).tap(200, NOW), DeclineReason.EXPIRED)


def test_decline_deny_listed():
    card = vector_card()
    declined(gate_for(card, deny_list={ASN}).tap(200, NOW), DeclineReason.DENY_LISTED)
    assert card.balance_fen == 5000


def test_decline_bad_mac2():
    class ForgedCard:
        """Answers like the card but with a forged MAC2 (a cloned card without DPK)."""

        def __init__(self):
            self.card = vector_card()

        def transmit(self, capdu):
            answer = self.card.transmit(capdu)
            if capdu[1] == A.INS_DEBIT_FOR_PURCHASE and answer[-2:] == b"\x90\x00":
                return answer[:4] + b"\x00\x00\x00\x00" + answer[-2:]
            return answer

    declined(gate_for(ForgedCard()).tap(200, NOW), DeclineReason.BAD_MAC2)


def test_decline_card_error_for_a_wrong_key():
    # A card from another issuer: its MAC check of our MAC1 fails (9302).
    card = SoftwareCard.issue(
        asn=ASN, master_load_key=MLK, master_purchase_key=MLK, master_tac_key=MTK, balance_fen=500
    )
    result = declined(gate_for(card).tap(200, NOW), DeclineReason.CARD_ERROR)
    assert result.sw == 0x9302


def test_decline_no_application_and_garbage():
    card = vector_card(aid=h("A0000000031010"))
    result = declined(gate_for(card).tap(200, NOW), DeclineReason.CARD_ERROR)
    assert result.sw == 0x6A82

    class Garbage:
        def transmit(self, capdu):
            return b"\x90"

    declined(gate_for(Garbage()).tap(200, NOW), DeclineReason.CARD_ERROR)


@pytest.mark.parametrize("commit", [False, True])
def test_decline_card_removed(commit):
    card = vector_card()
    card.tear_after(1, commit=commit)
    declined(gate_for(card).tap(200, NOW), DeclineReason.CARD_REMOVED)
    assert card.balance_fen == (4800 if commit else 5000)


# --- virtual cards -------------------------------------------------------------------------


def virtual_card(*, luks=2, max_taps=3, max_amount=1000, until="20261130", ceiling=5000):
    batch = LukBatch(
        asn=VIRTUAL_ASN,
        balance_ceiling_fen=ceiling,
        counter_start=0,
        luks=derive_luks(MPK, MTK, VIRTUAL_ASN, range(1, luks + 1), h(until), max_taps, max_amount),
    )
    info = A.IssuerInfo(
        h("3100000000000000"), 1, 1, VIRTUAL_ASN, h("20260101"), h("20301231"), 0x80, 0
    )
    return VirtualCard(issuer_info=info, batch=batch, clock=lambda: date(2026, 11, 23))


def test_virtual_card_purchase_end_to_end():
    phone = virtual_card()
    record = gate_for(phone).tap(200, NOW)
    assert isinstance(record, TapRecord)
    assert record.card_type == 0x80
    assert record.luk == (1, h("20261130"))
    assert record.balance_after_fen == 4800
    check_tac(record)
    # The TAC does not verify as a physical card's TAC: it is bound to the LUK.
    with pytest.raises(MacError):
        check_tac(dataclasses.replace(record, luk_seq=None, luk_until=None))


def test_virtual_card_rotates_luks_then_refuses():
    phone = virtual_card(luks=2, max_taps=2)
    gate = gate_for(phone)
    seqs = []
    for _ in range(4):
        record = gate.tap(100, NOW)
        assert isinstance(record, TapRecord)
        check_tac(record)
        seqs.append(record.luk_seq)
    assert seqs == [1, 1, 2, 2]
    assert [phone.offline_counter] == [4]
    result = declined(gate.tap(100, NOW), DeclineReason.CARD_ERROR)
    assert result.sw == 0x6985


def test_virtual_card_amount_ceiling_moves_to_next_luk():
    phone = virtual_card(luks=2, max_taps=10, max_amount=300)
    gate = gate_for(phone)
    first = gate.tap(200, NOW)
    assert isinstance(first, TapRecord) and first.luk_seq == 1
    declined(gate.tap(200, NOW), DeclineReason.INSUFFICIENT_BALANCE)  # LUK 1 has 100 left
    second = gate.tap(200, NOW)
    assert isinstance(second, TapRecord) and second.luk_seq == 2
    check_tac(second)


def test_virtual_card_balance_ceiling():
    phone = virtual_card(ceiling=150)
    declined(gate_for(phone).tap(200, NOW), DeclineReason.INSUFFICIENT_BALANCE)


def test_virtual_card_expired_luk():
    phone = virtual_card(until="20261122")
    result = declined(gate_for(phone).tap(200, NOW), DeclineReason.CARD_ERROR)
    assert result.sw == 0x6985


def test_virtual_card_deny_listed():
    declined(
        gate_for(virtual_card(), deny_list={VIRTUAL_ASN}).tap(200, NOW), DeclineReason.DENY_LISTED
    )
