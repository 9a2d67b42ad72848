"""The replica client: the request it sends (the same whether the httpx client or its transport
sends it), cookies and environment proxies as httpx honours them, and the SSE events it reads
however the upstream's bytes are cut."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest

from seekserve.engines.remote.client import ReplicaClient, sse_data
from seekserve.engines.remote.profiles import PROFILES
from seekserve.settings import RemoteEngineSettings

SSE = "text/event-stream"


def replica_client(base_url: str, transport: httpx.AsyncBaseTransport | None = None
                   ) -> ReplicaClient:
    settings = RemoteEngineSettings.model_validate({
        "upstream": "vllm", "replicas": [{"base_url": base_url, "model": "m"}]})
    return ReplicaClient(settings.replicas[0], settings, PROFILES["vllm"], engine_name="e",
                         transport=transport)


class Chunks(httpx.AsyncByteStream):
    """A response body that arrives in exactly these pieces."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def events_of(chunks: list[bytes], content_type: str = SSE) -> list[str]:
    response = httpx.Response(200, headers={"content-type": content_type},
                              stream=Chunks(chunks))
    return [data async for data in sse_data(response)]


async def test_events_are_the_same_however_the_bytes_are_cut() -> None:
    body = ('data: {"a": 1}\r\n\r\n'  # CRLF
            ': a comment\n'
            'event: ignored\n'
            'data: first line\n'
            'data:second line\n\n'  # multi-line data, no space after the colon
            'data: lone CR\r\r'
            'data: snow \u2603 end\n\n'
            'data: [DONE]\n\n').encode()
    expected = ['{"a": 1}', "first line\nsecond line", "lone CR", "snow \u2603 end", "[DONE]"]
    assert await events_of([body]) == expected
    # Every cut: between CR and LF, inside a multi-byte character, inside "data:".
    for cut in range(1, len(body)):
        assert await events_of([body[:cut], body[cut:]]) == expected, cut
    assert await events_of([bytes([b]) for b in body]) == expected


async def test_json_may_hold_the_line_separators_that_are_not_sse_line_ends() -> None:
    # JSON allows U+2028, U+2029 and U+0085 unescaped in strings (json.dumps with
    # ensure_ascii=False writes them raw); SSE ends lines only at CR and LF.
    text = "one\u2028two\u2029three\x85four"
    line = json.dumps({"content": text}, ensure_ascii=False)
    events = await events_of([f"data: {line}\n\n".encode()])
    assert [json.loads(e)["content"] for e in events] == [text]


async def test_a_last_event_without_its_blank_line_is_still_read() -> None:
    assert await events_of([b"data: one\n\ndata: two\r"]) == ["one", "two"]
    assert await events_of([b"data: one\n\ndata: two"]) == ["one", "two"]


async def test_invalid_utf8_is_replaced_as_httpx_decodes_text() -> None:
    assert await events_of([b"data: a\xff\xfeb\n\n"]) == ["a\ufffd\ufffdb"]
    assert await events_of([b"data: caf\xc3\xa9\n\n"],
                           content_type=f"{SSE}; charset=latin-1") == ["caf\u00c3\u00a9"]


@contextmanager
def httpx_logging(level: int) -> Iterator[None]:
    logger = logging.getLogger("httpx")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def test_the_request_is_the_one_the_httpx_client_builds() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": SSE}, content=b"data: [DONE]\n\n")

    client = replica_client("http://upstream.test:8000/base/", httpx.MockTransport(handler))
    client.open()
    body = {"model": "m", "messages": [{"role": "user", "content": "h\u00e9llo \u2603"}]}
    try:
        with httpx_logging(logging.WARNING):  # the transport sends it
            first = await client.send("/v1/chat/completions", body)
        with httpx_logging(logging.INFO):  # the client sends it (and logs it)
            second = await client.send("/v1/chat/completions", body)
        for response in (first, second):
            assert [e async for e in sse_data(response)] == ["[DONE]"]
            assert response.request is not None
            await response.aclose()
    finally:
        await client.aclose()
    direct, through_client = seen
    assert direct.url == through_client.url == "http://upstream.test:8000/base/v1/chat/completions"
    assert direct.method == through_client.method == "POST"
    assert direct.headers.raw == through_client.headers.raw
    assert direct.content == through_client.content
    assert direct.extensions == through_client.extensions


async def test_cookies_the_upstream_sets_are_sent_back_as_the_httpx_client_does() -> None:
    cookies: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cookies.append(request.headers.get("cookie"))
        headers = {"content-type": SSE}
        if len(cookies) == 1:
            headers["set-cookie"] = "affinity=replica-2; Path=/"
        return httpx.Response(200, headers=headers, content=b"data: [DONE]\n\n")

    client = replica_client("http://upstream.test:8000", httpx.MockTransport(handler))
    client.open()
    try:
        for _ in range(3):
            response = await client.send("/v1/chat/completions", {"model": "m"})
            await response.aclose()
    finally:
        await client.aclose()
    assert cookies == [None, "affinity=replica-2", "affinity=replica-2"]


@asynccontextmanager
async def recording_proxy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP proxy that answers every request itself: its URL and the request lines."""
    lines: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        body = b"data: [DONE]\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", lines


async def test_a_proxy_named_in_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    async with recording_proxy() as (proxy_url, lines):
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        client = replica_client("http://upstream.invalid:8000")
        client.open()
        try:
            response = await client.send("/v1/chat/completions", {"model": "m"})
            assert [e async for e in sse_data(response)] == ["[DONE]"]
            await response.aclose()
        finally:
            await client.aclose()
    assert lines == [b"POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1"]
