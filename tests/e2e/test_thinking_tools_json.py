"""Thinking mode, tool calls and JSON mode on the real default model through the openai SDK."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server, usage_row
from tests.e2e.test_tenancy_e2e import eventually
from tests.e2e.tools import (
    CITIES,
    TIME_DESCRIPTION,
    TIME_PARAMS,
    WEATHER_DESCRIPTION,
    WEATHER_PARAMS,
)

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
OFF = {"thinking": {"type": "disabled"}}
BUDGETS = {"low": 12, "high": 40, "max": 80}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": WEATHER_DESCRIPTION,
    "parameters": WEATHER_PARAMS, "strict": True}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": TIME_DESCRIPTION, "parameters": TIME_PARAMS}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model with small thinking budgets (these tests check the mechanism; the
    defaults are for users). The prefix cache is on, so the many tool calls share their prompt's
    computed prefix; a seeded comparison gives each request a user_id of its own (`cold()`), so
    neither computation reuses the other's cells and the seed repeats exactly."""
    config = {"models": [{"id": MODEL, "thinking": {"budgets": BUDGETS}}]}
    data_dir = tmp_path_factory.mktemp("thinking-data")
    srv = start_server(config, tmp_path_factory.mktemp("thinking"), thinking=None,
                       env={"SEEKSERVE_DATA_DIR": str(data_dir)})
    srv.data_dir = data_dir  # type: ignore[attr-defined]
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def cold() -> dict[str, str]:
    """A user_id of its own: the request's prompt is computed afresh (the cache is per user)."""
    return {"user_id": "cold-" + secrets.token_hex(6)}


def in_parallel(fn: Any, items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:  # the engine batches 8 sequences
        return list(pool.map(fn, items))


def test_thinking_by_default_returns_reasoning_then_an_answer(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 12 + 30? Answer briefly."}],
        max_tokens=120, seed=3, extra_body=cold())
    message = response.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert isinstance(reasoning, str) and reasoning.strip()
    assert message.content and message.content.strip()
    assert "</think>" not in message.content and "<think>" not in reasoning
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    reasoning_tokens = response.usage.completion_tokens_details.reasoning_tokens
    assert reasoning_tokens is not None
    # The block is at most the high budget plus the tokens of its closing tag.
    assert 0 < reasoning_tokens <= BUDGETS["high"] + 5
    assert reasoning_tokens < response.usage.completion_tokens


def test_streamed_split_equals_the_non_streamed_one(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL, "seed": 11, "max_tokens": 100,
        "messages": [{"role": "user", "content": "Name a prime number above 20."}]}
    whole = client.chat.completions.create(extra_body=cold(), **kwargs)
    reasoning = content = ""
    usage = None
    for chunk in client.chat.completions.create(stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body=cold(), **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    message = whole.choices[0].message
    assert (reasoning, content) == (getattr(message, "reasoning_content", None),
                                    message.content)
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens_details == whole.usage.completion_tokens_details


def test_effort_sets_the_thinking_budget(client: openai.OpenAI) -> None:
    def reasoning_tokens(effort: str) -> int:
        response = client.chat.completions.create(
            model=MODEL, max_tokens=BUDGETS["max"] + 20, seed=5,
            messages=[{"role": "user", "content":
                       "Explain in great detail, step by step, how a compiler works."}],
            extra_body={"thinking": {"type": "enabled", "reasoning_effort": effort}, **cold()})
        assert response.usage is not None and response.usage.completion_tokens_details
        tokens = response.usage.completion_tokens_details.reasoning_tokens
        assert tokens is not None
        return tokens

    low, high, top = reasoning_tokens("low"), reasoning_tokens("medium"), reasoning_tokens("max")
    close = 5  # tokens of the forced "\n</think>\n\n"
    assert low <= BUDGETS["low"] + close
    assert high <= BUDGETS["high"] + close
    assert top <= BUDGETS["max"] + close
    # A long explanation does not end its own thinking early: each effort uses its budget.
    assert low < high < top


def test_required_tool_calls_validate_against_the_schema_20_of_20(
        client: openai.OpenAI) -> None:
    def ask(city: str) -> list[Any]:
        # One call per answer for half of them: the 0.5B model repeats a call until the
        # parallel-call cap otherwise, which is valid but slow.
        response = client.chat.completions.create(
            model=MODEL, tools=[WEATHER, TIME], tool_choice="required", max_tokens=200,
            messages=[{"role": "user", "content": f"What will the weather be in {city}?"}],
            parallel_tool_calls=CITIES.index(city) % 2 == 0, extra_body=OFF)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        return list(choice.message.tool_calls)

    for calls in in_parallel(ask, CITIES):
        for call in calls:
            assert call.id.startswith("call_")
            args = json.loads(call.function.arguments)
            schema = WEATHER_PARAMS if call.function.name == "get_weather" else \
                TIME["function"]["parameters"]  # type: ignore[index]
            jsonschema.validate(args, schema)


def test_a_named_function_is_called_with_valid_arguments_10_of_10(
        client: openai.OpenAI) -> None:
    def ask(city: str) -> Any:
        response = client.chat.completions.create(
            model=MODEL, tools=[TIME, WEATHER], max_tokens=120,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": f"Should I take an umbrella in {city}?"}],
            extra_body=OFF)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        return call

    for call in in_parallel(ask, CITIES[:10]):
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_a_streamed_tool_call_arrives_in_pieces_that_add_up(client: openai.OpenAI) -> None:
    pieces: list[Any] = []
    finish = None
    for chunk in client.chat.completions.create(
            model=MODEL, tools=[WEATHER], stream=True, max_tokens=120,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "Weather in Oslo for 3 days?"}]):
        for choice in chunk.choices:
            pieces.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    assert len(pieces) > 2  # header, then arguments in fragments
    arguments = "".join(p.function.arguments or "" for p in pieces)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)


