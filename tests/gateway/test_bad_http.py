"""Requests aiohttp cannot parse: a 400 to the client, one short warning in the log, no ERROR.

The requests go over a raw socket to the gateway on a real port, since no HTTP client sends
them; the logging is the one `onecard serve` sets up (`gateway.logs.setup_logging`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import CLIENT_HTTP_ERRORS, JsonFormatter, setup_logging

ANSWER_TIMEOUT_S = 5

MALFORMED = {
    "NUL byte in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad HTTP version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "space before the colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "over-long header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: "
    + b"a" * 10_000
    + b"\r\n\r\n",
    "over-long request line": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "control character in the path": b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad Content-Length": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "bad chunk size": b"POST /v1/riders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "TLS on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
}


@pytest.fixture
def gateway_logging() -> Iterator[None]:
    """The logging `onecard serve` sets up, with pytest's capture kept; undone afterwards."""
    root = logging.getLogger()
    touched = [logging.getLogger(name) for name in ("onecard.access", "aiohttp.access", "pgserver")]
    handlers, level, levels = list(root.handlers), root.level, [one.level for one in touched]
    setup_logging("INFO", access_log=False)
    ours = list(root.handlers)
    root.handlers[:] = [*handlers, *ours]
    yield
    for handler in ours:
        root.removeHandler(handler)
    root.setLevel(level)
    for one, one_level in zip(touched, levels, strict=True):
        one.setLevel(one_level)
    logging.getLogger("aiohttp.server").removeFilter(CLIENT_HTTP_ERRORS)


async def send_raw(port: int, raw: bytes) -> bytes:
    """The whole answer to `raw` (the server closes the connection after a bad request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT_S)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def assert_no_error_and_no_traceback(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert record.levelno < logging.ERROR, record.getMessage()
        assert record.exc_info is None and record.exc_text is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        line = JsonFormatter().format(record)
        assert "\n" not in line and "exception" not in json.loads(line)


async def test_a_nul_byte_in_a_header_is_a_client_error(
    make_client: Any, gateway_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    answer = await send_raw(client.port, MALFORMED["NUL byte in a header"])
    assert status_of(answer) == 400, answer

    assert_no_error_and_no_traceback(caplog.records)
    [warning] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert warning.levelno == logging.WARNING and warning.getMessage() == "bad HTTP request"
    line = json.loads(JsonFormatter().format(warning))
    assert line["level"] == "WARNING" and line["remote"] == "127.0.0.1"
    assert line["error"] == "BadHttpMessage" and line["reason"] == "Invalid header value char"
    # The offending bytes (a header could hold a token) stay out of the log.
    assert "a\\x00b" not in json.dumps(line) and "a\x00b" not in json.dumps(line)

    healthy = await client.get("/healthz")
    assert healthy.status == 200


async def test_no_malformed_request_logs_an_error(
    make_client: Any, gateway_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    client = await make_client()
    for name, raw in MALFORMED.items():
        caplog.clear()
        answer = await send_raw(client.port, raw)
        assert 400 <= status_of(answer) < 500, (name, answer[:200])
        assert_no_error_and_no_traceback(caplog.records)
        server = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert len(server) <= 1, (name, [r.getMessage() for r in server])


def test_our_own_errors_on_that_logger_stay_errors(
    gateway_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        raise RuntimeError("a bug of ours")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "Error handling request from x"
