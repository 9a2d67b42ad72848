"""Response shapes of the three providers, rendered from one internal result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seekserve.chat.service import CompletedChat, Delta, Finished, ToolCallDelta
from seekserve.settings import Dialect


@dataclass(frozen=True)
class ResponseContext:
    """What every body of one response repeats."""

    dialect: Dialect
    id: str
    created: int
    model: str  # as the client asked for it
    system_fingerprint: str
    include_usage: bool = False


def _finish_fields(ctx: ResponseContext, finish: Finished) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "finish_reason": finish.finish_reason,
        "matched_stop": finish.matched_stop,
    }
    if ctx.dialect == "maas":
        fields["native_finish_reason"] = finish.finish_reason
    return fields


def _chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A chat choice's `logprobs`: the entries without the token ids that the chat service
    adds for the completions route."""
    if entries is None:
        return None
    return {"content": [_without_id(entry) for entry in entries]}


def _without_id(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k != "id"}
    if "top_logprobs" in out:
        out["top_logprobs"] = [{k: v for k, v in top.items() if k != "id"}
                               for top in out["top_logprobs"]]
    return out


def completion_body(ctx: ResponseContext, result: CompletedChat) -> dict[str, Any]:
    if ctx.dialect == "output_text":
        return {"output": {"text": result.content}}
    message: dict[str, Any] = {
        "role": "assistant",
        # With tool calls and no text the content is null, as OpenAI's and DeepSeek's are.
        "content": result.content if result.content or not result.tool_calls else None,
    }
    if result.reasoning_content is not None:
        message["reasoning_content"] = result.reasoning_content
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": _chat_logprobs(result.logprobs),
        **_finish_fields(ctx, result.finish),
    }
    return {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [choice],
        "usage": result.finish.usage.body(),
        "system_fingerprint": ctx.system_fingerprint,
    }


def _chunk(ctx: ResponseContext, choices: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": ctx.system_fingerprint,
        "choices": choices,
    }
    if ctx.include_usage:
        body["usage"] = None
    return body


def first_chunk(ctx: ResponseContext) -> dict[str, Any] | None:
    if ctx.dialect == "output_text":
        return None
    return _chunk(ctx, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}])


def delta_chunk(ctx: ResponseContext, delta: Delta) -> dict[str, Any] | None:
    """The chunk of one delta; None where the dialect has nothing to show of it (the
    `output.text` envelope carries the answer text only)."""
    if ctx.dialect == "output_text":
        return {"output": {"text": delta.text}} if delta.text else None
    logprobs = _chat_logprobs(delta.logprobs)
    body: dict[str, Any] = {}
    if delta.reasoning:
        body["reasoning_content"] = delta.reasoning
    if delta.text or not (delta.reasoning or delta.tool_calls):
        body["content"] = delta.text
    if delta.tool_calls:
        body["tool_calls"] = [_tool_call_piece(piece) for piece in delta.tool_calls]
    return _chunk(ctx, [{"index": 0, "delta": body, "logprobs": logprobs,
                         "finish_reason": None}])


def _tool_call_piece(piece: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed tool call: index always; id, type and name in the first piece."""
    out: dict[str, Any] = {"index": piece.index}
    function: dict[str, Any] = {"arguments": piece.arguments}
    if piece.id is not None:
        out["id"] = piece.id
        out["type"] = "function"
        function = {"name": piece.name or "", "arguments": piece.arguments}
    out["function"] = function
    return out


def finish_chunks(ctx: ResponseContext, finish: Finished) -> list[dict[str, Any]]:
    if ctx.dialect == "output_text":
        return []
    chunks = [_chunk(ctx, [{"index": 0, "delta": {}, "logprobs": None,
                            **_finish_fields(ctx, finish)}])]
    if ctx.include_usage:
        usage_chunk = _chunk(ctx, [])
        usage_chunk["usage"] = finish.usage.body()
        chunks.append(usage_chunk)
    return chunks
