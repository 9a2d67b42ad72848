"""sample_step: a decode step's rows sampled from one logits matrix give what each row gives on
its own, and what the full-vocabulary float64 sampler gave before (tokens for greedy and seeded
draws, log-probabilities within float32 rounding)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from seekserve.engines.base import SamplingParams, TokenEvent, TopToken
from seekserve.engines.llamacpp.sampling import Pick, Sampler, sample_step

VOCAB = 151_936  # the default model's


class ReferenceSampler:
    """The per-sequence sampler this replaced: every step in float64 over the whole row."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        assert params.seed is not None
        self._rng = np.random.Generator(np.random.PCG64(params.seed))

    def sample(self, logits: npt.NDArray[np.float32]) -> TokenEvent:
        p = self.params
        if p.temperature == 0.0 or p.top_p == 0.0:
            token = int(np.argmax(logits))
        else:
            scaled = logits.astype(np.float64) / p.temperature
            probs = np.exp(scaled - scaled.max())
            probs /= probs.sum()
            if p.top_p >= 1.0:
                ids = np.arange(len(probs))
            else:
                ordered = np.argsort(-probs, kind="stable")
                cut = int(np.searchsorted(np.cumsum(probs[ordered]), p.top_p, side="left")) + 1
                ids = ordered[:cut]
            cumulative = np.cumsum(probs[ids])
            pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1],
                                       side="right"))
            token = int(ids[min(pick, len(ids) - 1)])
        if not p.logprobs:
            return TokenEvent(token_id=token)
        row = logits.astype(np.float64)
        log_total = row.max() + np.log(np.exp(row - row.max()).sum())
        best = np.argsort(-row, kind="stable")[: p.top_logprobs]
        return TokenEvent(token_id=token, logprob=float(row[token] - log_total),
                          top=tuple(TopToken(int(t), float(row[t] - log_total)) for t in best))


