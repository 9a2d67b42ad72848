"""The stages that turn a token engine's events into what a client may see, each testable alone:
token ids to text and parsed output (reasoning, answer, tool calls), stop strings and output
moderation deciding what is released, log-probabilities kept in step with released text, and
the Finished that ends the answer."""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Collection
from typing import Any

from seekserve.chat.output import OutputParser, Parsed
from seekserve.chat.stops import StopMatcher
from seekserve.engines.base import FinishEvent, TokenEvent, Tokenizer
from seekserve.moderation import OutputGuard
from seekserve.protocol.errors import EngineError
from seekserve.protocol.neutral import Delta, Finished, FinishReason, ToolCallDelta, Usage

_ENGINE_FINISH: dict[str, FinishReason] = {
    "eos": "stop",
    "length": "length",
    "resources": "insufficient_system_resource",
}


class OutputText:
    """Token ids -> UTF-8 text -> parsed output. A stop token's text is dropped unless the
    request keeps stop strings (vLLM's include_stop_str_in_output)."""

    def __init__(self, tokenizer: Tokenizer, parser: OutputParser | None, *,
                 stop_tokens: Collection[int], include_stop: bool) -> None:
        self._tokenizer = tokenizer
        self._parser = parser
        self._drop = frozenset() if include_stop else frozenset(stop_tokens)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> tuple[str, Parsed]:
        """The text the token completes (a character may span tokens) and its parse."""
        piece = b"" if token_id in self._drop else self._tokenizer.piece(token_id)
        text = self._decoder.decode(piece)
        return text, self._parse(text)

    def finish(self) -> Parsed:
        """What the decoder and the parser still hold at the end of the output."""
        parsed = self._parse(self._decoder.decode(b"", final=True))
        if self._parser is not None:
            rest = self._parser.finish()
            parsed.reasoning += rest.reasoning
            parsed.content += rest.content
            parsed.calls.extend(rest.calls)
        return parsed

    def _parse(self, text: str) -> Parsed:
        return self._parser.feed(text) if self._parser is not None else Parsed(content=text)


class Release:
    """What of the parsed output is shown: answer text held back while it may be the start of
    a stop string and cut at one, and answer and reasoning held by output moderation until it
    releases them. Once a stop matched or a guard flagged, the answer has `ended`."""

    def __init__(self, stops: list[str], *, include_stop: bool, guard: OutputGuard | None,
                 thinking: bool) -> None:
        self.matcher = StopMatcher(stops, include_stop=include_stop)
        self._guard = guard
        self._reasoning_guard = OutputGuard(guard.rules) if guard is not None and thinking \
            else None

    @property
    def matched(self) -> str | None:
        return self.matcher.matched

    @property
    def flagged(self) -> bool:
        return any(g is not None and g.flagged for g in (self._guard, self._reasoning_guard))

    @property
    def ended(self) -> bool:
        return self.matched is not None or self.flagged

    def show(self, parsed: Parsed, *, final: bool) -> Delta:
        text = self.matcher.feed(parsed.content)
        if final and self.matched is None:
            text += self.matcher.flush()
        reasoning = parsed.reasoning
        if self._reasoning_guard is not None:
            reasoning = self._reasoning_guard.feed(reasoning) + (
                self._reasoning_guard.finish() if final else "")
        if self._guard is not None:
            text = self._guard.feed(text) + (self._guard.finish() if final else "")
        pieces = [ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in parsed.calls]
        return Delta(text, None, reasoning, pieces or None)


class LogprobWindow:
    """Keeps each token's log-probability entry until the answer text it produced is shown.
    Tokens of reasoning or markup produce no answer text and no entry; a token that ends part
    of a character waits for the token that completes it."""

    def __init__(self) -> None:
        # (start, end offset of the token's answer text, its entry), released with that text.
        self._pending: deque[tuple[int, int, dict[str, Any]]] = deque()
        self._carried: list[dict[str, Any]] = []
        self._produced = 0

    def add(self, entry: dict[str, Any], text: str, content: str) -> None:
        """`entry` of a token whose decoded text is `text`, of which `content` is answer."""
        self._carried.append(entry)
        if content:
            end = self._produced + len(content)
            self._pending.extend((self._produced, end, waiting) for waiting in self._carried)
        if text:
            self._carried.clear()
        self._produced += len(content)

    def release(self, emitted: int, *, partial: bool) -> list[dict[str, Any]]:
        """Entries whose text is now shown (`emitted` characters); with `partial`, also those
        cut short by the end."""
        out: list[dict[str, Any]] = []
        pending = self._pending
        while pending and pending[0][1] <= emitted:
            out.append(pending.popleft()[2])
        if partial:
            while pending:
                start, _, entry = pending.popleft()
                if start < emitted:
                    out.append(entry)
        return out


def logprob_entry(tokenizer: Tokenizer, event: TokenEvent) -> dict[str, Any]:
    """The chat shape of one token's log-probabilities, plus the token `id` (in the entry and
    each top entry), which the chat routes leave out."""

    def describe(token_id: int, logprob: float) -> dict[str, Any]:
        piece = tokenizer.piece(token_id)
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(piece), "id": token_id}

    entry = describe(event.token_id, event.logprob if event.logprob is not None else 0.0)
    entry["top_logprobs"] = [describe(t.token_id, t.logprob) for t in event.top]
    return entry


def finished(release: Release, finish: FinishEvent | None, usage: Usage, *, calls: int,
             last_token: int | None, stop_tokens: Collection[int]) -> Finished:
    """How the answer ended: moderation, then a stop string, then the engine's reason (a stop
    after tool calls is `tool_calls`; a stop token that ended it is named)."""
    if finish is not None:
        usage.completion_tokens = finish.completion_tokens
        usage.cached_tokens = finish.cached_tokens
    if release.flagged:
        return Finished("content_filter", None, usage)
    if release.matched is not None:
        return Finished("stop", release.matched, usage)
    if finish is None:
        raise EngineError("The engine ended the sequence without a finish event.")
    reason = _ENGINE_FINISH[finish.reason]
    stop_token = last_token if reason == "stop" and last_token in stop_tokens else None
    return Finished("tool_calls" if calls and reason == "stop" else reason, None, usage,
                    stop_token=stop_token)
