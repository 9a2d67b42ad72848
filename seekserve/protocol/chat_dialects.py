"""Chat completion responses in the three providers' shapes (dialects), written from the
neutral answer and events: the whole `chat.completion`, its `chat.completion.chunk` stream, and
the second seed's `{"output": {"text"}}` envelope."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from seekserve.protocol.exchange import (
    DONE,
    OpenAIErrors,
    ResponseMeta,
    sse_event,
)
from seekserve.protocol.neutral import (
    ChatRequest,
    CompletedChat,
    Delta,
    Finished,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from seekserve.protocol.openai_chat import (
    ChatCompletionRequest,
    parse_chat_request,
    to_chat_request,
)

# `openai`: the plain OpenAI / DeepSeek shape; `maas`: the same plus native_finish_reason;
# `output_text`: the {"output": {"text"}} envelope.
Dialect = Literal["openai", "maas", "output_text"]


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object with DeepSeek's cache fields."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_cache_hit_tokens": usage.cached_tokens,
        "prompt_cache_miss_tokens": usage.prompt_tokens - usage.cached_tokens,
    }


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


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
        message["tool_calls"] = [tool_call_body(c) for c in result.tool_calls]
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
        "usage": usage_body(result.finish.usage),
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
        usage_chunk["usage"] = usage_body(finish.usage)
        chunks.append(usage_chunk)
    return chunks


class ChatCompletionsProtocol(OpenAIErrors):
    """The chat completions adapter in one dialect (implements protocol.exchange.WireProtocol)."""

    id_prefix = "chatcmpl-"

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def parse(self, body: bytes) -> ChatCompletionRequest:
        return parse_chat_request(body)

    def neutral(self, wire: ChatCompletionRequest) -> ChatRequest:
        return to_chat_request(wire)

    def streams(self, wire: ChatCompletionRequest) -> bool:
        return bool(wire.stream)

    def writer(self, wire: ChatCompletionRequest, meta: ResponseMeta) -> ChatWriter:
        include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
        return ChatWriter(ResponseContext(
            dialect=self.dialect, id=meta.id, created=meta.created, model=meta.model,
            system_fingerprint=meta.system_fingerprint, include_usage=include_usage))



@dataclass(frozen=True)
class ChatWriter:
    """One chat answer in its dialect, whole or as chunks."""

    ctx: ResponseContext

    def answer(self, result: CompletedChat) -> dict[str, Any]:
        return completion_body(self.ctx, result)

    async def events(self, items: AsyncIterator[Delta | Finished]) -> AsyncGenerator[bytes, None]:
        first = first_chunk(self.ctx)
        if first is not None:
            yield sse_event(first)
        async for item in items:
            if isinstance(item, Delta):
                chunk = delta_chunk(self.ctx, item)
                if chunk is not None:
                    yield sse_event(chunk)
            else:
                for chunk in finish_chunks(self.ctx, item):
                    yield sse_event(chunk)
        yield DONE
