"""When a sequence may end and when it must: vLLM's `min_tokens`, `ignore_eos` and
`stop_token_ids` as a token constraint, wrapped around any other (a grammar's)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from seekserve.engines.base import Segment, TokenConstraint


class EndingRules:
    """End-of-generation is masked until `min_tokens` were accepted (always, with
    `ignore_eos`); a token of `stop_tokens` finishes the sequence once accepted. Forcing,
    masking and finishing of `inner` (if any) apply as well; where a grammar allows nothing
    but the end, the end stays allowed (the grammar is complete).

    Used only by the engine's loop thread, like the constraint it wraps."""

    def __init__(self, inner: TokenConstraint | None, *, end_tokens: Sequence[int],
                 max_tokens: int, min_tokens: int = 0, ignore_eos: bool = False,
                 stop_tokens: Iterable[int] = ()) -> None:
        self._inner = inner
        self._end = np.array(sorted(set(end_tokens)), dtype=np.intp)
        self._max_tokens = max_tokens
        # With ignore_eos the sequence goes on to max_tokens.
        self._min_tokens = max_tokens if ignore_eos else min_tokens
        self._stop_tokens = frozenset(stop_tokens)
        self._accepted = 0
        self._stopped = False

    @property
    def inner(self) -> TokenConstraint | None:
        return self._inner

    @property
    def finished(self) -> bool:
        return self._stopped or (self._inner is not None and self._inner.finished)

    def forced_token(self) -> int | None:
        return self._inner.forced_token() if self._inner is not None else None

    def mask_logits(self, logits: npt.NDArray[np.float32]) -> None:
        if self._inner is not None:
            self._inner.mask_logits(logits)
        if self._accepted >= self._min_tokens or not self._end.size:
            return
        ends = logits[self._end].copy()
        logits[self._end] = -np.inf
        if self._inner is not None and not np.isfinite(logits).any():
            logits[self._end] = ends

    def accept(self, token_id: int) -> None:
        self._accepted += 1
        if self._inner is not None:
            self._inner.accept(token_id)
        if token_id in self._stop_tokens:
            self._stopped = True

    def segment(self) -> Segment:
        segment = self._inner.segment() if self._inner is not None else Segment("answer")
        left = min(self._min_tokens, self._max_tokens) - self._accepted
        return replace(segment, min_tokens=max(segment.min_tokens, left))

    def end_of_generation(self) -> bool:
        return self._inner.end_of_generation() if self._inner is not None else True
