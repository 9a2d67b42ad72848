"""Translation tables: upstream answers recorded from each kind's public documentation read back
into our Delta / Finished / Usage, and the request body each upstream kind is sent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from seekserve.chat.upstream import (
    Piece,
    build_body,
    estimate_prompt_tokens,
    parse_chunk,
    parse_completion,
)
from seekserve.engines.remote.profiles import PROFILES, error_message
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import ChatRequest, Usage
from seekserve.protocol.openai_chat import ChatCompletionRequest, to_chat_request
from seekserve.tenancy.identity import Caller, RequestIdentity


def upstream_user(key_digest: bytes, user_id: str | None) -> str | None:
    """The end user's pseudonym the gateway derives for (key, user_id)."""
    return RequestIdentity.of(Caller(key_digest), user_id, cache_secret=b"").upstream_user

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / name).read_text())
    assert data["source"].startswith(("https://", "The third seed"))
    return data


@dataclass
class Folded:
    """Pieces of one answer put together, as a client would see the whole."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish: str | None = None
    matched_stop: str | None = None
    usage: Usage | None = None
    deltas: int = 0


def fold(pieces: list[Piece]) -> Folded:
    out = Folded()
    for piece in pieces:
        assert piece.error is None
        if piece.delta is not None:
            out.deltas += 1
            out.text += piece.delta.text
            out.reasoning += piece.delta.reasoning
            for call in piece.delta.tool_calls or []:
                entry = out.calls.setdefault(call.index, {"id": None, "name": None,
                                                           "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] = call.name or entry["name"]
                entry["arguments"] += call.arguments
        if piece.finish_reason is not None:
            out.finish, out.matched_stop = piece.finish_reason, piece.matched_stop
        out.usage = piece.usage or out.usage
    return out


def stream_of(name: str) -> Folded:
    return fold([parse_chunk(chunk) for chunk in recorded(name)["chunks"]])


def test_deepseek_non_streamed_answer() -> None:
    piece = parse_completion(recorded("deepseek_chat.json")["body"])
    folded = fold([piece])
    assert folded.text == "Hello! How can I assist you today? 😊"
    assert folded.reasoning == ""
    assert (folded.finish, folded.matched_stop) == ("stop", None)
    assert folded.usage == Usage(prompt_tokens=10, completion_tokens=11, cached_tokens=0,
                                 reasoning_tokens=0)


def test_deepseek_reasoner_stream_separates_reasoning_and_counts_it() -> None:
    folded = stream_of("deepseek_reasoner_stream.json")
    assert folded.reasoning == "好的，"
    assert folded.text == "纱！"
    # The role-only first chunk and the empty finishing delta carry nothing to show.
    assert folded.deltas == 4
    assert folded.finish == "stop"
    assert folded.usage == Usage(prompt_tokens=6, completion_tokens=1552, cached_tokens=0,
                                 reasoning_tokens=199)


def test_maas_answer_with_reasoning_and_native_finish() -> None:
    folded = fold([parse_completion(recorded("maas_thinking.json")["body"])])
    assert folded.text == "Hello! How can I help you today?"
    assert folded.reasoning.startswith("We are starting a conversation with the user.")
    assert folded.finish == "stop"
    assert folded.usage == Usage(prompt_tokens=10, completion_tokens=68, cached_tokens=0,
                                 reasoning_tokens=58)


def test_vllm_stream_reads_the_renamed_reasoning_field_stop_reason_and_cached_tokens() -> None:
    folded = stream_of("vllm_reasoning_stream.json")
    assert folded.reasoning == "9.8 has more tenths."
    assert folded.text == "9.8 is greater."
    assert (folded.finish, folded.matched_stop) == ("stop", "\n\n")
    assert folded.usage == Usage(prompt_tokens=18, completion_tokens=13, cached_tokens=16)


def test_vllm_tool_call_pieces_join_into_one_call() -> None:
    folded = stream_of("vllm_tool_calls.json")
    assert folded.calls == {0: {"id": "chatcmpl-tool-5f1", "name": "get_weather",
                                "arguments": '{"city": "Paris"}'}}
    assert folded.text == ""
    assert folded.finish == "tool_calls"
    assert folded.usage == Usage(prompt_tokens=120, completion_tokens=19)


def test_sglang_separated_reasoning_and_matched_stop() -> None:
    folded = stream_of("sglang_reasoning_stream.json")
    assert folded.reasoning == ("First, I recognize that the problem is asking for the sum of "
                                "1 and 3.")
    assert folded.text == "1 + 3 = 4"
    assert (folded.finish, folded.matched_stop) == ("stop", "\n\nDone")
    assert folded.usage == Usage(prompt_tokens=14, completion_tokens=46, cached_tokens=8)


def test_llamacpp_server_cached_tokens_come_from_timings() -> None:
    folded = fold([parse_completion(recorded("llamacpp_server_chat.json")["body"])])
    assert folded.text == "Hello! How can"
    assert folded.finish == "length"
    assert folded.usage == Usage(prompt_tokens=25, completion_tokens=4, cached_tokens=20)


def test_cache_hits_from_hit_or_miss_counts_when_details_are_absent() -> None:
    hit = parse_completion({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 2,
                                      "prompt_cache_hit_tokens": 64,
                                      "prompt_cache_miss_tokens": 36}})
    miss_only = parse_completion({"choices": [{"message": {"content": "x"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 100, "completion_tokens": 2,
                                            "prompt_cache_miss_tokens": 30}})
    assert hit.usage is not None and hit.usage.cached_tokens == 64
    assert miss_only.usage is not None and miss_only.usage.cached_tokens == 70


@pytest.mark.parametrize(("raw", "ours"), [
    ("stop", "stop"), ("eos", "stop"), ("length", "length"), ("tool_calls", "tool_calls"),
    ("function_call", "tool_calls"), ("content_filter", "content_filter"),
    ("insufficient_system_resource", "insufficient_system_resource"), ("something_new", "stop"),
])
def test_finish_reasons_are_normalised(raw: str, ours: str) -> None:
    piece = parse_chunk({"choices": [{"delta": {}, "finish_reason": raw}]})
    assert piece.finish_reason == ours


def test_an_int_stop_reason_is_a_token_id_not_a_matched_string() -> None:
    piece = parse_chunk({"choices": [{"delta": {}, "finish_reason": "stop",
                                      "stop_reason": 151645}]})
    assert (piece.finish_reason, piece.matched_stop) == ("stop", None)


def test_in_band_errors_and_sglang_abort_are_errors() -> None:
    assert parse_chunk({"error": {"message": "engine died", "type": "server_error"}}).error == \
        "engine died"
    aborted = parse_chunk({"choices": [{"delta": {}, "finish_reason": "abort"}]})
    assert aborted.error is not None and aborted.finish_reason is None


def test_output_text_envelope() -> None:
    piece = parse_completion({"output": {"text": "你好,世界"}}, envelope=True)
    assert piece.delta is not None and piece.delta.text == "你好,世界"
    assert (piece.finish_reason, piece.usage) == ("stop", None)
    assert parse_completion({"output": {}}, envelope=True).error is not None


def test_error_messages_are_read_from_each_shape() -> None:
    assert error_message(b'{"error": {"message": "bad model", "code": 404}}') == "bad model"
    assert error_message(b'{"detail": "Not Found"}') == "Not Found"
    assert error_message(b'{"object": "error", "message": "max_tokens too large"}') == \
        "max_tokens too large"
    assert error_message(b"upstream exploded") == "upstream exploded"
    assert len(error_message(b"x" * 5000)) == 500


# ----- request bodies -----

def request(**fields: Any) -> ChatRequest:
    body = {"model": "deepseek-v4-pro",
            "messages": [{"role": "user", "content": "Hi"}], **fields}
    return to_chat_request(ChatCompletionRequest.model_validate(body))


def test_vllm_thinking_goes_to_chat_template_kwargs_with_its_effort() -> None:
    body = build_body(request(thinking={"type": "enabled", "reasoning_effort": "xhigh"},
                              user_id="alice", max_tokens=7, stream=True),
                      PROFILES["vllm"], model="deepseek-ai/DeepSeek-V4-Pro", stream=True,
                      user="u-1")
    assert body["model"] == "deepseek-ai/DeepSeek-V4-Pro"
    assert body["chat_template_kwargs"] == {"thinking": True, "enable_thinking": True,
                                            "reasoning_effort": "high"}
    assert (body["user"], body["cache_salt"]) == ("u-1", "u-1")
    assert "user_id" not in body and "thinking" not in body
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7


def test_sglang_gets_the_effort_at_the_top_level_too_and_vllm_does_not() -> None:
    req = request(thinking={"type": "enabled"}, reasoning_effort="max")
    sglang = build_body(req, PROFILES["sglang"], model="m", stream=False, user=None)
    assert sglang["reasoning_effort"] == "max"
    assert sglang["chat_template_kwargs"]["reasoning_effort"] == "max"
    vllm = build_body(req, PROFILES["vllm"], model="m", stream=False, user=None)
    assert "reasoning_effort" not in vllm


def test_sglang_asks_for_separate_reasoning_and_disabled_thinking_drops_effort() -> None:
    body = build_body(request(thinking={"type": "disabled"}, reasoning_effort="max"),
                      PROFILES["sglang"], model="m", stream=False, user=None)
    assert body["separate_reasoning"] is True
    assert body["chat_template_kwargs"] == {"thinking": False, "enable_thinking": False}
    assert "stream_options" not in body and body["stream"] is False


def test_deepseek_gets_its_thinking_object_mapped_effort_and_user_id() -> None:
    body = build_body(request(thinking={"type": "enabled"}, reasoning_effort="medium",
                              user_id="bob"),
                      PROFILES["deepseek"], model="deepseek-v4-pro", stream=True, user="u-2")
    assert body["thinking"] == {"type": "enabled"}
    assert body["reasoning_effort"] == "high"  # DeepSeek maps medium to high
    assert body["user_id"] == "u-2" and "user" not in body
    assert "chat_template_kwargs" not in body


def test_maas_effort_is_high_or_max_and_the_default_thinking_is_sent() -> None:
    body = build_body(request(reasoning_effort="low"), PROFILES["maas"],
                      model="MaaS_Deepseek_V4_pro_20260424", stream=True, user=None,
                      default_thinking=True)
    assert body["thinking"] == {"type": "enabled"}
    assert body["reasoning_effort"] == "high"
    assert PROFILES["maas"].chat_path.format(endpoint_path="ep1") == \
        "/v1/ai/ep1/chat/completions"


def test_seekserve_gets_our_own_fields_unchanged() -> None:
    body = build_body(request(thinking={"type": "enabled", "reasoning_effort": "minimal"},
                              system_instruction="Be brief.",
                              messages=[{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hel",
                                         "prefix": True}]),
                      PROFILES["seekserve"], model="deepseek-v4-pro", stream=False, user="u-3")
    assert body["thinking"] == {"type": "enabled", "reasoning_effort": "minimal"}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][-1] == {"role": "assistant", "content": "Hel", "prefix": True}
    assert body["user_id"] == "u-3"


def test_openai_style_upstream_gets_only_an_effort() -> None:
    body = build_body(request(thinking={"type": "enabled"}, reasoning_effort="max"),
                      PROFILES["openai"], model="o4-mini", stream=True, user=None)
    assert body["reasoning_effort"] == "high"
    assert "thinking" not in body and "chat_template_kwargs" not in body


def test_prefix_completion_per_kind() -> None:
    prefixed = request(messages=[{"role": "user", "content": "Count"},
                                 {"role": "assistant", "content": "1, 2,", "prefix": True}])
    vllm = build_body(prefixed, PROFILES["vllm"], model="m", stream=True, user=None)
    assert (vllm["continue_final_message"], vllm["add_generation_prompt"]) == (True, False)
    assert "prefix" not in vllm["messages"][-1]
    with pytest.raises(InvalidRequestError) as refused:
        build_body(prefixed, PROFILES["llamacpp"], model="m", stream=True, user=None)
    assert refused.value.code == "prefix_not_supported"


def test_tool_history_and_reasoning_content_per_kind() -> None:
    history = request(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the tool.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    deepseek = build_body(history, PROFILES["deepseek"], model="m", stream=True, user=None)
    assistant = deepseek["messages"][1]
    assert assistant["content"] is None
    assert assistant["reasoning_content"] == "Need the tool."  # DeepSeek needs it back
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}
    assert deepseek["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    vllm = build_body(history, PROFILES["vllm"], model="m", stream=True, user=None)
    assert "reasoning_content" not in vllm["messages"][1]


def test_unknown_client_fields_are_not_forwarded() -> None:
    body = build_body(request(surprise="yes", n=3), PROFILES["vllm"], model="m", stream=True,
                      user=None)
    assert "surprise" not in body and "n" not in body


def test_upstream_user_is_a_stable_pseudonym_per_key() -> None:
    first = upstream_user(b"key-a", "alice")
    assert first == upstream_user(b"key-a", "alice")
    assert first != upstream_user(b"key-b", "alice")
    assert first is not None and "alice" not in first and len(first) == 34
    assert upstream_user(b"key-a", None) is None


def test_prompt_estimate_is_characters_over_three_rounded_up() -> None:
    assert estimate_prompt_tokens(request(messages=[{"role": "user", "content": "x" * 10}])) \
        == 4
    assert estimate_prompt_tokens(request(system_instruction="y" * 5,
                                          messages=[{"role": "user", "content": "x"}])) == 2
