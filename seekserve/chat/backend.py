"""The one interface every chat backend implements (the local chat layer over a token engine,
the pass-through to a chat upstream), and what a request carries through it.

A backend prepares a neutral request (validation and prompt counting: a 400 here), then runs
it as a stream of Deltas ending in one Finished; `complete` gathers the same stream. The HTTP
layer holds a backend per model, chosen once when the app is built, and never asks which kind.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from seekserve.engines.base import EventStream, StartEvent
from seekserve.moderation import OutputGuard
from seekserve.protocol.neutral import (
    CompletedChat,
    Delta,
    Finished,
    NeutralRequest,
    ToolCall,
)
from seekserve.registry import ServedModel


class Isolation(Protocol):
    """Who a request runs for, as a backend needs it: keys derived from (API key, user_id) by
    the tenancy layer, never from anything the client sends."""

    @property
    def cache_salt(self) -> bytes:
        """Partitions the prefix cache (and routes the token protocol's requests)."""
        ...

    @property
    def affinity(self) -> bytes:
        """Routes a pass-through request to the replica that holds this user's cache."""
        ...

    @property
    def upstream_user(self) -> str | None:
        """The pseudonym of the end user sent to an upstream (None without a user_id)."""
        ...


class Prepared(Protocol):
    """A request bound to its model and backend: what admission and accounting need."""

    @property
    def request_id(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def prompt_tokens(self) -> int:
        """The prompt's size: exact for a token engine, an estimate for a pass-through."""
        ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def prompt_ids(self) -> list[int] | None:
        """The prompt's token ids, where the backend has them."""
        ...


class GenerationObserver(Protocol):
    """Told what the engine reports as it happens, so a stream cut short is still accounted."""

    def on_start(self, event: StartEvent) -> None: ...

    def on_token(self) -> None: ...


P = TypeVar("P", bound=Prepared)


@dataclass
class Run(Generic[P]):
    """One admitted request on its way through a backend: the immutable prepared request and
    what this run of it holds."""

    prepared: P
    # Output moderation: text is shown only once the guard releases it.
    guard: OutputGuard | None = None
    observer: GenerationObserver | None = None
    # A token backend's engine stream, once the engine accepted the request (`submit`).
    events: EventStream | None = None


class ChatBackend(Protocol[P]):
    def prompt_texts(self, request: NeutralRequest) -> list[str]:
        """What prompt moderation reads (a token-id prompt decoded)."""
        ...

    def prepare(self, request: NeutralRequest, model: ServedModel, *, request_id: str,
                isolation: Isolation) -> P:
        """Validate `request` for this backend and bind it to `model`: a 400 for what it
        cannot serve, the prompt counted."""
        ...

    def submit(self, run: Run[P]) -> None:
        """Queue `run` now, so a full queue is a 503 before any response starts."""
        ...

    def stream(self, run: Run[P]) -> AsyncGenerator[Delta | Finished, None]:
        """Deltas of visible output, then one Finished; closing it stops the generation."""
        ...

    async def complete(self, run: Run[P]) -> CompletedChat:
        """The whole answer, gathered from the same stream."""
        ...


async def gather(items: AsyncGenerator[Delta | Finished, None], *, logprobs: bool,
                 thinking: bool | None, token_ids: bool = False) -> CompletedChat | None:
    """A whole answer from the items of a stream (closed when done); None if the stream ended
    without a Finished. `thinking`: reasoning_content is a string (True), null (False), or a
    string where any reasoning came (None: the backend decides, as an upstream does).
    `token_ids`: the deltas' token ids, joined."""
    text: list[str] = []
    reasoning: list[str] = []
    entries: list[dict[str, Any]] | None = [] if logprobs else None
    ids: list[int] | None = [] if token_ids else None
    calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
    async with aclosing(items):
        async for item in items:
            if isinstance(item, Finished):
                joined = "".join(reasoning)
                return CompletedChat(
                    "".join(text), item, entries,
                    reasoning_content=joined if thinking or (thinking is None and joined)
                    else None,
                    tool_calls=[ToolCall(*calls[i]) for i in sorted(calls)] or None,
                    token_ids=ids)
            text.append(item.text)
            reasoning.append(item.reasoning)
            if entries is not None and item.logprobs:
                entries.extend(item.logprobs)
            if ids is not None and item.token_ids:
                ids.extend(item.token_ids)
            for piece in item.tool_calls or []:
                call = calls.setdefault(piece.index, ["", "", ""])
                if piece.id:
                    call[0] = piece.id
                if piece.name:
                    call[1] = piece.name
                call[2] += piece.arguments
    return None
