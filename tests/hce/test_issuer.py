"""The gateway's issuer operations for an over-the-air load, including an interrupted one."""

import pytest

from hce import apdu as A
from hce.issuer import Issuer, LoadTransaction, MacError
from hce.software_card import CardTorn

from .cards import vector_card
from .vectors import DATE, LOAD_MAC1, LOAD_MAC2, LOAD_TAC, LOAD_TIME, SELECT_CITY, TERMINAL, h

ISSUER = Issuer(
    master_load_key=h("00112233445566778899AABBCCDDEEFF"),
    master_tac_key=h("A0A1A2A3A4A5A6A7B0B1B2B3B4B5B6B7"),
)


def load_card():
    card = vector_card(balance_fen=4800, online_counter=3, random=lambda: h("55AA0F0F"))
    assert card.transmit(SELECT_CITY)[-2:] == b"\x90\x00"
    return card


def initialize(card, amount=10000):
    init = A.InitializeForLoad(1, amount, TERMINAL)
    answer = A.ResponseApdu.from_bytes(card.transmit(init.to_bytes()))
    result = A.InitializeForLoadResponse.from_bytes(answer.data)
    return LoadTransaction.from_initialize(card.asn, init, result), result.mac1


def test_load_vector_through_the_issuer():
    card = load_card()
    load, mac1 = initialize(card)
    assert mac1 == LOAD_MAC1
    ISSUER.verify_load_mac1(load, mac1)
    credit = ISSUER.credit_for_load(load, DATE, LOAD_TIME)
    assert credit.mac2 == LOAD_MAC2
    assert credit.to_bytes() == h("805200000B20261123081700D30C75E704")
    tac = A.ResponseApdu.from_bytes(card.transmit(credit.to_bytes())).data
    assert tac == LOAD_TAC
    ISSUER.verify_load_tac(load, DATE, LOAD_TIME, tac)
    assert card.balance_fen == 14800


def test_forged_mac1_and_tac_are_refused():
    card = load_card()
    load, mac1 = initialize(card)
    with pytest.raises(MacError):
        ISSUER.verify_load_mac1(load, bytes(4))
    with pytest.raises(MacError):  # a card lying about its balance
        ISSUER.verify_load_mac1(LoadTransaction(**{**_fields(load), "balance_fen": 0}), mac1)
    with pytest.raises(MacError):
        ISSUER.verify_load_tac(load, DATE, LOAD_TIME, bytes(4))


def _fields(load):
    return {f: getattr(load, f) for f in load.__slots__}


@pytest.mark.parametrize("credited", [False, True])
def test_interrupted_load_is_resolved_with_get_transaction_prove(credited):
    card = load_card()
    load, mac1 = initialize(card)
    ISSUER.verify_load_mac1(load, mac1)
    credit = ISSUER.credit_for_load(load, DATE, LOAD_TIME)
    card.tear_after(1, commit=credited)
    with pytest.raises(CardTorn):
        card.transmit(credit.to_bytes())
    # Next contact: the gateway asks for the proof of the counter INITIALIZE returned.
    assert card.transmit(SELECT_CITY)[-2:] == b"\x90\x00"
    prove = A.GetTransactionProve(A.TX_TYPE_LOAD, load.online_counter)
    answer = A.ResponseApdu.from_bytes(card.transmit(prove.to_bytes()))
    if credited:
        proof = A.GetTransactionProveResponse.from_bytes(answer.data)
        ISSUER.verify_load_proof(load, DATE, LOAD_TIME, proof.mac2, proof.tac)
        assert card.balance_fen == 14800
    else:
        assert answer.sw == A.StatusWord.NO_TRANSACTION_PROOF
        assert card.online_counter == load.online_counter
        assert card.balance_fen == 4800


def test_a_proof_for_another_load_does_not_verify():
    card = load_card()
    load, _ = initialize(card)
    with pytest.raises(MacError):
        ISSUER.verify_load_proof(load, DATE, LOAD_TIME, LOAD_MAC2, bytes(4))
    with pytest.raises(MacError):
        ISSUER.verify_load_proof(load, DATE, h("081701"), LOAD_MAC2, LOAD_TAC)


def test_issuer_refuses_wrong_key_sizes_and_hides_keys():
    with pytest.raises(ValueError):
        Issuer(master_load_key=bytes(8))
    assert "hidden" in repr(ISSUER)
