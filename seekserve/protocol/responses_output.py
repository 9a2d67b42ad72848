"""The Responses API's answer: the `response` object with its output items (reasoning, message,
function calls) and usage, whole or as the semantic event stream, each event numbered by a
monotonic `sequence_number` and named on its `event:` line; the stream ends with
`response.completed`, `.incomplete` or `.failed` (then `error` after a failure), never
`[DONE]`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from seekserve.protocol.errors import APIError, internal_error
from seekserve.protocol.exchange import ResponseMeta, sse_event
from seekserve.protocol.neutral import (
    CompletedChat,
    Delta,
    Finished,
    ToolCall,
    ToolCallDelta,
    Usage,
)

Seal = Callable[[str], str]

# How a finish reason ends a response: its status and `incomplete_details.reason`.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def status_of(finish: Finished) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """The response's status, incomplete_details and error for how generation ended."""
    reason = finish.finish_reason
    if reason in _INCOMPLETE:
        return "incomplete", {"reason": _INCOMPLETE[reason]}, None
    if reason == "insufficient_system_resource":
        return "failed", None, {"code": "server_error", "message": (
            "The server ran out of memory for this request's context "
            "(insufficient_system_resource); try a shorter input or max_output_tokens.")}
    return "completed", None, None


def error_event(exc: APIError, sequence: int) -> bytes:
    """The `error` event of a failure after the stream started."""
    payload = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
               "sequence_number": sequence}
    return sse_event(payload, event="error")


def reasoning_item(item_id: str, text: str, seal: Seal, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
            "encrypted_content": seal(text), "status": status}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [output_text_part(text)]}


def function_call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}


class ResponsesWriter:
    """One response, whole or as events (implements protocol.exchange.AnswerWriter).

    `echo` is what the response object repeats of the request (protocol.responses.echo_of);
    `seal` signs reasoning text into a reasoning item's `encrypted_content`."""

    def __init__(self, echo: dict[str, Any], meta: ResponseMeta, seal: Seal) -> None:
        self.echo = echo
        self.meta = meta
        self.seal = seal
        self._sequence = 0
        self._suffix = meta.id.removeprefix("resp_")

    def next_sequence(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    def item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self._suffix}_{index}"

    def response(self, output: list[dict[str, Any]], *, status: str = "in_progress",
                 finish: Finished | None = None) -> dict[str, Any]:
        """The `response` object: its settings, output items and, once finished, usage."""
        incomplete, error = None, None
        if finish is not None:
            status, incomplete, error = status_of(finish)
        text = "".join(part["text"] for item in output if item["type"] == "message"
                       for part in item["content"] if part["type"] == "output_text")
        return {
            "id": self.meta.id,
            "object": "response",
            "created_at": self.meta.created,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.meta.model,
            "output": output,
            "output_text": text,
            "previous_response_id": None,
            "service_tier": "default",
            "store": False,
            "usage": usage_body(finish.usage) if finish is not None else None,
            **self.echo,
        }

    # ----- whole -----

    def answer(self, result: CompletedChat) -> dict[str, Any]:
        status = status_of(result.finish)[0]
        output: list[dict[str, Any]] = []
        if result.reasoning_content:
            output.append(reasoning_item(self.item_id("rs", 0), result.reasoning_content,
                                         self.seal, "completed"))
        if result.content:
            output.append(message_item(self.item_id("msg", len(output)), result.content,
                                       "completed"))
        for call in result.tool_calls or []:
            output.append(function_call_item(self.item_id("fc", len(output)), call,
                                             "completed"))
        if output and status == "incomplete":
            output[-1]["status"] = "incomplete"  # the item that was cut short
        return self.response(output, finish=result.finish)

    # ----- streamed -----

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.next_sequence()}
        return sse_event(payload, event=kind)

    async def events(self, items: AsyncIterator[Delta | Finished]) -> AsyncGenerator[bytes, None]:
        yield self.event("response.created", response=self.response([]))
        yield self.event("response.in_progress", response=self.response([]))
        stream = _OutputStream(self)
        try:
            async for item in items:
                if isinstance(item, Delta):
                    for chunk in stream.delta(item):
                        yield chunk
                    continue
                for chunk in stream.finish(item):
                    yield chunk
                body = self.response(stream.output, finish=item)
                yield self.event(f"response.{body['status']}", response=body)
        except Exception as exc:
            failure = exc if isinstance(exc, APIError) else internal_error()
            body = self.response(stream.output, status="failed")
            body["error"] = {"code": failure.code or "server_error", "message": failure.message}
            yield self.event("response.failed", response=body)
            raise  # the stream ends with the protocol's `error` event


