"""Thinking mode, tool calls and JSON mode through the HTTP layer, on the fake engine: what the
prompt becomes, how the output is split and rendered (streamed and not), and every 400."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from seekserve.chat.structured import SequenceConstraint
from tests.api.conftest import MAAS_MODEL, MODEL, asgi_client, build_app, chat_body, sse_json
from tests.fakes import FakeEngine

CHAT = "/v1/chat/completions"
THINKING = {"type": "enabled"}
REASONED = "\nThe user greets me.\n</think>\n\nHello there!"
CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"unit": "celsius"}}\n</tool_call>')
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}


def thinking_app(engine: FakeEngine) -> Any:
    """The default V4 model: thinking on unless a request turns it off."""
    return build_app(engine, models=[{"id": MODEL, "aliases": [MAAS_MODEL]}])


def prompt_text(engine: FakeEngine) -> str:
    return bytes(t - 3 for t in engine.requests[-1].prompt if t >= 3).decode()


def constraint(engine: FakeEngine) -> SequenceConstraint:
    c = engine.requests[-1].constraint
    assert isinstance(c, SequenceConstraint)
    return c


async def post(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await client.post(CHAT, json=chat_body(**fields))


async def streamed(client: httpx.AsyncClient, **fields: Any) -> list[dict[str, Any]]:
    response = await post(client, stream=True, **fields)
    assert response.status_code == 200, response.text
    return [e["choices"][0] for e in sse_json(response.text) if e["choices"]]


async def test_thinking_is_on_by_default_and_splits_reasoning_from_the_answer() -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        body = (await post(client)).json()
        message = body["choices"][0]["message"]
        assert message["reasoning_content"] == "The user greets me."
        assert message["content"] == "Hello there!"
        assert prompt_text(engine).endswith("<think>\n")
        assert constraint(engine).think_budget == 160  # effort high, the default
        choices = await streamed(client)
        reasoning = "".join(c["delta"].get("reasoning_content") or "" for c in choices)
        content = "".join(c["delta"].get("content") or "" for c in choices)
        assert (reasoning, content) == ("The user greets me.", "Hello there!")
        # Reasoning comes first, and no chunk mixes in a partial tag.
        assert all("<" not in (c["delta"].get("content") or "") for c in choices)


async def test_thinking_disabled_leaves_the_prompt_open_and_has_no_reasoning() -> None:
    engine = FakeEngine("Plain answer.")
    async with asgi_client(thinking_app(engine)) as client:
        body = (await post(client, thinking={"type": "disabled"}, temperature=0.3)).json()
        message = body["choices"][0]["message"]
        assert message["content"] == "Plain answer." and "reasoning_content" not in message
        assert not prompt_text(engine).endswith("<think>\n")
        assert engine.requests[-1].constraint is None
        assert engine.requests[-1].sampling.temperature == 0.3


@pytest.mark.parametrize("effort, budget", [
    ("minimal", 48), ("low", 48), ("medium", 160), ("high", 160), ("xhigh", 160), ("max", 384)])
async def test_effort_maps_to_the_budget_as_deepseek_maps_it(effort: str, budget: int) -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        for fields in ({"thinking": {"type": "enabled", "reasoning_effort": effort}},
                       {"reasoning_effort": effort}):
            assert (await post(client, **fields)).status_code == 200
            assert constraint(engine).think_budget == budget


async def test_in_thinking_mode_temperature_and_top_p_have_no_effect() -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        await post(client, temperature=0.0, top_p=0.1, presence_penalty=1.0)
        sampling = engine.requests[-1].sampling
        assert (sampling.temperature, sampling.top_p) == (0.6, 0.95)


def tool_turns(reasoning: str | None) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    return [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "OLD-REASONING"},
        {"role": "user", "content": "Weather in Paris?"},
        assistant,
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]


async def test_reasoning_after_a_tool_call_is_required_and_kept_and_older_is_dropped() -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        missing = await post(client, messages=tool_turns(None), tools=[WEATHER])
        assert missing.status_code == 400
        error = missing.json()["error"]
        assert error["param"] == "messages[3].reasoning_content"
        assert "reasoning_content is required" in error["message"]
        ok = await post(client, messages=tool_turns("NEED-WEATHER"), tools=[WEATHER])
        assert ok.status_code == 200, ok.text
        prompt = prompt_text(engine)
        assert "NEED-WEATHER" in prompt and "OLD-REASONING" not in prompt
        # Without thinking the same history needs no reasoning.
        plain = await post(client, messages=tool_turns(None), tools=[WEATHER],
                           thinking={"type": "disabled"})
        assert plain.status_code == 200


async def test_a_tool_call_becomes_tool_calls_streamed_and_not() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(thinking_app(engine)) as client:
        fields = {"tools": [WEATHER], "tool_choice": "required",
                  "thinking": {"type": "disabled"}}
        body = (await post(client, **fields)).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
        rule = constraint(engine).answer
        assert rule.mode == "grammar" and rule.lark is not None and "get_weather" in rule.lark
        choices = await streamed(client, **fields)
        pieces = [p for c in choices for p in c["delta"].get("tool_calls") or []]
        assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == \
            "get_weather"
        assert all(p["index"] == 0 for p in pieces)
        assert "".join(p["function"]["arguments"] for p in pieces) == \
            call["function"]["arguments"]
        assert choices[-1]["finish_reason"] == "tool_calls"


async def test_tool_choice_modes_become_the_right_constraint() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(thinking_app(engine)) as client:
        off = {"thinking": {"type": "disabled"}, "tools": [WEATHER]}
        body = (await post(client, tool_choice="none", **off)).json()
        # `none` never makes a call: markup is not parsed (on the real model's vocabulary
        # the tag's token is also banned; tests/e2e check that).
        assert body["choices"][0]["finish_reason"] == "stop"
        assert "tool_calls" not in body["choices"][0]["message"]
        await post(client, tool_choice="auto", **off)
        # The fake vocabulary has no single-token tag: auto is free text, parsed.
        assert engine.requests[-1].constraint is None
        await post(client, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                   **off)
        lark = constraint(engine).answer.lark
        assert lark is not None and "{0," not in lark  # a named function: exactly one call


async def test_json_mode_is_a_grammar_after_free_thinking() -> None:
    engine = FakeEngine('\nok\n</think>\n\n{"a": 1}')
    async with asgi_client(thinking_app(engine)) as client:
        body = (await post(client, response_format={"type": "json_object"})).json()
        assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1}
        c = constraint(engine)
        assert c.think_budget == 160 and c.answer.mode == "grammar"
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        await post(client, response_format={"type": "json_schema", "json_schema": {
            "name": "n", "schema": schema}})
        assert '"n"' in (constraint(engine).answer.lark or "")


@pytest.mark.parametrize("fields, param, words", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "used twice"),
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}]},
     "tools[0].function.parameters", "bad"),
    ({"tools": [{"type": "function", "function": {"name": "arr", "parameters": {
        "type": "array"}}}]}, "tools[0].function.parameters", "type object"),
    ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}},
     "response_format.json_schema", "strin"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "must be one of"),
    ({"thinking": {"type": "enabled", "reasoning_effort": "huge"}},
     "thinking.reasoning_effort", "must be one of"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type", ""),
])
async def test_bad_tools_schemas_and_efforts_are_400s_naming_the_field(
        fields: dict[str, Any], param: str, words: str) -> None:
    async with asgi_client(thinking_app(FakeEngine())) as client:
        response = await post(client, **fields)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert words in error["message"]


async def test_a_model_without_thinking_refuses_it() -> None:
    app = build_app(FakeEngine(), models=[{"id": MODEL, "aliases": [MAAS_MODEL],
                                           "thinking": None}])
    async with asgi_client(app) as client:
        response = await post(client, thinking=THINKING)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "thinking.type"
        assert (await post(client)).status_code == 200  # and does not think by default
