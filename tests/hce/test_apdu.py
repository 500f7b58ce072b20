import pytest
from hypothesis import given
from hypothesis import strategies as st

from hce import apdu as A

from .vectors import CITY_AID, SELECT_CITY, h

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def b(n):
    return st.binary(min_size=n, max_size=n)


@given(u8, u8, u8, u8, st.binary(max_size=255), st.none() | st.integers(1, 256))
def test_command_apdu_round_trip(cla, ins, p1, p2, data, le):
    apdu = A.CommandApdu(cla, ins, p1, p2, data, le)
    raw = apdu.to_bytes()
    assert A.CommandApdu.from_bytes(raw) == apdu
    assert (
        apdu.case
        == {(False, False): 1, (False, True): 2, (True, False): 3, (True, True): 4}[
            (bool(data), le is not None)
        ]
    )


@given(st.binary(max_size=300))
def test_command_parser_accepts_or_raises_apdu_error(raw):
    try:
        apdu = A.CommandApdu.from_bytes(raw)
    except A.ApduError:
        return
    assert apdu.to_bytes() == raw


@given(st.binary(max_size=300), u16)
def test_response_round_trip(data, sw):
    response = A.ResponseApdu(data, sw)
    assert A.ResponseApdu.from_bytes(response.to_bytes()) == response


def test_iso_cases():
    assert A.CommandApdu.from_bytes(h("00A40000")).case == 1
    assert A.CommandApdu.from_bytes(h("805C000204")) == A.CommandApdu(0x80, 0x5C, 0, 2, le=4)
    assert A.CommandApdu.from_bytes(h("00B0950000")).le == 256
    case3 = A.CommandApdu.from_bytes(h("805000020B0100001C37000001000050"))
    assert case3.case == 3 and case3.le is None
    assert A.CommandApdu.from_bytes(SELECT_CITY).data == CITY_AID


@pytest.mark.parametrize(
    "raw", ["", "00", "00A404", "00A4040005A000", "00A404000000", "00A4040002AABBCCDD"]
)
def test_malformed_commands(raw):
    with pytest.raises(A.ApduError):
        A.CommandApdu.from_bytes(h(raw))


def test_malformed_response():
    with pytest.raises(A.ApduError):
        A.ResponseApdu.from_bytes(b"\x90")


COMMANDS = st.one_of(
    st.builds(A.Select, b(9)),
    st.builds(A.ReadBinary, st.integers(1, 30), u8, st.integers(1, 256)),
    st.builds(A.ReadRecord, u8, st.integers(1, 30), st.integers(1, 256)),
    st.builds(A.GetBalance),
    st.builds(A.InitializeForLoad, u8, u32, b(6)),
    st.builds(A.InitializeForPurchase, u8, u32, b(6), st.booleans()),
    st.builds(A.CreditForLoad, b(4), b(3), b(4)),
    st.builds(A.DebitForPurchase, b(4), b(4), b(3), b(4)),
    st.builds(A.GetTransactionProve, u8, u16),
)


@given(COMMANDS)
def test_e_purse_commands_round_trip(command):
    raw = command.to_bytes()
    assert A.parse_command(A.CommandApdu.from_bytes(raw)) == command


INFO = st.builds(A.IssuerInfo, b(8), u8, u8, b(10), b(4), b(4), u8, u8)
RESPONSES = st.one_of(
    st.builds(A.GetBalanceResponse, u32),
    st.builds(A.InitializeForLoadResponse, u32, u16, u8, u8, b(4), b(4)),
    st.builds(A.InitializeForPurchaseResponse, u32, u16, st.integers(0, 0xFFFFFF), u8, u8, b(4)),
    st.builds(A.CreditForLoadResponse, b(4)),
    st.builds(A.DebitForPurchaseResponse, b(4), b(4)),
    st.builds(A.GetTransactionProveResponse, b(4), b(4)),
    st.builds(A.TransactionRecord, u16, st.integers(0, 0xFFFFFF), u32, u8, b(6), b(4), b(3)),
    INFO,
    st.builds(
        A.SelectResponse,
        st.binary(min_size=5, max_size=16),
        u8,
        INFO,
        st.none() | st.builds(A.VirtualCardKeyInfo, u16, b(4)),
    ),
)


@given(RESPONSES)
def test_e_purse_responses_round_trip(response):
    assert type(response).from_bytes(response.to_bytes()) == response


@given(st.binary(max_size=80))
def test_fci_parser_never_crashes(raw):
    try:
        A.SelectResponse.from_bytes(raw)
    except A.ApduError:
        pass


def test_vector_commands_build_byte_for_byte():
    init = A.InitializeForLoad(1, 0x1C37, h("000001000050"))
    assert init.to_bytes() == h("805000020B0100001C3700000100005010")
    credit = A.CreditForLoad(h("20140825"), h("103100"), h("0641DCD8"))
    assert credit.to_bytes() == h("805200000B201408251031000641DCD804")
    assert A.GetBalance().to_bytes() == h("805C000204")
    assert A.ReadBinary().to_bytes() == h("00B095001E")
    assert A.ReadRecord(1).to_bytes() == h("00B201C417")
    assert A.Select(CITY_AID).to_bytes() == SELECT_CITY
    purchase = A.InitializeForPurchase(1, 200, h("112233445566"))
    assert purchase.to_bytes() == h("805001020B01000000C81122334455660F")
    compound = A.InitializeForPurchase(1, 200, h("112233445566"), compound=True)
    assert compound.to_bytes()[2] == 0x03 and compound.tx_type == 0x09
    assert A.GetTransactionProve(2, 3).to_bytes() == h("805A000202000308")


def test_wrong_layouts_are_refused():
    with pytest.raises(A.ApduError):
        A.InitializeForLoad.from_apdu(
            A.CommandApdu.from_bytes(h("805000020A01000000C8112233445566"))
        )
    with pytest.raises(A.ApduError):
        A.GetBalance.from_apdu(A.CommandApdu.from_bytes(h("805C000104")))
    with pytest.raises(A.ApduError):
        A.parse_command(A.CommandApdu.from_bytes(h("80CA000000")))
    with pytest.raises(A.ApduError):
        A.GetBalanceResponse.from_bytes(b"\x00\x01\x02")


def test_status_words_have_meanings():
    for sw in A.StatusWord:
        assert sw.meaning
    assert A.StatusWord.describe(0x9302) == "MAC (or TAC) invalid"
    assert A.StatusWord.describe(0x1234) == "unknown status"
    assert A.ResponseApdu.from_bytes(h("9401")).meaning == "insufficient balance"
