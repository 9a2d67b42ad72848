"""Constrained decoding: llguidance grammars for JSON mode and tool calls, compiled and cached,
and the per-sequence constraint that also closes a thinking block at its budget.

The engine drives a `SequenceConstraint` token by token (the `TokenConstraint` protocol of
`engines.base`): it may force the next token, mask the logits, and end the sequence.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np
import numpy.typing as npt

from seekserve.chat.closing import ClosingVocabulary, JsonLexer, closing_tokens
from seekserve.chat.reasoning import CLOSE_TAG
from seekserve.chat.tools import CALL_CLOSE, CALL_OPEN
from seekserve.engines.base import Segment

log = logging.getLogger(__name__)

MAX_SCHEMA_CHARS = 65536
# The closing of a grammar's open structure is looked for at every step once the tokens left are
# within this many (plus the closing of the grammar's start) of what it took at the last look,
# every few steps before that ...
CLOSING_WATCH = 32
# ... and within this many plus the closing of the grammar's start (one token can open that
# much again: a new tool call, an object with required keys), only the model's best few tokens
# whose own closing still fits are allowed.
CLOSING_MARGIN = 4
CLOSING_CANDIDATES = 6
# JSON as generated under a grammar: one line, `", "` and `": "` separators. Flexible
# whitespace lets a small model pad an object with newlines until max_tokens runs out.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A schema or grammar llguidance cannot compile; the message says why."""


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The Lark grammar of one JSON value matching `schema`."""
    return "start: " + json_rule(schema)


def json_rule(schema: dict[str, Any]) -> str:
    text = json.dumps({**schema, "x-guidance": _JSON_OPTIONS}, ensure_ascii=False)
    if len(text) > MAX_SCHEMA_CHARS:
        raise GrammarError(f"the schema is {len(text)} characters long; the limit is "
                           f"{MAX_SCHEMA_CHARS}")
    return "%json " + text


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]


def call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The body of one `<tool_call>`: `{"name": <one of tools>, "arguments": <its schema>}`."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_calls_rules(tools: Sequence[ToolSpec], *, opened: bool, max_calls: int,
                     special_tags: bool, start: str = "start") -> str:
    """Lark rules of one to `max_calls` `<tool_call>` blocks, the first named `start`.

    `opened`: the first open tag is already generated (the model chose to call, in `auto`
    mode). `special_tags`: the tags are single special tokens of the vocabulary (Qwen's),
    written `<tool_call>` in Lark; otherwise they are plain text."""
    open_tag, close_tag = ((CALL_OPEN, CALL_CLOSE) if special_tags
                           else (json.dumps(CALL_OPEN), json.dumps(CALL_CLOSE)))
    first = ("" if opened else open_tag + " ") + f'"\\n" body "\\n" {close_tag}'
    more = max(0, max_calls - 1)
    tail = f' ("\\n" call){{0,{more}}}' if more else ""
    return (f"{start}: {first}{tail}\n"
            f'call: {open_tag} "\\n" body "\\n" {close_tag}\n'
            f"body: {json_rule(call_schema(tools))}\n")


class GrammarCompiler:
    """Compiles grammars for one tokenizer and keeps the most recent ones (LRU, bounded)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, *, capacity: int = 256) -> None:
        self.tokenizer = tokenizer
        self._capacity = capacity
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._closing: ClosingVocabulary | None = None

    def matcher(self, lark: str) -> llguidance.LLMatcher:
        """A fresh matcher for `lark`; raises GrammarError with llguidance's reason."""
        with self._lock:
            pristine = self._cache.get(lark)
            if pristine is not None:
                self._cache.move_to_end(lark)
                return pristine.deep_copy()
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer)
        if is_error:
            raise GrammarError(messages[0] if messages else "the grammar does not compile")
        pristine = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if pristine.is_error():
            raise GrammarError(pristine.get_error())
        with self._lock:
            self._cache[lark] = pristine
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return pristine.deep_copy()

    def __len__(self) -> int:
        return len(self._cache)

    def closing_vocabulary(self, end_tokens: Sequence[int]) -> ClosingVocabulary:
        """What finishing a grammar in time prefers, built on first use (a pass over the
        vocabulary)."""
        with self._lock:
            if self._closing is None:
                self._closing = ClosingVocabulary(self.tokenizer, end_tokens)
            return self._closing


