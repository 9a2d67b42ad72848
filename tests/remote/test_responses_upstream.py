"""The Responses API as an upstream wire: the neutral request as a stateless Responses body, and
`response` objects and semantic events (as OpenAI, DeepSeek and seekserve send them) read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from seekserve.chat.passthrough import wire_for
from seekserve.chat.upstream_anthropic import build_messages_body
from seekserve.chat.upstream_responses import ResponsesWire, build_responses_body
from seekserve.engines.remote.profiles import PROFILES
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import (
    ChatRequest,
    FunctionTool,
    Message,
    ResponseFormat,
    ToolCall,
    ToolChoice,
)

TOOL = FunctionTool("get_weather", "Weather", {"type": "object", "properties": {}}, strict=True)


def test_the_profile_speaks_responses() -> None:
    assert isinstance(wire_for(PROFILES["responses"]), ResponsesWire)
    assert PROFILES["responses"].chat_path == "/responses"


def test_a_conversation_becomes_a_stateless_responses_body() -> None:
    req = ChatRequest(
        model="m", system="SYS", max_tokens=200, stop=("END",), temperature=0.2, seed=7,
        thinking=True, effort="max", tools=(TOOL,),
        tool_choice=ToolChoice("function", "get_weather"), parallel_tool_calls=False,
        presence_penalty=0.5,
        response_format=ResponseFormat("json_schema", {"name": "w", "strict": True,
                                                       "schema": {"type": "object"}}),
        messages=(Message("system", "MORE"), Message("user", "Weather?"),
                  Message("assistant", None, tool_calls=(
                      ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),),
                          reasoning="hidden"),
                  Message("tool", "12 C", tool_call_id="call_1"),
                  Message("assistant", "It is 12 C."),
                  Message("user", "Thanks")))
    body = build_responses_body(req, model="deepseek-v4-pro", stream=True, user="pseudo")
    assert body == {
        "model": "deepseek-v4-pro", "store": False, "instructions": "SYS",
        "max_output_tokens": 200, "temperature": 0.2, "stop": ["END"], "seed": 7,
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {}}, "strict": True}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                            "strict": True}},
        "reasoning": {"effort": "max"}, "user": "pseudo", "stream": True,
        "input": [
            {"type": "message", "role": "system", "content": "MORE"},
            {"type": "message", "role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city": "Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "12 C"},
            {"type": "message", "role": "assistant", "content": "It is 12 C."},
            {"type": "message", "role": "user", "content": "Thanks"}]}


@pytest.mark.parametrize(("thinking", "effort", "default", "reasoning"), [
    (False, None, True, {"effort": "none"}),
    (None, None, False, {"effort": "none"}),
    (True, None, None, {"effort": "high"}),
    (None, "low", None, {"effort": "low"}),
    (None, None, None, None),
])
def test_thinking_is_said_as_reasoning_effort(thinking: bool | None, effort: str | None,
                                              default: bool | None,
                                              reasoning: dict[str, str] | None) -> None:
    req = ChatRequest(model="m", messages=(Message("user", "Hi"),), thinking=thinking,
                      effort=effort)
    body = build_responses_body(req, model="m", stream=False, user=None,
                                default_thinking=default)
    assert body.get("reasoning") == reasoning
    assert "user" not in body and body["stream"] is False


@pytest.mark.parametrize(("build", "fields", "param"), [
    (build_responses_body, {"logprobs": True}, "logprobs"),
    (build_responses_body, {"messages": (Message("user", "Hi"),
                                         Message("assistant", "Once", prefix=True))},
     "messages"),
    (build_messages_body, {"response_format": ResponseFormat("json_object")},
     "response_format"),
    (build_messages_body, {"logprobs": True}, "logprobs"),
], ids=["responses-logprobs", "responses-prefix", "messages-json", "messages-logprobs"])
def test_what_an_upstream_api_cannot_take_is_a_400(build: Callable[..., Any],
                                                   fields: dict[str, Any], param: str) -> None:
    """Both non-chat upstream wires (Responses here, Anthropic Messages) refuse, naming the
    field, what their API has no way to say."""
    req = ChatRequest(model="m", **{"messages": (Message("user", "Hi"),), **fields})
    with pytest.raises(InvalidRequestError) as caught:
        build(req, model="m", stream=False, user=None)
    assert caught.value.param == param


def test_a_stream_reads_back_into_deltas_a_finish_and_usage() -> None:
    reader = ResponsesWire().reader(PROFILES["responses"])
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": {"status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_1"}},
        {"type": "response.reasoning_text.delta", "output_index": 0, "delta": "Hmm, "},
        {"type": "response.reasoning_text.delta", "output_index": 0, "delta": "weather."},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "message", "role": "assistant", "content": []}},
        {"type": "response.output_text.delta", "output_index": 1, "delta": "Let me look."},
        {"type": "response.output_text.done", "output_index": 1, "text": "Let me look."},
        {"type": "response.output_item.added", "output_index": 2,
         "item": {"type": "function_call", "call_id": "call_9", "name": "f", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": '{"a": '},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "1}"},
        {"type": "response.function_call_arguments.done", "output_index": 2,
         "arguments": '{"a": 1}'},
        {"type": "response.completed", "response": {"status": "completed", "usage": {
            "input_tokens": 100, "input_tokens_details": {"cached_tokens": 70},
            "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 5},
            "total_tokens": 112}}},
    ]
    pieces = [reader.chunk(e) for e in events]
    deltas = [p.delta for p in pieces if p.delta is not None]
    assert "".join(d.reasoning for d in deltas) == "Hmm, weather."
    assert "".join(d.text for d in deltas) == "Let me look."
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert (calls[0].index, calls[0].id, calls[0].name) == (0, "call_9", "f")
    assert "".join(c.arguments for c in calls) == '{"a": 1}'
    [end] = [p for p in pieces if p.finish_reason is not None]
    assert end.finish_reason == "tool_calls" and end.usage is not None
    assert (end.usage.prompt_tokens, end.usage.cached_tokens, end.usage.completion_tokens,
            end.usage.reasoning_tokens) == (100, 70, 12, 5)


@pytest.mark.parametrize(("event", "reason", "error"), [
    ({"type": "response.incomplete", "response": {
        "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}},
     "length", None),
    ({"type": "response.incomplete", "response": {
        "status": "incomplete", "incomplete_details": {"reason": "content_filter"}}},
     "content_filter", None),
    ({"type": "response.failed", "response": {
        "status": "failed", "error": {"code": "server_error", "message": "boom"}}}, None, "boom"),
    ({"type": "error", "code": "server_error", "message": "Overloaded"}, None, "Overloaded"),
])
def test_how_a_stream_ends(event: dict[str, Any], reason: str | None, error: str | None) -> None:
    piece = ResponsesWire().reader(PROFILES["responses"]).chunk(event)
    assert (piece.finish_reason, piece.error) == (reason, error)


def test_a_whole_response_reads_back() -> None:
    reader = ResponsesWire().reader(PROFILES["responses"])
    piece = reader.whole({
        "object": "response", "status": "completed", "error": None,
        "output": [
            {"type": "reasoning", "summary": [],
             "content": [{"type": "reasoning_text", "text": "Think."}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hello", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}})
    assert piece.delta is not None
    assert (piece.delta.text, piece.delta.reasoning) == ("Hello", "Think.")
    [call] = piece.delta.tool_calls or []
    assert (call.id, call.name, call.arguments) == ("call_1", "f", "{}")
    assert piece.finish_reason == "tool_calls"
    assert piece.usage is not None and (piece.usage.prompt_tokens,
                                        piece.usage.completion_tokens) == (5, 2)
    failed = reader.whole({"status": "failed", "output": [],
                           "error": {"code": "server_error", "message": "down"}})
    assert failed.error == "down"
