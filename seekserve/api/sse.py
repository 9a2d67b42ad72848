"""Responses that stop their work when the client goes away: SSE streams and awaited bodies."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from seekserve.errors import APIError, internal_error

log = logging.getLogger(__name__)
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() \
        + b"\n\n"


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientDisconnected
    return task.result()


class SSEResponse(Response):
    """Streams `events` as SSE; a client disconnect cancels (and closes) the event iterator.

    An APIError raised after the headers went out becomes one in-band `data: {"error": ...}`
    event and the stream ends without [DONE].
    """

    def __init__(self, events: AsyncGenerator[bytes, None], headers: dict[str, str] | None = None
                 ) -> None:
        self._events = events
        super().__init__(status_code=200, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                                  **(headers or {})})
        # Response derives a Content-Length of 0 from the empty body; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        })
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
                try:
                    await pump
                except (asyncio.CancelledError, OSError):
                    pass
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            exc = pump.exception()
            if not isinstance(exc, OSError):
                raise exc  # type: ignore[misc]

    async def _pump(self, send: Send) -> None:
        async with aclosing(self._events) as events:
            try:
                async for chunk in events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except APIError as exc:
                await send({"type": "http.response.body", "body": sse_event(exc.body()),
                            "more_body": True})
            except Exception:
                log.exception("stream failed after it started")
                await send({"type": "http.response.body", "body": sse_event(
                    internal_error().body()), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
