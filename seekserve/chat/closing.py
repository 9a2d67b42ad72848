"""The shortest way to finish a grammar: what a constrained answer writes when the tokens left are
only just enough to close what it opened, so JSON mode, `json_schema` and tool arguments end as
complete, valid JSON instead of being cut off at `max_tokens`.

The completion is found by walking a copy of the llguidance matcher with a fixed preference:
tokens the grammar forces; inside a string, the longest allowed token that ends it (`"` then only
`}` and `]`); outside, the longest allowed token made only of `}` and `]`, then the shortest value
literal (`0`, `""`, `[]`, `{}`, `null`, ...); else the shortest allowed token. Whether the text is
inside a string is tracked from its bytes (`JsonLexer`): once inside a string, `]` and `}` are
just characters, and preferring them would never close anything. The completion is short, not
provably the shortest; for JSON it closes each open string and container with about one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np
import numpy.typing as npt

_CLOSERS = frozenset(b"}]")
_LITERALS = (b"0", b'""', b"[]", b"{}", b"null", b"1", b"false", b"true")
# A walk longer than this gives up: the grammar needs more than closing (a long pattern, an
# enum of long strings), and the answer is left to the model and to max_tokens.
MAX_CLOSING_TOKENS = 96


class ClosingVocabulary:
    """What the walk prefers, computed once per tokenizer."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, end_tokens: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        n = tokenizer.vocab_size
        pieces = [tokenizer.decode_bytes([t]) for t in range(n)]
        lengths = np.array([len(p) if p else 1 << 20 for p in pieces], dtype=np.int64)
        closers = [t for t, p in enumerate(pieces) if p and set(p) <= _CLOSERS]
        enders = [t for t, p in enumerate(pieces) if p[:1] == b'"' and set(p[1:]) <= _CLOSERS]
        closers.sort(key=lambda t: -len(pieces[t]))
        enders.sort(key=lambda t: -len(pieces[t]))
        by_piece = {p: t for t, p in enumerate(pieces) if p in _LITERALS}
        literals = [by_piece[p] for p in _LITERALS if p in by_piece]
        self.pieces = pieces
        self.lengths = lengths
        self.outside = np.array(closers + literals, dtype=np.intp)
        self.inside = np.array(enders, dtype=np.intp)
        # The tokenizer's own end of generation first (Qwen's `<|im_end|>`), then the others.
        ends = sorted(set(end_tokens), key=lambda t: (t != tokenizer.eos_token, t))
        self.end_tokens = np.array(ends, dtype=np.intp)
        self._bitmask = llg_numpy.allocate_token_bitmask(1, n)

    def allowed(self, matcher: llguidance.LLMatcher) -> npt.NDArray[np.bool_]:
        """The tokens `matcher` allows next, as a boolean row of the vocabulary's size."""
        llg_numpy.fill_next_token_bitmask(matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return bits[: self.tokenizer.vocab_size].astype(np.bool_)


class JsonLexer:
    """Whether JSON text read so far ends inside a string (and just after a backslash there)."""

    __slots__ = ("escaped", "in_string")

    def __init__(self, in_string: bool = False, escaped: bool = False) -> None:
        self.in_string = in_string
        self.escaped = escaped

    def copy(self) -> JsonLexer:
        return JsonLexer(self.in_string, self.escaped)

    def feed(self, data: bytes) -> None:
        for byte in data:
            if not self.in_string:
                self.in_string = byte == 0x22
            elif self.escaped:
                self.escaped = False
            elif byte == 0x5C:
                self.escaped = True
            elif byte == 0x22:
                self.in_string = False


def closing_tokens(matcher: llguidance.LLMatcher, lexer: JsonLexer,
                   vocab: ClosingVocabulary) -> list[int] | None:
    """Tokens that take `matcher` (left unchanged) to the end of its grammar, an end-of-generation
    token last where the grammar does not stop by itself; None when no such completion of at
    most MAX_CLOSING_TOKENS tokens was found. `lexer` holds where the text so far ends."""
    walk = matcher.deep_copy()
    lex = lexer.copy()
    out: list[int] = []
    while len(out) <= MAX_CLOSING_TOKENS:
        if walk.is_stopped():
            return out
        if walk.is_error():
            return None
        forced = walk.compute_ff_tokens()
        if forced:
            for token in forced:
                walk.consume_token(token)
                lex.feed(vocab.pieces[token])
            out.extend(forced)
            continue
        allowed = vocab.allowed(walk)
        if walk.is_accepting():
            ends = vocab.end_tokens[allowed[vocab.end_tokens]]
            if ends.size:
                return [*out, int(ends[0])]
        step = _preferred(allowed, lex, vocab)
        if step is None or not walk.consume_token(step):
            return None
        lex.feed(vocab.pieces[step])
        out.append(step)
    return None


def _preferred(allowed: npt.NDArray[np.bool_], lex: JsonLexer,
               vocab: ClosingVocabulary) -> int | None:
    preferred = vocab.inside if lex.in_string and not lex.escaped else vocab.outside
    if lex.in_string and lex.escaped:
        preferred = preferred[:0]
    hits = preferred[allowed[preferred]]
    if hits.size:
        return int(hits[0])
    if not allowed.any():
        return None
    lengths = np.where(allowed, vocab.lengths, np.iinfo(np.int64).max)
    return int(np.argmin(lengths))
