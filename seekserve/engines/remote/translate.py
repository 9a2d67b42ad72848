"""What each upstream kind understands: the body we send it, and its answers read back into our
Delta / Finished / Usage. One table row per kind; no branch elsewhere looks at the kind."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from seekserve.api.schemas import ChatCompletionRequest, ChatMessage
from seekserve.chat.service import Delta, FinishReason, ToolCallDelta, Usage
from seekserve.errors import InvalidRequestError
from seekserve.settings import UpstreamKind

log = logging.getLogger(__name__)

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

# A rough prompt size for admission, before the upstream counts it: about three characters a
# token for English and code with BPE vocabularies (fewer for CJK text, so it over-reserves
# there, which admission tolerates: settlement charges the upstream's real count).
CHARS_PER_TOKEN = 3


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
        prefix="unsupported"),
}


def upstream_user(key_digest: bytes, user_id: str | None) -> str | None:
    """The isolation key sent upstream: a stable pseudonym of (API key, user_id), so two tenants'
    equal user_ids never share an upstream's cache or safety state, and end-user ids stay here."""
    if user_id is None:
        return None
    digest = hashlib.sha256(key_digest + b"\x00" + user_id.encode()).hexdigest()
    return "u-" + digest[:32]


def estimate_prompt_tokens(req: ChatCompletionRequest) -> int:
    """ceil(characters / 3) over everything that goes into the prompt."""
    chars = len(req.system_instruction or "")
    for msg in req.messages:
        chars += len(msg.text()) + len(msg.reasoning_content or "")
        for call in msg.tool_calls or []:
            chars += len(call.function.name) + len(call.function.arguments)
    if req.tools:
        chars += sum(len(json.dumps(t.model_dump(exclude_none=True))) for t in req.tools)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def _message(msg: ChatMessage, profile: UpstreamProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.text()}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.tool_calls:
        out["tool_calls"] = [c.model_dump() for c in msg.tool_calls]
        if not out["content"]:
            out["content"] = None
    if msg.reasoning_content is not None and profile.reasoning_history:
        out["reasoning_content"] = msg.reasoning_content
    return out


def _thinking_fields(req: ChatCompletionRequest, profile: UpstreamProfile,
                     default: bool | None) -> dict[str, Any]:
    """The body fields that carry thinking mode and effort to this upstream."""
    thinking = req.thinking
    enabled: bool | None = default
    if thinking is not None and thinking.type is not None:
        enabled = thinking.type == "enabled"
    effort = (thinking.reasoning_effort if thinking is not None else None) or req.reasoning_effort
    if effort is not None and profile.efforts is not None:
        effort = profile.efforts[effort]
    if enabled is False:
        effort = None  # an effort means nothing with thinking off; some upstreams refuse both
    if profile.thinking == "native":
        fields: dict[str, Any] = {}
        if thinking is not None or enabled is not None:
            said = thinking.model_dump(exclude_none=True) if thinking is not None else {}
            if "type" not in said and enabled is not None:
                said["type"] = "enabled" if enabled else "disabled"
            fields["thinking"] = said
        if req.reasoning_effort is not None:
            fields["reasoning_effort"] = req.reasoning_effort
        return fields
    if profile.thinking == "deepseek":
        fields = {}
        if enabled is not None:
            fields["thinking"] = {"type": "enabled" if enabled else "disabled"}
        if effort is not None:
            fields["reasoning_effort"] = effort
        return fields
    if profile.thinking == "openai":
        return {"reasoning_effort": effort} if effort is not None else {}
    kwargs: dict[str, Any] = {}
    if enabled is not None:
        # DeepSeek's templates read `thinking`, Qwen3's `enable_thinking`; a template ignores
        # the variable it does not use.
        kwargs["thinking"] = kwargs["enable_thinking"] = enabled
    if effort is not None:
        kwargs["reasoning_effort"] = effort  # DeepSeek-V4's template: high | max
    fields = {"chat_template_kwargs": kwargs} if kwargs else {}
    if effort is not None and profile.top_level_effort:
        fields["reasoning_effort"] = effort
    return fields


