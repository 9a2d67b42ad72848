"""A scripted engine for HTTP-layer tests: byte-level tokens, a fixed reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import ClassVar

import llguidance
from llguidance._tokenizer import TokenizerWrapper

from seekserve.engines.base import (
    EngineState,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    TokenEvent,
    TopToken,
)

SPECIALS = 3  # 0 = <s>, 1 = </s>, 2 = unused; byte b is token b + SPECIALS


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
        return token_id == 1

    def end_tokens(self) -> list[int]:
        return [1]

    def grammar_vocabulary(self) -> llguidance.LLTokenizer:
        """The byte vocabulary for llguidance (grammars compile and validate; the fake engine
        itself never consults a constraint)."""
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
    """Answers every request with `reply` (one token per byte), then end-of-generation."""

    def __init__(self, reply: str = "Hello from the fake engine.", max_sequence_tokens: int = 4096,
                 delay: float = 0.0) -> None:
        self.reply = reply
        self._max = max_sequence_tokens
        self.delay = delay
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
