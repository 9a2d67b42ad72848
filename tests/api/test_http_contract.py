"""The HTTP contract on a scripted engine: shapes, stops, streaming, dialects, auth, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from seekserve.engines.base import EngineFailure, GenerationEvent, GenerationRequest, TokenEvent
from tests.api.conftest import (
    MAAS_MODEL,
    MODEL,
    REPLY,
    asgi_client,
    build_app,
    chat_body,
    live_server,
    sse_json,
    sse_payloads,
)
from tests.fakes import FakeEngine

CHAT = "/v1/chat/completions"
MAAS_CHAT = "/v1/ai/maas-deepseek/chat/completions"


async def post_chat(client: httpx.AsyncClient, path: str = CHAT, **fields: Any
                    ) -> dict[str, Any]:
    response = await client.post(path, json=chat_body(**fields))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stream_chat(client: httpx.AsyncClient, path: str = CHAT, **fields: Any
                      ) -> tuple[list[str], list[dict[str, Any]]]:
    """(raw `data:` payloads, parsed JSON events) of a streamed request."""
    response = await client.post(path, json=chat_body(stream=True, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.text), sse_json(response.text)


def assert_error(response: httpx.Response, status: int, *, type_: str, code: str | None,
                 param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    return error


# ----- the plain (first seed) shape -----


async def test_plain_completion_has_the_documented_shape(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    body = await post_chat(client)

    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert before - 1 <= body["created"] <= int(time.time()) + 1
    assert body["model"] == MODEL
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"]
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] is None
    assert choice["logprobs"] is None
    assert "native_finish_reason" not in choice

    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] >= len(REPLY.encode())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["prompt_cache_hit_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert (usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
            == usage["prompt_tokens"])


async def test_each_completion_gets_its_own_id(client: httpx.AsyncClient) -> None:
    first = await post_chat(client)
    second = await post_chat(client)
    assert first["id"] != second["id"]


@pytest.mark.parametrize("model", [MODEL, MAAS_MODEL])
async def test_model_is_echoed_as_requested(client: httpx.AsyncClient, model: str) -> None:
    body = await post_chat(client, model=model)
    assert body["model"] == model


async def test_prompt_tokens_count_the_rendered_prompt(client: httpx.AsyncClient,
                                                       engine: FakeEngine) -> None:
    body = await post_chat(client)
    assert body["usage"]["prompt_tokens"] == len(engine.requests[-1].prompt)


# ----- stop strings and max_tokens -----


async def test_stop_cuts_the_content_before_the_stop(client: httpx.AsyncClient) -> None:
    choice = (await post_chat(client, stop="fake"))["choices"][0]
    assert choice["message"]["content"] == "Hello from the "
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == "fake"


async def test_a_stop_spanning_several_tokens_is_matched(client: httpx.AsyncClient) -> None:
    # The fake engine has one token per byte: "the fake" is eight tokens.
    body = await post_chat(client, stop=["the fake"])
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Hello from "
    assert choice["matched_stop"] == "the fake"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len("Hello from the fake")


async def test_the_earliest_of_several_stops_wins(client: httpx.AsyncClient) -> None:
    choice = (await post_chat(client, stop=["engine", "from", "the"]))["choices"][0]
    assert choice["message"]["content"] == "Hello "
    assert choice["matched_stop"] == "from"


async def test_a_stop_that_only_starts_to_match_is_released(client: httpx.AsyncClient) -> None:
    # "fa" is held back while it may become "fax", then released when "k" follows.
    choice = (await post_chat(client, stop=["fax", "never"]))["choices"][0]
    assert choice["message"]["content"] == REPLY
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] is None


async def test_max_tokens_ends_with_length(client: httpx.AsyncClient) -> None:
    body = await post_chat(client, max_tokens=5)
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["matched_stop"] is None
    assert body["usage"]["completion_tokens"] == 5


# ----- logprobs -----


async def test_logprobs_with_top_logprobs(client: httpx.AsyncClient) -> None:
    body = await post_chat(client, logprobs=True, top_logprobs=2, max_tokens=5)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert [e["token"] for e in entries] == list("Hello")
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for entry, char in zip(entries, "Hello", strict=True):
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] == -0.25
        assert entry["bytes"] == list(char.encode())
        assert len(entry["top_logprobs"]) == 2
        for alt in entry["top_logprobs"]:
            assert set(alt) == {"token", "logprob", "bytes"}
            assert isinstance(alt["logprob"], float) and alt["logprob"] <= 0
            assert alt["bytes"] == list(alt["token"].encode())
        assert [a["logprob"] for a in entry["top_logprobs"]] == [-0.5, -1.0]


async def test_logprobs_without_top_logprobs_gives_empty_alternatives(
        client: httpx.AsyncClient) -> None:
    entries = (await post_chat(client, logprobs=True, max_tokens=3))["choices"][0]["logprobs"][
        "content"]
    assert [e["top_logprobs"] for e in entries] == [[], [], []]


async def test_top_logprobs_without_logprobs_gives_none(client: httpx.AsyncClient) -> None:
    body = await post_chat(client, logprobs=False, top_logprobs=2)
    assert body["choices"][0]["logprobs"] is None


async def test_logprobs_stop_at_the_stop_string(client: httpx.AsyncClient) -> None:
    choice = (await post_chat(client, logprobs=True, stop="fake"))["choices"][0]
    assert choice["message"]["content"] == "Hello from the "
    tokens = [e["token"] for e in choice["logprobs"]["content"]]
    assert "".join(tokens) == "Hello from the "


# ----- text that is not ASCII: characters split across tokens -----

CJK_REPLY = "你好, 世界! ok"


@pytest.fixture
async def cjk() -> AsyncIterator[httpx.AsyncClient]:
    # One token per byte: every CJK character is three tokens.
    async with asgi_client(build_app(FakeEngine(CJK_REPLY))) as c:
        yield c


async def test_characters_split_across_tokens_are_whole(cjk: httpx.AsyncClient) -> None:
    body = await post_chat(cjk, logprobs=True)
    assert body["choices"][0]["message"]["content"] == CJK_REPLY
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == len(CJK_REPLY.encode())
    assert b"".join(bytes(e["bytes"]) for e in entries) == CJK_REPLY.encode()


async def test_streamed_characters_are_never_split(cjk: httpx.AsyncClient) -> None:
    _, chunks = await stream_chat(cjk)
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert "".join(deltas) == CJK_REPLY
    assert not any("\ufffd" in d for d in deltas)


async def test_a_cjk_stop_string_cuts_between_characters(cjk: httpx.AsyncClient) -> None:
    choice = (await post_chat(cjk, stop="世界"))["choices"][0]
    assert choice["message"]["content"] == "你好, "
    assert choice["matched_stop"] == "世界"
    _, chunks = await stream_chat(cjk, stop="世界")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "你好, "


# ----- streaming -----


async def test_stream_chunks_arrive_in_order_and_end_with_done(
        client: httpx.AsyncClient) -> None:
    whole = await post_chat(client, stop="engine")
    payloads, chunks = await stream_chat(client, stop="engine")

    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    assert len(chunks) == len(payloads) - 1
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {MODEL}
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["system_fingerprint"] for c in chunks)

    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishing = [i for i, c in enumerate(chunks) if c["choices"][0]["finish_reason"] is not None]
    assert finishing == [len(chunks) - 1]
    finish = chunks[-1]["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert finish["matched_stop"] == "engine"
    assert finish["delta"] == {}

    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == whole["choices"][0]["message"]["content"] == "Hello from the fake "
    # No usage anywhere unless it was asked for.
    assert all(c.get("usage") is None for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_stream_with_include_usage_ends_with_a_usage_chunk(
        client: httpx.AsyncClient) -> None:
    whole = await post_chat(client, max_tokens=7)
    payloads, chunks = await stream_chat(client, max_tokens=7,
                                         stream_options={"include_usage": True})

    assert payloads[-1] == "[DONE]"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]
    assert usage_chunk["usage"]["completion_tokens"] == 7
    before = chunks[:-1]
    assert all(c["usage"] is None for c in before)
    assert before[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in before) == "Hello f"


async def test_stream_without_include_usage_has_no_usage_chunk(
        client: httpx.AsyncClient) -> None:
    _, chunks = await stream_chat(client, stream_options={"include_usage": False})
    assert all(c["choices"] for c in chunks)
    assert all(c.get("usage") is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_carries_logprobs_with_the_text(client: httpx.AsyncClient) -> None:
    _, chunks = await stream_chat(client, logprobs=True, top_logprobs=1, max_tokens=4)
    entries = [e for c in chunks if c["choices"][0]["logprobs"]
               for e in c["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in entries] == list("Hell")
    assert all(len(e["top_logprobs"]) == 1 for e in entries)


@pytest.mark.parametrize(("fields", "status", "param"), [
    ({"temperature": 3}, 400, "temperature"),
    ({"model": "gpt-4o"}, 404, "model"),
])
async def test_a_stream_refused_up_front_is_a_json_error(
        client: httpx.AsyncClient, fields: dict[str, Any], status: int, param: str) -> None:
    response = await client.post(CHAT, json=chat_body(stream=True, **fields))
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == param


# ----- the MaaS (third seed) shape -----


async def test_maas_route_adds_native_finish_reason(client: httpx.AsyncClient) -> None:
    body = await post_chat(client, MAAS_CHAT, model=MAAS_MODEL)
    assert body["model"] == MAAS_MODEL
    choice = body["choices"][0]
    assert choice["message"]["content"] == REPLY
    assert choice["finish_reason"] == "stop"
    assert choice["native_finish_reason"] == "stop"
    usage = body["usage"]
    assert (usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
            == usage["prompt_tokens"])
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_maas_native_finish_reason_follows_length(client: httpx.AsyncClient) -> None:
    choice = (await post_chat(client, MAAS_CHAT, model=MAAS_MODEL, max_tokens=2))["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["native_finish_reason"] == "length"


async def test_maas_stream_finish_chunk_has_native_finish_reason(
        client: httpx.AsyncClient) -> None:
    payloads, chunks = await stream_chat(client, MAAS_CHAT, model=MAAS_MODEL, stop="fake")
    assert payloads[-1] == "[DONE]"
    finish = chunks[-1]["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert finish["native_finish_reason"] == "stop"
    assert finish["matched_stop"] == "fake"
    assert all("native_finish_reason" not in c["choices"][0] for c in chunks[:-1])


async def test_maas_unknown_endpoint_path_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ai/no-such-endpoint/chat/completions",
                                 json=chat_body(model=MAAS_MODEL))
    error = assert_error(response, 404, type_="invalid_request_error",
                         code="endpoint_not_found", param="endpointPath")
    assert "no-such-endpoint" in error["message"]


# ----- the output_text (second seed) shape -----


@pytest.mark.parametrize("host", ["backend:8000", "backend", "BACKEND:8000"])
async def test_output_text_host_gets_only_the_text(client: httpx.AsyncClient,
                                                   host: str) -> None:
    response = await client.post(CHAT, json=chat_body(), headers={"Host": host})
    assert response.status_code == 200, response.text
    assert response.json() == {"output": {"text": REPLY}}


async def test_output_text_applies_stop(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(stop=["\n\n", " from"]),
                                 headers={"Host": "backend:8000"})
    assert response.json() == {"output": {"text": "Hello"}}


@pytest.mark.parametrize("host", ["test", "example.com", "backend.example.com:8000"])
async def test_other_hosts_get_the_plain_shape(client: httpx.AsyncClient, host: str) -> None:
    response = await client.post(CHAT, json=chat_body(), headers={"Host": host})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == REPLY


# ----- authentication -----

KEY = "sk-contract-test"


@pytest.fixture
async def keyed(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app with an API key configured; the client sends no key by itself."""
    async with asgi_client(build_app(engine, api_keys=[KEY])) as c:
        yield c


