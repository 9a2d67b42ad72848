"""Per-sequence token sampling over a logits row: temperature, top_p, seed, log-probabilities."""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt

from seekserve.engines.base import SamplingParams, TokenEvent, TopToken

Logits = npt.NDArray[np.float32]

# Nucleus sampling looks at this many candidates first and sorts the whole vocabulary only
# when they hold less than top_p of the mass (rare: it needs a very flat distribution).
_NUCLEUS_CANDIDATES = 128


class Sampler:
    """Picks the next token for one sequence; its RNG is private, so a seed reproduces output."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(64)
        self._rng = np.random.Generator(np.random.PCG64(seed & (2**128 - 1)))

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0 or self.params.top_p == 0.0

    def sample(self, logits: Logits, *, model_logits: Logits | None = None,
               forced: int | None = None) -> TokenEvent:
        """Pick from `logits` (maybe masked by a constraint), or take `forced`; log-probabilities
        come from `model_logits` (the unmasked row) when given."""
        if forced is not None:
            token = forced
        else:
            token = self._argmax(logits) if self.greedy else self._draw(logits)
        if not self.params.logprobs:
            return TokenEvent(token_id=token)
        return self._with_logprobs(logits if model_logits is None else model_logits, token)

    @staticmethod
    def _argmax(logits: Logits) -> int:
        return int(np.argmax(logits))

    def _draw(self, logits: Logits) -> int:
        scaled = logits.astype(np.float64) / self.params.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        top_p = self.params.top_p
        if top_p >= 1.0:
            cumulative = np.cumsum(probs)
            return int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1],
                                       side="right").clip(0, len(probs) - 1))
        ids = self._nucleus(probs, top_p)
        kept = probs[ids]
        cumulative = np.cumsum(kept)
        pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return int(ids[min(pick, len(ids) - 1)])

    @staticmethod
    def _nucleus(probs: npt.NDArray[np.float64], top_p: float) -> npt.NDArray[np.intp]:
        """Token ids of the smallest most-probable set whose mass reaches top_p, by probability."""
        k = min(_NUCLEUS_CANDIDATES, len(probs))
        candidates = np.argpartition(-probs, k - 1)[:k]
        ordered = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[ordered])
        if cumulative[-1] < top_p and k < len(probs):
            ordered = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[ordered])
        cut = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        return ordered[: min(cut, len(ordered))]

    def _with_logprobs(self, logits: Logits, token: int) -> TokenEvent:
        """Log-probabilities of the model's own distribution (before temperature and top_p)."""
        row = logits.astype(np.float64)
        peak = row.max()
        log_total = peak + np.log(np.exp(row - peak).sum())
        top: tuple[TopToken, ...] = ()
        n = self.params.top_logprobs
        if n > 0:
            best = np.argpartition(-row, n - 1)[:n]
            best = best[np.argsort(-row[best], kind="stable")]
            top = tuple(TopToken(int(t), float(row[t] - log_total)) for t in best)
        return TokenEvent(token_id=token, logprob=float(row[token] - log_total), top=top)