def build_body(req: ChatCompletionRequest, profile: UpstreamProfile, *, model: str,
               stream: bool, user: str | None, default_thinking: bool | None = None
               ) -> dict[str, Any]:
    """The upstream request for `req`. Unknown client fields are not forwarded."""
    messages = list(req.messages)
    body: dict[str, Any] = {"model": model}
    if messages[-1].role == "assistant" and messages[-1].prefix:
        if profile.prefix == "unsupported":
            raise InvalidRequestError(
                "Prefix completion (`prefix: true` on the last assistant message) is not "
                "supported by this model's upstream.", param="messages",
                code="prefix_not_supported")
        if profile.prefix == "continue_final_message":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    wire = [_message(m, profile) for m in messages]
    if profile.prefix == "native" and messages[-1].role == "assistant" and messages[-1].prefix:
        wire[-1]["prefix"] = True
    if req.system_instruction:
        wire.insert(0, {"role": "system", "content": req.system_instruction})
    body["messages"] = wire
    optional = {
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop_list() or None,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "logprobs": req.logprobs,
        "top_logprobs": req.top_logprobs if req.logprobs else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.tools is not None:
        body["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = (req.tool_choice if isinstance(req.tool_choice, str)
                               else req.tool_choice.model_dump())
    if req.response_format is not None:
        body["response_format"] = req.response_format.model_dump(exclude_none=True)
    body.update(_thinking_fields(req, profile, default_thinking))
    if profile.separate_reasoning:
        body["separate_reasoning"] = True
    if user is not None:
        body[profile.user_field] = user
        if profile.cache_salt:
            body["cache_salt"] = user
    body["stream"] = stream
    if stream and profile.stream_usage:
        body["stream_options"] = {"include_usage": True}
    return body


# ----- answers -----

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "sensitive": "content_filter",
    "insufficient_system_resource": "insufficient_system_resource",
}


