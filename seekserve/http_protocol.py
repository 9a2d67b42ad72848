"""uvicorn's httptools protocol with the bounds it lacks: a deadline on a request's head and on
its body, and a size limit on its head.

uvicorn (with httptools) keeps a connection that sends nothing, or a header byte now and then,
open forever, and buffers a request head of any size (measured: a 200 KB header and 20,000
headers were served): a few clients that trickle bytes hold a socket each for as long as they
like (slowloris). Here the request line and headers must arrive within `header_timeout_s` of
the connection opening (or of the request's first byte on a kept-alive connection), within
`max_header_bytes`, and the body within `body_timeout_s` of the headers; otherwise the client
gets a 408 or a 431 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class RequestBounds:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_header_bytes: int = 64 * 1024


class BoundedConfig(uvicorn.Config):
    """A uvicorn Config that serves HTTP/1.1 with `BoundedHttpToolsProtocol` under `bounds`."""

    def __init__(self, app: Any, *, bounds: RequestBounds, **kwargs: Any) -> None:
        super().__init__(app, http=BoundedHttpToolsProtocol, **kwargs)
        self.bounds = bounds


# After a refusal, what the client still sends is read and dropped for this long before the
# socket closes: closing with unread input resets the connection, and the client would lose
# the answer (nginx's lingering close).
_LINGER_S = 2.0


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a head over the limit."""


def _plain_response(status: bytes, message: str) -> bytes:
    body = message.encode("ascii")
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + body)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; `config` must be a `BoundedConfig` (a plain Config gets the defaults)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._bounds = config.bounds if isinstance(config, BoundedConfig) else RequestBounds()
        self._in_head = True
        self._head_bytes = 0  # received while the head is incomplete (body bytes may follow)
        self._head_size = 0  # of the request line and headers parsed so far
        self._head_too_large = False
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, status: bytes, message: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, status, message)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, status: bytes, message: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.info("closing a connection from %s: %s", self.client, message)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self._refuse(_plain_response(status, message))
        else:
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        """Send `response`, then close after the linger (input meanwhile is dropped)."""
        self._disarm()
        self._refused = True
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(_LINGER_S, self.transport.close)

    def _arm_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._arm(self._bounds.header_timeout_s, b"408 Request Timeout",
                  f"The request head did not arrive within {self._bounds.header_timeout_s:g} s.")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Bytes of an unfinished head are buffered by the parser: stop before they pile up.
        if (self._in_head and self._head_bytes > self._bounds.max_header_bytes
                and not self._refused and not self.transport.is_closing()):
            self._reject_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        if not self._in_head:  # the next request on a kept-alive connection
            self._arm_head()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._bounds.max_header_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if not self.pipeline:  # a pipelined request waits, unread, for the one before it
            self._arm(self._bounds.body_timeout_s, b"408 Request Timeout",
                      f"The request body did not arrive within {self._bounds.body_timeout_s:g} s.")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        cycle = self.cycle
        if (cycle is not None and cycle.response_complete and not self.pipeline
                and self.timeout_keep_alive_task is None and not self.transport.is_closing()):
            # The answer went out before the body was read (a 413 from Content-Length, a
            # 401): the body's bytes cancelled uvicorn's keep-alive timer, which it starts only
            # when a response completes, and the connection would stay open, idle, forever.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._reject_large_head()
        else:
            super().send_400_response(msg)

    def _reject_large_head(self) -> None:
        limit = self._bounds.max_header_bytes
        self.logger.info("refusing a request head over %d bytes from %s", limit, self.client)
        self._refuse(_plain_response(
            b"431 Request Header Fields Too Large",
            f"The request line and headers are larger than the limit of {limit} bytes."))
