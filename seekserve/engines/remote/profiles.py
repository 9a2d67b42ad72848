"""What each upstream kind speaks: its paths, whether it streams and reports usage, how it takes
thinking mode, effort, prefix completion and the end user; and an upstream error body read
back. One table row per kind; no branch elsewhere looks at the kind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from seekserve.settings import UpstreamKind

# How thinking mode and effort are said: `native` our own request fields (thinking object with
# reasoning_effort inside, and the top-level reasoning_effort), `deepseek` the DeepSeek API's
# thinking object plus a top-level effort, `template_kwargs` chat-template variables (vLLM,
# SGLang, llama.cpp's --jinja), `openai` a top-level reasoning_effort and no switch.
ThinkingStyle = Literal["native", "deepseek", "template_kwargs", "openai"]
# A final assistant message with `prefix: true` (continue this text): kept as is, turned into
# vLLM/SGLang's continue_final_message, or refused with a 400 rather than silently answered anew.
PrefixStyle = Literal["native", "continue_final_message", "unsupported"]
UserField = Literal["user", "user_id"]

# DeepSeek's published mapping of requested efforts (the seeds assume it).
DEEPSEEK_EFFORT = {"minimal": "low", "low": "low", "medium": "high", "high": "high",
                   "xhigh": "high", "max": "max"}
MAAS_EFFORT = {**DEEPSEEK_EFFORT, "minimal": "high", "low": "high"}  # the seed allows high|max
OPENAI_EFFORT = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
                 "xhigh": "high", "max": "high"}

@dataclass(frozen=True)
class UpstreamProfile:
    """What one upstream kind speaks."""

    chat_path: str  # may hold {endpoint_path}
    health_path: str
    streams: bool  # answers `stream: true` with SSE chunks
    stream_usage: bool  # honours stream_options.include_usage
    user_field: UserField
    thinking: ThinkingStyle
    efforts: dict[str, str] | None  # our effort -> theirs; None passes it unchanged
    reasoning_history: bool  # accepts reasoning_content on assistant messages
    prefix: PrefixStyle
    separate_reasoning: bool = False  # SGLang returns reasoning apart only when asked
    cache_salt: bool = False  # vLLM isolates its prefix cache by a per-request salt
    # SGLang's chat handler reads DeepSeek-V4's effort from the top-level reasoning_effort
    # (python/sglang/srt/entrypoints/openai/serving_chat.py), not the template kwargs.
    top_level_effort: bool = False
    # The API family it answers in (chat.passthrough.wire_for reads it): OpenAI chat completions.
    wire: str = "chat"
    # A whole answer comes as the second seed's {"output": {"text"}} envelope.
    envelope: bool = False
    # The key goes as `Authorization: Bearer` and, for Anthropic's API, also as x-api-key with
    # the API version it speaks.
    anthropic_headers: bool = False


PROFILES: dict[UpstreamKind, UpstreamProfile] = {
    "openai": UpstreamProfile(
        "/v1/chat/completions", "/v1/models", streams=True, stream_usage=True,
        user_field="user", thinking="openai", efforts=OPENAI_EFFORT, reasoning_history=False,
        prefix="unsupported"),
    "vllm": UpstreamProfile(
        "/v1/chat/completions", "/health", streams=True, stream_usage=True, user_field="user",
        thinking="template_kwargs", efforts=DEEPSEEK_EFFORT, reasoning_history=False,
        prefix="continue_final_message", cache_salt=True),
    "sglang": UpstreamProfile(
        "/v1/chat/completions", "/health", streams=True, stream_usage=True, user_field="user",
        thinking="template_kwargs", efforts=DEEPSEEK_EFFORT, reasoning_history=False,
        prefix="continue_final_message", separate_reasoning=True, top_level_effort=True),
    # llama-cpp-python's server ignores stream_options and reports no usage in streams; a
    # non-streamed client is therefore served from a non-streamed upstream request.
    "llamacpp": UpstreamProfile(
        "/v1/chat/completions", "/health", streams=True, stream_usage=False,
        user_field="user", thinking="template_kwargs", efforts=DEEPSEEK_EFFORT,
        reasoning_history=False, prefix="unsupported"),
    "seekserve": UpstreamProfile(
        "/v1/chat/completions", "/ready", streams=True, stream_usage=True,
        user_field="user_id", thinking="native", efforts=None, reasoning_history=True,
        prefix="native"),
    "deepseek": UpstreamProfile(
        "/chat/completions", "/models", streams=True, stream_usage=True, user_field="user_id",
        thinking="deepseek", efforts=DEEPSEEK_EFFORT, reasoning_history=True, prefix="native"),
    "maas": UpstreamProfile(
        "/v1/ai/{endpoint_path}/chat/completions", "/v1/models", streams=True,
        stream_usage=True, user_field="user_id", thinking="deepseek", efforts=MAAS_EFFORT,
        reasoning_history=True, prefix="native"),
    # The second seed documents only a non-streamed {"output": {"text"}} answer.
    "output_text": UpstreamProfile(
        "/v1/chat/completions", "/v1/models", streams=False, stream_usage=False,
        user_field="user_id", thinking="native", efforts=None, reasoning_history=False,
        prefix="unsupported", envelope=True),
    # Anthropic's Messages API (DeepSeek's /anthropic, another seekserve's, Anthropic's own):
    # base_url is the API root (e.g. https://api.deepseek.com/anthropic). The thinking, effort,
    # user and prefix fields above are the chat wire's; chat.upstream_anthropic has its own.
    "anthropic": UpstreamProfile(
        "/v1/messages", "/v1/models", streams=True, stream_usage=True, user_field="user_id",
        thinking="native", efforts=None, reasoning_history=False, prefix="native",
        wire="anthropic", anthropic_headers=True),
    # OpenAI's Responses API, stateless (DeepSeek's base URL, OpenAI's /v1, another
    # seekserve's /v1): base_url is the API root, e.g. https://api.deepseek.com. As above, the
    # chat wire's fields do not apply; chat.upstream_responses has its own.
    "responses": UpstreamProfile(
        "/responses", "/models", streams=True, stream_usage=True, user_field="user",
        thinking="openai", efforts=None, reasoning_history=False, prefix="unsupported",
        wire="responses"),
}


def upstream_error(obj: dict[str, Any]) -> str | None:
    """The message of an in-band `error` an upstream answer carries, bounded; None if none."""
    error = obj.get("error")
    if error is None:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:500] if message else "The upstream reported an error."


def error_message(body: bytes) -> str:
    """The message an upstream error body carries (OpenAI's error object, FastAPI's detail, or
    the text itself), bounded."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:500] or "(empty body)"
    if isinstance(obj, dict):
        found = upstream_error(obj)
        if found is not None:
            return found
        for key in ("detail", "message"):
            if key in obj:
                return str(obj[key])[:500]
    return json.dumps(obj)[:500]
