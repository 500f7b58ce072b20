from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from qr.__main__ import main
from qr.format import encode_text
from qr.signing import encode_public_key, generate_private_key, issue_online_code
from tests.qr.keys import ISSUER, KEY_ID, NOW, rider

CODE = encode_text(rider(account_id=31).make_code(NOW))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    pem = (
        generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    path = tmp_path / "issuer-keys.json"
    path.write_text(
        json.dumps({str(KEY_ID): encode_public_key(ISSUER.public_key()).hex(), "9": pem})
    )
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_verify_ok(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        ["verify", CODE, "--issuer-keys", str(keys_file), "--now", str(NOW)], capsys
    )
    verdict = json.loads(out)
    assert status == 0 and verdict["ok"] is True and verdict["account_id"] == 31


def test_verify_refused_exits_1(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["verify", CODE, "--issuer-keys", str(keys_file), "--now", str(NOW + 61)]
    status, out, _ = run(argv, capsys)
    assert status == 1 and json.loads(out) == {"ok": False, "reason": "code_expired"}
    status, out, _ = run([*argv[:4], "--now", str(NOW), "--deny", "31"], capsys)
    assert status == 1 and json.loads(out)["reason"] == "account_denied"
    status, out, _ = run(["verify", "garbage!", "--issuer-keys", str(keys_file)], capsys)
    assert status == 1 and json.loads(out)["reason"] == "malformed"


def test_verify_online_code_from_stdin(
    keys_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    online = issue_online_code(ISSUER, KEY_ID, 8, NOW).to_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO(online + "\n"))
    status, out, _ = run(
        ["verify", "-", "--issuer-keys", str(keys_file), "--now", str(NOW)], capsys
    )
    assert status == 0 and json.loads(out)["type"] == 2


def test_bad_key_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in ["not json", "[]", '{"x": "02"}', '{"7": "zz"}']:
        path = tmp_path / "keys.json"
        path.write_text(content)
        status, _, err = run(["verify", CODE, "--issuer-keys", str(path)], capsys)
        assert status == 2 and "python -m qr" in err
    status, _, err = run(["verify", CODE, "--issuer-keys", str(tmp_path / "missing")], capsys)
    assert status == 2


def test_decode(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["decode", CODE], capsys)
    fields = json.loads(out)
    assert status == 0 and fields["type"] == 1 and fields["certificate"]["account_id"] == 31
    status, out, _ = run(["decode", "AAAA"], capsys)
    assert status == 1 and json.loads(out)["error"] == "malformed"


def test_render_files_and_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, svg = tmp_path / "code.png", tmp_path / "code.svg"
    status, out, _ = run(["render", CODE, "--png", str(png), "--svg", str(svg)], capsys)
    assert status == 0 and out == ""
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()
    status, out, _ = run(["render", CODE], capsys)
    assert status == 0 and "\u2588" in out
    status, _, err = run(["render", "AAAA"], capsys)
    assert status == 2 and "not a QR ride code" in err


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qr", "decode", CODE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and json.loads(result.stdout)["counter"] == 0
