"""Anthropic's Messages API through the HTTP layer, on the scripted engine: the `message` and
its event stream field by field, claude-* names, thinking blocks signed and checked, tool use,
documents, count_tokens, tenancy (keys by x-api-key, limits, budgets, moderation, the ledger)
and every error in Anthropic's shape, with a table of 400s that name their field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from seekserve.app import create_app
from seekserve.chat.structured import SequenceConstraint
from seekserve.protocol.signing import sign_reasoning, signing_key
from seekserve.settings import Settings
from tests.api.conftest import MAAS_MODEL, MODEL, REPLY, asgi_client, build_app, live_server
from tests.api.test_tenancy_wiring import (
    CACHED,
    FLAGGED_REPLY,
    STATIC,
    OverloadedEngine,
    ScriptedEngine,
    create_key,
    settings,
    usage_rows,
)
from tests.fakes import FakeEngine

MESSAGES = "/anthropic/v1/messages"
COUNT = "/anthropic/v1/messages/count_tokens"
REASONED = "\nThe user greets me.\n</think>\n\nHello there!"
CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"unit": "celsius"}}\n</tool_call>')
WEATHER = {"name": "get_weather", "description": "Weather of a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}
THINKING = {"type": "enabled", "budget_tokens": 40}


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid Messages request, with `fields` added or replaced."""
    return {"model": MODEL, "max_tokens": 100,
            "messages": [{"role": "user", "content": "Say hello."}], **fields}


def thinking_app(engine: FakeEngine, **overrides: Any) -> FastAPI:
    """The default V4 model (thinking on unless a request turns it off)."""
    return build_app(engine, models=[{"id": MODEL, "aliases": [MAAS_MODEL]}], **overrides)


def key_of(app: FastAPI) -> bytes:
    key: bytes = app.state.services.signing_key
    return key


def prompt_text(engine: FakeEngine) -> str:
    return bytes(t - 3 for t in engine.requests[-1].prompt if t >= 3).decode()


def events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of each SSE event; the name always equals the payload's type."""
    out = []
    for chunk in raw.split("\n\n"):
        lines = chunk.splitlines()
        name = next((ln[len("event: "):] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[len("data: "):] for ln in lines if ln.startswith("data: ")), None)
        if data is None:
            continue
        payload = json.loads(data)
        assert name == payload["type"]
        out.append((name, payload))
    return out


