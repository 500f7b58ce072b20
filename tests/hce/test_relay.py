"""hce.relay without a gateway: reading the card, the answers' parsers, retries against sockets
that never answer, what the token never shows up in, and what hce.relay imports.

The load itself (sessions, steps, done, the gateway's refusals) is tested end to end against the
real gateway in tests/gateway/ota/."""

import argparse
import inspect
import json
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hce import apdu as A
from hce import relay
from hce.relay import (
    CardError,
    Exchange,
    GatewayProtocolError,
    GatewayUnreachable,
    LoadFailed,
    LoadResult,
    NextApdu,
    RelayClient,
    error_from_answer,
    parse_answer,
    read_card,
)
from hce.software_card import CardTorn
from hce.terminal import T_UNION_AID, Gate

from .cards import vector_card
from .vectors import ASN, CITY_AID, SELECT_CITY

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "eyJhbGciOiJFZERTQSJ9.rider-secret.sig"
ASN_TEXT = ASN.hex()


class Recorder:
    """A log callback that keeps every exchange."""

    def __init__(self):
        self.exchanges = []

    def __call__(self, exchange):
        self.exchanges.append(exchange)

    @property
    def commands(self):
        return [e.command for e in self.exchanges]


class TearingReader:
    """A reader around a card that loses the card at its n-th transmit, as a PC/SC reader does
    when the card is pulled away."""

    def __init__(self, card, at):
        self.card = card
        self.at = at
        self.sent = []

    def transmit(self, capdu):
        self.sent.append(capdu)
        if len(self.sent) == self.at:
            raise CardTorn(committed=False)
        return self.card.transmit(capdu)


@contextmanager
def refused_port():
    """A port nothing listens on (held, so no one else gets it): connections are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@contextmanager
def silent_port():
    """A port that takes connections and never answers: every request times out."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"


# --- reading the card ------------------------------------------------------------------------


def test_read_card_selects_reads_0015_and_the_balance():
    card = vector_card(balance_fen=4800)
    log = Recorder()
    reading = read_card(card, log=log)
    assert log.commands == [SELECT_CITY, bytes.fromhex("00B095001E"), bytes.fromhex("805C000204")]
    assert all(e.step is None and e.sw == A.StatusWord.SUCCESS for e in log.exchanges)
    fci = A.SelectResponse.from_bytes(reading.select_data)
    assert fci.aid == CITY_AID and fci.issuer_info == card.issuer_info
    assert reading.file_0015 == card.issuer_info.to_bytes()
    assert reading.balance_fen == 4800
    assert reading.asn == ASN_TEXT and len(reading.asn) == 20
    assert reading.session_fields() == {
        "select_hex": reading.select_data.hex().upper(),
        "file_0015_hex": card.issuer_info.to_bytes().hex().upper(),
        "balance_fen": 4800,
    }


def test_read_card_tries_the_aids_in_the_gates_order():
    assert relay.EPURSE_AIDS == inspect.signature(Gate).parameters["aids"].default
    card = vector_card(aid=T_UNION_AID)
    log = Recorder()
    reading = read_card(card, log=log)
    assert [e.sw for e in log.exchanges[:2]] == [A.StatusWord.FILE_NOT_FOUND, A.StatusWord.SUCCESS]
    assert log.commands[1] == A.Select(T_UNION_AID).to_bytes()
    assert A.SelectResponse.from_bytes(reading.select_data).aid == T_UNION_AID


def test_a_card_without_an_e_purse_is_a_card_error():
    card = vector_card(aid=bytes.fromhex("A0000000041010"))
    with pytest.raises(CardError) as refused:
        read_card(card)
    assert refused.value.sw == A.StatusWord.FILE_NOT_FOUND
    assert "6A82" in str(refused.value)


def test_a_card_that_leaves_the_field_while_read_raises_card_torn():
    reader = TearingReader(vector_card(), at=2)
    log = Recorder()
    with pytest.raises(CardTorn):
        read_card(reader, log=log)
    assert [e.answer is None for e in log.exchanges] == [False, True]
    assert log.exchanges[1].meaning == "no answer" and log.exchanges[1].sw is None


def test_exchange_shows_data_sw_and_meaning():
    exchange = Exchange(2, bytes.fromhex("805C000204"), bytes.fromhex("000012C09000"))
    assert exchange.command_hex == "805C000204" and exchange.answer_hex == "000012C09000"
    assert exchange.data == bytes.fromhex("000012C0") and exchange.sw == 0x9000
    assert exchange.meaning == "success"
    assert Exchange(1, b"\x80", bytes.fromhex("9401")).meaning == "insufficient balance"
    assert Exchange(1, b"\x80", b"\x90").meaning == "no status word"


# --- the gateway's answers -------------------------------------------------------------------