async def test_missing_key_is_401(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(CHAT, json=chat_body())
    error = assert_error(response, 401, type_="authentication_error", code="missing_api_key",
                         param=None)
    assert "Authorization" in error["message"]


@pytest.mark.parametrize("header", [f"Bearer {KEY}x", "Bearer sk-other", f"Basic {KEY}",
                                   "Bearer ", KEY])
async def test_wrong_key_is_401(keyed: httpx.AsyncClient, header: str) -> None:
    response = await keyed.post(CHAT, json=chat_body(), headers={"Authorization": header})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert KEY not in response.text


async def test_right_key_is_200(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(CHAT, json=chat_body(),
                                headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == REPLY


async def test_right_key_on_the_maas_route(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(MAAS_CHAT, json=chat_body(model=MAAS_MODEL))
    assert response.status_code == 401
    response = await keyed.post(MAAS_CHAT, json=chat_body(model=MAAS_MODEL),
                                headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["native_finish_reason"] == "stop"


async def test_auth_is_checked_before_the_body(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(CHAT, content=b"not json")
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/docs"])
async def test_ops_and_docs_need_no_key(keyed: httpx.AsyncClient, path: str) -> None:
    assert (await keyed.get(path)).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{MODEL}"])
async def test_models_need_a_key(keyed: httpx.AsyncClient, path: str) -> None:
    assert_error(await keyed.get(path), 401, type_="authentication_error",
                 code="missing_api_key", param=None)
    response = await keyed.get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200


# ----- not found, size and body errors -----


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(model="gpt-4o"))
    error = assert_error(response, 404, type_="invalid_request_error", code="model_not_found",
                         param="model")
    assert "gpt-4o" in error["message"]


async def test_unknown_model_on_the_maas_route_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(MAAS_CHAT, json=chat_body(model="MaaS_Deepseek_V3"))
    assert_error(response, 404, type_="invalid_request_error", code="model_not_found",
                 param="model")


async def test_unknown_model_card_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models/gpt-4o")
    assert_error(response, 404, type_="invalid_request_error", code="model_not_found",
                 param="model")


@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v1/ai/maas-deepseek/completions"])
async def test_unknown_route_is_404_with_an_error_body(client: httpx.AsyncClient,
                                                       path: str) -> None:
    assert_error(await client.get(path), 404, type_="invalid_request_error", code="not_found",
                 param=None)


async def test_wrong_method_has_an_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get(CHAT)
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture
async def small_body(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(build_app(engine, limits={"max_body_bytes": 1024})) as c:
        yield c


async def test_body_over_the_limit_is_413(small_body: httpx.AsyncClient) -> None:
    body = chat_body(messages=[{"role": "user", "content": "x" * 2000}])
    error = assert_error(await small_body.post(CHAT, json=body), 413,
                         type_="invalid_request_error", code="request_too_large", param=None)
    assert "1024" in error["message"]


async def test_chunked_body_over_the_limit_is_413(small_body: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}]}'

    response = await small_body.post(CHAT, content=chunks(),
                                     headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    error = assert_error(response, 413, type_="invalid_request_error",
                         code="request_too_large", param=None)
    assert "1024" in error["message"]


async def test_body_under_the_limit_is_served(small_body: httpx.AsyncClient) -> None:
    response = await small_body.post(CHAT, json=chat_body())
    assert response.status_code == 200


@pytest.mark.parametrize("content", [b'{"model": "deepseek-v4-pro", "messages": [', b"{",
                                     b"not json", b'{"model": "deepseek-v4-pro",}'])
async def test_invalid_json_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(CHAT, content=content,
                                 headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_json",
                         param=None)
    assert "JSON" in error["message"]


@pytest.mark.parametrize("content", [b"", b"  \n"])
async def test_empty_body_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(CHAT, content=content,
                                 headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_json",
                         param=None)
    assert "empty" in error["message"]


@pytest.mark.parametrize("content", [b"[]", b'"hello"', b"42", b"null"])
async def test_a_body_that_is_not_an_object_is_400(client: httpx.AsyncClient,
                                                   content: bytes) -> None:
    response = await client.post(CHAT, content=content,
                                 headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, type_="invalid_request_error", code="invalid_json",
                         param=None)
    assert "object" in error["message"]


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    body = chat_body(n=1, service_tier="auto", metadata={"k": "v"}, future_flag=True)
    body["messages"][0]["audio"] = {"id": "x"}
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == REPLY


async def test_the_seed_union_of_fields_is_accepted(client: httpx.AsyncClient,
                                                    engine: FakeEngine) -> None:
    body = chat_body(
        system_instruction="You are careful.",
        thinking={"type": "enabled", "reasoning_effort": "max"},
        reasoning_effort="high",
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "get_weather", "strict": True,
                                                  "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        frequency_penalty=0.5, presence_penalty=-0.5, temperature=0.7, top_p=0.9, seed=7,
        user_id="user_123", stream_options=None, top_logprobs=None,
    )
    body["messages"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi "},
                                                     {"type": "text", "text": "there"}]},
    ]
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    sampling = engine.requests[-1].sampling
    # Thinking mode: temperature and top_p are accepted with no effect (the model's thinking
    # sampling applies); the seed still holds.
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.6, 0.95, 7)


# ----- models, health, readiness, docs -----


async def test_models_lists_the_model_and_its_alias(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL, MAAS_MODEL]
    for card in body["data"]:
        assert card["object"] == "model"
        assert isinstance(card["created"], int)
        assert isinstance(card["owned_by"], str) and card["owned_by"]


async def test_one_model_card(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/models/{MAAS_MODEL}")
    assert response.status_code == 200
    assert response.json()["id"] == MAAS_MODEL


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_the_engine(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["engines"]["embedded"]["loaded"] is True
    assert body["engines"]["embedded"]["running"] == 0
    assert body["engines"]["embedded"]["queued"] == 0


async def test_not_ready_before_the_engines_start(engine: FakeEngine) -> None:
    app = build_app(engine)
    # No lifespan: the engines were never started.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        assert (await c.get("/health")).status_code == 200
        response = await c.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "starting"


async def test_openapi_describes_the_chat_routes(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert "post" in spec["paths"]["/v1/chat/completions"]
    assert "post" in spec["paths"]["/v1/ai/{endpointPath}/chat/completions"]
    schemas = spec["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    assert set(request["required"]) == {"model", "messages"}
    for field in ("system_instruction", "thinking", "reasoning_effort", "user_id", "stop",
                  "top_logprobs"):
        assert field in request["properties"]
    assert "ChatCompletion" in schemas
    assert "OutputEnvelope" in schemas


async def test_docs_are_html(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "openapi.json" in response.text


# ----- cancellation on disconnect -----


async def wait_until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


async def test_a_client_leaving_a_stream_stops_the_generation() -> None:
    engine = FakeEngine("word " * 400, delay=0.05)  # 2000 tokens: 100 s if nobody stops it
    async with live_server(build_app(engine)) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        async with http.stream("POST", CHAT, json=chat_body(stream=True)) as response:
            assert response.status_code == 200
            events = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line)
                if len(events) == 2:
                    break
            assert engine.active == 1
        assert await wait_until(lambda: engine.active == 0, within=1.0), \
            "the generation went on after the client left"
        assert (await http.get("/ready")).json()["engines"]["embedded"]["running"] == 0


async def test_a_client_leaving_a_plain_request_stops_the_generation() -> None:
    engine = FakeEngine("word " * 400, delay=0.05)
    async with live_server(build_app(engine)) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        request = asyncio.create_task(http.post(CHAT, json=chat_body()))
        assert await wait_until(lambda: engine.active == 1, within=2.0)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert await wait_until(lambda: engine.active == 0, within=1.0), \
            "the generation went on after the client left"


# ----- engine failures -----

SECRET = "/opt/models/private-weights.gguf at 0x7f3a"


class FailingEngine(FakeEngine):
    """Generates three tokens of its reply, then fails the way an engine can."""

    async def generate(self, request: GenerationRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        self.active += 1
        try:
            for token in self.tokenizer.encode(self.reply)[:3]:
                yield TokenEvent(token)
            raise EngineFailure(f"llama_decode returned -3 for {SECRET}")
        finally:
            self.active -= 1


@pytest.fixture
async def failing() -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(build_app(FailingEngine(REPLY))) as c:
        yield c


async def test_engine_failure_mid_stream_ends_with_one_error_event(
        failing: httpx.AsyncClient) -> None:
    response = await failing.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    events = sse_json(response.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1]) == "Hel"
    assert [e for e in events if "error" in e] == [events[-1]]
    error = events[-1]["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "engine_error"
    assert error["message"]
    assert SECRET not in error["message"] and "llama_decode" not in error["message"]


async def test_engine_failure_without_stream_is_500(failing: httpx.AsyncClient) -> None:
    response = await failing.post(CHAT, json=chat_body())
    error = assert_error(response, 500, type_="server_error", code="engine_error", param=None)
    assert SECRET not in error["message"] and "llama_decode" not in error["message"]
    assert "Traceback" not in response.text


async def test_the_server_serves_again_after_an_engine_failure(
        failing: httpx.AsyncClient) -> None:
    assert (await failing.post(CHAT, json=chat_body())).status_code == 500
    assert (await failing.get("/health")).status_code == 200
    assert (await failing.post(CHAT, json=chat_body())).status_code == 500
