"""A neutral chat request as an upstream of a given kind takes it, and the upstream's answers
(whole or streamed) read back into Delta / Finished / Usage: the API family an upstream answers
in is an `UpstreamWire` (OpenAI chat completions here, Anthropic Messages in `upstream_anthropic`;
`passthrough.wire_for` picks one by profile)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from seekserve.engines.remote.profiles import UpstreamProfile, upstream_error
from seekserve.protocol.chat_dialects import tool_call_body
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import (
    ChatRequest,
    Delta,
    FinishReason,
    FunctionTool,
    Message,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger(__name__)

# A rough prompt size for admission, before the upstream counts it: about three characters a
# token for English and code with BPE vocabularies (fewer for CJK text, so it over-reserves
# there, which admission tolerates: settlement charges the upstream's real count).
CHARS_PER_TOKEN = 3


def estimate_prompt_tokens(req: ChatRequest) -> int:
    """ceil(characters / 3) over everything that goes into the prompt."""
    chars = len(req.system or "")
    for msg in req.messages:
        chars += len(msg.text()) + len(msg.reasoning or "")
        for call in msg.tool_calls:
            chars += len(call.name) + len(call.arguments)
    if req.tools:
        chars += sum(len(json.dumps(_tool(t))) for t in req.tools)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def _tool(tool: FunctionTool) -> dict[str, Any]:
    """A tool as OpenAI's wire has it (unset fields left out)."""
    function: dict[str, Any] = {"name": tool.name}
    for key, value in (("description", tool.description), ("parameters", tool.parameters),
                       ("strict", tool.strict)):
        if value is not None:
            function[key] = value
    return {"type": "function", "function": function}


def _message(msg: Message, profile: UpstreamProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.text()}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.tool_calls:
        out["tool_calls"] = [tool_call_body(c) for c in msg.tool_calls]
        if not out["content"]:
            out["content"] = None
    if msg.reasoning is not None and profile.reasoning_history:
        out["reasoning_content"] = msg.reasoning
    return out


def _thinking_fields(req: ChatRequest, profile: UpstreamProfile,
                     default: bool | None) -> dict[str, Any]:
    """The body fields that carry thinking mode and effort to this upstream."""
    enabled = req.thinking if req.thinking is not None else default
    effort = req.effort
    if profile.thinking == "native":
        # Our own fields, as the client sent them (an effort with thinking off included).
        said: dict[str, Any] = {}
        if enabled is not None:
            said["type"] = "enabled" if enabled else "disabled"
        if effort is not None:
            said["reasoning_effort"] = effort
        return {"thinking": said} if said else {}
    if effort is not None and profile.efforts is not None:
        effort = profile.efforts[effort]
    if enabled is False:
        effort = None  # an effort means nothing with thinking off; some upstreams refuse both
    if profile.thinking == "deepseek":
        fields: dict[str, Any] = {}
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


