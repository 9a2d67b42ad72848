"""The Engine protocol: token ids in, typed generation events out, with cancellation."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # The server-derived isolation key of the caller; a cache never crosses two salts.
    cache_salt: bytes = b""


@dataclass(frozen=True)
class TopToken:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    logprob: float | None = None
    top: tuple[TopToken, ...] = ()


FinishReason = Literal["eos", "length", "resources"]


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


GenerationEvent = TokenEvent | FinishEvent


class EngineFailure(Exception):
    """The engine could not finish a sequence; the chat layer turns it into a clean error."""


@dataclass(frozen=True)
class EngineState:
    loaded: bool
    running: int
    queued: int
    kv_cells_total: int
    kv_cells_used: int


class Tokenizer(Protocol):
    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True
               ) -> list[int]: ...

    def piece(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as their text)."""
        ...

    def is_end_of_generation(self, token_id: int) -> bool: ...

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    @property
    def add_bos(self) -> bool: ...


class Engine(Protocol):
    """What the chat layer needs from any token generator."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def chat_template(self) -> str | None: ...

    @property
    def max_sequence_tokens(self) -> int:
        """Longest prompt + completion one sequence can hold."""
        ...

    @property
    def description(self) -> str: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def state(self) -> EngineState: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Yield token events, then one FinishEvent. Closing the iterator cancels the sequence."""
        ...
