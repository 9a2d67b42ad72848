"""The Messages API as an upstream wire: the neutral request as a Messages body, and Anthropic's
answers and events (as DeepSeek's /anthropic sends them) read back."""

from __future__ import annotations

from typing import Any

from seekserve.chat.upstream_anthropic import MessagesWire, build_messages_body
from seekserve.engines.remote.profiles import PROFILES
from seekserve.protocol.neutral import (
    ChatRequest,
    FunctionTool,
    Message,
    ToolCall,
    ToolChoice,
)

TOOL = FunctionTool("get_weather", "Weather", {"type": "object", "properties": {}})


def test_a_conversation_becomes_a_messages_body() -> None:
    req = ChatRequest(
        model="m", system="SYS", max_tokens=200, stop=("END",), temperature=0.2,
        thinking=True, thinking_budget=64, tools=(TOOL,),
        tool_choice=ToolChoice("function", "get_weather"), parallel_tool_calls=False,
        messages=(Message("system", "MORE"), Message("user", "Weather?"),
                  Message("assistant", None, tool_calls=(
                      ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}'),),
                          reasoning="hidden"),
                  Message("tool", "12 C", tool_call_id="toolu_1"),
                  Message("user", "Thanks")))
    body = build_messages_body(req, model="deepseek-v4-pro", stream=True, user="pseudo")
    assert body == {
        "model": "deepseek-v4-pro", "max_tokens": 200, "system": "SYS\n\nMORE",
        "stop_sequences": ["END"], "temperature": 0.2,
        "thinking": {"type": "enabled", "budget_tokens": 64},
        "metadata": {"user_id": "pseudo"}, "stream": True,
        "tools": [{"name": "get_weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "get_weather",
                        "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                               "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C"},
                {"type": "text", "text": "Thanks"}]}]}


def test_a_stream_reads_back_into_deltas_a_finish_and_usage() -> None:
    reader = MessagesWire().reader(PROFILES["anthropic"])
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {
            "input_tokens": 30, "cache_read_input_tokens": 70, "output_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": "1}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    pieces = [reader.chunk(e) for e in events]
    deltas = [p.delta for p in pieces if p.delta is not None]
    assert "".join(d.reasoning for d in deltas) == "Hmm."
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert (calls[0].index, calls[0].id, calls[0].name) == (0, "toolu_9", "f")
    assert "".join(c.arguments for c in calls) == '{"a": 1}'
    [end] = [p for p in pieces if p.finish_reason is not None]
    assert end.finish_reason == "tool_calls" and end.usage is not None
    assert (end.usage.prompt_tokens, end.usage.cached_tokens, end.usage.completion_tokens) == (
        100, 70, 12)
    error = reader.chunk({"type": "error", "error": {"type": "overloaded_error",
                                                      "message": "Overloaded"}})
    assert error.error == "Overloaded"


def test_a_whole_message_reads_back() -> None:
    reader = MessagesWire().reader(PROFILES["anthropic"])
    piece = reader.whole({
        "type": "message", "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "stop_sequence", "stop_sequence": "END",
        "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 0}})
    assert piece.delta is not None and piece.delta.text == "Hello"
    assert (piece.finish_reason, piece.matched_stop) == ("stop", "END")
    assert piece.usage is not None and piece.usage.prompt_tokens == 5
