"""An upstream that speaks Anthropic's Messages API (`upstream: anthropic`: DeepSeek's own
`/anthropic`, another seekserve's, Anthropic's): the neutral request as a Messages body, and
its `message` answers and event streams read back into Delta / Finished / Usage. Through it a
remote model serves every route here, the Messages route included."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from seekserve.chat.upstream import Piece, as_count, as_dict
from seekserve.engines.remote.profiles import UpstreamProfile
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import (
    ChatRequest,
    Delta,
    FinishReason,
    Message,
    ToolCallDelta,
    Usage,
)

# Anthropic requires max_tokens; a request without one gets this.
DEFAULT_MAX_TOKENS = 4096
# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _blocks(msg: Message) -> list[dict[str, Any]]:
    """A neutral turn's content as Anthropic blocks (reasoning is not sent back: the upstream
    could not verify a signature this server made)."""
    blocks: list[dict[str, Any]] = []
    if msg.role == "tool":
        return [{"type": "tool_result", "tool_use_id": msg.tool_call_id or "",
                 "content": msg.text()}]
    if msg.text():
        blocks.append({"type": "text", "text": msg.text()})
    for call in msg.tool_calls:
        try:
            arguments = json.loads(call.arguments) if call.arguments else {}
        except ValueError:
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                       "input": arguments if isinstance(arguments, dict) else {}})
    return blocks


def _messages(req: ChatRequest) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages): system turns joined into `system`, tool turns into user turns of
    tool_result blocks, consecutive turns of one role merged."""
    system = [req.system] if req.system else []
    out: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            system.append(msg.text())
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = _blocks(msg)
        if not blocks:
            blocks = [{"type": "text", "text": ""}]
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), out


def _thinking(req: ChatRequest, max_tokens: int, default: bool | None) -> dict[str, Any] | None:
    enabled = req.thinking if req.thinking is not None else default
    if enabled is None:
        return None
    if not enabled:
        return {"type": "disabled"}
    budget = req.thinking_budget or MIN_THINKING_BUDGET
    return {"type": "enabled", "budget_tokens": max(1, min(budget, max_tokens - 1))}