def test_parse_answer_next_step_and_done():
    step = parse_answer(
        {"id": "ota_1", "step": 1, "next_apdu": "805000020B0100002710112233445566" + "10",
         "state": "initializing"}
    )  # fmt: skip
    assert step == NextApdu(
        "ota_1", 1, bytes.fromhex("805000020B010000271011223344556610"), "initializing"
    )
    done = parse_answer(
        {"id": "ota_1", "state": "completed",
         "done": {"balance_fen": 14800, "loaded_fen": 10000, "orders": [7, 8], "held": [9]}}
    )  # fmt: skip
    assert done == LoadResult("ota_1", "completed", 14800, 10000, (7, 8), (9,))
    held = parse_answer(
        {"id": "ota_2", "state": "held",
         "done": {"balance_fen": None, "loaded_fen": 0, "orders": [], "held": [9]}}
    )  # fmt: skip
    assert held == LoadResult("ota_2", "held", None, 0, (), (9,))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"id": "", "step": 1, "next_apdu": "00"},
        {"id": 12, "step": 1, "next_apdu": "805C000204"},
        {"id": "a b", "step": 1, "next_apdu": "805C000204"},
        {"id": "s", "step": 0, "next_apdu": "805C000204"},
        {"id": "s", "step": True, "next_apdu": "805C000204"},
        {"id": "s", "step": 1},
        {"id": "s", "step": 1, "next_apdu": "zz"},
        {"id": "s", "step": 1, "next_apdu": ""},
        {"id": "s", "step": 1, "next_apdu": "805C000204", "state": 3},
        {"id": "s", "done": []},
        {"id": "s", "done": {"balance_fen": 1, "loaded_fen": 0, "orders": [], "held": None}},
        {"id": "s", "done": {"balance_fen": -1, "loaded_fen": 0, "orders": [], "held": []}},
        {"id": "s", "done": {"balance_fen": 1, "loaded_fen": 0, "orders": ["7"], "held": []}},
    ],
)
def test_parse_answer_refuses_what_is_not_in_the_contract(body):
    with pytest.raises(GatewayProtocolError):
        parse_answer(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
answer_keys = st.sampled_from(["id", "step", "next_apdu", "state", "done"])


@given(st.dictionaries(answer_keys, json_values))
def test_parse_answer_never_fails_otherwise(body):
    try:
        parse_answer(body)
    except GatewayProtocolError:
        pass


def test_error_from_answer_carries_the_apis_code():
    body = json.dumps(
        {"error": {"code": "ota_load_failed", "message": "The card refused the load.",
                   "details": {"reason": "balance_ceiling"}, "request_id": "r1"}}
    ).encode()  # fmt: skip
    error = error_from_answer(422, body)
    assert isinstance(error, LoadFailed)
    assert (error.code, error.message, error.details, error.status) == (
        "ota_load_failed",
        "The card refused the load.",
        {"reason": "balance_ceiling"},
        422,
    )
    assert str(error) == "ota_load_failed: The card refused the load."


@pytest.mark.parametrize(
    "body", [b"<html>Not Found</html>", b"[]", b'{"error": "nope"}', b'{"error": {"code": 3}}']
)
def test_error_from_answer_without_the_error_object_is_a_protocol_error(body):
    error = error_from_answer(404, body)
    assert isinstance(error, GatewayProtocolError) and error.status == 404


@given(st.binary(max_size=200))
def test_error_from_answer_takes_any_bytes(body):
    assert isinstance(error_from_answer(409, body), LoadFailed | GatewayProtocolError)


# --- the client without a gateway ------------------------------------------------------------


def test_the_token_is_not_in_the_repr_nor_in_a_bad_token_error():
    client = RelayClient("http://127.0.0.1:9", TOKEN, vector_card())
    assert TOKEN not in repr(client) and "127.0.0.1:9" in repr(client)
    for bad in ("", "two words", "line\nbreak", "ünïcode"):
        with pytest.raises(ValueError) as refused:
            RelayClient("http://127.0.0.1:9", bad, vector_card())
        assert str(refused.value) == "the token is empty or has characters a header cannot carry"


@pytest.mark.parametrize(
    "api", ["ftp://host", "127.0.0.1:8080", "http://", "http://u:pw@host", "http://h/?q=1"]
)
def test_the_api_base_is_an_http_url(api):
    with pytest.raises(ValueError) as refused:
        RelayClient(api, TOKEN, vector_card())
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize("options", [{"retries": -1}, {"retries": 11}, {"timeout_s": 0}])
def test_limits_are_checked(options):
    with pytest.raises(ValueError):
        RelayClient("http://127.0.0.1:9", TOKEN, vector_card(), **options)


@pytest.mark.parametrize(
    ("order_id", "card"),
    [(7, ASN_TEXT), (0, None), (True, None), ("7", None), (None, "3100"), (None, "3" * 19 + "x")],
)
def test_load_arguments_are_checked_before_the_card_is_touched(order_id, card):
    log = Recorder()
    client = RelayClient("http://127.0.0.1:9", TOKEN, vector_card(), log=log)
    with pytest.raises(ValueError):
        client.load(order_id, card=card)
    assert log.exchanges == []


def test_a_load_for_another_card_stops_after_reading_it():
    log = Recorder()
    with refused_port() as api:
        client = RelayClient(api, TOKEN, vector_card(), log=log, sleep=lambda s: None)
        with pytest.raises(CardError, match="31000000000000012345, not 31000000000000099999"):
            client.load(card="31000000000000099999")
    assert len(log.exchanges) == 3 and client.session_id is None


def test_an_unreachable_gateway_is_retried_then_reported():
    card = vector_card()
    log = Recorder()
    waits = []
    with refused_port() as api:
        client = RelayClient(api, TOKEN, card, retries=3, log=log, sleep=waits.append)
        with pytest.raises(GatewayUnreachable) as unreachable:
            client.load(7)
    assert unreachable.value.attempts == 4 and unreachable.value.status is None
    assert "ConnectionRefusedError" in str(unreachable.value)
    assert waits == [0.25, 0.5, 1.0]
    assert TOKEN not in str(unreachable.value) and TOKEN not in repr(unreachable.value)
    # The card saw the phone's own reading once, and nothing of a load.
    assert log.commands == [SELECT_CITY, bytes.fromhex("00B095001E"), bytes.fromhex("805C000204")]
    assert client.session_id is None and card.online_counter == 0


def test_a_gateway_that_never_answers_times_out():
    with silent_port() as api:
        client = RelayClient(
            api, TOKEN, vector_card(), timeout_s=0.2, retries=1, sleep=lambda s: None
        )
        with pytest.raises(GatewayUnreachable) as unreachable:
            client.load(card=ASN_TEXT)
    assert unreachable.value.attempts == 2
    assert "timed out" in str(unreachable.value) or "Timeout" in str(unreachable.value)


def test_a_card_torn_before_the_session_propagates():
    reader = TearingReader(vector_card(), at=3)
    with refused_port() as api:
        client = RelayClient(api, TOKEN, reader)
        with pytest.raises(CardTorn):
            client.load(7)
    assert client.session_id is None and len(reader.sent) == 3


# --- imports ---------------------------------------------------------------------------------


def test_relay_imports_only_the_standard_library_and_hce():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import hce.relay\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'hce'})))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert done.stdout.strip() == ""


