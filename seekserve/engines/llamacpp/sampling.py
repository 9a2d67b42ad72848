"""Token sampling for the rows of one decode step: greedy, temperature with top_p, per-sequence
seeds, log-probabilities.

A step's logits are one float32 matrix, a row per sampled sequence (64 rows of a 152k
vocabulary are 39 MB), and every pass over it is memory-bound. The step makes one pass over all
rows for the argmax (the greedy token and each row's peak); a row that draws or reports
log-probabilities adds one float32 exp pass into a scratch row, summed by blocks of 1,024 tokens:
a draw finds its block from the block sums and its token inside that block, so no cumulative sum
over the whole vocabulary and no float64 copy of it is made.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from seekserve.engines.base import SamplingParams, TokenEvent, TopToken

Logits = npt.NDArray[np.float32]

_BLOCK = 1024
# Nucleus sampling looks at this many candidates first and sorts the whole row only when they
# hold less than top_p of the mass (rare: it needs a very flat distribution).
_NUCLEUS_CANDIDATES = 128
# top_logprobs candidates are looked for within this many nats of the peak first, then twice
# as far, and so on; past the last width (or with too many found) the whole row is partitioned.
_TOP_WIDTHS = (4.0, 8.0, 16.0, 32.0)
_TOP_MOST_CANDIDATES = 8192
# Below this many logits a step is sampled on the calling thread: splitting it across threads
# pays only when the matrix is far bigger than a core's share of memory bandwidth.
PARALLEL_MIN_LOGITS = 4_000_000


class Sampler:
    """One sequence's sampling parameters and private RNG, so a seed reproduces output."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(64)
        self._rng = np.random.Generator(np.random.PCG64(seed & (2**128 - 1)))

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0 or self.params.top_p == 0.0

    def uniform(self) -> float:
        """The one random number a draw uses (one per sampled token)."""
        return float(self._rng.random())

    def sample(self, logits: Logits, *, model_logits: Logits | None = None,
               forced: int | None = None) -> TokenEvent:
        """One row on its own: what `sample_step` does for it in a batch."""
        return sample_step(logits[np.newaxis, :], [Pick(0, self, forced, model_logits)])[0]


@dataclass(frozen=True)
class Pick:
    """A row of the step's matrix to pick a token from (maybe masked by a constraint), or the
    token a constraint forced; log-probabilities come from `model_logits` (the unmasked row)
    when given, else from the row."""

    row: int
    sampler: Sampler
    forced: int | None = None
    model_logits: Logits | None = None


