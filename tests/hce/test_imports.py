import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hce_never_imports_server_libraries():
    code = (
        "import sys, hce, hce.apdu, hce.card_crypto, hce.software_card, hce.sam, hce.terminal, "
        "hce.virtual_card, hce.readers, hce.issuer, hce.relay, hce.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'asyncpg', 'redis',"
        " 'smartcard'})\n"
        "print(','.join(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert done.stdout.strip() == ""


def test_pcsc_reader_without_pyscard_says_so():
    import importlib.util

    import pytest

    from hce.readers import PcscReader, ReaderError

    if importlib.util.find_spec("smartcard") is not None:
        pytest.skip("pyscard is installed here")
    with pytest.raises(ReaderError, match="pyscard"):
        PcscReader()
