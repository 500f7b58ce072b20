"""Cursor pagination, one way for every list (DESIGN.md section 8: `?limit=&cursor=`).

A cursor is opaque to clients: unpadded base64url of a letter naming the list and the position
(a row id) to continue before. A cursor this API did not give is 400 `validation_failed`,
whatever bytes it holds.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

import msgspec

from gateway import errors

T = TypeVar("T")
PAGE_ITEMS_MAX = 100
PAGE_ITEMS_DEFAULT = 20
CURSOR_CHARS_MAX = 64
POSITION_DIGITS_MAX = 18


class PageQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=PAGE_ITEMS_MAX)] = PAGE_ITEMS_DEFAULT
    cursor: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=CURSOR_CHARS_MAX,
                description="opaque: the `next_cursor` of the page before; empty or absent "
                "for the first page",
            ),
        ]
        | None
    ) = None


def cursor_out(kind: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def cursor_in(kind: str, cursor: str | None) -> int | None:
    """The position a cursor of list `kind` names; None for the first page."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text, bad UTF-8
        text = ""
    digits = text[len(kind) :]
    if (
        text.startswith(kind)
        and digits.isascii()
        and digits.isdigit()
        and (len(digits) <= POSITION_DIGITS_MAX)
    ):
        return int(digits)
    raise errors.VALIDATION_FAILED.error(
        "The cursor is not one this API gave.", where="query", field="cursor"
    )


def page(
    rows: Sequence[T], limit: int, kind: str, position: Callable[[T], int]
) -> tuple[Sequence[T], str | None]:
    """The page of `rows` fetched with `limit + 1`, and the cursor of the next one (or None)."""
    shown = rows[:limit]
    more = len(rows) > limit
    return shown, cursor_out(kind, position(shown[-1])) if more else None
