"""Keep-alives while a request waits: SSE comments in streams, blank lines before JSON bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from starlette.types import Message

from seekserve.api.sse import PatientJSONResponse, SSEResponse
from seekserve.protocol.errors import RateLimitedError
from seekserve.protocol.exchange import KEEPALIVE_COMMENT as KEEPALIVE
from tests.api.conftest import MODEL, asgi_client, build_app, chat_body, live_server, sse_json
from tests.fakes import FakeEngine

CHAT = "/v1/chat/completions"
SLOW_REPLY = "K"           # one token: the answer takes 0.5 s
TOKEN_DELAY = 0.5
INTERVAL = 0.1             # server.keepalive_interval_s for the end-to-end tests


# ----- SSEResponse keep-alives, called as an ASGI app -----


async def scripted(script: list[tuple[float, bytes]], log: list[str]
                   ) -> AsyncGenerator[bytes, None]:
    """Yields each item after its delay; records how it ended in `log`."""
    try:
        for delay, item in script:
            if delay:
                await asyncio.sleep(delay)
            yield item
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    except GeneratorExit:
        log.append("closed")
        raise
    finally:
        log.append("finally")


async def failing_after(delay: float, error: Exception, log: list[str]
                        ) -> AsyncGenerator[bytes, None]:
    try:
        yield b"first"
        await asyncio.sleep(delay)
        raise error
    finally:
        log.append("finally")


async def run_sse(source: AsyncGenerator[bytes, None], interval: float | None,
                  disconnect_after: float | None = None) -> list[bytes]:
    """The body chunks an SSEResponse sends (empty final chunk left out)."""
    sent: list[bytes] = []

    async def receive() -> Message:
        if disconnect_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(disconnect_after or 0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            sent.append(message["body"])

    async with asyncio.timeout(5):
        await SSEResponse(source, keepalive_s=interval)({"type": "http"}, receive, send)
    return sent


def runs_of_pings(items: list[bytes]) -> list[int]:
    """How many pings came before each real item (and, last, after the final one)."""
    runs, count = [], 0
    for item in items:
        if item == KEEPALIVE:
            count += 1
        else:
            runs.append(count)
            count = 0
    runs.append(count)
    return runs


async def test_keepalives_flow_only_while_the_source_is_silent() -> None:
    log: list[str] = []
    items = await run_sse(scripted([(0.23, b"a"), (0.0, b"b"), (0.13, b"c")], log), 0.05)
    assert [i for i in items if i != KEEPALIVE] == [b"a", b"b", b"c"]
    before_a, between_a_b, between_b_c, after_c = runs_of_pings(items)
    assert 2 <= before_a <= 5
    assert between_a_b == 0
    assert 1 <= between_b_c <= 3
    assert after_c == 0
    assert log == ["finally"]


async def test_a_fast_source_passes_through_unchanged() -> None:
    log: list[str] = []
    script = [(0.0, bytes([n])) for n in range(50)]
    assert await run_sse(scripted(script, log), 0.5) == [bytes([n]) for n in range(50)]
    assert log == ["finally"]


async def test_without_an_interval_no_keepalive_is_sent() -> None:
    log: list[str] = []
    assert await run_sse(scripted([(0.2, b"a")], log), None) == [b"a"]


async def test_an_empty_source_sends_nothing() -> None:
    log: list[str] = []
    assert await run_sse(scripted([], log), 0.5) == []
    assert log == ["finally"]


async def test_a_disconnect_cancels_a_source_that_is_still_working() -> None:
    log: list[str] = []
    started = time.monotonic()
    items = await run_sse(scripted([(0.0, b"a"), (30.0, b"never")], log), 0.05,
                          disconnect_after=0.2)
    assert time.monotonic() - started < 1
    assert items[0] == b"a" and set(items[1:]) == {KEEPALIVE}
    assert log == ["cancelled", "finally"]


async def test_an_api_error_after_the_start_is_one_in_band_event() -> None:
    log: list[str] = []
    items = await run_sse(failing_after(0.12, RateLimitedError("slow down"), log), 0.05)
    assert items[0] == b"first"
    assert KEEPALIVE in items[1:-1]
    assert json.loads(items[-1].removeprefix(b"data: "))["error"]["message"] == "slow down"
    assert log == ["finally"]


async def test_an_unexpected_error_is_an_in_band_internal_error() -> None:
    log: list[str] = []
    items = await run_sse(failing_after(0.0, ValueError("secret detail"), log), 0.05)
    assert items[0] == b"first"
    body = json.loads(items[-1].removeprefix(b"data: "))
    assert body["error"]["type"] == "server_error"
    assert "secret detail" not in items[-1].decode()


# ----- PatientJSONResponse, called as an ASGI app -----


@dataclass
class Sent:
    """What an ASGI response sent, and how long it took."""

    messages: list[Message]
    seconds: float

    @property
    def status(self) -> int:
        assert self.messages[0]["type"] == "http.response.start"
        status: int = self.messages[0]["status"]
        return status

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def finished(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


async def respond(response: PatientJSONResponse, disconnect_after: float | None = None) -> Sent:
    """Run `response` against a client that stays, or leaves after `disconnect_after` seconds."""
    messages: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if disconnect_after is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    started = time.monotonic()
    async with asyncio.timeout(5):
        await response({"type": "http", "method": "POST", "path": "/"}, receive, send)
    return Sent(messages, time.monotonic() - started)


def after(seconds: float, result: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def work() -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return result
    return work


def fails_after(seconds: float, exc: Exception) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def work() -> dict[str, Any]:
        await asyncio.sleep(seconds)
        raise exc
    return work


RESULT = {"id": "chatcmpl-1", "choices": [{"message": {"content": "héllo"}}], "n": 3}


def rate_limited() -> RateLimitedError:
    return RateLimitedError("Too many requests.", headers={"Retry-After": "7"})


async def test_a_fast_result_is_an_ordinary_response() -> None:
    sent = await respond(PatientJSONResponse(after(0.0, RESULT)(), interval=1.0))
    assert sent.status == 200
    assert sent.headers["content-type"] == "application/json"
    assert int(sent.headers["content-length"]) == len(sent.body)
    assert len(sent.chunks) == 1
    assert not sent.body.startswith(b"\n")
    assert json.loads(sent.body) == RESULT
    assert sent.finished


async def test_extra_headers_go_out_with_the_response() -> None:
    response = PatientJSONResponse(after(0.0, RESULT)(), interval=1.0,
                                   headers={"x-request-id": "abc"})
    sent = await respond(response)
    assert sent.headers["x-request-id"] == "abc"
    assert list(sent.headers).count("content-length") == 1


async def test_a_slow_result_starts_early_and_sends_blank_lines_first() -> None:
    sent = await respond(PatientJSONResponse(after(0.3, RESULT)(), interval=0.05))
    assert sent.status == 200
    assert sent.headers["content-type"] == "application/json"
    assert "content-length" not in sent.headers
    *blanks, payload = sent.chunks
    assert 3 <= len(blanks) <= 7
    assert set(blanks) == {b"\n"}
    assert sent.body.startswith(b"\n\n\n")
    assert not payload.startswith(b"\n")
    assert json.loads(sent.body) == RESULT
    assert sent.finished
    assert 0.25 <= sent.seconds < 1.5


async def test_a_slow_api_error_is_a_200_with_the_error_body_after_blank_lines() -> None:
    error = rate_limited()
    sent = await respond(PatientJSONResponse(fails_after(0.3, error)(), interval=0.05))
    assert sent.status == 200
    assert sent.body.startswith(b"\n\n\n")
    assert json.loads(sent.body) == error.body() == {"error": {
        "message": "Too many requests.", "type": "rate_limit_error", "param": None,
        "code": "rate_limit_exceeded"}}
    assert sent.finished


async def test_a_fast_api_error_keeps_its_status_and_headers() -> None:
    error = rate_limited()
    sent = await respond(PatientJSONResponse(fails_after(0.0, error)(), interval=1.0))
    assert sent.status == 429
    assert sent.headers["retry-after"] == "7"
    assert int(sent.headers["content-length"]) == len(sent.body)
    assert json.loads(sent.body) == error.body()
    assert sent.finished


async def test_a_fast_unexpected_error_is_a_500_that_hides_the_message() -> None:
    sent = await respond(PatientJSONResponse(
        fails_after(0.0, RuntimeError("/secret/path leaked"))(), interval=1.0))
    assert sent.status == 500
    assert b"/secret/path" not in sent.body
    assert json.loads(sent.body)["error"]["type"] == "server_error"


async def test_a_slow_unexpected_error_is_a_200_with_an_internal_error_body() -> None:
    sent = await respond(PatientJSONResponse(
        fails_after(0.2, RuntimeError("/secret/path leaked"))(), interval=0.05))
    assert sent.status == 200
    assert sent.body.startswith(b"\n")
    assert b"/secret/path" not in sent.body
    assert json.loads(sent.body)["error"]["code"] == "internal_error"


class Watched:
    """A long piece of work that records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False
        self.finished = False

    async def run(self) -> dict[str, Any]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        return RESULT


