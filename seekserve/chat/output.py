"""The generated text of a chat answer, parsed as it streams: reasoning, content, tool calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from seekserve.chat.reasoning import ReasoningParser
from seekserve.chat.tools import CallPiece, ToolCallParser


@dataclass
class Parsed:
    reasoning: str = ""
    content: str = ""
    calls: list[CallPiece] = field(default_factory=list)


class OutputParser:
    """Reasoning first (when the prompt opened a thinking block), then the answer, in which
    `<tool_call>` blocks become tool calls (when the request offered tools)."""

    def __init__(self, *, thinking: bool, tools: bool) -> None:
        self._reasoning = ReasoningParser(in_reasoning=True) if thinking else None
        self._tools = ToolCallParser() if tools else None

    @property
    def tool_calls(self) -> list[dict[str, str]]:
        return self._tools.calls if self._tools is not None else []

    def feed(self, text: str) -> Parsed:
        if self._reasoning is None:
            return self._answer(text, final=False)
        split = self._reasoning.feed(text)
        out = self._answer(split.content, final=False)
        out.reasoning = split.reasoning
        return out

    def finish(self) -> Parsed:
        if self._reasoning is None:
            return self._answer("", final=True)
        split = self._reasoning.finish()
        out = self._answer(split.content, final=True)
        out.reasoning = split.reasoning
        return out

    def _answer(self, text: str, *, final: bool) -> Parsed:
        if self._tools is None:
            return Parsed(content=text)
        split = self._tools.feed(text) if text else None
        out = Parsed(content=split.content if split else "",
                     calls=list(split.calls) if split else [])
        if final:
            tail = self._tools.finish()
            out.content += tail.content
            out.calls.extend(tail.calls)
        return out
