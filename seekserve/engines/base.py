"""The Engine protocol: token ids in, typed generation events out, with cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import llguidance
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Segment:
    """What an engine that cannot mask each step (a remote one, which sends a whole request
    upstream) may let its generator produce before it must consult the constraint again:
    `phase` names the part of the output (it changes when the constraint needs control back),
    at most `max_tokens` (None: no cap of the constraint's own), under the Lark grammar
    `lark` (None: free), ended early by any of `stop`, with end-of-generation banned for the
    first `min_tokens`."""

    phase: str
    max_tokens: int | None = None
    lark: str | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0


class TokenConstraint(Protocol):
    """Per-sequence control over what may be generated next: forced tokens (a thinking block
    closed at its budget) and token masks (llguidance grammars). The engine asks, in order,
    `forced_token`, else `mask_logits` then samples, then `accept`s the token it emits; once
    `finished`, the sequence ends as if it had produced end-of-generation. It is stateful and
    belongs to one sequence; preemption keeps it (the tokens it accepted stay generated)."""

    def forced_token(self) -> int | None:
        """The token that must come next, or None to sample."""
        ...

    def mask_logits(self, logits: npt.NDArray[np.float32]) -> None:
        """Set the logits of tokens that may not come next to -inf (in place)."""
        ...

    def accept(self, token_id: int) -> None: ...

    @property
    def finished(self) -> bool: ...

    def segment(self) -> Segment:
        """What may be generated next without a per-step mask (see Segment)."""
        ...

    def end_of_generation(self) -> bool:
        """The generator ended the sequence on its own (an engine that could not mask the end
        token): True lets it end; False means the constraint takes over (forced tokens
        follow)."""
        ...


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # The server-derived isolation key of the caller; a cache never crosses two salts.
    cache_salt: bytes = b""
    # What may be generated (grammar, forced tokens); None leaves sampling free.
    constraint: TokenConstraint | None = None


@dataclass(frozen=True)
class StartEvent:
    """The engine scheduled the sequence: how long it queued and how much prompt it reused."""

    cached_tokens: int
    queued_s: float


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
    # Seconds from submission until the engine first scheduled the sequence.
    queued_s: float = 0.0


GenerationEvent = StartEvent | TokenEvent | FinishEvent


class EngineFailure(Exception):
    """The engine could not finish a sequence; the chat layer turns it into a clean error."""


class EngineOverloaded(EngineFailure):
    """The queue is full; raised by `generate` before anything is queued."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueTimeout(EngineFailure):
    """A queued sequence was not started within its deadline."""


class ShuttingDown(EngineFailure):
    """The engine is draining or stopped and takes no new work."""


@dataclass(frozen=True)
class EngineState:
    loaded: bool
    running: int
    queued: int
    kv_cells_total: int
    kv_cells_used: int
    queued_tokens: int = 0
    # Finished sequences kept for prefix reuse, and the cells only they hold.
    cache_entries: int = 0
    cache_cells: int = 0
    prompt_tokens_total: int = 0
    cache_hit_tokens_total: int = 0
    preemptions_total: int = 0
    resource_finishes_total: int = 0


class EventStream(Protocol):
    """Generation events of one sequence; `aclose` cancels it, queued or running."""

    def __aiter__(self) -> EventStream: ...

    async def __anext__(self) -> GenerationEvent: ...

    async def aclose(self) -> None: ...


class Tokenizer(Protocol):
    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True
               ) -> list[int]: ...

    def piece(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as their text)."""
        ...

    def is_end_of_generation(self, token_id: int) -> bool: ...

    def special_texts(self) -> tuple[str, ...]:
        """The texts `encode` reads as one special token only with `parse_special` (control
        tokens such as `<|im_end|>`); with it off they are encoded as the characters they are."""
        ...

    def end_tokens(self) -> list[int]:
        """Every end-of-generation token id."""
        ...

    def grammar_vocabulary(self) -> llguidance.LLTokenizer | None:
        """The vocabulary for llguidance grammars; None if this tokenizer cannot constrain."""
        ...

    @property
    def vocab_size(self) -> int:
        """How many token ids there are: every id is 0 <= id < vocab_size."""
        ...

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

    def generate(self, request: GenerationRequest) -> EventStream:
        """Queue `request`; its stream yields token events, then one FinishEvent.

        Raises EngineOverloaded (or ShuttingDown) at once, before anything is queued, when the
        request cannot be accepted. Closing the stream cancels the sequence.
        """
        ...

    async def drain(self, grace_s: float) -> None:
        """Stop taking work, fail what is queued, let running sequences finish for `grace_s`."""
        ...
