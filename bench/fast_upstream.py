"""A fast fake OpenAI-compatible upstream for bench/gateway_overhead.py: a fixed completion, now.

    .venv/bin/python bench/fast_upstream.py --port 9000 [--impl raw|starlette]

`/v1/chat/completions` answers at once with a fixed completion: JSON with usage, or (when the
body has `"stream": true`) five SSE chunks, a usage chunk (always sent: the gateways in front
either ask for it or ignore it) and `[DONE]`. `/v1/models` lists one model, `/health` is 200.

Two implementations of the same answers, so the upstream is not the bottleneck and we can say
which is cheaper: `raw` is an HTTP/1.1 server on asyncio (uvloop when installed) protocols with
keep-alive and no framework; `starlette` is Starlette on uvicorn with httptools and uvloop.
The request body is not parsed as JSON: the raw server looks for `"stream":true` in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any, cast

MODEL = "fast-upstream"
CONTENT_PIECES = ["Hello", " from", " the", " fast", " upstream."]
USAGE = {"prompt_tokens": 12, "completion_tokens": len(CONTENT_PIECES), "total_tokens": 17}
_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def completion_json() -> bytes:
    return json.dumps({
        "id": "chatcmpl-fast", "object": "chat.completion", "created": 1_700_000_000,
        "model": MODEL, "system_fingerprint": "fp_fast",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "".join(CONTENT_PIECES)}}],
        "usage": USAGE,
    }, separators=(",", ":")).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, *, usage: bool = False) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": MODEL, "system_fingerprint": "fp_fast",
        "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}],
    }
    if usage:
        body["usage"] = USAGE
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def stream_events() -> bytes:
    """The whole SSE body: a role chunk with the first piece, the rest, finish, usage, [DONE]."""
    events = [_chunk({"role": "assistant", "content": CONTENT_PIECES[0]})]
    events += [_chunk({"content": piece}) for piece in CONTENT_PIECES[1:]]
    events.append(_chunk({}, "stop"))
    events.append(_chunk({}, usage=True))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def models_json() -> bytes:
    return json.dumps({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "bench"}]}
    ).encode()


# ----- raw asyncio HTTP/1.1 -----------------------------------------------------------------


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunked_response(content_type: bytes, body: bytes) -> bytes:
    """A streamed answer as a real stream would frame it: chunked, one chunk per SSE event."""
    parts = [b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type
             + b"\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"]
    for event in body.split(b"\n\n")[:-1]:
        event += b"\n\n"
        parts.append(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


class RawAnswers:
    """Every answer the raw server can give, as ready-made bytes."""

    def __init__(self) -> None:
        self.completion = _response("200 OK", b"application/json", completion_json())
        self.stream = _chunked_response(b"text/event-stream", stream_events())
        self.models = _response("200 OK", b"application/json", models_json())
        self.health = _response("200 OK", b"application/json", b"{}")
        self.not_found = _response("404 Not Found", b"application/json",
                                   b'{"error":{"message":"not found"}}')
        self.bad_request = _response("400 Bad Request", b"application/json",
                                     b'{"error":{"message":"bad request"}}')


class RawHTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; bodies by Content-Length or chunked."""

    def __init__(self, answers: RawAnswers) -> None:
        self._answers = answers
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            request = self._next_request()
            if request is None:
                return
            self._transport.write(self._answer(*request))

    def _next_request(self) -> tuple[bytes, bytes, bytes] | None:
        """(method, path, body) of the next complete request, removed from the buffer."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self._buffer[:end]
        lines = head.split(b"\r\n")
        try:
            method, path, _ = lines[0].split(b" ", 2)
        except ValueError:
            return b"", b"", b""
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        start = end + 4
        if chunked:
            decoded = _dechunk(self._buffer, start)
            if decoded is None:
                return None
            body, consumed = decoded
            self._buffer = self._buffer[consumed:]
            return method, path, body
        if len(self._buffer) < start + length:
            return None
        body = self._buffer[start:start + length]
        self._buffer = self._buffer[start + length:]
        return method, path, body

    def _answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if not method:
            return self._answers.bad_request
        if path == b"/v1/chat/completions" and method == b"POST":
            return self._answers.stream if _STREAM_FLAG.search(body) else self._answers.completion
        if path == b"/v1/models":
            return self._answers.models
        if path == b"/health":
            return self._answers.health
        return self._answers.not_found

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _dechunk(buffer: bytes, start: int) -> tuple[bytes, int] | None:
    """The body of a chunked request starting at `start` and where it ends; None if partial."""
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buffer[pos:line_end].split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return bytes(body), trailer_end + 2
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos:pos + size]
        pos += size + 2


async def serve_raw(host: str, port: int) -> None:
    answers = RawAnswers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTPProtocol(answers), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


# ----- Starlette on uvicorn -----------------------------------------------------------------


def serve_starlette(host: str, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    completion, events, models = completion_json(), stream_events(), models_json()
    pieces = [event + b"\n\n" for event in events.split(b"\n\n")[:-1]]

    async def chat(request: Request) -> Response:
        body = await request.body()
        if _STREAM_FLAG.search(body):
            async def send() -> Any:
                for piece in pieces:
                    yield piece
            return StreamingResponse(send(), media_type="text/event-stream")
        return Response(completion, media_type="application/json")

    async def list_models(request: Request) -> Response:
        return Response(models, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/models", list_models), Route("/health", health)])
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--impl", choices=["raw", "starlette"], default="raw")
    args = parser.parse_args()
    if args.impl == "starlette":
        serve_starlette(args.host, args.port)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_raw(args.host, args.port))
    else:
        uvloop.run(serve_raw(args.host, args.port))


if __name__ == "__main__":
    main()
