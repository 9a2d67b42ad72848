"""Responses that stop their work when the client goes away: SSE streams and awaited bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from seekserve.protocol.errors import APIError, internal_error
from seekserve.protocol.exchange import KEEPALIVE_COMMENT, WireProtocol, openai_error, sse_event

log = logging.getLogger(__name__)

ErrorEvent = Callable[[APIError], bytes]
ErrorBody = Callable[[APIError], tuple[int, dict[str, Any]]]


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse(Response):
    """Streams `events` as SSE; a client disconnect cancels (and closes) the event iterator.

    When nothing was sent for `keepalive_s` (a request waiting in the queue), `keepalive` goes
    out (a `: keep-alive` comment, or the protocol's ping). An error raised after the headers
    went out becomes the protocol's in-band error event (`error_event`) and the stream ends
    there (never with the protocol's end marker).
    """

    def __init__(self, events: AsyncGenerator[bytes, None], *, keepalive_s: float | None = None,
                 headers: dict[str, str] | None = None, keepalive: bytes = KEEPALIVE_COMMENT,
                 error_event: ErrorEvent = lambda exc: sse_event(exc.body())) -> None:
        self._events = events
        self._keepalive_s = keepalive_s
        self._keepalive = keepalive
        self._error_event = error_event
        self._last_sent = 0.0
        self._sending = asyncio.Lock()
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
        self._last_sent = time.monotonic()
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        # One ticker per stream, not a task per event: per-token work competes with the engine.
        ticker = (asyncio.ensure_future(self._tick(send)) if self._keepalive_s else None)
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if ticker is not None:
                ticker.cancel()
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

    async def _send(self, send: Send, body: bytes, more: bool = True) -> None:
        async with self._sending:
            await send({"type": "http.response.body", "body": body, "more_body": more})
            self._last_sent = time.monotonic()

    async def _tick(self, send: Send) -> None:
        interval = self._keepalive_s
        assert interval is not None
        while True:
            await asyncio.sleep(max(0.0, self._last_sent + interval - time.monotonic()))
            if time.monotonic() - self._last_sent >= interval:
                await self._send(send, self._keepalive)

    async def _pump(self, send: Send) -> None:
        async with aclosing(self._events) as events:
            try:
                async for chunk in events:
                    await self._send(send, chunk)
            except APIError as exc:
                await self._send(send, self._error_event(exc))
            except Exception:
                log.exception("stream failed after it started")
                await self._send(send, self._error_event(internal_error()))
        await self._send(send, b"", more=False)


class PatientJSONResponse(Response):
    """A JSON answer that may take long to compute: empty lines keep the connection alive.

    If `work` finishes within `interval` the response is ordinary (its status is the error's
    for an APIError). Otherwise a 200 starts, an empty line is sent every `interval` (JSON
    allows leading whitespace), and the body follows: the result, or the error body. A client
    disconnect cancels `work`.
    """

    def __init__(self, work: Awaitable[dict[str, Any]], interval: float,
                 headers: dict[str, str] | None = None, error: ErrorBody = openai_error) -> None:
        self._work = work
        self._interval = interval
        self._error = error
        super().__init__(status_code=200, media_type="application/json", headers=headers)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.ensure_future(self._work)
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        started = False
        try:
            while not task.done():
                await asyncio.wait({task, watcher}, timeout=self._interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    return
                if task.done():
                    break
                if not started:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": self.raw_headers})
                    started = True
                await send({"type": "http.response.body", "body": b"\n", "more_body": True})
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        status, body, extra = self._outcome(task)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if not started:
            headers = [*self.raw_headers, (b"content-length", str(len(payload)).encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _outcome(self, task: asyncio.Future[dict[str, Any]]
                 ) -> tuple[int, dict[str, Any], dict[str, str]]:
        exc = task.exception()
        if exc is None:
            return 200, task.result(), {}
        if isinstance(exc, APIError):
            status, body = self._error(exc)
            return status, body, exc.headers
        log.error("request failed", exc_info=exc)
        status, body = self._error(internal_error())
        return status, body, {}


def answer_response(protocol: WireProtocol[Any], stream: bool,
                    events: Callable[[], AsyncGenerator[bytes, None]],
                    answer: Callable[[], Awaitable[dict[str, Any]]], *, keepalive_s: float,
                    headers: dict[str, str]) -> Response:
    """The SSE stream of `events()` or the JSON of `answer()` in `protocol`, each kept alive
    while queued."""
    if stream:
        return SSEResponse(events(), keepalive_s=keepalive_s, headers=headers,
                           keepalive=protocol.keepalive, error_event=protocol.error_event)
    return PatientJSONResponse(answer(), keepalive_s, headers=headers, error=protocol.error)