class _OutputStream:
    """The output items of a streamed response as they grow: one item is open at a time
    (reasoning, then the message, then each function call), and opening one closes the last."""

    def __init__(self, writer: ResponsesWriter) -> None:
        self.w = writer
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the open item, as it will be when done
        self._text: list[str] = []
        self._calls: dict[int, int] = {}  # tool-call index -> output index

    def delta(self, delta: Delta) -> list[bytes]:
        events: list[bytes] = []
        if delta.reasoning:
            events += self._append("reasoning", delta.reasoning)
        if delta.text:
            events += self._append("message", delta.text)
        for piece in delta.tool_calls or []:
            events += self._call_piece(piece)
        return events

    def finish(self, finish: Finished) -> list[bytes]:
        status = status_of(finish)[0]
        return self._close("incomplete" if status == "incomplete" else "completed")

    def _append(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._open is None or self._open["type"] != kind:
            events += self._close("completed")
            events += self._open_item(kind)
        assert self._open is not None
        self._text.append(text)
        where = {"item_id": self._open["id"], "output_index": len(self.output) - 1,
                 "content_index": 0}
        if kind == "reasoning":
            events.append(self.w.event("response.reasoning_text.delta", **where, delta=text))
        else:
            events.append(self.w.event("response.output_text.delta", **where, delta=text,
                                       logprobs=[]))
        return events

    def _open_item(self, kind: str) -> list[bytes]:
        index = len(self.output)
        if kind == "reasoning":
            item: dict[str, Any] = {"id": self.w.item_id("rs", index), "type": "reasoning",
                                    "summary": [], "content": [], "status": "in_progress"}
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            item = {"id": self.w.item_id("msg", index), "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}
            part = output_text_part("")
        self.output.append(item)
        self._open, self._text = item, []
        return [self.w.event("response.output_item.added", output_index=index, item=item),
                self.w.event("response.content_part.added", item_id=item["id"],
                             output_index=index, content_index=0, part=part)]

    def _call_piece(self, piece: ToolCallDelta) -> list[bytes]:
        events: list[bytes] = []
        if piece.index not in self._calls:
            events += self._close("completed")
            index = len(self.output)
            item = {"id": self.w.item_id("fc", index), "type": "function_call",
                    "call_id": piece.id or "", "name": piece.name or "", "arguments": "",
                    "status": "in_progress"}
            self.output.append(item)
            self._calls[piece.index] = index
            self._open, self._text = item, []
            events.append(self.w.event("response.output_item.added", output_index=index,
                                       item=dict(item)))
        index = self._calls[piece.index]
        if piece.arguments:
            self._text.append(piece.arguments)
            events.append(self.w.event("response.function_call_arguments.delta",
                                       item_id=self.output[index]["id"], output_index=index,
                                       delta=piece.arguments))
        return events

    def _close(self, status: str) -> list[bytes]:
        """Close the open item: its `.done` events, then `output_item.done`."""
        item = self._open
        if item is None:
            return []
        index = len(self.output) - 1
        text = "".join(self._text)
        where = {"item_id": item["id"], "output_index": index}
        events: list[bytes] = []
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], text, self.w.seal, status)
            events += [
                self.w.event("response.reasoning_text.done", **where, content_index=0,
                             text=text),
                self.w.event("response.content_part.done", **where, content_index=0,
                             part=done["content"][0])]
        elif item["type"] == "message":
            done = message_item(item["id"], text, status)
            events += [
                self.w.event("response.output_text.done", **where, content_index=0, text=text,
                             logprobs=[]),
                self.w.event("response.content_part.done", **where, content_index=0,
                             part=done["content"][0])]
        else:
            done = {**item, "arguments": text, "status": status}
            events.append(self.w.event("response.function_call_arguments.done", **where,
                                       name=item["name"], arguments=text))
        self.output[index] = done
        self._open, self._text = None, []
        events.append(self.w.event("response.output_item.done", output_index=index, item=done))
        return events


# ----- documented in the OpenAPI description (built as dicts on the hot path) -----


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Input tokens read from the prefix cache.")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="Output tokens of reasoning.")


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The `response` object: the request's settings echoed, the output items, usage."""

    id: str = Field(description="`resp_...`.")
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[dict[str, Any]] = Field(
        description="Items: `reasoning` (content of reasoning_text, signed encrypted_content), "
        "`message` (output_text parts), `function_call` (call_id, name, arguments).")
    output_text: str = Field(description="The text of every output_text part, joined.")
    usage: ResponseUsage | None = None
    store: Literal[False] = False
    previous_response_id: None = None
    metadata: dict[str, str] = Field(default_factory=dict)