@dataclass
class Piece:
    """What one upstream answer or stream chunk said, in our terms."""

    delta: Delta | None = None
    finish_reason: FinishReason | None = None
    matched_stop: str | None = None
    usage: Usage | None = None
    error: str | None = None  # the upstream reported a failure in band


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_usage(raw: Any, timings: Any = None) -> Usage | None:
    """OpenAI usage with DeepSeek's and llama.cpp's extras: cached prompt tokens from
    prompt_tokens_details.cached_tokens, else prompt_cache_hit_tokens (or prompt minus
    prompt_cache_miss_tokens), else llama.cpp's timings.cache_n; reasoning tokens from
    completion_tokens_details."""
    usage = _dict(raw)
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    cached = _int(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
    if cached is None:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    if cached is None and (miss := _int(usage.get("prompt_cache_miss_tokens"))) is not None:
        cached = prompt - miss
    if cached is None:
        cached = _int(_dict(timings).get("cache_n"))
    reasoning = _int(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 cached_tokens=min(max(cached or 0, 0), prompt),
                 reasoning_tokens=min(max(reasoning or 0, 0), completion))


def _finish(choice: dict[str, Any]) -> tuple[FinishReason | None, str | None, str | None]:
    """(finish_reason, matched_stop, error) of a choice."""
    raw = choice.get("finish_reason")
    if raw is None:
        return None, None, None
    if raw == "abort":  # SGLang: the request was aborted upstream
        return None, None, "The upstream aborted the request."
    reason = _FINISH.get(str(raw))
    if reason is None:
        log.warning("unknown upstream finish_reason %r, reported as stop", raw)
        reason = "stop"
    # SGLang and seekserve say matched_stop; vLLM says stop_reason (an int is a stop token id,
    # which is not a string the client asked for).
    matched = choice.get("matched_stop")
    if not isinstance(matched, str):
        matched = choice.get("stop_reason")
    return reason, matched if isinstance(matched, str) else None, None


def _reasoning(message: dict[str, Any]) -> str:
    # vLLM renamed reasoning_content to reasoning; DeepSeek, SGLang and seekserve keep the old.
    value = message.get("reasoning_content")
    if not isinstance(value, str):
        value = message.get("reasoning")
    return value if isinstance(value, str) else ""


def _tool_call_pieces(calls: Any, *, streamed: bool) -> list[ToolCallDelta] | None:
    if not isinstance(calls, list) or not calls:
        return None
    pieces = []
    for position, call in enumerate(calls):
        call = _dict(call)
        function = _dict(call.get("function"))
        index = _int(call.get("index")) if streamed else None
        name = function.get("name")
        arguments = function.get("arguments")
        pieces.append(ToolCallDelta(
            index=position if index is None else index,
            id=call.get("id") if isinstance(call.get("id"), str) else None,
            name=name if isinstance(name, str) else None,
            arguments=arguments if isinstance(arguments, str) else (
                json.dumps(arguments) if arguments is not None else "")))
    return pieces


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    content = _dict(choice.get("logprobs")).get("content")
    return content if isinstance(content, list) else None


def _delta(message: dict[str, Any], choice: dict[str, Any], *, streamed: bool) -> Delta | None:
    content = message.get("content")
    delta = Delta(text=content if isinstance(content, str) else "",
                  logprobs=_logprobs(choice), reasoning=_reasoning(message),
                  tool_calls=_tool_call_pieces(message.get("tool_calls"), streamed=streamed))
    if not (delta.text or delta.reasoning or delta.tool_calls or delta.logprobs):
        return None
    return delta


def _upstream_error(obj: dict[str, Any]) -> str | None:
    error = obj.get("error")
    if error is None:
        return None
    message = _dict(error).get("message") if isinstance(error, dict) else error
    return str(message)[:500] if message else "The upstream reported an error."


def parse_chunk(obj: Any) -> Piece:
    """One `chat.completion.chunk` (or an in-band error event) of a streamed answer."""
    obj = _dict(obj)
    if (error := _upstream_error(obj)) is not None:
        return Piece(error=error)
    piece = Piece(usage=parse_usage(obj.get("usage"), obj.get("timings")))
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        choice = _dict(choices[0])
        piece.delta = _delta(_dict(choice.get("delta")), choice, streamed=True)
        piece.finish_reason, piece.matched_stop, piece.error = _finish(choice)
    return piece


def parse_completion(obj: Any, *, envelope: bool = False) -> Piece:
    """A whole non-streamed answer: a `chat.completion`, or the {"output": {"text"}} envelope
    (which says nothing of how it ended nor what it used)."""
    obj = _dict(obj)
    if (error := _upstream_error(obj)) is not None:
        return Piece(error=error)
    if envelope:
        text = _dict(obj.get("output")).get("text")
        if not isinstance(text, str):
            return Piece(error="The upstream answer has no output.text.")
        return Piece(delta=Delta(text=text) if text else None, finish_reason="stop")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return Piece(error="The upstream answer has no choices.")
    choice = _dict(choices[0])
    piece = Piece(usage=parse_usage(obj.get("usage"), obj.get("timings")))
    piece.delta = _delta(_dict(choice.get("message")), choice, streamed=False)
    piece.finish_reason, piece.matched_stop, piece.error = _finish(choice)
    if piece.finish_reason is None and piece.error is None:
        piece.finish_reason = "stop"
    return piece


def error_message(body: bytes) -> str:
    """The message an upstream error body carries (OpenAI's error object, FastAPI's detail, or
    the text itself), bounded."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:500] or "(empty body)"
    if isinstance(obj, dict):
        found = _upstream_error(obj)
        if found is not None:
            return found
        for key in ("detail", "message"):
            if key in obj:
                return str(obj[key])[:500]
    return json.dumps(obj)[:500]