async def test_a_client_leaving_while_blank_lines_flow_cancels_the_work() -> None:
    work = Watched()
    sent = await respond(PatientJSONResponse(work.run(), interval=0.05), disconnect_after=0.2)
    assert work.cancelled and not work.finished
    assert sent.seconds < 1
    assert sent.status == 200
    assert set(sent.chunks) == {b"\n"}  # blank lines only: no body followed
    assert not sent.finished


async def test_a_client_leaving_before_the_first_interval_cancels_the_work() -> None:
    work = Watched()
    sent = await respond(PatientJSONResponse(work.run(), interval=1.0), disconnect_after=0.05)
    assert work.cancelled and not work.finished
    assert sent.seconds < 0.5
    assert sent.messages == []


# ----- through the real HTTP stack -----


@pytest.fixture(scope="module")
def slow_engine() -> FakeEngine:
    return FakeEngine(SLOW_REPLY, delay=TOKEN_DELAY)


@pytest.fixture(scope="module")
async def slow_server(slow_engine: FakeEngine) -> AsyncIterator[str]:
    """The seed app on a 0.5 s-a-token engine with keep-alives every 0.1 s, on a real port."""
    app = build_app(slow_engine, server={"keepalive_interval_s": INTERVAL})
    async with live_server(app) as base_url:
        yield base_url


