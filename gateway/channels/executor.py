"""The one HTTP executor every connector sends through: timeouts in ms, bounded retries,
metrics per channel and operation, nothing secret in the logs.

Connectors build `HttpCall`s and parse `HttpAnswer`s; they never open a socket. A call that
gets no answer (timeout, refused connection, a 5xx) is retried up to `retries_max` times with a
doubling pause; then `ChannelUnavailable` says the outcome is unknown. Every channel operation
this gateway uses is idempotent at the channel by our own number (out_trade_no, out_refund_no),
so a retry can never make a second payment or refund. A 4xx is an answer: it is returned for
the connector to read the channel's error code.

Logs name the channel, the operation, the status and the time; never a header, a body, a URL's
query or a key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from gateway.channels.types import ChannelUnavailable
from gateway.metrics import Registry

log = logging.getLogger(__name__)

TIMEOUT_MS_DEFAULT = 5_000
RETRIES_MAX_DEFAULT = 2
RETRY_PAUSE_MS = 100
ANSWER_BYTES_MAX = 8 * 1024 * 1024  # a day's statement fits; anything larger is not an answer


@dataclass(frozen=True)
class HttpCall:
    operation: str  # for metrics and logs: "create", "query", "close", "refund", ...
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


class Executor:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Registry,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        retries_max: int = RETRIES_MAX_DEFAULT,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._retries_max = retries_max
        labels = ("channel", "operation", "outcome")
        self._calls = metrics.counter(
            "onecard_channel_calls_total", "Calls to payment channels by outcome", labels
        )
        self._seconds = metrics.histogram(
            "onecard_channel_call_seconds", "Payment channel call latency", ("channel", "operation")
        )

    async def send(self, channel: str, call: HttpCall) -> HttpAnswer:
        """The channel's answer (2xx, 3xx or 4xx); `ChannelUnavailable` when none came."""
        for attempt in range(self._retries_max + 1):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE_MS * 2 ** (attempt - 1) / 1000)
            answer = await self._once(channel, call)
            if answer is not None and answer.status < 500:
                return answer
        raise ChannelUnavailable(f"{channel} {call.operation}: no answer")

    async def _once(self, channel: str, call: HttpCall) -> HttpAnswer | None:
        started = time.perf_counter()
        outcome = "error"
        try:
            async with self._session.request(
                call.method, call.url, headers=dict(call.headers), data=call.body or None,
                timeout=self._timeout, allow_redirects=False,
            ) as response:  # fmt: skip
                # The whole answer, chunk by chunk (one read returns only what is buffered),
                # refused as soon as it outgrows any answer a channel gives.
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > ANSWER_BYTES_MAX:
                        outcome = "too_large"
                        return None
                    chunks.append(chunk)
                body = b"".join(chunks)
                outcome = str(response.status)
                return HttpAnswer(response.status, CIMultiDict(response.headers), body)
        except TimeoutError:
            outcome = "timeout"
            return None
        except aiohttp.ClientError as exc:
            outcome = type(exc).__name__
            return None
        finally:
            elapsed_s = time.perf_counter() - started
            self._calls.inc((channel, call.operation, outcome))
            self._seconds.observe((channel, call.operation), elapsed_s)
            log.info(
                "channel call",
                extra={"channel": channel, "operation": call.operation, "outcome": outcome,
                       "duration_ms": round(elapsed_s * 1000, 1)},
            )  # fmt: skip