# --- `onecard phone load` without a gateway (exit statuses 1 and 2) --------------------------
# The command lives in gateway/ota/phone.py; what needs no server is tested here, the loads
# themselves with the gateway's tests.


def phone_load(*argv):
    from gateway.config import Config
    from gateway.ota import phone

    parser = argparse.ArgumentParser(prog="onecard")
    phone.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["phone", "load", *argv])
    return args.command(args, Config())


@pytest.fixture
def card_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_text(vector_card().to_json())
    path.chmod(0o600)
    return path


def test_phone_load_without_a_token_is_a_usage_error(card_file, monkeypatch, capsys):
    monkeypatch.delenv("ONECARD_TOKEN", raising=False)
    assert phone_load("--card", str(card_file), "--all") == 2
    assert "set ONECARD_TOKEN" in capsys.readouterr().err


def test_phone_load_without_a_card_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONECARD_TOKEN", TOKEN)
    assert phone_load("--card", str(tmp_path / "missing.json"), "--order", "7") == 2
    assert phone_load("--reader", "nfc", "--order", "7") == 2
    assert phone_load("--card", str(tmp_path / "missing.json"), "--all", "--api", "ftp://x") == 2
    err = capsys.readouterr().err
    assert "cannot read card" in err and "--reader is pcsc" in err
    with pytest.raises(SystemExit) as usage:
        phone_load("--card", str(tmp_path / "missing.json"))  # neither --order nor --all
    assert usage.value.code == 2


def test_phone_load_with_the_gateway_down_prints_the_apdus_and_keeps_the_card(
    card_file, monkeypatch, capsys
):
    before = card_file.read_text()
    monkeypatch.setenv("RIDER_TOKEN", TOKEN)
    with refused_port() as api:
        status = phone_load(
            "--card", str(card_file), "--order", "7", "--api", api,
            "--token-env", "RIDER_TOKEN", "--retries", "0",
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 1
    info = vector_card().issuer_info
    fci = A.SelectResponse(CITY_AID, 1, info).to_bytes()
    assert out.splitlines() == [
        "> 00A4040009A0000000038698070100",
        f"< {fci.hex().upper()} 9000 (success)",
        "> 00B095001E",
        f"< {info.to_bytes().hex().upper()} 9000 (success)",
        "> 805C000204",
        "< 00001388 9000 (success)",
    ]
    assert "gateway unreachable after 1 attempt(s)" in err and err.count("\n") == 1
    assert TOKEN not in out + err
    # The state file was written back in place: same card, same mode, no temporary file left.
    assert json.loads(card_file.read_text()) == json.loads(before)
    assert card_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in card_file.parent.iterdir()] == ["card.json"]


def test_the_default_api_is_where_the_config_listens():
    from gateway.config import Config
    from gateway.ota.phone import default_api

    assert default_api(Config(host="127.0.0.1", port=8080)) == "http://127.0.0.1:8080"
    assert default_api(Config(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert default_api(Config(host="::", port=9000)) == "http://[::1]:9000"
    assert default_api(Config(host="gw.internal", port=80)) == "http://gw.internal:80"
