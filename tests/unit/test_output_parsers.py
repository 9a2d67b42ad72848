"""The streaming parsers of generated text: reasoning blocks and tool-call markup, fed whole
and one character at a time (the split must not depend on where tokens end)."""

from __future__ import annotations

import json

import pytest

from seekserve.chat.output import OutputParser, Parsed
from seekserve.chat.reasoning import ReasoningParser, Split
from seekserve.chat.tools import ToolCallParser


def reason_whole(text: str, *, in_reasoning: bool = True) -> Split:
    parser = ReasoningParser(in_reasoning=in_reasoning)
    out = parser.feed(text)
    rest = parser.finish()
    return Split(out.reasoning + rest.reasoning, out.content + rest.content)


def reason_by_char(text: str, *, in_reasoning: bool = True) -> Split:
    parser = ReasoningParser(in_reasoning=in_reasoning)
    out = Split()
    for ch in text:
        part = parser.feed(ch)
        out.reasoning += part.reasoning
        out.content += part.content
    rest = parser.finish()
    return Split(out.reasoning + rest.reasoning, out.content + rest.content)


@pytest.mark.parametrize("text, reasoning, content", [
    ("\nLet me add 2 and 2.\n</think>\n\nIt is 4.", "Let me add 2 and 2.", "It is 4."),
    ("a</think>b", "a", "b"),
    ("still thinking when cut", "still thinking when cut", ""),
    ("one\n\ntwo\n</think>\n\nanswer\n\nmore", "one\n\ntwo", "answer\n\nmore"),
    ("x </thi y</think>z", "x </thi y", "z"),  # a partial tag that is not one is text
    ("</think>", "", ""),
    ("why</think>\n\n", "why", ""),
    ("why</think> \n\n Because.", "why", "Because."),
])
def test_reasoning_split(text: str, reasoning: str, content: str) -> None:
    assert reason_whole(text) == Split(reasoning, content)
    assert reason_by_char(text) == Split(reasoning, content)


@pytest.mark.parametrize("text, reasoning, content", [
    ("<think>\nhmm\n</think>\n\nHi!", "hmm", "Hi!"),
    ("  \n<think>a</think>b", "a", "b"),
    ("Hello <think> is a tag", "", "Hello <think> is a tag"),
    ("<thin", "", "<thin"),
])
def test_a_block_the_model_opens_itself_is_recognised_only_at_the_start(
        text: str, reasoning: str, content: str) -> None:
    assert reason_whole(text, in_reasoning=False) == Split(reasoning, content)
    assert reason_by_char(text, in_reasoning=False) == Split(reasoning, content)


def test_a_partial_close_tag_is_held_back_until_it_is_known() -> None:
    parser = ReasoningParser(in_reasoning=True)
    assert parser.feed("abc</th") == Split("abc", "")
    assert parser.feed("ink>") == Split("", "")
    assert parser.closed
    assert parser.feed("\n\nok") == Split("", "ok")


def tools_by_char(text: str) -> tuple[str, list[dict[str, str]], list[tuple[int, str | None]]]:
    """Content, the calls as assembled from pieces, and the order headers/arguments came in."""
    parser = ToolCallParser()
    content = ""
    calls: dict[int, dict[str, str]] = {}
    order: list[tuple[int, str | None]] = []

    def take(split_content: str, pieces: list) -> None:  # type: ignore[type-arg]
        nonlocal content
        content += split_content
        for p in pieces:
            if p.id is not None:
                calls[p.index] = {"id": p.id, "name": p.name or "", "arguments": ""}
                order.append((p.index, "header"))
            calls[p.index]["arguments"] += p.arguments
            if p.arguments:
                order.append((p.index, None))

    for ch in text:
        out = parser.feed(ch)
        take(out.content, out.calls)
    out = parser.finish()
    take(out.content, out.calls)
    assembled = [calls[i] for i in sorted(calls)]
    assert [{k: c[k] for k in ("name", "arguments")} for c in assembled] == \
        [{k: c[k] for k in ("name", "arguments")} for c in parser.calls]
    return content, assembled, order


def test_one_call_streams_its_header_then_its_arguments() -> None:
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"n": {"a": 1}}}\n</tool_call>')
    content, calls, order = tools_by_char(text)
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris", "n": {"a": 1}})]
    assert calls[0]["arguments"] == '{"city": "Paris", "n": {"a": 1}}'
    assert calls[0]["id"].startswith("call_")
    assert order[0] == (0, "header") and len(order) > 3  # arguments came in many pieces


def test_text_before_calls_is_content_and_whitespace_between_them_is_not() -> None:
    text = ('Let me check.\n<tool_call>\n{"name":"a","arguments":{}}\n</tool_call>\n'
            '<tool_call>\n{"name":"b","arguments":{"x":[1,2]}}\n</tool_call>\n')
    content, calls, _ = tools_by_char(text)
    assert content == "Let me check.\n"
    assert [(c["name"], c["arguments"]) for c in calls] == [("a", "{}"), ("b", '{"x":[1,2]}')]
    assert calls[0]["id"] != calls[1]["id"]


def test_arguments_before_the_name_are_reported_whole_at_the_close() -> None:
    text = '<tool_call>{"arguments": {"q": "x"}, "name": "search"}</tool_call>'
    _, calls, order = tools_by_char(text)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("search", {"q": "x"})]
    assert order == [(0, "header"), (0, None)]


def test_an_unclosed_call_keeps_what_it_has() -> None:
    _, calls, _ = tools_by_char('<tool_call>\n{"name": "f", "arguments": {"a": "par')
    assert [(c["name"], c["arguments"]) for c in calls] == [("f", '{"a": "par')]


def test_text_that_only_looks_like_a_tag_is_content() -> None:
    content, calls, _ = tools_by_char("a <tool_ b <tool> c")
    assert (content, calls) == ("a <tool_ b <tool> c", [])


def test_reasoning_then_a_call() -> None:
    parser = OutputParser(thinking=True, tools=True)
    text = ('\nI should call it.\n</think>\n\n<tool_call>\n{"name": "f", "arguments": '
            '{"k": 1}}\n</tool_call>')
    whole = Parsed()
    for ch in text:
        part = parser.feed(ch)
        whole.reasoning += part.reasoning
        whole.content += part.content
        whole.calls += part.calls
    tail = parser.finish()
    whole.calls += tail.calls
    assert whole.reasoning == "I should call it."
    assert whole.content == ""
    assert parser.tool_calls[0]["name"] == "f"
    assert "".join(p.arguments for p in whole.calls) == '{"k": 1}'
