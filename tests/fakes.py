"""A scripted engine for HTTP-layer tests: byte-level tokens, a fixed reply (optionally steered
by the request's constraint, as a model's logits are)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import ClassVar

import llguidance
import numpy as np
import numpy.typing as npt
from llguidance._tokenizer import TokenizerWrapper

from seekserve.engines.base import (
    EngineState,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    TokenConstraint,
    TokenEvent,
    TopToken,
)

SPECIALS = 3  # 0 = <s>, 1 = </s>, 2 = unused; byte b is token b + SPECIALS
END = 1
SPACE = ord(" ") + SPECIALS


class ByteTokenizer:
    bos_text = "<s>"
    eos_text = "</s>"
    add_bos = True
    _grammar_vocabulary: llguidance.LLTokenizer | None = None

    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True
               ) -> list[int]:
        tokens = [b + SPECIALS for b in text.encode()]
        return [0, *tokens] if add_special else tokens

    def piece(self, token_id: int) -> bytes:
        if token_id < SPECIALS:
            return [b"<s>", b"</s>", b""][token_id]
        return bytes([token_id - SPECIALS])

    def is_end_of_generation(self, token_id: int) -> bool:
        return token_id == END

    def special_texts(self) -> tuple[str, ...]:
        return ()  # encode reads every text as bytes

    def end_tokens(self) -> list[int]:
        return [END]

    @property
    def vocab_size(self) -> int:
        return SPECIALS + 256

    def grammar_vocabulary(self) -> llguidance.LLTokenizer:
        """The byte vocabulary for llguidance (grammars compile and validate; the fake engine
        consults a constraint only when made with `follow_constraints`)."""
        if self._grammar_vocabulary is None:
            self._grammar_vocabulary = llguidance.LLTokenizer(TokenizerWrapper(_ByteVocabulary()))
        return self._grammar_vocabulary


class _ByteVocabulary:
    """ByteTokenizer as llguidance's TokenizerWrapper reads a tokenizer."""

    eos_token_id = 1
    bos_token_id = 0
    tokens: ClassVar[list[bytes]] = [b"\xff<s>", b"\xff</s>", b"\xff<unused>",
                                     *(bytes([b]) for b in range(256))]
    special_token_ids: ClassVar[list[int]] = [0, 1, 2]

    def __call__(self, text: str | bytes) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        return [b + SPECIALS for b in data]


class FakeEngine:
    """Answers every request with `reply` (one token per byte), then end-of-generation.

    With `follow_constraints` a request's constraint is driven as the embedded engine drives
    it (forced tokens, masked logits, `accept`, `finished`), on logits that rank the reply's
    next token first, then end-of-generation, then a space, then every token by id."""

    def __init__(self, reply: str = "Hello from the fake engine.", max_sequence_tokens: int = 4096,
                 delay: float = 0.0, *, follow_constraints: bool = False) -> None:
        self.reply = reply
        self._max = max_sequence_tokens
        self.delay = delay
        self.follow_constraints = follow_constraints
        self.requests: list[GenerationRequest] = []
        self.active = 0
        self.tokenizer = ByteTokenizer()
        self.chat_template: str | None = None

    @property
    def max_sequence_tokens(self) -> int:
        return self._max

    @property
    def description(self) -> str:
        return "fake"

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def drain(self, grace_s: float) -> None:
        pass

    def state(self) -> EngineState:
        return EngineState(True, self.active, 0, self._max, 0)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if self.follow_constraints and request.constraint is not None:
            async with aclosing(self._constrained(request, request.constraint)) as events:
                async for event in events:
                    yield event
            return
        self.requests.append(request)
        self.active += 1
        try:
            tokens = self.tokenizer.encode(self.reply)
            for i, token in enumerate(tokens):
                if i >= request.max_tokens:
                    yield FinishEvent("length", len(request.prompt), i)
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                top = tuple(TopToken(token + k, -0.5 * (k + 1)) for k in
                            range(request.sampling.top_logprobs))
                yield TokenEvent(token, -0.25 if request.sampling.logprobs else None,
                                 top if request.sampling.logprobs else ())
            yield FinishEvent("eos", len(request.prompt), len(tokens) + 1)
        finally:
            self.active -= 1

    async def _constrained(self, request: GenerationRequest, constraint: TokenConstraint
                           ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        self.active += 1
        try:
            reply = self.tokenizer.encode(self.reply)
            for i in range(request.max_tokens):
                if self.delay:
                    await asyncio.sleep(self.delay)
                token = constraint.forced_token()
                if token is None:
                    logits = self._logits(reply[i] if i < len(reply) else END)
                    constraint.mask_logits(logits)
                    token = constraint.forced_token()
                    if token is None:
                        token = int(np.argmax(logits))
                constraint.accept(token)
                if token in self.tokenizer.end_tokens():
                    yield FinishEvent("eos", len(request.prompt), i + 1)
                    return
                yield TokenEvent(token, -0.25 if request.sampling.logprobs else None)
                if constraint.finished:
                    yield FinishEvent("eos", len(request.prompt), i + 1)
                    return
            yield FinishEvent("length", len(request.prompt), request.max_tokens)
        finally:
            self.active -= 1

    def _logits(self, preferred: int) -> npt.NDArray[np.float32]:
        size = self.tokenizer.vocab_size
        logits = -np.arange(size, dtype=np.float32) / size
        logits[SPACE], logits[END], logits[preferred] = 1.0, 2.0, 3.0
        return logits
