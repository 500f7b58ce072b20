"""Payment channels' notifications: authenticated by the channel's own signature over the raw
body (its connector checks it), then handed to the route as the parsed `Notification`."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.auth.principal import Principal, PrincipalKind
from gateway.channels.service import Channels
from gateway.channels.types import BadNotification, Channel, Notification

NOTIFY_PREFIX = "/v1/channels/"
NOTIFICATION = web.RequestKey("notification", Notification)


class ChannelNotifications:
    """The authenticator of `POST /v1/channels/{channel}/notify`."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    def recognises(self, request: web.Request) -> bool:
        resource = request.match_info.route.resource
        return resource is not None and resource.canonical.startswith(NOTIFY_PREFIX)

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        try:
            channel = Channel(request.match_info["channel"])
        except ValueError:
            raise errors.NOT_FOUND.error() from None
        connector = self._channels.connector(channel)
        headers = {name: value for name, value in request.headers.items()}
        try:
            request[NOTIFICATION] = connector.parse_notification(
                headers, body, request.content_type
            )
        except BadNotification:
            raise errors.BAD_SIGNATURE.error() from None
        return Principal(PrincipalKind.CHANNEL, channel.value)