async def stream_lines(base_url: str, **request: Any) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http, \
            http.stream("POST", CHAT, json=chat_body(stream=True), **request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line async for line in response.aiter_lines()]


async def test_a_slow_stream_gets_keepalive_comments_and_still_ends_with_done(
        slow_server: str, slow_engine: FakeEngine) -> None:
    lines = await stream_lines(slow_server)

    events = [line for line in lines if line]
    data = [line for line in events if line.startswith("data: ")]
    assert set(events) - set(data) == {": keep-alive"}
    assert data[-1] == "data: [DONE]"
    assert events[-1] == "data: [DONE]"
    # The role chunk goes out at once; keep-alives fill the wait for the first token.
    first = json.loads(data[0][len("data: "):])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first_text = next(i for i, line in enumerate(events)
                      if line.startswith("data: ") and '"content":"K"' in line)
    assert events[1:first_text].count(": keep-alive") >= 2
    assert set(events[1:first_text]) == {": keep-alive"}
    chunks = sse_json("\n\n".join(data) + "\n\n")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert text == SLOW_REPLY
    assert slow_engine.active == 0


async def test_a_slow_output_text_stream_starts_with_keepalives(slow_server: str) -> None:
    lines = await stream_lines(slow_server, headers={"Host": "backend"})

    events = [line for line in lines if line]
    first_data = next(i for i, line in enumerate(events) if line.startswith("data: "))
    assert first_data >= 2
    assert set(events[:first_data]) == {": keep-alive"}
    assert events[-1] == "data: [DONE]"
    outputs = [json.loads(line[len("data: "):]) for line in events
               if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(o["output"]["text"] for o in outputs if "output" in o) == SLOW_REPLY


async def test_a_fast_plain_answer_has_a_content_length_and_no_blank_lines() -> None:
    async with asgi_client(build_app(FakeEngine("Quick."))) as http:
        response = await http.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.startswith(b"{")
    assert response.json()["choices"][0]["message"]["content"] == "Quick."


async def test_a_slow_plain_answer_over_http_is_blank_lines_then_json(slow_server: str) -> None:
    async with httpx.AsyncClient(base_url=slow_server, timeout=10) as http:
        response = await http.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert "content-length" not in response.headers
    leading = len(response.content) - len(response.content.lstrip(b"\n"))
    assert 2 <= leading <= 6  # 0.5 s of work at one blank line per 0.1 s
    assert response.json()["choices"][0]["message"]["content"] == SLOW_REPLY


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0,
                         timeout=10)


async def test_the_openai_sdk_parses_an_answer_that_came_after_blank_lines(
        slow_server: str) -> None:
    def create(client: openai.OpenAI) -> Any:  # the SDK's raw-response wrapper
        return client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}])

    client = sdk(slow_server)
    # The synchronous SDK runs in a thread: the server shares this event loop.
    raw = await asyncio.to_thread(create, client)
    client.close()

    assert raw.status_code == 200
    assert raw.content.startswith(b"\n\n")
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].message.content == SLOW_REPLY
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"


async def test_the_openai_sdk_reads_a_stream_with_keepalive_comments(slow_server: str) -> None:
    def collect(client: openai.OpenAI) -> list[Any]:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True)
        return list(stream)

    client = sdk(slow_server)
    chunks = await asyncio.to_thread(collect, client)
    client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == SLOW_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
