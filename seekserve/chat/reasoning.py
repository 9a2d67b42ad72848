"""Splitting generated text into reasoning and answer at `<think>` / `</think>`, streamed."""

from __future__ import annotations

from dataclasses import dataclass

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@dataclass
class Split:
    """What one feed produced: reasoning text and answer text, in that order."""

    reasoning: str = ""
    content: str = ""


def partial_tail(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningParser:
    """Feed generated text; get back reasoning and answer text as soon as each is certain.

    `in_reasoning` says whether generation starts inside a thinking block (the server opened
    it in the prompt). Otherwise a block is recognised only at the very start of the output
    (leading whitespace allowed), as templates that think natively emit it. A partial tag
    (`"</thi"`) is held back until the next feed shows what it is. Tags themselves are not
    shown; reasoning is stripped of the blank lines that frame it.
    """

    def __init__(self, *, in_reasoning: bool, detect_open: bool = True) -> None:
        self._state = "reasoning" if in_reasoning else ("start" if detect_open else "content")
        self._buffer = ""
        self._reasoning_started = False
        self._content_started = False
        self._pending_newlines = ""
        self.closed = False  # the thinking block was closed (by the model or by force)

    def feed(self, text: str) -> Split:
        out = Split()
        self._buffer += text
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if not stripped:
                    return out  # only whitespace so far: undecided
                if stripped.startswith(OPEN_TAG):
                    self._buffer = stripped[len(OPEN_TAG):]
                    self._state = "reasoning"
                    continue
                if OPEN_TAG.startswith(stripped):
                    return out  # could still become the open tag
                self._state = "content"
                continue
            if self._state == "reasoning":
                index = self._buffer.find(CLOSE_TAG)
                if index >= 0:
                    self._emit_reasoning(out, self._buffer[:index], final=True)
                    self._buffer = self._buffer[index + len(CLOSE_TAG):]
                    self._state = "content"
                    self.closed = True
                    continue
                hold = partial_tail(self._buffer, CLOSE_TAG)
                cut = len(self._buffer) - hold
                self._emit_reasoning(out, self._buffer[:cut], final=False)
                self._buffer = self._buffer[cut:]
                return out
            # content
            self._emit_content(out, self._buffer)
            self._buffer = ""
        return out

    def finish(self) -> Split:
        """The output ended: whatever is held back is text of the current part."""
        out = Split()
        rest, self._buffer = self._buffer, ""
        if self._state == "reasoning":
            self._emit_reasoning(out, rest, final=True)
        elif rest.strip() or self._state == "content":
            self._emit_content(out, rest)
        return out

    def _emit_reasoning(self, out: Split, text: str, *, final: bool) -> None:
        if not self._reasoning_started:
            text = text.lstrip("\n")
            if not text:
                return
            self._reasoning_started = True
        # Trailing newlines may be the frame before `</think>`: they are shown only once
        # more reasoning follows them.
        kept = text.rstrip("\n")
        if kept:
            out.reasoning += self._pending_newlines + kept
            self._pending_newlines = ""
        self._pending_newlines += text[len(kept):]
        if final:
            self._pending_newlines = ""

    def _emit_content(self, out: Split, text: str) -> None:
        if not self._content_started:
            # What follows a thinking block starts at its first visible character.
            text = text.lstrip() if self.closed or self._reasoning_started else text
            if not text:
                return
            self._content_started = True
        out.content += text
