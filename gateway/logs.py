"""Structured logs: one JSON object per line on stderr, with the request id where there is one.

Never pass secrets, tokens, keys, passwords or full request bodies to a logger: only ids,
codes, routes and durations.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.http import HttpProcessingError

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
REASON_CHARS_MAX = 100


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ClientHttpErrors(logging.Filter):
    """Requests aiohttp cannot parse are the client's error: one short warning, no traceback.

    aiohttp's server answers 400 to a malformed request (a NUL byte or no colon in a header, a
    line over 8 KiB, a bad chunk size, ...) and logs it on `aiohttp.server` as "Error handling
    request from %s" at ERROR with the parser's traceback. Only records carrying an
    `HttpProcessingError` are rewritten, never raised above WARNING (aiohttp already logs TLS or
    garbage on the port at DEBUG); every other record, our bugs included, passes unchanged.
    The parser's message quotes the offending bytes (a header may hold a token), so only its
    first words are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        vars(record).update(
            remote=args[0] if len(args) == 1 else None,
            error=type(exc).__name__,
            reason=exc.message.split(":", 1)[0].strip()[:REASON_CHARS_MAX],
        )
        record.msg, record.args = "bad HTTP request", ()
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno = min(record.levelno, logging.WARNING)
        record.levelname = logging.getLevelName(record.levelno)
        return logging.getLogger(record.name).isEnabledFor(record.levelno)


CLIENT_HTTP_ERRORS = ClientHttpErrors()


def setup_logging(level: str, access_log: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("onecard.access").setLevel(logging.INFO if access_log else logging.WARNING)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The embedded PostgreSQL narrates every pg_ctl call at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # A filter is added once, however often this runs.
    logging.getLogger("aiohttp.server").addFilter(CLIENT_HTTP_ERRORS)
