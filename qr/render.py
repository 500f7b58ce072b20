"""QR images of ride codes: PNG and SVG for phone screens, half blocks for a terminal.

The image always carries the raw code bytes in byte mode (never the text form, never split
into numeric or alphanumeric segments), at error-correction level M, sized to about
`IMAGE_PX_TARGET` pixels so a gate scanner reads it off a phone screen at arm's length.

This module must never change the bytes it is given, never read the clock, and never import
aiohttp, asyncpg or redis. It imports `qrcode` (and pillow for PNG) only when called.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import qrcode

IMAGE_PX_TARGET: Final = 600
BORDER_MODULES: Final = 4  # the quiet zone the QR standard asks for
CODE_BYTES_MAX: Final = 512


def build_qr(code: bytes) -> qrcode.QRCode[Any]:
    """The QR symbol for `code`: one byte-mode segment with exactly these bytes, level M."""
    import qrcode
    from qrcode.util import MODE_8BIT_BYTE, QRData

    if not isinstance(code, bytes) or not 0 < len(code) <= CODE_BYTES_MAX:
        raise ValueError(f"a code to render is 1..{CODE_BYTES_MAX} bytes")
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=BORDER_MODULES)
    qr.add_data(QRData(code, mode=MODE_8BIT_BYTE), optimize=0)
    try:
        qr.make(fit=True)
    except ValueError as exc:
        # qrcode cannot compute error correction for an error-correction block whose data is
        # all zero bytes. Signed codes never have one (their keys and signatures are random).
        raise ValueError("qrcode cannot encode these bytes (an all-zero block)") from exc
    side_modules: int = qr.modules_count + 2 * BORDER_MODULES
    qr.box_size = max(1, IMAGE_PX_TARGET // side_modules)
    return qr


def render_png(code: bytes) -> bytes:
    """PNG image bytes, black on white, about `IMAGE_PX_TARGET` pixels square."""
    from qrcode.image.pil import PilImage

    image = build_qr(code).make_image(image_factory=PilImage)
    out = io.BytesIO()
    image.save(out, kind="PNG")
    return out.getvalue()


def render_svg(code: bytes) -> bytes:
    """SVG document bytes (UTF-8 XML), one path, about `IMAGE_PX_TARGET` pixels square."""
    from qrcode.image.svg import SvgPathImage

    image = build_qr(code).make_image(image_factory=SvgPathImage)
    svg: bytes = image.to_string(encoding="utf-8")
    return svg


def render_terminal(code: bytes, invert: bool = False) -> str:
    """The symbol drawn with Unicode half blocks, two module rows per text line.

    By default light modules are drawn (for light-on-dark terminals, the common case), so the
    terminal's dark background shows as the dark modules; `invert=True` draws dark modules.
    """
    matrix: list[list[bool]] = build_qr(code).get_matrix()
    width = len(matrix[0])
    if len(matrix) % 2:
        matrix = [*matrix, [False] * width]
    lines = []
    for top, bottom in zip(matrix[0::2], matrix[1::2], strict=True):
        chars = []
        for upper_dark, lower_dark in zip(top, bottom, strict=True):
            upper = upper_dark if invert else not upper_dark
            lower = lower_dark if invert else not lower_dark
            chars.append(_HALF_BLOCKS[upper, lower])
        lines.append("".join(chars))
    return "\n".join(lines) + "\n"


_HALF_BLOCKS: Final = {
    (False, False): " ",
    (True, False): "\u2580",  # upper half block
    (False, True): "\u2584",  # lower half block
    (True, True): "\u2588",  # full block
}
