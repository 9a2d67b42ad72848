"""What the request pipeline needs of one wire protocol (an API family): read a body into its
wire request and the neutral request, and write the neutral answer and events back, whole or
as server-sent events, errors included. One adapter per family; the pipeline is the same."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from seekserve.protocol.errors import APIError
from seekserve.protocol.neutral import (
    ChatRequest,
    CompletedChat,
    Delta,
    Finished,
    TextCompletionRequest,
)

W = TypeVar("W")


@dataclass(frozen=True)
class ResponseMeta:
    """What every body of one response repeats, and what the backend made of the prompt."""

    id: str
    created: int
    model: str  # as the client asked for it
    system_fingerprint: str
    prompt_text: str = ""  # the prompt as text (a text completion's echo)
    prompt_ids: list[int] | None = None  # the prompt's tokens, where the backend has them


class AnswerWriter(Protocol):
    """Writes one answer in the wire protocol."""

    def answer(self, result: CompletedChat) -> dict[str, Any]:
        """The whole non-streamed body."""
        ...

    def events(self, items: AsyncIterator[Delta | Finished]) -> AsyncGenerator[bytes, None]:
        """The stream's SSE events, framed, end marker included; an exception from `items`
        passes through (the stream then ends with `error_event`)."""
        ...


class WireProtocol(Protocol[W]):
    """One API family's adapter, parameterised by its wire request type."""

    @property
    def id_prefix(self) -> str:
        """How its response ids start (`chatcmpl-`, `msg_`, ...)."""
        ...

    @property
    def keepalive(self) -> bytes:
        """The SSE bytes sent while a streamed request waits."""
        ...

    def parse(self, body: bytes) -> W:
        """The body as the wire request; an InvalidRequestError (400) naming the field."""
        ...

    def neutral(self, wire: W) -> ChatRequest | TextCompletionRequest: ...

    def streams(self, wire: W) -> bool: ...

    def writer(self, wire: W, meta: ResponseMeta) -> AnswerWriter: ...

    def error(self, exc: APIError) -> tuple[int, dict[str, Any]]:
        """The status and body of an error answered before any response started."""
        ...

    def error_event(self, exc: APIError) -> bytes:
        """The SSE event of an error after the stream started (the stream ends after it)."""
        ...


def sse_event(payload: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event: an optional `event:` line and the payload as compact JSON."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event is not None else b""
    return head + b"data: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE_COMMENT = b": keep-alive\n\n"


def openai_error(exc: APIError) -> tuple[int, dict[str, Any]]:
    """OpenAI's (and DeepSeek's) error body: {"error": {message, type, param, code}}."""
    return exc.status_code, exc.body()


class OpenAIErrors:
    """Keep-alive and errors as OpenAI's APIs send them: an SSE comment while waiting, the
    `{"error": ...}` body, and the same object as an in-band `data:` event."""

    keepalive = KEEPALIVE_COMMENT

    def error(self, exc: APIError) -> tuple[int, dict[str, Any]]:
        return openai_error(exc)

    def error_event(self, exc: APIError) -> bytes:
        return sse_event(exc.body())