def accumulate(stream: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a stream builds, as the SDK's accumulator builds it."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, event in stream:
        if name == "message_start":
            message = event["message"]
        elif name == "content_block_start":
            assert event["index"] == len(message["content"])
            message["content"].append(dict(event["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                block["text"] += delta["text"]
            elif kind == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif kind == "signature_delta":
                block["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif name == "content_block_stop":
            if event["index"] in partial:
                message["content"][event["index"]]["input"] = json.loads(partial[event["index"]])
        elif name == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """The message of an error in Anthropic's shape, after checking status and type."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"type", "error"} and payload["type"] == "error"
    assert set(payload["error"]) == {"type", "message"}
    assert payload["error"]["type"] == kind
    message: str = payload["error"]["message"]
    return message


@pytest.fixture
async def client(engine: FakeEngine) -> Any:
    async with asgi_client(build_app(engine)) as c:
        yield c


# ----- the message, whole and streamed -----


async def test_a_message_has_every_field_with_real_values(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(MESSAGES, json=body(), headers={"x-api-key": STATIC})
        assert response.status_code == 200, response.text
        message = response.json()
        prompt = len(engine.requests[-1].prompt)
    assert message["id"].startswith("msg_") and len(message["id"]) > 10
    assert {k: v for k, v in message.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": REPLY}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": prompt - CACHED, "output_tokens": len(REPLY) + 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": CACHED}}


@pytest.mark.parametrize("path", ["/anthropic/v1/messages", "/v1/messages",
                                  "/v1/ai/maas-deepseek/anthropic/v1/messages"])
async def test_every_route_answers_a_message(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json=body(model=MAAS_MODEL))
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": REPLY}]


async def test_the_stream_follows_anthropics_event_grammar(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app) as client:
        whole = (await client.post(MESSAGES, json=body(), headers={"x-api-key": STATIC})).json()
        response = await client.post(MESSAGES, json=body(stream=True),
                                     headers={"x-api-key": STATIC})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    names = [name for name, _ in stream]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[2:-3]) == {"content_block_delta"}
    start = stream[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == (
        [], None, 0)
    assert start["usage"]["input_tokens"] == len(engine.requests[-1].prompt)
    built = accumulate(stream)
    assert {k: v for k, v in built.items() if k != "id"} == \
        {k: v for k, v in whole.items() if k != "id"}


async def test_max_tokens_and_stop_sequences_set_the_stop_reason(
        client: httpx.AsyncClient) -> None:
    cut = (await client.post(MESSAGES, json=body(max_tokens=5))).json()
    assert (cut["content"][0]["text"], cut["stop_reason"], cut["stop_sequence"]) == (
        REPLY[:5], "max_tokens", None)
    stopped = (await client.post(MESSAGES, json=body(stop_sequences=["xyz", "fake"]))).json()
    assert (stopped["content"][0]["text"], stopped["stop_reason"], stopped["stop_sequence"]) == (
        "Hello from the ", "stop_sequence", "fake")
    stream = events((await client.post(MESSAGES, json=body(stop_sequences=["fake"],
                                                           stream=True))).text)
    assert stream[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "fake"}


async def test_system_text_blocks_and_sampling_reach_the_prompt(
        engine: FakeEngine, client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json=body(
        system=[{"type": "text", "text": "SYSTEM-ONE", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "SYSTEM-TWO"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "FIRST"}]},
                  {"role": "assistant", "content": "REPLY-ONE"},
                  {"role": "user", "content": "SECOND"}],
        temperature=0.3, top_p=0.5, top_k=7, metadata={"user_id": "u-1"},
        anthropic_future_field=1, container=None, service_tier="auto"))
    assert response.status_code == 200, response.text
    prompt = prompt_text(engine)
    order = [prompt.index(s) for s in ("SYSTEM-ONE", "SYSTEM-TWO", "FIRST", "REPLY-ONE",
                                       "SECOND")]
    assert order == sorted(order)
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p) == (0.3, 0.5)


async def test_a_last_assistant_message_is_continued(engine: FakeEngine,
                                                     client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json=body(messages=[
        {"role": "user", "content": "Greet me."},
        {"role": "assistant", "content": "PREFILLED"}]))
    assert response.status_code == 200
    assert prompt_text(engine).endswith("PREFILLED")


# ----- claude-* names -----


async def test_claude_names_map_as_deepseek_maps_them() -> None:
    engine = FakeEngine(REPLY)
    models = [{"id": MODEL, "thinking": {"default": "disabled"}},
              {"id": "deepseek-flash", "thinking": {"default": "disabled"}}]
    async with asgi_client(build_app(engine, models=models)) as client:
        for name, served in [("claude-opus-4-1", MODEL), ("claude-sonnet-4-5", "deepseek-flash"),
                             ("claude-haiku-4-5", "deepseek-flash"), ("claude", "deepseek-flash"),
                             ("deepseek-flash", "deepseek-flash"), (MODEL, MODEL)]:
            response = await client.post(MESSAGES, json=body(model=name))
            assert response.status_code == 200, response.text
            assert response.json()["model"] == served
        message = anthropic_error(await client.post(MESSAGES, json=body(model="gpt-4o")),
                                  400, "invalid_request_error")
        assert "model" in message and "gpt-4o" in message


async def test_one_model_takes_every_claude_name_and_the_table_is_configurable() -> None:
    async with asgi_client(build_app(FakeEngine(REPLY))) as client:
        response = await client.post(MESSAGES, json=body(model="claude-sonnet-4-5"))
        assert response.json()["model"] == MODEL
    app = build_app(FakeEngine(REPLY), anthropic={"model_map": {"my-": MODEL}})
    async with asgi_client(app) as client:
        assert (await client.post(MESSAGES, json=body(model="my-model"))).status_code == 200
        anthropic_error(await client.post(MESSAGES, json=body(model="claude-opus-4")),
                        400, "invalid_request_error")


# ----- thinking -----


async def test_thinking_blocks_are_signed_streamed_and_passed_back() -> None:
    engine = FakeEngine(REASONED)
    app = thinking_app(engine)
    async with asgi_client(app) as client:
        message = (await client.post(MESSAGES, json=body(thinking=THINKING))).json()
        thinking, text = message["content"]
        assert thinking == {"type": "thinking", "thinking": "The user greets me.",
                            "signature": sign_reasoning(key_of(app), "The user greets me.")}
        assert text == {"type": "text", "text": "Hello there!"}
        constraint = engine.requests[-1].constraint
        assert isinstance(constraint, SequenceConstraint) and constraint.think_budget == 40
        stream = events((await client.post(MESSAGES, json=body(thinking=THINKING,
                                                               stream=True))).text)
        kinds = [e["delta"]["type"] for n, e in stream if n == "content_block_delta"]
        assert kinds.index("signature_delta") < kinds.index("text_delta")
        assert accumulate(stream)["content"] == message["content"]
        # Passed back unchanged: accepted; changed or foreign: a 400 naming the block.
        turns = [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": message["content"]},
                 {"role": "user", "content": "Again"}]
        ok = await client.post(MESSAGES, json=body(thinking=THINKING, messages=turns))
        assert ok.status_code == 200, ok.text
        turns[1]["content"] = [{**thinking, "thinking": "Something else."}, text]
        bad = anthropic_error(await client.post(MESSAGES, json=body(messages=turns)),
                              400, "invalid_request_error")
        assert bad.startswith("messages[1].content[0].signature")
        foreign = sign_reasoning(signing_key(b"another server"), thinking["thinking"])
        turns[1]["content"] = [{**thinking, "signature": foreign}, text]
        anthropic_error(await client.post(MESSAGES, json=body(messages=turns)),
                        400, "invalid_request_error")


async def test_thinking_disabled_and_absent_follow_the_request_and_the_model() -> None:
    engine = FakeEngine("Plain answer.")
    async with asgi_client(thinking_app(engine)) as client:
        off = (await client.post(MESSAGES, json=body(thinking={"type": "disabled"}))).json()
        assert off["content"] == [{"type": "text", "text": "Plain answer."}]
        assert engine.requests[-1].constraint is None


async def test_reasoning_must_come_back_after_tool_use_in_thinking_mode() -> None:
    engine = FakeEngine("Done.")
    app = thinking_app(engine)
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}
    async with asgi_client(app) as client:
        turns = [{"role": "user", "content": "Weather?"},
                 {"role": "assistant", "content": [call]},
                 {"role": "user", "content": [result]}]
        missing = anthropic_error(await client.post(MESSAGES, json=body(
            thinking=THINKING, tools=[WEATHER], messages=turns)), 400, "invalid_request_error")
        assert missing.startswith("messages[1].content")
        signed = {"type": "thinking", "thinking": "NEED-WEATHER",
                  "signature": sign_reasoning(key_of(app), "NEED-WEATHER")}
        turns[1]["content"] = [signed, call]
        ok = await client.post(MESSAGES, json=body(thinking=THINKING, tools=[WEATHER],
                                                   messages=turns))
        assert ok.status_code == 200, ok.text
        assert "NEED-WEATHER" in prompt_text(engine) and "18 C" in prompt_text(engine)


# ----- tools -----


async def test_a_tool_call_is_a_tool_use_block_streamed_and_not() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(build_app(engine)) as client:
        fields = {"tools": [WEATHER], "tool_choice": {"type": "any"}}
        message = (await client.post(MESSAGES, json=body(**fields))).json()
        [block] = message["content"]
        assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
        assert (block["name"], block["input"]) == ("get_weather",
                                                   {"city": "Paris", "unit": "celsius"})
        assert message["stop_reason"] == "tool_use"
        stream = events((await client.post(MESSAGES, json=body(stream=True, **fields))).text)
        start = next(e for n, e in stream if n == "content_block_start")
        assert start["content_block"]["type"] == "tool_use"
        assert start["content_block"]["id"].startswith("toolu_")
        built = accumulate(stream)
        assert built["content"][0]["input"] == block["input"]
        assert built["stop_reason"] == "tool_use"


async def test_tool_choice_modes_become_the_chat_layers() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(build_app(engine)) as client:
        await client.post(MESSAGES, json=body(tools=[WEATHER],
                                              tool_choice={"type": "tool", "name": "get_weather",
                                                           "disable_parallel_tool_use": True}))
        constraint = engine.requests[-1].constraint
        assert isinstance(constraint, SequenceConstraint)
        lark = constraint.answer.lark
        assert lark is not None and "get_weather" in lark and "{0," not in lark
        none = (await client.post(MESSAGES, json=body(tools=[WEATHER],
                                                      tool_choice={"type": "none"}))).json()
        assert none["stop_reason"] == "end_turn" and none["content"][0]["type"] == "text"


async def test_a_tool_round_trip_puts_the_result_in_the_prompt(
        engine: FakeEngine, client: httpx.AsyncClient) -> None:
    turns = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_abc", "is_error": True,
             "content": [{"type": "text", "text": "STATION-DOWN"}]},
            {"type": "text", "text": "Try again?"}]}]
    response = await client.post(MESSAGES, json=body(tools=[WEATHER], messages=turns))
    assert response.status_code == 200, response.text
    prompt = prompt_text(engine)
    assert "Error: STATION-DOWN" in prompt and "Let me look." in prompt
    assert prompt.index("STATION-DOWN") < prompt.index("Try again?")


# ----- documents -----


async def test_documents_from_text_and_from_the_files_api(tmp_path: Path) -> None:
    engine = FakeEngine(REPLY)
    app = build_app(engine, api_keys=[STATIC], data_dir=tmp_path / "data")
    headers = {"x-api-key": STATIC}
    async with asgi_client(app) as client:
        up = await client.post("/v1/files", files={"file": ("notes.txt", b"VAULT-7319")},
                               data={"purpose": "user_data"}, headers=headers)
        assert up.status_code == 200, up.text
        content = [
            {"type": "document", "title": "Inline", "source": {
                "type": "text", "media_type": "text/plain", "data": "INLINE-TEXT"}},
            {"type": "document", "source": {"type": "file", "file_id": up.json()["id"]}},
            {"type": "text", "text": "Summarise."}]
        response = await client.post(MESSAGES, json=body(
            messages=[{"role": "user", "content": content}]), headers=headers)
        assert response.status_code == 200, response.text
        prompt = prompt_text(engine)
        assert "INLINE-TEXT" in prompt and "VAULT-7319" in prompt and "Inline" in prompt
        missing = anthropic_error(await client.post(MESSAGES, json=body(messages=[
            {"role": "user", "content": [{"type": "document", "source": {
                "type": "file", "file_id": "file-nope"}}]}]), headers=headers),
            400, "invalid_request_error")
        assert missing.startswith("messages[0].content[0].source.file_id") and \
            "file-nope" in missing


# ----- count_tokens -----


async def test_count_tokens_is_the_prompt_that_the_message_reports(
        client: httpx.AsyncClient) -> None:
    request = body(system="Be brief.", tools=[WEATHER])
    counted = await client.post(COUNT, json={k: v for k, v in request.items()
                                             if k != "max_tokens"})
    assert counted.status_code == 200, counted.text
    usage = (await client.post(MESSAGES, json=request)).json()["usage"]
    assert counted.json() == {"input_tokens": usage["input_tokens"]}
    for path in ("/v1/messages/count_tokens",
                 "/v1/ai/maas-deepseek/anthropic/v1/messages/count_tokens"):
        assert (await client.post(path, json=request)).json() == counted.json()
    anthropic_error(await client.post(COUNT, json={"model": MODEL, "messages": []}),
                    400, "invalid_request_error")


# ----- tenancy and errors in Anthropic's shape -----


async def test_keys_by_x_api_key_or_bearer_and_401s(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        missing = anthropic_error(await client.post(MESSAGES, json=body()),
                                  401, "authentication_error")
        assert "x-api-key" in missing
        anthropic_error(await client.post(MESSAGES, json=body(), headers={"x-api-key": "nope"}),
                        401, "authentication_error")
        anthropic_error(await client.post(COUNT, json=body(), headers={"x-api-key": "nope"}),
                        401, "authentication_error")
        key = await create_key(client)
        for headers in ({"x-api-key": key["key"]}, {"Authorization": f"Bearer {key['key']}"}):
            response = await client.post(MESSAGES, json=body(), headers={
                **headers, "anthropic-version": "2023-06-01",
                "anthropic-beta": "prompt-caching-2024-07-31"})
            assert response.status_code == 200, response.text


async def test_each_request_leaves_one_ledger_row_with_its_route_and_user(
        tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        key = await create_key(client)
        ids = []
        for path, stream in (("/anthropic/v1/messages", False), ("/v1/messages", True)):
            response = await client.post(path, json=body(
                stream=stream, metadata={"user_id": "alice"}), headers={"x-api-key": key["key"]})
            assert response.status_code == 200
            ids.append(response.json()["id"] if not stream
                       else events(response.text)[0][1]["message"]["id"])
        await client.post(COUNT, json=body(), headers={"x-api-key": key["key"]})
        rows = await usage_rows(app)
    assert sorted(rows) == sorted(ids)
    assert sorted((r["route"], r["user_id"], r["key_id"], r["status"]) for r in rows.values()) == [
        ("/anthropic/v1/messages", "alice", key["id"], "completed"),
        ("/v1/messages", "alice", key["id"], "completed")]


async def test_limits_and_budgets_answer_in_anthropics_shape(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        limited = await create_key(client, rpm=1)
        headers = {"x-api-key": limited["key"]}
        assert (await client.post(MESSAGES, json=body(), headers=headers)).status_code == 200
        refused = await client.post(MESSAGES, json=body(), headers=headers)
        anthropic_error(refused, 429, "rate_limit_error")
        assert int(refused.headers["retry-after"]) > 0
        poor = await create_key(client, budget_tokens=50)
        message = anthropic_error(await client.post(MESSAGES, json=body(max_tokens=1000),
                                                    headers={"x-api-key": poor["key"]}),
                                  402, "billing_error")
        assert message


async def test_an_overloaded_engine_is_529_overloaded_error(tmp_path: Path) -> None:
    app = build_app(OverloadedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(MESSAGES, json=body(), headers={"x-api-key": STATIC})
        anthropic_error(response, 529, "overloaded_error")
        assert response.headers["retry-after"] == "2"


async def test_too_large_a_body_is_413_request_too_large() -> None:
    app = build_app(FakeEngine(REPLY), limits={"max_body_bytes": 2048})
    async with asgi_client(app) as client:
        response = await client.post(MESSAGES, json=body(system="x" * 4096))
        assert "2048" in anthropic_error(response, 413, "request_too_large")


async def test_moderation_refuses_prompts_and_stops_output_as_refusal(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(FLAGGED_REPLY), **settings(tmp_path))
    async with asgi_client(app) as client:
        headers = {"x-api-key": STATIC}
        anthropic_error(await client.post(MESSAGES, json=body(messages=[
            {"role": "user", "content": "Say the forbidden phrase."}]), headers=headers),
            400, "invalid_request_error")
        message = (await client.post(MESSAGES, json=body(), headers=headers)).json()
        assert (message["content"][0]["text"], message["stop_reason"]) == (
            "The secret word is ", "refusal")
        stream = events((await client.post(MESSAGES, json=body(stream=True),
                                           headers=headers)).text)
        assert stream[-2][1]["delta"]["stop_reason"] == "refusal"


async def test_a_failure_after_the_stream_started_is_an_error_event(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(fail_after=3), **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(MESSAGES, json=body(stream=True),
                                     headers={"x-api-key": STATIC})
    stream = events(response.text)
    assert stream[0][0] == "message_start"
    name, last = stream[-1]
    assert name == "error" and last["error"]["type"] == "api_error"
    assert "message_stop" not in [n for n, _ in stream]


async def test_a_waiting_stream_is_kept_alive_with_ping_events() -> None:
    engine = FakeEngine("K", delay=0.5)
    app = build_app(engine, server={"keepalive_interval_s": 0.05})
    async with asgi_client(app) as client:
        response = await client.post(MESSAGES, json=body(stream=True))
    stream = events(response.text)
    assert ("ping", {"type": "ping"}) in stream
    assert accumulate([e for e in stream if e[0] != "ping"])["content"] == [
        {"type": "text", "text": "K"}]


# ----- the table of 400s -----

USER = {"role": "user", "content": "Hi"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}

BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"model": ""}, "model"),
    ({"model": "gpt-4o"}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "Hi"}, "messages"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "system", "content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "url", "url": "https://example.com/a.pdf"}}]}]},
     "messages[0].content[0].source.type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}]},
     "messages[0].content[0].tool_use_id"),
    ({"messages": [USER, {"role": "assistant", "content": [TOOL_USE]},
                   {"role": "user", "content": "No result"}]}, "messages[2].content"),
    ({"messages": [USER, {"role": "assistant", "content": [TOOL_USE]},
                   {"role": "assistant", "content": "Again"}]}, "messages[2]"),
    ({"messages": [USER, {"role": "assistant", "content": [TOOL_USE, TOOL_USE]}]},
     "messages[1].content[1].id"),
    ({"messages": [{"role": "user", "content": [TOOL_USE]}]}, "messages[0].content[0]"),
    ({"messages": [USER, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]},
     "messages[1].content[0]"),
    ({"messages": [USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "forged"}]}]},
     "messages[1].content[0].signature"),
    ({"messages": [USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sïgnature ☃"}]}]},
     "messages[1].content[0].signature"),
    ({"messages": [USER, {"role": "assistant", "content": [{"type": "thinking",
                                                            "thinking": "hmm"}]}]},
     "messages[1].content[0].signature"),
    ({"system": 5}, "system"),
    ({"system": [{"type": "image"}]}, "system[0].type"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"stop_sequences": [""]}, "stop_sequences"),
    ({"stop_sequences": ["s"] * 17}, "stop_sequences"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stream": "yes"}, "stream"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}, "tools[0].name"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "tools[0].input_schema"),
    ({"tools": [{"name": "f", "input_schema": {"type": "object", "properties": {
        "a": {"type": "no-such-type"}}}}]}, "tools[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]},
     "tools[0].type"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 0}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "maybe"}}, "thinking.type"),
    ({"metadata": {"user_id": "has space"}}, "metadata.user_id"),
    ({"metadata": {"user_id": "u" * 257}}, "metadata.user_id"),
    ({"max_tokens": 100_000}, "max_tokens"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_REQUESTS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_REQUESTS)])
async def test_bad_requests_are_400s_that_name_the_field(
        engine: FakeEngine, client: httpx.AsyncClient, fields: dict[str, Any],
        field: str) -> None:
    request = {k: v for k, v in body(**fields).items() if v is not None}
    message = anthropic_error(await client.post(MESSAGES, json=request),
                              400, "invalid_request_error")
    assert field in message, message
    assert engine.requests == []


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_a_400(client: httpx.AsyncClient,
                                                         raw: bytes) -> None:
    response = await client.post(MESSAGES, content=raw,
                                 headers={"content-type": "application/json"})
    assert "JSON" in anthropic_error(response, 400, "invalid_request_error")


async def test_an_empty_answer_is_one_empty_text_block_streamed_and_not() -> None:
    async with asgi_client(build_app(FakeEngine(""))) as client:
        whole = (await client.post(MESSAGES, json=body())).json()
        built = accumulate(events((await client.post(MESSAGES, json=body(stream=True))).text))
    assert whole["content"] == built["content"] == [{"type": "text", "text": ""}]


# ----- an upstream that speaks Anthropic (`upstream: anthropic`) -----


async def test_a_remote_engine_on_an_anthropic_upstream_serves_both_apis(
        tmp_path: Path) -> None:
    """A gateway whose model runs on another seekserve's /anthropic: the Messages route and
    chat completions both work, whole and streamed, tool calls included; the key goes as
    x-api-key too."""
    upstream_engine = FakeEngine(CALL)
    upstream = build_app(upstream_engine, api_keys=["sk-upstream"])
    async with live_server(upstream) as url:
        settings_ = Settings.load(
            None, data_dir=tmp_path / "gw",
            engines={"up": {"kind": "remote", "upstream": "anthropic", "health_interval_s": 0,
                            "replicas": [{"base_url": f"{url}/anthropic", "model": MODEL,
                                          "api_key_env": "SEEKSERVE_TEST_UPSTREAM_KEY"}]}},
            models=[{"id": "gw-model", "engine": "up"}])
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SEEKSERVE_TEST_UPSTREAM_KEY", "sk-upstream")
            gateway = create_app(settings_, {})
        async with asgi_client(gateway, timeout=30) as client:
            tools = {"tools": [WEATHER], "tool_choice": {"type": "any"}}
            message = (await client.post(MESSAGES, json=body(model="gw-model", **tools))).json()
            [block] = message["content"]
            assert (block["type"], block["name"], block["input"]) == (
                "tool_use", "get_weather", {"city": "Paris", "unit": "celsius"})
            assert message["stop_reason"] == "tool_use" and message["model"] == "gw-model"
            assert message["usage"]["input_tokens"] == len(upstream_engine.requests[-1].prompt)
            stream = events((await client.post(MESSAGES, json=body(
                model="gw-model", stream=True, **tools))).text)
            assert accumulate(stream)["content"][0]["input"] == block["input"]
            upstream_engine.reply = REPLY
            chat = await client.post("/v1/chat/completions", json={
                "model": "gw-model", "max_tokens": 50, "stop": ["fake"],
                "messages": [{"role": "system", "content": "SYS"},
                             {"role": "user", "content": "Say hello."}]})
            assert chat.status_code == 200, chat.text
            choice = chat.json()["choices"][0]
            assert (choice["message"]["content"], choice["finish_reason"],
                    choice["matched_stop"]) == ("Hello from the ", "stop", "fake")
            assert "SYS" in prompt_text(upstream_engine)


async def test_an_unknown_endpoint_path_is_404_not_found_error(client: httpx.AsyncClient
                                                               ) -> None:
    response = await client.post("/v1/ai/nope/anthropic/v1/messages", json=body())
    assert "nope" in anthropic_error(response, 404, "not_found_error")


async def test_the_openapi_description_documents_the_routes_and_the_request(
        client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/anthropic/v1/messages", "/v1/messages/count_tokens",
                 "/v1/ai/{endpointPath}/anthropic/v1/messages"):
        post = schema["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/MessagesRequest"}
        assert "529" in post["responses"]
    components = schema["components"]["schemas"]
    assert "thinking" in components["MessagesRequest"]["properties"]
    assert "function" in components["Tool"]["properties"]  # chat's Tool is not overwritten


async def test_redacted_thinking_is_dropped_and_adaptive_thinking_thinks() -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        turns = [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": [
                     {"type": "redacted_thinking", "data": "OPAQUE-DATA"},
                     {"type": "text", "text": "Hello."}]},
                 {"role": "user", "content": "Again"}]
        message = (await client.post(MESSAGES, json=body(
            messages=turns, thinking={"type": "adaptive"}))).json()
        assert [b["type"] for b in message["content"]] == ["thinking", "text"]
        assert "OPAQUE-DATA" not in prompt_text(engine)
        constraint = engine.requests[-1].constraint
        assert isinstance(constraint, SequenceConstraint) and constraint.think_budget > 0


async def test_deployments_bind_by_host_and_endpoint_path_as_for_chat(tmp_path: Path) -> None:
    """The seed deployments: `backend` by Host (its chat dialect is the output.text envelope),
    `maas-deepseek` by endpoint path; the Messages API answers in its own shape on each."""
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        headers = {"x-api-key": STATIC}
        by_host = await client.post("/v1/messages", json=body(),
                                    headers={**headers, "Host": "backend:8000"})
        by_path = await client.post("/v1/ai/maas-deepseek/anthropic/v1/messages", json=body(),
                                    headers=headers)
        plain = await client.post(MESSAGES, json=body(), headers=headers)
        rows = await usage_rows(app)
    for response in (by_host, by_path, plain):
        assert response.json()["content"] == [{"type": "text", "text": REPLY}]
    assert [rows[r.json()["id"]]["deployment"] for r in (by_host, by_path, plain)] == [
        "backend", "maas-deepseek", "deepseek"]