def _logits(rows: int, seed: int, scale: float) -> npt.NDArray[np.float32]:
    """Rows shaped like a language model's: a few strong tokens over a long low tail."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((rows, VOCAB), dtype=np.float32) * scale
    for r in range(rows):
        strong = rng.choice(VOCAB, 8, replace=False)
        out[r, strong] += rng.uniform(8, 14, 8).astype(np.float32)
    return out


PARAMS = [
    SamplingParams(temperature=0.0, seed=1),
    SamplingParams(temperature=0.7, seed=2),
    SamplingParams(temperature=1.0, seed=3),
    SamplingParams(temperature=1.3, top_p=0.9, seed=4),
    SamplingParams(temperature=0.0, seed=5, logprobs=True, top_logprobs=5),
    SamplingParams(temperature=1.0, seed=6, logprobs=True, top_logprobs=20),
    SamplingParams(temperature=0.6, top_p=0.5, seed=7, logprobs=True),
    SamplingParams(temperature=1.0, top_p=0.0, seed=8),
]


def _assert_same(event: TokenEvent, reference: TokenEvent) -> None:
    assert event.token_id == reference.token_id
    if reference.logprob is None:
        assert event.logprob is None and event.top == ()
        return
    assert event.logprob == pytest.approx(reference.logprob, abs=1e-5)
    assert [t.token_id for t in event.top] == [t.token_id for t in reference.top]
    assert [t.logprob for t in event.top] == pytest.approx([t.logprob for t in reference.top],
                                                           abs=1e-5)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_a_batch_of_rows_matches_the_full_vocabulary_float64_sampler(scale: float) -> None:
    steps, rows = 6, 2 * len(PARAMS)
    samplers = [Sampler(PARAMS[i % len(PARAMS)]) for i in range(rows)]
    references = [ReferenceSampler(PARAMS[i % len(PARAMS)]) for i in range(rows)]
    for step in range(steps):
        logits = _logits(rows, seed=step, scale=scale)
        expected = [ref.sample(logits[r]) for r, ref in enumerate(references)]
        events = sample_step(logits, [Pick(r, s) for r, s in enumerate(samplers)])
        for event, reference in zip(events, expected, strict=True):
            _assert_same(event, reference)


def test_each_row_alone_gives_what_it_gives_in_the_batch() -> None:
    rows = 3 * len(PARAMS)
    batch = [Sampler(PARAMS[i % len(PARAMS)]) for i in range(rows)]
    alone = [Sampler(PARAMS[i % len(PARAMS)]) for i in range(rows)]
    for step in range(4):
        logits = _logits(rows, seed=100 + step, scale=2.0)
        events = sample_step(logits, [Pick(r, s) for r, s in enumerate(batch)])
        for r, sampler in enumerate(alone):
            _assert_same(events[r], sampler.sample(logits[r].copy()))


def test_rows_out_of_order_forced_tokens_and_unmasked_logprobs() -> None:
    logits = _logits(4, seed=7, scale=1.0)
    model_row = logits[2].copy()
    masked = logits.copy()
    masked[2, :] = -np.inf
    masked[2, 17] = 0.0  # a constraint left one token
    greedy = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
    picks = [Pick(3, Sampler(greedy)), Pick(2, Sampler(greedy), model_logits=model_row),
             Pick(0, Sampler(greedy), forced=5)]
    events = sample_step(masked, picks)
    assert events[0].token_id == int(np.argmax(logits[3]))
    assert events[1].token_id == 17
    reference = ReferenceSampler(SamplingParams(temperature=0.0, seed=0, logprobs=True,
                                                top_logprobs=2)).sample(model_row)
    assert reference.logprob is not None
    log_total = float(model_row[reference.token_id]) - reference.logprob
    assert events[1].logprob == pytest.approx(float(model_row[17]) - log_total, abs=1e-5)
    assert [t.token_id for t in events[1].top] == [t.token_id for t in reference.top]
    assert events[2].token_id == 5


def test_ties_go_to_the_lowest_token_id_as_a_full_sort_orders_them() -> None:
    row = np.full((1, 1000), -50.0, dtype=np.float32)
    row[0, [40, 7, 900]] = 3.0
    event = sample_step(row, [Pick(0, Sampler(SamplingParams(
        temperature=0.0, logprobs=True, top_logprobs=3)))])[0]
    assert event.token_id == 7
    assert [t.token_id for t in event.top] == [7, 40, 900]
    assert event.logprob == pytest.approx(np.log(1 / 3), abs=1e-5)


def test_more_top_logprobs_than_tokens_within_reach_still_lists_that_many() -> None:
    row = np.full((1, 1000), -1e9, dtype=np.float32)
    row[0, 3] = 0.0
    event = sample_step(row, [Pick(0, Sampler(SamplingParams(
        temperature=0.0, logprobs=True, top_logprobs=4)))])[0]
    assert event.token_id == 3 and len(event.top) == 4
    assert event.top[0].token_id == 3 and event.top[0].logprob == pytest.approx(0.0)


def test_a_big_step_split_across_a_pool_gives_the_same_tokens() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from seekserve.engines.llamacpp.sampling import PARALLEL_MIN_LOGITS

    rows = -(-PARALLEL_MIN_LOGITS // VOCAB) + 3  # just over the size that uses the pool
    logits = _logits(rows, seed=11, scale=2.0)
    params = [PARAMS[i % len(PARAMS)] for i in range(rows)]
    alone = sample_step(logits, [Pick(r, Sampler(p)) for r, p in enumerate(params)])
    with ThreadPoolExecutor(3) as pool:
        split = sample_step(logits, [Pick(r, Sampler(p)) for r, p in enumerate(params)],
                            pool=pool, pool_size=3)
    assert [e.token_id for e in split] == [e.token_id for e in alone]
    assert [e.logprob for e in split] == [e.logprob for e in alone]
    assert [e.top for e in split] == [e.top for e in alone]