@dataclass(frozen=True)
class ThinkBudget:
    """A thinking block the prompt opened: at most `budget` tokens, then `close` (the tokens
    of `</think>` and the blank line after it) is forced."""

    budget: int
    close: tuple[int, ...]


@dataclass(frozen=True)
class AnswerRule:
    """What the answer may be: free text, a grammar from its first token, or free text until
    `trigger` (the `<tool_call>` token) and the grammar after it. `banned` tokens never."""

    mode: Literal["free", "grammar", "trigger"] = "free"
    lark: str | None = None
    trigger: int | None = None
    banned: tuple[int, ...] = ()
    # The whole answer as one grammar, for an engine that sends it upstream instead of masking
    # each step: `lark` itself, the free text and the calls after the trigger, or free text
    # (which excludes special tokens but the end) when tokens are banned.
    whole: str | None = None


Phase = Literal["think", "closing", "answer"]


class SequenceConstraint:
    """One sequence's constraint: a thinking block within its budget, then the answer rule.

    Used only by the engine's loop thread; `reasoning_tokens` is read once the sequence ends.
    """

    def __init__(self, *, think: ThinkBudget | None, answer: AnswerRule,
                 compiler: GrammarCompiler | None, piece: Callable[[int], bytes],
                 end_tokens: Sequence[int], max_tokens: int | None = None) -> None:
        self._think = think
        self._max_tokens = max_tokens
        self._accepted = 0
        self._answer = answer
        self._compiler = compiler
        self._piece = piece
        self._end = np.array(sorted(set(end_tokens)), dtype=np.intp)
        self._phase: Phase = "think" if think is not None else "answer"
        self._forced: list[int] = []
        self._tail = b""
        self._think_tokens = 0
        self._reasoning_final = 0
        self._matcher: llguidance.LLMatcher | None = None
        self._lexer = JsonLexer()
        self._closing_len: int | None = None
        self._opening_len = 0  # the closing of the grammar's start
        self._bitmask: npt.NDArray[np.int32] | None = None
        self._finished = False
        self._answered = False
        if self._phase == "answer":
            self._start_answer()

    @property
    def think_budget(self) -> int | None:
        return self._think.budget if self._think is not None else None

    @property
    def answer(self) -> AnswerRule:
        return self._answer

    @property
    def reasoning_tokens(self) -> int:
        """Tokens of the thinking block, its tags included (so far, if it is still open)."""
        return self._think_tokens if self._phase != "answer" else self._reasoning_final

    # -- TokenConstraint -------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished

    def forced_token(self) -> int | None:
        return self._forced[0] if self._forced else None

    def mask_logits(self, logits: npt.NDArray[np.float32]) -> None:
        if self._phase == "think":
            # A model that would end inside its thinking block closes the block instead, so
            # an answer always follows.
            if self._end.size:
                if int(np.argmax(logits)) in self._end:
                    self._begin_closing()
                logits[self._end] = -np.inf
            return
        if self._phase != "answer":
            return
        if self._think is not None and not self._answered and self._matcher is None:
            # After a thinking block an answer follows: a model that would end right away
            # (it answered inside the block) has to say it again.
            logits[self._end] = -np.inf
        if self._answer.banned:
            logits[list(self._answer.banned)] = -np.inf
        if self._matcher is not None:
            self._apply_grammar(logits)

    def accept(self, token_id: int) -> None:
        self._accepted += 1
        if self._forced and self._forced[0] == token_id:
            self._forced.pop(0)
        elif self._forced:
            self._forced.clear()  # the engine chose otherwise: forcing is advisory no more
        if self._phase in ("think", "closing"):
            self._thinking(token_id)
        elif self._phase == "answer":
            self._answering(token_id)

    def segment(self) -> Segment:
        if self._phase == "think":
            assert self._think is not None
            return Segment("think", max_tokens=self._think.budget - self._think_tokens,
                           stop=(CLOSE_TAG,))
        if self._phase == "closing":
            return Segment("closing", max_tokens=0)  # its forced tokens come first
        must_answer = self._think is not None and not self._answered and self._matcher is None
        return Segment("answer", lark=self._answer.whole, min_tokens=1 if must_answer else 0)

    def end_of_generation(self) -> bool:
        if self._phase == "think":
            self._begin_closing()  # as mask_logits does when the end token would win
            return False
        return True

    # -- phases ------------------------------------------------------------------------------

    def _thinking(self, token_id: int) -> None:
        assert self._think is not None
        self._think_tokens += 1
        if self._phase == "closing":
            if not self._forced:  # the whole close sequence is out
                self._reasoning_final = self._think_tokens
                self._start_answer()
            return
        self._tail = (self._tail + self._piece(token_id))[-32:]
        if CLOSE_TAG.encode() in self._tail:
            self._reasoning_final = self._think_tokens
            self._forced.clear()
            self._start_answer()
            return
        if self._phase == "think" and self._think_tokens >= self._think.budget:
            self._begin_closing()

    def _begin_closing(self) -> None:
        assert self._think is not None
        self._phase = "closing"
        self._forced = list(self._think.close)

    def _start_answer(self) -> None:
        self._phase = "answer"
        if self._answer.mode == "grammar":
            self._open_grammar()

    def _answering(self, token_id: int) -> None:
        if not self._answered and self._piece(token_id).strip():
            self._answered = True
        if self._matcher is None:
            if self._answer.mode == "trigger" and token_id == self._answer.trigger:
                self._open_grammar()
            return
        if not self._matcher.consume_token(token_id):
            log.warning("grammar refused token %d: %s", token_id, self._matcher.get_error())
            self._finished = True
            return
        self._lexer.feed(self._piece(token_id))
        if self._matcher.is_stopped():
            self._finished = True

    def _open_grammar(self) -> None:
        assert self._compiler is not None and self._answer.lark is not None
        self._matcher = self._compiler.matcher(self._answer.lark)
        self._bitmask = llg_numpy.allocate_token_bitmask(1, self._compiler.tokenizer.vocab_size)

    def _apply_grammar(self, logits: npt.NDArray[np.float32]) -> None:
        assert self._matcher is not None and self._bitmask is not None
        llg_numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        allowed = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        n = min(len(logits), len(allowed))
        logits[:n][allowed[:n] == 0] = -np.inf
        logits[n:] = -np.inf
        self._close_in_time(logits)

    def _close_in_time(self, logits: npt.NDArray[np.float32]) -> None:
        """Force the closing of the open structure when the tokens left are just what it takes,
        so a grammar's answer ends complete; `length` only when even that cannot fit."""
        if self._max_tokens is None:
            return
        assert self._matcher is not None and self._compiler is not None
        left = self._max_tokens - self._accepted
        if (self._closing_len is not None and self._accepted % 4
                and left > self._closing_len + self._opening_len + CLOSING_WATCH):
            return
        vocab = self._compiler.closing_vocabulary(self._end.tolist())
        closing = closing_tokens(self._matcher, self._lexer, vocab)
        if closing is None:
            return
        if self._closing_len is None:
            self._opening_len = len(closing)
        self._closing_len = len(closing)
        if len(closing) >= left:
            self._forced = closing
        elif (left - len(closing) <= CLOSING_MARGIN + self._opening_len
              and not self._keep_closable(logits, left)):
            self._forced = closing

    def _keep_closable(self, logits: npt.NDArray[np.float32], left: int) -> bool:
        """Mask all but the model's best few tokens after which the closing still fits in
        `left`; False when none of them does."""
        assert self._matcher is not None and self._compiler is not None
        vocab = self._compiler.closing_vocabulary(self._end.tolist())
        finite = np.flatnonzero(np.isfinite(logits))
        k = min(CLOSING_CANDIDATES, finite.size)
        if k == 0:
            return False
        best = finite[np.argpartition(-logits[finite], k - 1)[:k]]
        keep = [int(t) for t in best if self._closes_after(int(t), left - 1, vocab)]
        if not keep:
            return False
        kept = logits[keep].copy()
        logits[:] = -np.inf
        logits[keep] = kept
        return True

    def _closes_after(self, token: int, left: int, vocab: ClosingVocabulary) -> bool:
        if token in self._end:
            return True
        assert self._matcher is not None
        walk = self._matcher.deep_copy()
        if not walk.consume_token(token):
            return False
        lexer = self._lexer.copy()
        lexer.feed(self._piece(token))
        closing = closing_tokens(walk, lexer, vocab)
        return closing is not None and len(closing) <= left


def tool_markup_tokens(encode: Callable[[str], list[int]]) -> tuple[int | None, int | None]:
    """The single-token ids of `<tool_call>` and `</tool_call>`, where the vocabulary has them."""
    ids = []
    for tag in (CALL_OPEN, CALL_CLOSE):
        tokens = encode(tag)
        ids.append(tokens[0] if len(tokens) == 1 else None)
    return ids[0], ids[1]
