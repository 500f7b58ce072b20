"""Sending one webhook attempt: the HTTPS client, the checks before each send, the signature.

The client verifies certificates always (the system's CAs, plus `ONECARD_WEBHOOK_CA_FILE`
when set), follows no redirects, reads no proxy settings from the environment, keeps no DNS
cache and resolves through `addresses.GuardedResolver`. Before each send the URL is checked
again (`addresses.check`: a literal address never reaches the resolver). Every failure
becomes an `Attempt` with a short reason; nothing here raises for the world's answers, and
nothing here touches the database.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence

import aiohttp

from gateway.webhooks import addresses, signing
from gateway.webhooks.addresses import AddressRefused, Network, UrlRefused
from gateway.webhooks.outbox import Attempt

CONNECTIONS_MAX = 32
RESPONSE_BYTES_MAX = 4_096  # what is read of an answer (then dropped): the status is what counts
USER_AGENT = "OneCard-Webhooks/1"
EVENT_ID_HEADER = "OC-Webhook-Id"


def ssl_context(ca_file: str) -> ssl.SSLContext:
    """The system's trust store, and the operator's extra CAs. Verification is never off."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def client_session(
    allowed: Sequence[Network], ca_file: str, timeout_ms: int
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=addresses.GuardedResolver(allowed), ssl=ssl_context(ca_file),
        use_dns_cache=False, limit=CONNECTIONS_MAX,
    )  # fmt: skip
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000),
        headers={"User-Agent": USER_AGENT},
    )  # fmt: skip


async def send(
    session: aiohttp.ClientSession,
    allowed: Sequence[Network],
    url: str,
    secret: str,
    event_id: str,
    body: bytes,
    now: int,
) -> Attempt:
    """POST `body` to `url`, signed for time `now`; what came of it."""
    started = time.perf_counter()

    def attempt(status: int | None, error: str | None) -> Attempt:
        return Attempt(int((time.perf_counter() - started) * 1000), status, error)

    try:
        await addresses.check(url, allowed)
    except UrlRefused as refused:
        return attempt(None, f"refused:{refused.reason}")
    headers = {
        "Content-Type": "application/json",
        signing.HEADER: signing.header(secret, now, body),
        EVENT_ID_HEADER: event_id,
    }
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
            await answer.content.read(RESPONSE_BYTES_MAX)
            status = answer.status
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressRefused):
            return attempt(None, f"refused:{exc.os_error.refused.reason}")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return attempt(None, "tls")
        return attempt(None, "connect")
    except TimeoutError:
        return attempt(None, "timeout")
    except (aiohttp.ClientError, OSError) as exc:
        return attempt(None, f"http:{type(exc).__name__}")
    if 200 <= status < 300:
        return attempt(status, None)
    return attempt(status, f"status:{status}")
