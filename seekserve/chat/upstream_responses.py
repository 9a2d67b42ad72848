"""An upstream that speaks OpenAI's Responses API (`upstream: responses`: DeepSeek's base URL,
OpenAI's `/v1`, another seekserve's `/v1`): the neutral request as a stateless Responses body
(`store: false`, the whole conversation as input items), and its `response` objects and
semantic event streams read back into Delta / Finished / Usage. Through it a remote model serves
every route here, the Responses route included."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from seekserve.chat.upstream import Piece, as_count, as_dict, as_list
from seekserve.engines.remote.profiles import UpstreamProfile
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import (
    ChatRequest,
    Delta,
    FinishReason,
    Message,
    ResponseFormat,
    ToolCallDelta,
    Usage,
)

# Why a response stopped short (`incomplete_details.reason`), in our terms.
_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}


def _unsupported(what: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{what} is not supported by this model's upstream (OpenAI Responses).", param=param,
        code="unsupported_parameter")


def _items(msg: Message) -> list[dict[str, Any]]:
    """A neutral turn as input items. Reasoning is not sent back: the upstream could not check
    a signature this server made, nor this server one of the upstream's."""
    if msg.role == "tool":
        return [{"type": "function_call_output", "call_id": msg.tool_call_id or "",
                 "output": msg.text()}]
    items: list[dict[str, Any]] = []
    if msg.text() or not msg.tool_calls:
        items.append({"type": "message", "role": msg.role, "content": msg.text()})
    items.extend({"type": "function_call", "call_id": call.id, "name": call.name,
                  "arguments": call.arguments or "{}"} for call in msg.tool_calls)
    return items


