"""Sampler: greedy, seeded draws, nucleus truncation and log-probabilities."""

from __future__ import annotations

import math

import numpy as np

from seekserve.engines.base import SamplingParams
from seekserve.engines.llamacpp.sampling import Sampler


def logits_of(probs: list[float], vocab: int = 1000) -> np.ndarray:
    row = np.full(vocab, -1e9, dtype=np.float32)
    row[: len(probs)] = np.log(np.array(probs, dtype=np.float64)).astype(np.float32)
    return row


def test_temperature_zero_is_argmax() -> None:
    row = logits_of([0.1, 0.6, 0.3])
    sampler = Sampler(SamplingParams(temperature=0.0))
    assert {sampler.sample(row).token_id for _ in range(20)} == {1}


def test_same_seed_same_draws_and_other_seed_differs() -> None:
    row = logits_of([0.2] * 5)
    def draws(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return [sampler.sample(row).token_id for _ in range(50)]
    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_draws_follow_the_distribution() -> None:
    row = logits_of([0.7, 0.2, 0.1])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    counts = np.bincount([sampler.sample(row).token_id for _ in range(4000)], minlength=3)
    assert abs(counts[0] / 4000 - 0.7) < 0.03
    assert abs(counts[2] / 4000 - 0.1) < 0.02


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    row = logits_of([0.5, 0.3, 0.15, 0.05])
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.8, seed=1))
    seen = {sampler.sample(row).token_id for _ in range(500)}
    assert seen == {0, 1}


def test_top_p_on_a_flat_distribution_looks_past_the_first_candidates() -> None:
    row = np.zeros(1000, dtype=np.float32)  # uniform: 128 candidates hold only 12.8 %
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=2))
    seen = {sampler.sample(row).token_id for _ in range(3000)}
    assert 400 < len(seen) <= 501


def test_logprobs_are_of_the_unscaled_distribution() -> None:
    row = logits_of([0.5, 0.25, 0.25])
    sampler = Sampler(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2))
    event = sampler.sample(row)
    assert event.token_id == 0
    assert event.logprob is not None and math.isclose(event.logprob, math.log(0.5), abs_tol=1e-5)
    assert event.top[0].token_id == 0
    assert math.isclose(event.top[1].logprob, math.log(0.25), abs_tol=1e-5)
    assert len(event.top) == 2


def test_no_logprobs_unless_asked() -> None:
    event = Sampler(SamplingParams(temperature=0.0)).sample(logits_of([0.9, 0.1]))
    assert event.logprob is None and event.top == ()
