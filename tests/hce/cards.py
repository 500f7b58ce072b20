"""Builders for the cards the tests use."""

from hce.software_card import SoftwareCard

from .vectors import ASN, MLK, MPK, MTK, fixed


def vector_card(*, balance_fen=5000, online_counter=0, offline_counter=7, random=None, **kw):
    return SoftwareCard.issue(
        asn=ASN,
        master_load_key=MLK,
        master_purchase_key=MPK,
        master_tac_key=MTK,
        balance_fen=balance_fen,
        online_counter=online_counter,
        offline_counter=offline_counter,
        random=random or fixed(bytes.fromhex("1A2B3C4D")),
        **kw,
    )


def exchange(card, *pairs):
    """Send each command hex and check the answer hex, byte for byte."""
    for command, answer in pairs:
        got = card.transmit(bytes.fromhex(command.replace(" ", "")))
        assert got.hex().upper() == answer.replace(" ", "").upper(), command