def _format(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    holder = fmt.json_schema or {}
    out: dict[str, Any] = {"type": "json_schema", "name": holder.get("name") or "answer",
                           "schema": fmt.schema}
    if holder.get("strict") is not None:
        out["strict"] = holder["strict"]
    return out


def _reasoning(req: ChatRequest, default: bool | None) -> dict[str, Any] | None:
    """Thinking as `reasoning.effort`: `none` turns it off; on without an effort is `high`."""
    enabled = req.thinking if req.thinking is not None else default
    if enabled is False:
        return {"effort": "none"}
    if req.effort is not None:
        return {"effort": req.effort}
    return {"effort": "high"} if enabled else None


def _tool_choice(req: ChatRequest) -> str | dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None:
        return None
    if choice.mode == "function":
        return {"type": "function", "name": choice.name}
    return choice.mode


def build_responses_body(req: ChatRequest, *, model: str, stream: bool, user: str | None,
                         default_thinking: bool | None = None) -> dict[str, Any]:
    """The Responses request for `req`; a 400 for what the Responses API cannot take.

    Sent only when set: `stop` and `seed` (DeepSeek's and seekserve's Responses take them,
    OpenAI's answers an error for them). Not sent: the penalties (no Responses field)."""
    if req.logprobs:
        raise _unsupported("logprobs", "logprobs")
    if req.continues_prefix:
        raise _unsupported("Prefix completion (`prefix: true` on the last assistant message)",
                           req.fields.messages)
    body: dict[str, Any] = {"model": model, "store": False,
                            "input": [item for msg in req.messages for item in _items(msg)]}
    tools = None
    if req.tools is not None:
        tools = [{"type": "function", "name": t.name,
                  **{k: v for k, v in (("description", t.description),
                                       ("parameters", t.parameters), ("strict", t.strict))
                     if v is not None}} for t in req.tools]
    fmt = _format(req.response_format)
    optional: dict[str, Any] = {
        "instructions": req.system,
        "max_output_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": list(req.stop) or None,
        "seed": req.seed,
        "tools": tools,
        "tool_choice": _tool_choice(req),
        "parallel_tool_calls": req.parallel_tool_calls,
        "text": {"format": fmt} if fmt is not None else None,
        "reasoning": _reasoning(req, default_thinking),
        "user": user,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body["stream"] = stream
    return body


# ----- answers -----


def _usage(raw: Any) -> Usage | None:
    usage = as_dict(raw)
    if "input_tokens" not in usage:
        return None
    prompt, completion = as_count(usage.get("input_tokens")), as_count(usage.get("output_tokens"))
    cached = as_count(as_dict(usage.get("input_tokens_details")).get("cached_tokens"))
    reasoning = as_count(as_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 cached_tokens=min(cached, prompt), reasoning_tokens=min(reasoning, completion))


def _failure(response: dict[str, Any]) -> str:
    message = as_dict(response.get("error")).get("message")
    return str(message)[:500] if message else "The upstream reported a failed response."


def _reasoning_text(item: dict[str, Any]) -> str:
    """A reasoning item's text: its `reasoning_text` content, else its summary."""
    parts = [as_dict(p).get("text") for p in as_list(item.get("content"))]
    if not any(isinstance(p, str) for p in parts):
        parts = [as_dict(p).get("text") for p in as_list(item.get("summary"))]
    return "".join(p for p in parts if isinstance(p, str))


@dataclass
class _ResponsesReader:
    """Reads one Responses answer; for a stream it keeps which output item is which tool
    call, and whether any call was made (a completed response that called is `tool_calls`)."""

    calls: dict[int, int] = field(default_factory=dict)  # output_index -> tool call index

    def _end(self, response: dict[str, Any]) -> Piece:
        status = response.get("status")
        if status == "failed":
            return Piece(error=_failure(response))
        reason: FinishReason = "tool_calls" if self.calls else "stop"
        if status == "incomplete":
            why = as_dict(response.get("incomplete_details")).get("reason")
            reason = _INCOMPLETE.get(str(why), "length")
        return Piece(finish_reason=reason, usage=_usage(response.get("usage")))

    def _call(self, index: int, item: dict[str, Any]) -> Delta:
        self.calls[index] = len(self.calls)
        return Delta(tool_calls=[ToolCallDelta(
            self.calls[index], id=str(item.get("call_id") or item.get("id") or ""),
            name=str(item.get("name") or ""))])

    def chunk(self, obj: Any) -> Piece:
        obj = as_dict(obj)
        kind = obj.get("type")
        if kind == "error":
            message = obj.get("message") or as_dict(obj.get("error")).get("message")
            return Piece(error=str(message)[:500] if message else "The upstream failed.")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            return self._end(as_dict(obj.get("response")))
        if kind == "response.output_item.added":
            item = as_dict(obj.get("item"))
            if item.get("type") == "function_call":
                return Piece(delta=self._call(as_count(obj.get("output_index")), item))
            return Piece()
        delta = obj.get("delta")
        if not isinstance(delta, str) or not delta:
            return Piece()
        if kind == "response.output_text.delta":
            return Piece(delta=Delta(text=delta))
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return Piece(delta=Delta(reasoning=delta))
        index = as_count(obj.get("output_index"))
        if kind == "response.function_call_arguments.delta" and index in self.calls:
            return Piece(delta=Delta(tool_calls=[ToolCallDelta(self.calls[index],
                                                               arguments=delta)]))
        return Piece()  # created, in_progress, content parts, the .done events, refusals

    def whole(self, obj: Any) -> Piece:
        obj = as_dict(obj)
        if obj.get("status") == "failed" or (obj.get("error") and not obj.get("output")):
            return Piece(error=_failure(obj))
        if not isinstance(obj.get("output"), list):
            return Piece(error="The upstream answer has no output.")
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCallDelta] = []
        for index, item in enumerate(map(as_dict, obj["output"])):
            kind = item.get("type")
            if kind == "message":
                text.extend(str(as_dict(p).get("text", "")) for p in as_list(item.get("content"))
                            if as_dict(p).get("type") == "output_text")
            elif kind == "reasoning":
                reasoning.append(_reasoning_text(item))
            elif kind == "function_call":
                call = self._call(index, item).tool_calls or []
                call[0].arguments = str(item.get("arguments") or "")
                calls.extend(call)
        delta = Delta(text="".join(text), reasoning="".join(reasoning), tool_calls=calls or None)
        end = self._end(obj)
        end.delta = delta if delta.shows_anything() else None
        return end


class ResponsesWire:
    """OpenAI's Responses API as an upstream wire (chat.upstream.UpstreamWire)."""

    def body(self, req: ChatRequest, profile: UpstreamProfile, *, model: str, stream: bool,
             user: str | None, default_thinking: bool | None = None) -> dict[str, Any]:
        return build_responses_body(req, model=model, stream=stream, user=user,
                                    default_thinking=default_thinking)

    def reader(self, profile: UpstreamProfile) -> _ResponsesReader:
        return _ResponsesReader()