def build_messages_body(req: ChatRequest, *, model: str, stream: bool, user: str | None,
                        default_thinking: bool | None = None) -> dict[str, Any]:
    """The Messages request for `req`; a 400 for what the Messages API cannot take."""
    if req.response_format is not None and req.response_format.type != "text":
        raise InvalidRequestError(
            "response_format is not supported by this model's upstream (Anthropic Messages).",
            param=req.fields.response_format, code="unsupported_parameter")
    if req.logprobs:
        raise InvalidRequestError(
            "logprobs are not supported by this model's upstream (Anthropic Messages).",
            param="logprobs", code="unsupported_parameter")
    system, messages = _messages(req)
    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    optional: dict[str, Any] = {
        "system": system,
        "stop_sequences": list(req.stop) or None,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "thinking": _thinking(req, max_tokens, default_thinking),
        "metadata": {"user_id": user} if user is not None else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.tools is not None:
        body["tools"] = [{"name": t.name, "input_schema": t.parameters or {"type": "object"},
                          **({"description": t.description} if t.description else {})}
                         for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        kind = {"auto": "auto", "required": "any", "function": "tool", "none": "none"}
        tool_choice: dict[str, Any] = {"type": kind[choice.mode]}
        if choice.mode == "function":
            tool_choice["name"] = choice.name
        if req.parallel_tool_calls is False and choice.mode != "none":
            tool_choice["disable_parallel_tool_use"] = True
        body["tool_choice"] = tool_choice
    body["stream"] = stream
    return body


def _error(obj: dict[str, Any]) -> str | None:
    if obj.get("type") != "error":
        return None
    message = as_dict(obj.get("error")).get("message")
    return str(message)[:500] if message else "The upstream reported an error."


@dataclass
class _MessagesReader:
    """Reads one Anthropic answer; for a stream it keeps the prompt's usage from
    message_start and which content block is which tool call."""

    prompt: int = 0
    cached: int = 0
    calls: dict[int, int] = field(default_factory=dict)  # block index -> tool call index

    def _usage(self, raw: Any, completion: int | None = None) -> Usage:
        usage = as_dict(raw)
        if "input_tokens" in usage:
            self.cached = as_count(usage.get("cache_read_input_tokens"))
            self.prompt = (as_count(usage.get("input_tokens")) + self.cached
                           + as_count(usage.get("cache_creation_input_tokens")))
        output = as_count(usage.get("output_tokens")) if completion is None else completion
        return Usage(prompt_tokens=self.prompt, completion_tokens=output,
                     cached_tokens=min(self.cached, self.prompt))

    def chunk(self, obj: Any) -> Piece:
        obj = as_dict(obj)
        if (error := _error(obj)) is not None:
            return Piece(error=error)
        kind = obj.get("type")
        if kind == "message_start":
            self._usage(as_dict(obj.get("message")).get("usage"))
            return Piece()
        if kind == "content_block_start":
            return Piece(delta=self._start(as_count(obj.get("index")),
                                           as_dict(obj.get("content_block"))))
        if kind == "content_block_delta":
            return Piece(delta=self._delta(as_count(obj.get("index")), as_dict(obj.get("delta"))))
        if kind == "message_delta":
            delta = as_dict(obj.get("delta"))
            reason, matched = _finish(delta)
            return Piece(finish_reason=reason, matched_stop=matched,
                         usage=self._usage(obj.get("usage")))
        return Piece()  # ping, content_block_stop, message_stop

    def _start(self, index: int, block: dict[str, Any]) -> Delta | None:
        if block.get("type") == "tool_use":
            self.calls[index] = len(self.calls)
            return Delta(tool_calls=[ToolCallDelta(self.calls[index], id=str(block.get("id")),
                                                   name=str(block.get("name")))])
        text = block.get("text") if block.get("type") == "text" else None
        return Delta(text=text) if isinstance(text, str) and text else None

    def _delta(self, index: int, delta: dict[str, Any]) -> Delta | None:
        kind = delta.get("type")
        if kind == "text_delta":
            return Delta(text=str(delta.get("text", "")))
        if kind == "thinking_delta":
            return Delta(reasoning=str(delta.get("thinking", "")))
        if kind == "input_json_delta" and index in self.calls:
            return Delta(tool_calls=[ToolCallDelta(
                self.calls[index], arguments=str(delta.get("partial_json", "")))])
        return None  # signature_delta, citations

    def whole(self, obj: Any) -> Piece:
        obj = as_dict(obj)
        if (error := _error(obj)) is not None:
            return Piece(error=error)
        content = obj.get("content")
        if not isinstance(content, list):
            return Piece(error="The upstream answer has no content.")
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCallDelta] = []
        for block in map(as_dict, content):
            kind = block.get("type")
            if kind == "text":
                text.append(str(block.get("text", "")))
            elif kind == "thinking":
                reasoning.append(str(block.get("thinking", "")))
            elif kind == "tool_use":
                calls.append(ToolCallDelta(len(calls), id=str(block.get("id")),
                                           name=str(block.get("name")),
                                           arguments=json.dumps(block.get("input") or {})))
        delta = Delta(text="".join(text), reasoning="".join(reasoning), tool_calls=calls or None)
        reason, matched = _finish(obj)
        return Piece(delta=delta if delta.shows_anything() else None,
                     finish_reason=reason or "stop", matched_stop=matched,
                     usage=self._usage(obj.get("usage")))


def _finish(holder: dict[str, Any]) -> tuple[FinishReason | None, str | None]:
    raw = holder.get("stop_reason")
    if raw is None:
        return None, None
    sequence = holder.get("stop_sequence")
    return _FINISH.get(str(raw), "stop"), sequence if isinstance(sequence, str) else None


class MessagesWire:
    """Anthropic's Messages API as an upstream wire (chat.upstream.UpstreamWire)."""

    def body(self, req: ChatRequest, profile: UpstreamProfile, *, model: str, stream: bool,
             user: str | None, default_thinking: bool | None = None) -> dict[str, Any]:
        return build_messages_body(req, model=model, stream=stream, user=user,
                                   default_thinking=default_thinking)

    def reader(self, profile: UpstreamProfile) -> _MessagesReader:
        return _MessagesReader()