def test_tool_choice_none_never_calls(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", max_tokens=60,
        messages=[{"role": "user", "content": "What's the weather in Paris? Use the tool."}],
        extra_body=OFF)
    choice = response.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason in ("stop", "length")
    assert "<tool_call>" not in (choice.message.content or "")


@pytest.mark.parametrize("thinking", [False, True])
def test_a_full_tool_round_trip(client: openai.OpenAI, thinking: bool) -> None:
    extra = {"thinking": {"type": "enabled", "reasoning_effort": "low"}} if thinking else OFF
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Lima today?"}]
    first = client.chat.completions.create(model=MODEL, tools=[WEATHER], tool_choice="required",
                                           messages=messages, max_tokens=160, extra_body=extra)
    message = first.choices[0].message
    call = (message.tool_calls or [])[0]
    assistant: dict[str, Any] = {"role": "assistant", "content": message.content,
                                 "tool_calls": [call.model_dump()]}
    if thinking:
        reasoning = getattr(message, "reasoning_content", None)
        assert reasoning
        assistant["reasoning_content"] = reasoning
    messages += [assistant, {"role": "tool", "tool_call_id": call.id,
                             "content": json.dumps({"forecast": "sunny", "celsius": 24})}]
    second = client.chat.completions.create(model=MODEL, tools=[WEATHER], messages=messages,
                                            max_tokens=120, extra_body=extra)
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "tool_calls", "length")
    assert answer.message.content or answer.message.tool_calls
    # The call and its result went back into the prompt (what the 0.5B model makes of them
    # is its own business).
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 20
    if thinking:  # the same history without the reasoning is refused
        del assistant["reasoning_content"]
        with pytest.raises(openai.BadRequestError, match="reasoning_content"):
            client.chat.completions.create(model=MODEL, tools=[WEATHER], messages=messages,
                                           max_tokens=20, extra_body=extra)


def test_a_client_leaving_a_constrained_thinking_stream_frees_it_and_leaves_a_row(
        server: Server) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": 400, "tools": [WEATHER],
            "tool_choice": "required", "user_id": "leaver",
            "thinking": {"type": "enabled", "reasoning_effort": "max"},
            "messages": [{"role": "user", "content": "Plan a week of weather checks."}]}
    with server.http() as http, http.stream("POST", "/v1/chat/completions",
                                            json=body) as response:
        lines = response.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: {") and "reasoning_content" in line:
                seen += 1
                if seen == 3:
                    break
        assert seen == 3
    with server.http() as http:
        freed = eventually(lambda: http.get("/ready").json()["engines"]["embedded"][
            "running"] == 0, within=3)
    assert freed, "the sequence kept running after its client left"

    usage = eventually(lambda: usage_row(server.data_dir, "leaver"), within=10)
    assert usage is not None and usage["status"] == "cancelled"
    assert usage["completion_tokens"] >= 3


JSON_TOPICS = ["a cat", "a city", "a book", "a car", "a planet", "a song", "a recipe",
               "a laptop", "a tree", "a river", "a movie", "a bird", "a chair", "a phone",
               "a mountain", "a painting"]


def test_json_mode_always_parses_16_prompts_streamed_and_not(client: openai.OpenAI) -> None:
    """16 topics, every other one streamed. The 320-request version, with adversarial prompts,
    schemas, tool calls and tiny max_tokens, is tests/reliability/test_json_closing.py."""
    def ask(item: tuple[str, bool]) -> str:
        topic, stream = item
        kwargs: dict[str, Any] = {
            # JSON mode forces the closing of the object when the tokens left just fit it.
            "model": MODEL, "response_format": {"type": "json_object"}, "max_tokens": 200,
            "messages": [{"role": "user", "content":
                          f"Describe {topic} as a short JSON object (a few keys)."}],
            "extra_body": OFF}
        if not stream:
            choice = client.chat.completions.create(**kwargs).choices[0]
            assert choice.finish_reason == "stop", choice.message.content
            return choice.message.content or ""
        text = ""
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                text += c.delta.content or ""
                assert c.finish_reason in (None, "stop"), text
        return text

    items = [(topic, i % 2 == 1) for i, topic in enumerate(JSON_TOPICS)]
    for text in in_parallel(ask, items):
        assert isinstance(json.loads(text), dict)


def test_json_schema_is_guaranteed_after_thinking(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "legs": {"type": "integer", "minimum": 0},
        "sounds": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["name", "legs", "sounds"], "additionalProperties": False}
    response = client.chat.completions.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Describe a duck."}],
        response_format={"type": "json_schema", "json_schema": {"name": "animal",
                                                                "schema": schema}},
        extra_body={"thinking": {"type": "enabled", "reasoning_effort": "low"}})
    message = response.choices[0].message
    assert getattr(message, "reasoning_content", None)
    jsonschema.validate(json.loads(message.content or ""), schema)


@pytest.mark.parametrize("fields, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}]},
     "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"minimum": "zero"}}}}}},
     "response_format.json_schema"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_bad_tools_schemas_and_efforts_are_400s(client: openai.OpenAI, fields: dict[str, Any],
                                                param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_body=fields)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param") == param, body
