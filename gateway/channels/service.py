"""The channels area: one HTTP session and executor, and a connector per channel whose
credentials were imported (`onecard channels import`). Connectors know channels, never orders;
the top-ups area asks this service for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway import errors
from gateway.channels import credentials
from gateway.channels.alipay import AlipayConnector, AlipayCredentials
from gateway.channels.executor import Executor
from gateway.channels.types import Channel, Connector
from gateway.channels.unionpay import UnionPayConnector, UnionPayCredentials
from gateway.channels.wechatpay import WeChatPayConnector, WeChatPayCredentials
from gateway.context import CONFIG, KEYSTORE, METRICS, POOL

CONNECTIONS_PER_HOST_MAX = 50


def _alipay(executor: Executor, found: dict[str, Any]) -> Connector:
    return AlipayConnector(executor, AlipayCredentials.from_mapping(found))


def _wechatpay(executor: Executor, found: dict[str, Any]) -> Connector:
    return WeChatPayConnector(executor, WeChatPayCredentials.from_mapping(found))


def _unionpay(executor: Executor, found: dict[str, Any]) -> Connector:
    return UnionPayConnector(executor, UnionPayCredentials.from_mapping(found))


BUILDERS: dict[Channel, Callable[[Executor, dict[str, Any]], Connector]] = {
    Channel.ALIPAY: _alipay,
    Channel.WECHATPAY: _wechatpay,
    Channel.UNIONPAY: _unionpay,
}


class Channels:
    def __init__(self, connectors: dict[Channel, Connector]) -> None:
        self._connectors = connectors

    def connector(self, channel: Channel) -> Connector:
        """The channel's connector; 503 `channel_not_configured` when it has no credentials."""
        found = self._connectors.get(channel)
        if found is None:
            raise errors.CHANNEL_NOT_CONFIGURED.error(channel=channel.value)
        return found

    @property
    def configured(self) -> list[Channel]:
        return sorted(self._connectors)


CHANNELS = web.AppKey("channels", Channels)


async def setup(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_HOST_MAX)
    async with aiohttp.ClientSession(connector=connector) as session:
        executor = Executor(
            session, app[METRICS], config.channel_timeout_ms, config.channel_retries_max
        )
        connectors = {}
        for channel, build in BUILDERS.items():
            found = await credentials.load(app[POOL], app[KEYSTORE], channel)
            if found is not None:
                connectors[channel] = build(executor, found)
        app[CHANNELS] = Channels(connectors)
        yield
