"""Stop strings over streamed text: emit what cannot start a stop, hold back what might."""

from __future__ import annotations


class StopMatcher:
    """Feed text as it is generated; get back the text that is safe to show and any match.

    A stop string can span tokens, so the longest tail of the buffer that is a prefix of some
    stop string is held back until the next feed shows whether it completes.
    """

    def __init__(self, stops: list[str], *, include_stop: bool = False) -> None:
        self.stops = [s for s in stops if s]
        # Keep the matched stop string at the end of the text (vLLM's
        # include_stop_str_in_output); the text after it is cut all the same.
        self.include_stop = include_stop
        self._buffer = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Returns the text to emit now; after a match, `matched` is set and nothing more is."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        self._buffer += text
        hit = self._earliest_match()
        if hit is not None:
            index, stop = hit
            self.matched = stop
            out = self._buffer[:index + (len(stop) if self.include_stop else 0)]
            self._buffer = ""
            return out
        hold = self._held_tail()
        cut = len(self._buffer) - hold
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out

    def flush(self) -> str:
        """At the end of generation the held-back tail is ordinary text."""
        out, self._buffer = self._buffer, ""
        return out if self.matched is None else ""

    def _earliest_match(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self.stops:
            index = self._buffer.find(stop)
            if index < 0:
                continue
            if best is None or index < best[0] or (index == best[0] and len(stop) > len(best[1])):
                best = (index, stop)
        return best

    def _held_tail(self) -> int:
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._buffer)), hold, -1):
                if self._buffer.endswith(stop[:k]):
                    hold = k
                    break
        return hold