def build_body(req: ChatRequest, profile: UpstreamProfile, *, model: str,
               stream: bool, user: str | None, default_thinking: bool | None = None
               ) -> dict[str, Any]:
    """The upstream request for `req`. Unknown client fields are not forwarded."""
    body: dict[str, Any] = {"model": model}
    if req.continues_prefix:
        if profile.prefix == "unsupported":
            raise InvalidRequestError(
                "Prefix completion (`prefix: true` on the last assistant message) is not "
                "supported by this model's upstream.", param=req.fields.messages,
                code="prefix_not_supported")
        if profile.prefix == "continue_final_message":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    wire = [_message(m, profile) for m in req.messages]
    if profile.prefix == "native" and req.continues_prefix:
        wire[-1]["prefix"] = True
    if req.system:
        wire.insert(0, {"role": "system", "content": req.system})
    body["messages"] = wire
    optional = {
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": list(req.stop) or None,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "logprobs": req.logprobs or None,
        "top_logprobs": req.top_logprobs if req.logprobs else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.tools is not None:
        body["tools"] = [_tool(t) for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        body["tool_choice"] = (choice.mode if choice.mode != "function" else
                               {"type": "function", "function": {"name": choice.name}})
    fmt = req.response_format
    if fmt is not None:
        body["response_format"] = ({"type": fmt.type, "json_schema": fmt.json_schema}
                                   if fmt.json_schema is not None else {"type": fmt.type})
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


def as_count(value: Any) -> int:
    """A JSON integer as is; anything else (absent, null, a bool, text) as 0."""
    return _int(value) or 0


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON object as is; anything else as an empty one (upstream answers are read leniently:
    a missing or mistyped field reads as absent)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []



def parse_usage(raw: Any, timings: Any = None) -> Usage | None:
    """OpenAI usage with DeepSeek's and llama.cpp's extras: cached prompt tokens from
    prompt_tokens_details.cached_tokens, else prompt_cache_hit_tokens (or prompt minus
    prompt_cache_miss_tokens), else llama.cpp's timings.cache_n; reasoning tokens from
    completion_tokens_details."""
    usage = as_dict(raw)
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    cached = _int(as_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
    if cached is None:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    if cached is None and (miss := _int(usage.get("prompt_cache_miss_tokens"))) is not None:
        cached = prompt - miss
    if cached is None:
        cached = _int(as_dict(timings).get("cache_n"))
    reasoning = _int(as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
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
        call = as_dict(call)
        function = as_dict(call.get("function"))
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
    content = as_dict(choice.get("logprobs")).get("content")
    return content if isinstance(content, list) else None


def _delta(message: dict[str, Any], choice: dict[str, Any], *, streamed: bool) -> Delta | None:
    content = message.get("content")
    delta = Delta(text=content if isinstance(content, str) else "",
                  logprobs=_logprobs(choice), reasoning=_reasoning(message),
                  tool_calls=_tool_call_pieces(message.get("tool_calls"), streamed=streamed))
    if not (delta.text or delta.reasoning or delta.tool_calls or delta.logprobs):
        return None
    return delta


def parse_chunk(obj: Any) -> Piece:
    """One `chat.completion.chunk` (or an in-band error event) of a streamed answer."""
    obj = as_dict(obj)
    if (error := upstream_error(obj)) is not None:
        return Piece(error=error)
    piece = Piece(usage=parse_usage(obj.get("usage"), obj.get("timings")))
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        choice = as_dict(choices[0])
        piece.delta = _delta(as_dict(choice.get("delta")), choice, streamed=True)
        piece.finish_reason, piece.matched_stop, piece.error = _finish(choice)
    return piece


def parse_completion(obj: Any, *, envelope: bool = False) -> Piece:
    """A whole non-streamed answer: a `chat.completion`, or the {"output": {"text"}} envelope
    (which says nothing of how it ended nor what it used)."""
    obj = as_dict(obj)
    if (error := upstream_error(obj)) is not None:
        return Piece(error=error)
    if envelope:
        text = as_dict(obj.get("output")).get("text")
        if not isinstance(text, str):
            return Piece(error="The upstream answer has no output.text.")
        return Piece(delta=Delta(text=text) if text else None, finish_reason="stop")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return Piece(error="The upstream answer has no choices.")
    choice = as_dict(choices[0])
    piece = Piece(usage=parse_usage(obj.get("usage"), obj.get("timings")))
    piece.delta = _delta(as_dict(choice.get("message")), choice, streamed=False)
    piece.finish_reason, piece.matched_stop, piece.error = _finish(choice)
    if piece.finish_reason is None and piece.error is None:
        piece.finish_reason = "stop"
    return piece




class UpstreamReader(Protocol):
    """Reads one upstream answer; it may keep state across the events of a stream."""

    def chunk(self, obj: Any) -> Piece:
        """One streamed event (its JSON data)."""
        ...

    def whole(self, obj: Any) -> Piece:
        """A whole non-streamed answer (its JSON body)."""
        ...


class UpstreamWire(Protocol):
    """An API family an upstream answers in: the body it takes, and a reader of its answers."""

    def body(self, req: ChatRequest, profile: UpstreamProfile, *, model: str, stream: bool,
             user: str | None, default_thinking: bool | None = None) -> dict[str, Any]: ...

    def reader(self, profile: UpstreamProfile) -> UpstreamReader: ...


class _ChatReader:
    def __init__(self, envelope: bool) -> None:
        self._envelope = envelope

    def chunk(self, obj: Any) -> Piece:
        return parse_chunk(obj)

    def whole(self, obj: Any) -> Piece:
        return parse_completion(obj, envelope=self._envelope)


class ChatCompletionsWire:
    """OpenAI chat completions, with the dialect differences of each upstream kind."""

    def body(self, req: ChatRequest, profile: UpstreamProfile, *, model: str, stream: bool,
             user: str | None, default_thinking: bool | None = None) -> dict[str, Any]:
        return build_body(req, profile, model=model, stream=stream, user=user,
                          default_thinking=default_thinking)

    def reader(self, profile: UpstreamProfile) -> UpstreamReader:
        return _ChatReader(profile.envelope)
