"""The uvicorn server, with a shutdown that drains the engines before connections are closed."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import uvicorn

from seekserve.http_protocol import RequestBounds
from seekserve.settings import ServerSettings


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: new requests get a 503 while running ones finish, then uvicorn's own
    shutdown closes the connections (which by then carry no unfinished answer)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._drain()
        await super().shutdown(sockets)


def request_bounds(settings: ServerSettings) -> RequestBounds:
    return RequestBounds(header_timeout_s=settings.header_timeout_s,
                         body_timeout_s=settings.body_timeout_s,
                         max_header_bytes=settings.max_header_bytes)
