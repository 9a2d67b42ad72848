"""Hostile input that the reliability suite (tests/reliability) found answered badly, kept here
in the default run: a slow or oversized request head, a body that stops coming, JSON nested past
the parser's depth in the places that parse JSON themselves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from seekserve.chat.tools import ToolCallParser
from seekserve.files.kinds import extract_text, kind_of
from seekserve.http_protocol import BoundedConfig, RequestBounds
from seekserve.server import DrainingServer
from tests.api.conftest import MODEL, REPLY, asgi_client, build_app, chat_body
from tests.fakes import FakeEngine
from tests.ports import free_port

DEEP = 100_000  # far past any JSON parser's depth limit
BOUNDS = RequestBounds(header_timeout_s=0.5, body_timeout_s=0.5, max_header_bytes=8192)
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@asynccontextmanager
async def bounded_server(app: FastAPI, keep_alive_s: float = 5) -> AsyncIterator[int]:
    """`app` behind uvicorn with the request bounds `seekserve serve` installs; its port."""
    port = free_port()

    async def no_drain() -> None:
        return None

    server = DrainingServer(BoundedConfig(app, bounds=BOUNDS, host="127.0.0.1", port=port,
                                          lifespan="on", log_level="warning",
                                          timeout_keep_alive=keep_alive_s), drain=no_drain)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, task.result() if task.done() else "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def exchange(port: int, data: bytes, *, then_wait: float = 5.0) -> tuple[bytes, float]:
    """Send `data` on a new connection and read until the server closes it: what came back
    and how long the server took to close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(data)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=then_wait)
    finally:
        writer.close()
    return answer, loop.time() - started


def request(body: bytes, *extra_headers: bytes) -> bytes:
    return CHAT + b"".join(extra_headers) + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with bounded_server(build_app(FakeEngine(REPLY))) as p:
        yield p


BODY = json.dumps(chat_body()).encode()


async def test_a_well_behaved_request_is_served(port: int) -> None:
    answer, _ = await exchange(port, request(BODY, b"Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    assert REPLY.encode() in answer


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: te"],
                         ids=["silent", "half a head"])
async def test_a_head_that_does_not_arrive_in_time_is_a_408(port: int, sent: bytes) -> None:
    answer, took = await exchange(port, sent)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"within 0.5 s" in answer
    assert 0.4 < took < 4


async def test_a_body_that_stops_coming_is_a_408(port: int) -> None:
    partial = request(BODY)[:-5]
    answer, took = await exchange(port, partial)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"request body" in answer
    assert 0.4 < took < 4


@pytest.mark.parametrize("headers", [
    [b"X-Big: " + b"a" * 200_000 + b"\r\n"],
    [b"X-H%d: v\r\n" % i for i in range(5_000)],
], ids=["one large header", "many headers"])
async def test_an_oversized_head_is_a_431(port: int, headers: list[bytes]) -> None:
    answer, _ = await exchange(port, request(BODY, *headers))
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:200]
    assert b"8192 bytes" in answer


async def test_a_kept_alive_connection_gets_a_fresh_deadline_per_request(port: int) -> None:
    """Two requests on one connection, the second sent after a pause longer than the head
    deadline but shorter than uvicorn's keep-alive: both are served, on that connection."""
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        first = await client.post("/v1/chat/completions", content=BODY)
        await asyncio.sleep(0.8)
        second = await client.post("/v1/chat/completions", content=BODY)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.extensions["network_stream"] is second.extensions["network_stream"]


async def test_a_body_refused_before_it_is_read_does_not_keep_its_connection_forever() -> None:
    """A 413 from Content-Length goes out before the body is read; the body's bytes then
    arrive on a kept-alive connection, which must still close after the keep-alive timeout
    (uvicorn starts that timer when a response completes, and incoming bytes cancel it)."""
    app = build_app(FakeEngine(REPLY), limits={"max_body_bytes": 1024})
    async with bounded_server(app, keep_alive_s=0.5) as port:
        answer, took = await exchange(port, request(b"x" * 200_000))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert took < 4


async def test_a_pipelined_request_is_not_timed_while_it_waits_for_the_one_before() -> None:
    """A second request sent behind the first, its body's end a moment later: uvicorn reads
    no more of it until the first is answered (1.3 s here, past the body deadline), so its
    body cannot be timed meanwhile; both are answered."""
    second = request(BODY, b"Connection: close\r\n")
    async with bounded_server(build_app(FakeEngine(REPLY, delay=0.05))) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(BODY) + second[:-5])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(second[-5:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer
    assert b"408 Request Timeout" not in answer


# ----- JSON nested past the parser's depth -----

async def test_a_deeply_nested_body_is_a_400() -> None:
    async with asgi_client(build_app(FakeEngine(REPLY))) as client:
        body = f'{{"model": "{MODEL}", "messages": {nested(DEEP)}}}'
        response = await client.post("/v1/chat/completions", content=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


async def test_a_json_schema_string_nested_too_deeply_is_a_400_naming_it() -> None:
    async with asgi_client(build_app(FakeEngine(REPLY, follow_constraints=True))) as client:
        response = await client.post("/v1/completions", json={
            "model": MODEL, "prompt": "Say: ", "max_tokens": 2,
            "structured_outputs": {"json": nested(DEEP)}})
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == "structured_outputs.json"
    assert "recursion limit" in error["message"]


async def test_tool_arguments_in_the_history_nested_too_deeply_are_kept_as_text() -> None:
    engine = FakeEngine(REPLY)
    async with asgi_client(build_app(engine)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(messages=[
            {"role": "user", "content": "Call f."},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": nested(DEEP)}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ]))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == REPLY


def test_a_json_file_nested_too_deeply_is_refused_as_invalid() -> None:
    data = nested(DEEP).encode()
    kind = kind_of("deep.json", "application/json", data)
    with pytest.raises(Exception) as refused:
        extract_text(kind, "deep.json", data, max_chars=10 * len(data))
    assert getattr(refused.value, "status_code", None) == 400
    assert "nested too deeply" in str(refused.value)


def test_a_model_call_nested_too_deeply_is_reported_with_its_raw_text() -> None:
    announced = ToolCallParser()  # the name is read before the arguments come
    announced.feed('<tool_call>{"name": "f", "arguments": [')
    announced.feed(nested(DEEP)[1:] + "}</tool_call>")
    announced.finish()
    assert [(c["name"], c["arguments"]) for c in announced.calls] == [("f", nested(DEEP))]

    whole = ToolCallParser()  # the whole call at once: a body that is not JSON, kept raw
    whole.feed("<tool_call>" + nested(DEEP) + "</tool_call>")
    whole.finish()
    assert [(c["name"], c["arguments"]) for c in whole.calls] == [("", nested(DEEP))]


async def test_a_client_that_leaves_while_its_body_is_read_is_no_server_error(
        caplog: pytest.LogCaptureFixture) -> None:
    async with bounded_server(build_app(FakeEngine(REPLY))) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(BODY)[:-5])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.post("/v1/chat/completions", content=BODY)).status_code == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
