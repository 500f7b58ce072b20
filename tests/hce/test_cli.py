import json
import subprocess
import sys
from pathlib import Path

from hce.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_card_lifecycle(tmp_path, capsys):
    path = str(tmp_path / "card.json")
    args = ["--test-keys"]
    assert (
        main(["card", "new", path, "--asn", "31000000000000012345", "--balance", "4800", *args])
        == 0
    )
    assert main(["card", "new", path, "--asn", "31000000000000012345", *args]) == 2  # exists
    assert (
        main(["card", "load", path, "--amount", "10000", "--at", "2026-11-23T08:17:00", *args]) == 0
    )
    assert main(["card", "balance", path]) == 0
    assert main(["gate", "tap", path, "--fare", "200", "--at", "2026-11-23T08:15:02", *args]) == 0
    out = capsys.readouterr().out
    assert "loaded 10000 fen, balance 14800 fen" in out
    assert "\n14800\n" in out
    record = json.loads(out[out.index("{") :])
    assert record["amount_fen"] == 200 and record["balance_after_fen"] == 14600
    assert main(["card", "show", path]) == 0
    shown = capsys.readouterr().out
    assert "14600 fen" in shown and "record 2" in shown


def test_gate_declines(tmp_path, capsys):
    path = str(tmp_path / "card.json")
    main(["card", "new", path, "--asn", "31000000000000012345", "--balance", "100", "--test-keys"])
    assert main(["gate", "tap", path, "--fare", "200", "--test-keys"]) == 1
    assert "declined: insufficient_balance" in capsys.readouterr().out
    deny = ["--deny", "31000000000000012345"]
    assert main(["gate", "tap", path, "--fare", "50", "--test-keys", *deny]) == 1
    assert "deny_listed" in capsys.readouterr().out


def test_user_errors(tmp_path, capsys):
    assert main(["card", "show", str(tmp_path / "missing.json")]) == 2
    assert main(["card", "new", str(tmp_path / "x.json"), "--asn", "12"]) == 2
    assert main(["apdu", "decode", "zz"]) == 2
    assert main(["apdu", "decode", "--command", "9000"]) == 2
    assert "error:" in capsys.readouterr().err


def test_apdu_decode(capsys):
    assert main(["apdu", "decode", "805401000F0000ABCD20261123081502B69B053C08"]) == 0
    out = capsys.readouterr().out
    assert "command DebitForPurchase (ISO case 4)" in out and "mac1: B69B053C" in out
    assert main(["apdu", "decode", "9329C905D09B6ABE9000"]) == 0
    out = capsys.readouterr().out
    assert "DebitForPurchaseResponse" in out and "tac: 9329C905" in out
    assert main(["apdu", "decode", "9401"]) == 0
    assert "insufficient balance" in capsys.readouterr().out


def test_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "hce", "apdu", "decode", "805C000204"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "GetBalance" in done.stdout
