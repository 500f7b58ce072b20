"""Where webhooks may go: https URLs whose host resolves only to public addresses.

A partner names a URL; the gateway then makes requests to it from inside the operator's
network. So a URL is refused when its host resolves to loopback, private (RFC 1918, ULA),
link-local, multicast, unspecified, shared (100.64/10) or otherwise non-public addresses, or
to a cloud metadata address, unless the operator allow-lists the address
(`ONECARD_WEBHOOK_ALLOWED_HOSTS`, IPs or CIDRs). A metadata address is allowed only when the
allow-list names that very address, never through a wider network around it.

The host is resolved when the endpoint is registered and again at every delivery, and the
delivery client connects only to addresses checked in that same resolution
(`GuardedResolver`): a name that resolved to a public address at registration and to
127.0.0.1 later (DNS rebinding) is refused then. A name with several addresses is refused
when any of them is. This module never sends anything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

URL_CHARS_MAX = 2048
HOST_CHARS_MAX = 253
RESOLVE_TIMEOUT_S = 5.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
SHARED = ipaddress.ip_network("100.64.0.0/10")


class UrlRefused(Exception):
    """The URL may not receive webhooks; `reason` is a stable word for the client."""

    def __init__(self, reason: str, address: str | None = None) -> None:
        super().__init__(reason if address is None else f"{reason} ({address})")
        self.reason = reason
        self.address = address


class AddressRefused(OSError):
    """Raised by `GuardedResolver`: what aiohttp reports as a connection error."""

    def __init__(self, refused: UrlRefused) -> None:
        super().__init__(str(refused))
        self.refused = refused


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int


def parse(url: str) -> Target:
    """The URL's host and port when its shape is allowed: https, a host, no user or password,
    no fragment, not too long. Resolution is separate (`check`)."""
    if len(url) > URL_CHARS_MAX or not url.isascii() or any(c.isspace() for c in url):
        raise UrlRefused("malformed")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise UrlRefused("malformed") from None
    if parts.scheme != "https":
        raise UrlRefused("not_https")
    host = (parts.hostname or "").rstrip(".")
    if not host or len(host) > HOST_CHARS_MAX:
        raise UrlRefused("malformed")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise UrlRefused("malformed")
    return Target(url, host, port)


def refusal(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why `address` may not receive webhooks, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA:
        exact = ipaddress.ip_network(address)
        return None if exact in allowed else "metadata"
    if any(address in network for network in allowed):
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED:
        return "shared"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not_public"
    return None


def allowed_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """The allow-list as networks (config validated the items at start)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _checked(host: str, addresses: Sequence[str], allowed: Sequence[Network]) -> None:
    if not addresses:
        raise UrlRefused("unresolvable")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = refusal(address, allowed)
        if reason is not None:
            raise UrlRefused(reason, str(address))


async def check(url: str, allowed: Sequence[Network]) -> Target:
    """The URL's target when its shape is allowed and every address its host resolves to
    now is; `UrlRefused` otherwise."""
    target = parse(url)
    try:
        literal: Address | None = ipaddress.ip_address(target.host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        _checked(target.host, [str(literal)], allowed)
        return target
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, UnicodeError):
        raise UrlRefused("unresolvable") from None
    _checked(target.host, [str(info[4][0]) for info in infos], allowed)
    return target


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing (as a connection error) a name with any address the
    rules refuse, so that the client connects only to addresses checked at connect time."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self._inner = ThreadedResolver()
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        try:
            _checked(host, [result["host"] for result in found], self._allowed)
        except UrlRefused as refused:
            raise AddressRefused(refused) from None
        return found

    async def close(self) -> None:
        await self._inner.close()
