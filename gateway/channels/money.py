"""Amounts crossing into and out of channels: yuan as decimal strings <-> integer fen, exactly.

An amount that does not convert exactly (a third decimal, an exponent, a sign where none is
allowed, anything that is not a plain decimal) raises `InexactAmount`: such a notification is
never credited, it is flagged for an operator.
"""

from __future__ import annotations

import re
from decimal import Decimal

FEN_PER_YUAN = 100
_YUAN = re.compile(r"^(0|[1-9][0-9]{0,13})(\.[0-9]{1,2})?$")


class InexactAmount(ValueError):
    """An amount that is not a whole number of fen."""


def yuan_to_fen(text: str) -> int:
    """`"88.88"` -> 8888; `"88.8"` -> 8880; `"88.888"`, `"-1"`, `"1e3"`, `" 1"` raise."""
    if not _YUAN.match(text):
        raise InexactAmount(text)
    fen = Decimal(text) * FEN_PER_YUAN
    assert fen == fen.to_integral_value(), "the pattern allows two decimals at most"
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    """8888 -> `"88.88"`; 100 -> `"1.00"`; always two decimals, as channels print them."""
    assert fen >= 0, "channels take no negative amounts"
    return f"{fen // FEN_PER_YUAN}.{fen % FEN_PER_YUAN:02d}"


def fen_from_text(text: str) -> int:
    """An amount a channel gives in fen as text (UnionPay's `txnAmt`): digits only."""
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 15
        or (len(text) > 1 and text[0] == "0")
    ):
        raise InexactAmount(text)
    return int(text)