def sample_step(logits: Logits, picks: Sequence[Pick], *, pool: Executor | None = None,
                pool_size: int = 1) -> list[TokenEvent]:
    """The token of each pick, in order; `logits` is the step's (rows, vocabulary) matrix.

    With a pool, a big step's picks are split into `pool_size` runs of rows sampled on the
    pool's threads (numpy lets go of the GIL in its passes over a row): a GPU's 64 rows of
    logits are a memory-bound 39 MB read, one core's bandwidth is a fraction of the machine's.
    Each sampler is used by one thread only, so seeded draws do not depend on the split."""
    size = len(picks) * logits.shape[1]
    if pool is None or pool_size < 2 or size < PARALLEL_MIN_LOGITS or len(picks) < 2:
        return _sample_rows(logits, picks)
    bounds = np.linspace(0, len(picks), min(pool_size, len(picks)) + 1).astype(int).tolist()
    parts = [picks[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [e for events in pool.map(lambda part: _sample_rows(logits, part), parts)
            for e in events]


def _sample_rows(logits: Logits, picks: Sequence[Pick]) -> list[TokenEvent]:
    rows = [p.row for p in picks]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        best = np.argmax(logits[rows[0]: rows[0] + len(rows)], axis=1)  # one pass, no copy
    else:
        best = np.array([np.argmax(logits[r]) for r in rows])
    vocab = logits.shape[1]
    scratch = np.empty(-(-vocab // _BLOCK) * _BLOCK, dtype=np.float32)
    scratch[vocab:] = 0.0  # padding of the last block: no weight
    events = []
    for pick, top in zip(picks, best.tolist(), strict=True):
        row = logits[pick.row]
        params = pick.sampler.params
        total: float | None = None  # sum of exp(row - peak), when a draw at temperature 1 has it
        if pick.forced is not None:
            token = pick.forced
        elif pick.sampler.greedy:
            token = top
        else:
            token, total = _draw(row, float(row[top]), pick.sampler, scratch)
            if params.temperature != 1.0 or pick.model_logits is not None:
                total = None
        if not params.logprobs:
            events.append(TokenEvent(token_id=token))
            continue
        model, peak_id = row, top
        if pick.model_logits is not None:
            model, peak_id = pick.model_logits, int(np.argmax(pick.model_logits))
        events.append(_with_logprobs(model, peak_id, token, params.top_logprobs, scratch, total))
    return events


def _exp_into(scratch: Logits, row: Logits, peak: float, temperature: float) -> Logits:
    """exp((row - peak) / temperature) into scratch[:vocab]; its padding stays 0."""
    out = scratch[: len(row)]
    np.subtract(row, np.float32(peak), out=out)
    if temperature != 1.0:
        np.multiply(out, np.float32(1.0 / temperature), out=out)
    np.exp(out, out=out)
    return scratch


def _draw(row: Logits, peak: float, sampler: Sampler, scratch: Logits) -> tuple[int, float]:
    """Inverse-CDF draw from softmax(row / temperature), restricted to top_p; returns the token
    and the sum of the weights."""
    weights = _exp_into(scratch, row, peak, sampler.params.temperature)
    blocks = weights.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    cumulative = np.cumsum(blocks)
    total = float(cumulative[-1])
    if sampler.params.top_p < 1.0:
        return _draw_nucleus(weights[: len(row)], total, sampler), total
    target = sampler.uniform() * total
    b = min(int(np.searchsorted(cumulative, target, side="right")), len(blocks) - 1)
    inside = np.cumsum(weights[b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
    offset = target - (float(cumulative[b - 1]) if b else 0.0)
    i = min(int(np.searchsorted(inside, offset, side="right")), _BLOCK - 1)
    token = min(b * _BLOCK + i, len(row) - 1)
    if weights[token] == 0.0:  # rounding walked past the last token with any weight
        token = int(np.flatnonzero(weights[: token + 1])[-1])
    return token, total


def _draw_nucleus(weights: Logits, total: float, sampler: Sampler) -> int:
    """Draw from the smallest most-probable set whose mass reaches top_p, by probability."""
    top_p = sampler.params.top_p
    k = min(_NUCLEUS_CANDIDATES, len(weights))
    candidates = np.argpartition(weights, len(weights) - k)[-k:]
    ordered = candidates[np.argsort(-weights[candidates], kind="stable")]
    cumulative = np.cumsum(weights[ordered], dtype=np.float64) / total
    if cumulative[-1] < top_p and k < len(weights):
        ordered = np.argsort(-weights, kind="stable")
        cumulative = np.cumsum(weights[ordered], dtype=np.float64) / total
    cut = min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, len(ordered))
    kept = cumulative[:cut]
    pick = int(np.searchsorted(kept, sampler.uniform() * kept[-1], side="right"))
    return int(ordered[min(pick, cut - 1)])


def _with_logprobs(row: Logits, peak_id: int, token: int, n_top: int, scratch: Logits,
                   total: float | None) -> TokenEvent:
    """Log-probabilities of the model's own distribution (before temperature and top_p)."""
    peak = float(row[peak_id])
    if total is None:
        total = float(_exp_into(scratch, row, peak, 1.0)[: len(row)].sum(dtype=np.float64))
    log_total = peak + math.log(total)
    best: tuple[TopToken, ...] = ()
    if n_top > 0:
        ids = _top_ids(row, peak, n_top)
        best = tuple(TopToken(int(t), float(row[t]) - log_total) for t in ids)
    return TokenEvent(token_id=token, logprob=float(row[token]) - log_total, top=best)


def _top_ids(row: Logits, peak: float, n: int) -> npt.NDArray[np.intp]:
    """The n highest tokens by logit, ties by token id (the order a full stable sort gives)."""
    ids = np.empty(0, dtype=np.intp)
    for width in _TOP_WIDTHS:
        ids = np.flatnonzero(row >= peak - width)
        if len(ids) >= n:
            break
    if not n <= len(ids) <= _TOP_MOST_CANDIDATES:
        n = min(n, len(row))
        ids = np.argpartition(row, len(row) - n)[-n:]
        # Ties at the cut: the lowest ids among the tokens equal to the n-th value.
        ids = np.flatnonzero(row >= row[ids].min())
    values = row[ids]
    chosen = np.lexsort((ids, -values))[:n]
    return ids[chosen]
