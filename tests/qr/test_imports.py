import subprocess
import sys

CHECK = """
import sys
import qr, qr.format, qr.reasons, qr.signing, qr.verify, qr.phone, qr.render, qr.__main__
from qr.render import render_png
render_png(b"import check")
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"aiohttp", "asyncpg", "redis"})
print(",".join(banned))
"""


def test_qr_never_imports_the_service_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
