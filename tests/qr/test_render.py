from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest
from PIL import Image
from qrcode.constants import ERROR_CORRECT_M
from qrcode.util import MODE_8BIT_BYTE

from qr.render import build_qr, render_png, render_svg, render_terminal
from qr.signing import issue_online_code
from tests.qr.keys import ISSUER, KEY_ID, NOW, rider

OFFLINE = rider().make_code(NOW)
ONLINE = issue_online_code(ISSUER, KEY_ID, 1, NOW).to_bytes()


@pytest.mark.parametrize("code", [OFFLINE, ONLINE, b"0123456789" * 5])
def test_symbol_carries_the_exact_bytes_in_byte_mode(code: bytes) -> None:
    qr = build_qr(code)
    assert len(qr.data_list) == 1
    assert qr.data_list[0].mode == MODE_8BIT_BYTE  # even for all-digit data
    assert qr.data_list[0].data == code
    assert qr.error_correction == ERROR_CORRECT_M


@pytest.mark.parametrize("code", [OFFLINE, ONLINE])
def test_png_is_a_phone_sized_image(code: bytes) -> None:
    png = render_png(code)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    width, height = image.size
    assert width == height and 450 <= width <= 600
    assert len(png) < 50_000


def test_png_modules_match_the_matrix() -> None:
    qr = build_qr(OFFLINE)
    matrix = qr.get_matrix()
    image = Image.open(io.BytesIO(render_png(OFFLINE))).convert("L")
    box = qr.box_size
    for row in range(0, len(matrix), 7):
        for col in range(0, len(matrix), 5):
            pixel = image.getpixel((col * box + box // 2, row * box + box // 2))
            assert (pixel == 0) is matrix[row][col]


def test_svg_is_xml() -> None:
    svg = render_svg(OFFLINE)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")


def test_terminal_rendering_uses_half_blocks() -> None:
    qr = build_qr(ONLINE)
    side = len(qr.get_matrix())
    text = render_terminal(ONLINE)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == (side + 1) // 2 and all(len(line) == side for line in lines)
    assert set(text) <= {" ", "\u2580", "\u2584", "\u2588", "\n"}
    # The quiet zone is light: drawn as full blocks by default, blank when inverted.
    assert lines[0] == "\u2588" * side
    assert render_terminal(ONLINE, invert=True).split("\n")[0] == " " * side


@pytest.mark.parametrize("bad", [b"", b"x" * 513])
def test_refuses_sizes_outside_the_limit(bad: bytes) -> None:
    with pytest.raises(ValueError):
        build_qr(bad)
