"""The per-sequence constraint on a byte vocabulary with real llguidance grammars: a thinking
block closed at its budget, an answer that must follow it, JSON and tool-call grammars."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from seekserve.chat.structured import (
    AnswerRule,
    GrammarCompiler,
    GrammarError,
    SequenceConstraint,
    ThinkBudget,
    ToolSpec,
    json_schema_grammar,
    tool_calls_rules,
)
from tests.fakes import SPECIALS, ByteTokenizer

TOK = ByteTokenizer()
VOCAB = 3 + 256
END = 1


def compiler(capacity: int = 8) -> GrammarCompiler:
    return GrammarCompiler(TOK.grammar_vocabulary(), capacity=capacity)


def constraint(*, think: ThinkBudget | None = None, answer: AnswerRule | None = None,
               comp: GrammarCompiler | None = None) -> SequenceConstraint:
    return SequenceConstraint(think=think, answer=answer or AnswerRule(), compiler=comp,
                              piece=TOK.piece, end_tokens=[END])


def run(c: SequenceConstraint, prefer: Callable[[int], list[int]], steps: int = 400
        ) -> bytes:
    """Drive `c` like the engine does, with a "model" whose logits favour `prefer(step)`
    (in order), and return the bytes generated until it ends."""
    out = b""
    for step in range(steps):
        logits = np.zeros(VOCAB, dtype=np.float32)
        for rank, token in enumerate(dict.fromkeys(prefer(step))):
            logits[token] = 1000.0 - rank
        forced = c.forced_token()
        if forced is None:
            c.mask_logits(logits)
            forced = c.forced_token()
        token = forced if forced is not None else int(np.argmax(logits))
        c.accept(token)
        if token == END:
            break
        out += TOK.piece(token)
        if c.finished:
            break
    return out


def byte(ch: str) -> int:
    return ord(ch) + SPECIALS


CLOSE = tuple(TOK.encode("\n</think>\n\n"))


def test_thinking_is_closed_at_its_budget_and_an_answer_follows() -> None:
    c = constraint(think=ThinkBudget(budget=5, close=CLOSE))
    out = run(c, lambda step: [byte("x")] if step < 20 else [END])
    assert out == b"xxxxx\n</think>\n\n" + b"x" * (20 - 5 - len(CLOSE))
    assert c.reasoning_tokens == 5 + len(CLOSE)


def test_a_model_closing_on_its_own_keeps_its_own_close() -> None:
    text = b"hmm</think>ok"
    c = constraint(think=ThinkBudget(budget=50, close=CLOSE))
    out = run(c, lambda step: [text[step] + SPECIALS] if step < len(text) else [END])
    assert out == text
    assert c.reasoning_tokens == len(b"hmm</think>")


def test_a_model_that_would_end_while_thinking_closes_the_block_and_must_answer() -> None:
    # It wants to end right away, and again right after the forced close: the answer
    # that follows is the best non-end token.
    c = constraint(think=ThinkBudget(budget=50, close=CLOSE))
    out = run(c, lambda step: [END, byte("A")] if step < len(CLOSE) + 3 else [END])
    assert out.startswith(b"\n</think>\n\nA")


def test_json_grammar_yields_parseable_json_even_from_a_model_that_wants_junk() -> None:
    comp = compiler()
    schema = {"type": "object", "properties": {"n": {"type": "integer"},
                                               "s": {"type": "string", "maxLength": 3}},
              "required": ["n", "s"], "additionalProperties": False}
    c = constraint(answer=AnswerRule(mode="grammar", lark=json_schema_grammar(schema)),
                   comp=comp)
    out = run(c, lambda step: [END, byte('"'), byte("z"), byte(","), byte("7"),
                               *range(3, VOCAB)])
    value = json.loads(out)
    assert set(value) == {"n", "s"} and isinstance(value["n"], int)


@pytest.mark.parametrize("max_tokens", [30, 60, 200])
def test_near_max_tokens_the_json_is_closed(max_tokens: int) -> None:
    comp = compiler()
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"s": {"type": "string"}}}}}}
    c = SequenceConstraint(think=None, answer=AnswerRule(mode="grammar",
                                                         lark=json_schema_grammar(schema)),
                           compiler=comp, piece=TOK.piece, end_tokens=[END],
                           max_tokens=max_tokens)
    # A model that would write `{"a":[{"s":"xxxxx...` forever.
    out = run(c, lambda step: [byte("x"), byte("{"), byte("["), byte('"'), byte("a"),
                               byte("s"), byte(":")], steps=max_tokens)
    assert c.finished
    assert isinstance(json.loads(out), dict)


def adversary(seed: int) -> Callable[[int], list[int]]:
    """A "model" that opens strings, arrays and objects and writes `]`/`}` inside strings (as
    a small model in JSON mode did), in a seeded random order."""
    rng = np.random.default_rng(seed)
    alphabet = [byte(c) for c in '{["x]}:,0\\']
    return lambda step: [int(t) for t in rng.permutation(alphabet)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_tokens", [6, 9, 14, 23, 31, 45, 80])
def test_json_mode_ends_complete_whenever_the_closing_fits(max_tokens: int, seed: int) -> None:
    c = SequenceConstraint(think=None, answer=AnswerRule(mode="grammar", lark=json_schema_grammar(
        {"type": "object"})), compiler=compiler(), piece=TOK.piece, end_tokens=[END],
        max_tokens=max_tokens)
    out = run(c, adversary(seed), steps=max_tokens)
    assert isinstance(json.loads(out), dict), out


def test_a_closing_that_cannot_fit_is_cut_at_max_tokens() -> None:
    # `{"a":` needs a value and `}`: the schema's two required keys cannot fit in 4 tokens.
    schema = {"type": "object", "properties": {"long_key_one": {"type": "string"},
                                               "long_key_two": {"type": "string"}},
              "required": ["long_key_one", "long_key_two"], "additionalProperties": False}
    c = SequenceConstraint(think=None, answer=AnswerRule(mode="grammar",
                                                         lark=json_schema_grammar(schema)),
                           compiler=compiler(), piece=TOK.piece, end_tokens=[END], max_tokens=4)
    out = run(c, adversary(0), steps=4)
    assert not c.finished and len(out) == 4


def test_required_keys_are_written_by_the_closing() -> None:
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
        "size": {"enum": ["small", "large"]}},
        "required": ["name", "tags", "size"], "additionalProperties": False}
    c = SequenceConstraint(think=None, answer=AnswerRule(mode="grammar",
                                                         lark=json_schema_grammar(schema)),
                           compiler=compiler(), piece=TOK.piece, end_tokens=[END],
                           max_tokens=60)
    # A model that never stops writing the name.
    out = run(c, lambda step: [byte("y"), byte('"')] if step > 9 else [], steps=60)
    value = json.loads(out)
    assert set(value) == {"name", "tags", "size"} and value["size"] in ("small", "large")


def test_tool_call_grammar_names_a_listed_function_and_validates_its_arguments() -> None:
    comp = compiler()
    tools = [ToolSpec("get_weather", {"type": "object", "properties": {
        "unit": {"enum": ["c", "f"]}}, "required": ["unit"], "additionalProperties": False})]
    lark = tool_calls_rules(tools, opened=False, max_calls=1, special_tags=False)
    c = constraint(answer=AnswerRule(mode="grammar", lark=lark), comp=comp)
    out = run(c, lambda step: [END, byte("f"), *range(3, VOCAB)]).decode()
    assert out.startswith("<tool_call>\n") and out.endswith("\n</tool_call>")
    body = json.loads(out[len("<tool_call>\n"):-len("\n</tool_call>")])
    assert body == {"name": "get_weather", "arguments": {"unit": "f"}}


def test_banned_tokens_are_never_chosen() -> None:
    c = constraint(answer=AnswerRule(banned=(byte("<"),)))
    out = run(c, lambda step: [byte("<"), byte("a")] if step < 3 else [END])
    assert out == b"aaa"


def test_a_bad_schema_is_an_error_with_llguidance_reason() -> None:
    with pytest.raises(GrammarError, match="strin"):
        compiler().matcher(json_schema_grammar({"type": "object", "properties": {
            "a": {"type": "strin"}}}))


def test_compiled_grammars_are_cached_within_the_bound() -> None:
    comp = compiler(capacity=2)
    grammars = [json_schema_grammar({"type": "object", "properties": {f"k{i}": {}}})
                for i in range(3)]
    first = comp.matcher(grammars[0])
    again = comp.matcher(grammars[0])
    assert first is not again  # each sequence gets its own matcher state
    for g in grammars:
        comp.matcher(g)
    assert len(comp) == 2
