"""The embedded engine's scheduling policy, alone: the situations LlamaCppEngine meets (a short
prompt behind a long one, decoders and a prompt under the step's token budget, queue deadlines,
a full KV cache) and the exact decisions it must take."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field

import pytest

from seekserve.engines.llamacpp import scheduler as scheduler_module
from seekserve.engines.llamacpp.scheduler import (
    ADMISSION_HEADROOM,
    EVICT,
    Evict,
    Prefill,
    Scheduler,
    Shed,
)
from seekserve.settings import LlamaCppEngineSettings

POLICY = Scheduler(max_running=8, n_batch=512, long_prompt_tokens=512, prefill_per_decode=0.5,
                   queue_deadline_s=60.0, max_queued=4, max_queued_tokens=1000)


def test_the_policy_is_pure_data_in_decisions_out() -> None:
    """No llama.cpp, no asyncio, no threads, no clock: only what the decisions are made of."""
    tree = ast.parse(inspect.getsource(scheduler_module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported == {"__future__", "math", "collections.abc", "dataclasses", "typing",
                        "seekserve.settings"}


def test_the_engine_settings_give_the_policy_its_limits() -> None:
    settings = LlamaCppEngineSettings(max_running=3, n_batch=64, long_prompt_tokens=100,
                                      prefill_per_decode=2.0, queue_deadline_s=5,
                                      max_queued=7, max_queued_tokens=900)
    assert Scheduler.from_settings(settings) == Scheduler(
        max_running=3, n_batch=64, long_prompt_tokens=100, prefill_per_decode=2.0,
        queue_deadline_s=5.0, max_queued=7, max_queued_tokens=900)


# ----- the queue -----


def test_a_full_queue_refuses_by_count_then_by_prompt_tokens() -> None:
    assert POLICY.refusal(queued=3, queued_tokens=900, prompt=100) is None  # 1000: at the limit
    assert POLICY.refusal(queued=4, queued_tokens=0, prompt=1) == (
        "4 requests are already queued (engines.max_queued is 4)")
    assert POLICY.refusal(queued=3, queued_tokens=900, prompt=101) == (
        "900 prompt tokens are already queued (engines.max_queued_tokens is 1000)")


def test_a_prompt_longer_than_the_token_bound_still_joins_an_empty_queue() -> None:
    assert POLICY.refusal(queued=0, queued_tokens=0, prompt=5000) is None


@pytest.mark.parametrize(("queued_tokens", "rate", "seconds"), [
    (0, 100.0, 1), (150, 100.0, 2), (1000, 100.0, 10), (10**6, 100.0, 60), (1, 1e9, 1)])
def test_retry_after_is_the_queued_prefill_time_within_1_to_60_s(
        queued_tokens: int, rate: float, seconds: int) -> None:
    assert Scheduler.retry_after(queued_tokens, rate) == seconds


def test_a_request_not_started_within_the_deadline_times_out() -> None:
    def expiry(now: float) -> str | None:
        return POLICY.expiry(submitted=100.0, started=False, cancelled=False, now=now,
                             accepting=True)

    assert expiry(now=160.0) is None  # exactly 60 s: it stays
    assert expiry(now=160.5) == "timeout"


def test_a_preempted_request_is_never_timed_out_or_dropped_by_a_drain() -> None:
    """It has started: a drain lets it finish, however long it waits to resume."""
    for accepting in (True, False):
        assert POLICY.expiry(submitted=0.0, started=True, cancelled=False, now=10_000.0,
                             accepting=accepting) is None


def test_a_drain_ends_the_requests_that_never_started() -> None:
    assert POLICY.expiry(submitted=100.0, started=False, cancelled=False, now=100.0,
                         accepting=False) == "shutdown"
    assert POLICY.expiry(submitted=0.0, started=False, cancelled=False, now=100.0,
                         accepting=False) == "shutdown"  # past its deadline: not a timeout


def test_a_cancelled_request_leaves_the_queue_first_of_all() -> None:
    for started in (False, True):
        assert POLICY.expiry(submitted=0.0, started=started, cancelled=True, now=1000.0,
                             accepting=False) == "cancelled"


# ----- admission -----


def test_no_one_is_admitted_once_max_running_sequences_run() -> None:
    assert POLICY.has_slot(7)
    assert not POLICY.has_slot(8)


def test_the_last_prompt_token_is_always_recomputed() -> None:
    assert Scheduler.reusable(prompt=100, hit=100) == 99
    assert Scheduler.reusable(prompt=100, hit=40) == 40
    assert Scheduler.reusable(prompt=1, hit=1) == 0


def test_the_head_needs_its_uncached_tokens_headroom_and_a_cell_per_running_sequence() -> None:
    # 70 tokens + 32 headroom + 2 running = 104 cells.
    assert ADMISSION_HEADROOM == 32
    assert not Scheduler.fits(prompt=70, reused=0, running=2, available=103)
    assert Scheduler.fits(prompt=70, reused=0, running=2, available=104)
    # A cache hit of 10 tokens needs 10 fewer.
    assert Scheduler.fits(prompt=70, reused=10, running=2, available=94)
    assert not Scheduler.fits(prompt=70, reused=10, running=2, available=93)


def test_with_nothing_running_the_head_is_admitted_whatever_it_needs() -> None:
    assert Scheduler.fits(prompt=5000, reused=0, running=0, available=100)


def admitted(policy: Scheduler, queue: list[int], running: int, available: int) -> list[int]:
    """The engine's admission loop over prompts with no cache hit: oldest first, each taking
    its cells, stopping at the first that does not fit (head-of-line)."""
    out = []
    for prompt in queue:
        if not policy.has_slot(running) or not policy.fits(prompt, 0, running, available):
            break
        out.append(prompt)
        running += 1
        available -= prompt
    return out


def test_a_short_prompt_waits_behind_a_long_head_that_does_not_fit() -> None:
    assert admitted(POLICY, [3000, 10], running=2, available=1000) == []
    assert admitted(POLICY, [10, 3000], running=2, available=1000) == [10]


def test_the_queue_is_admitted_in_order_until_max_running() -> None:
    small = Scheduler(max_running=3, n_batch=512, long_prompt_tokens=512,
                      prefill_per_decode=0.5, queue_deadline_s=60, max_queued=8,
                      max_queued_tokens=1000)
    assert admitted(small, [10, 20, 30, 40], running=0, available=4000) == [10, 20, 30]
    assert admitted(small, [10, 20], running=3, available=4000) == []


# ----- a step: which prompt is fed, by how much -----


def test_with_nothing_decoding_the_prompt_with_fewest_tokens_left_goes_in_whole() -> None:
    assert POLICY.pick_prefill([300, 40, 40]) == Prefill(1, 40)  # the older of the two


def test_with_nothing_decoding_a_long_prompt_is_fed_n_batch_tokens() -> None:
    assert POLICY.pick_prefill([2000]) == Prefill(0, 512)


def test_nothing_to_prefill_when_every_sequence_decodes() -> None:
    assert POLICY.pick_prefill([1, 1, 1]) is None
    assert POLICY.pick_prefill([]) is None


def test_a_short_prompt_behind_a_long_one_goes_first_while_streams_decode() -> None:
    """Four streams decode, a 1500-token prompt is being trickled in, a 40-token prompt
    arrives: it is fed whole next step, then decodes, and the long one trickles on."""
    left = [1, 1, 1, 1, 1500, 40]
    assert POLICY.pick_prefill(left) == Prefill(5, 40)
    left[5] = 1  # fed whole: its first token is sampled, it decodes from now on
    assert POLICY.pick_prefill(left) == Prefill(4, 2)  # 0.5 per stream, 5 streams


def test_a_long_prompt_is_trickled_in_at_prefill_per_decode_tokens_per_stream() -> None:
    assert POLICY.pick_prefill([1, 1500]) == Prefill(1, 1)  # at least one token
    assert POLICY.pick_prefill([1] * 8 + [1500]) == Prefill(8, 4)
    eager = Scheduler(max_running=64, n_batch=512, long_prompt_tokens=512,
                      prefill_per_decode=3.0, queue_deadline_s=60, max_queued=8,
                      max_queued_tokens=1000)
    assert eager.pick_prefill([1] * 10 + [1500]) == Prefill(10, 30)


def test_the_oldest_long_prompt_is_trickled_first() -> None:
    assert POLICY.pick_prefill([1, 1, 900, 700]) == Prefill(2, 1)


def test_a_prompt_at_long_prompt_tokens_is_still_short() -> None:
    assert POLICY.pick_prefill([1, 900, 512]) == Prefill(2, 512 - 1)  # n_batch less a decoder
    assert POLICY.pick_prefill([1, 900, 513]) == Prefill(1, 1)


def test_decoders_and_a_prompt_share_the_step_budget_of_n_batch_tokens() -> None:
    budget = Scheduler(max_running=64, n_batch=64, long_prompt_tokens=512,
                       prefill_per_decode=0.5, queue_deadline_s=60, max_queued=8,
                       max_queued_tokens=1000)
    assert budget.pick_prefill([1] * 20 + [100]) == Prefill(20, 44)
    assert budget.pick_prefill([1] * 20 + [30]) == Prefill(20, 30)


def test_a_preempted_sequence_recomputes_its_tokens_like_a_prompt() -> None:
    """Readmitted, it has its prompt and what it generated left to feed."""
    assert POLICY.pick_prefill([1, 1, 120 + 80]) == Prefill(2, 200)


# ----- a step: KV cells -----


@dataclass
class Cells:
    """What the engine's KV bookkeeping does with the policy's answers: `running` is (tokens
    left to feed, cells held alone) per sequence in admission order, `cache` the cells each
    entry frees, least recently used first."""

    free: int
    running: list[tuple[int, int]]
    cache: list[int] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    def left(self) -> list[int]:
        return [left for left, _ in self.running]

    def evict(self) -> None:
        self.free += self.cache.pop(0)
        self.done.append("evict")

    def shed(self, shed: Shed) -> None:
        _, cells = self.running.pop(shed.victim)
        self.free += cells
        self.done.append(f"{'end' if shed.end else 'preempt'} {shed.victim}")

    def make_room(self, policy: Scheduler) -> bool:
        """The engine's loop before a step; False when the step is off."""
        while (action := policy.make_room(self.left(), self.free, len(self.cache))) is not None:
            if isinstance(action, Evict):
                self.evict()
            else:
                self.shed(action)
                if action.end:
                    return False
        return True

    def fit_chunk(self, policy: Scheduler, chunk: int) -> int:
        decoders = self.left().count(1)
        while isinstance(fitted := policy.fit_chunk(chunk, decoders, self.free, len(self.cache)),
                         Evict):
            self.evict()
        return fitted


def test_decoders_with_free_cells_take_nothing_from_the_cache() -> None:
    cells = Cells(free=3, running=[(1, 50)] * 3, cache=[10])
    assert POLICY.make_room(cells.left(), cells.free, len(cells.cache)) is None
    assert cells.make_room(POLICY) and cells.done == []


def test_prompts_being_prefilled_need_no_cell_to_make_room_for() -> None:
    assert POLICY.make_room([1, 300, 20], free=1, cached=0) is None


def test_when_cells_run_out_the_cache_is_evicted_before_anyone_is_preempted() -> None:
    assert POLICY.make_room([1, 1, 1], free=2, cached=1) == EVICT
    cells = Cells(free=1, running=[(1, 50)] * 3, cache=[2, 40])
    assert cells.make_room(POLICY)
    assert cells.done == ["evict"] and cells.cache == [40] and cells.free == 3


def test_kv_cells_exhausted_preempts_the_newest_after_the_cache_is_empty() -> None:
    assert POLICY.make_room([1, 1, 1], free=2, cached=0) == Shed(2, end=False)
    cells = Cells(free=0, running=[(1, 50), (1, 60), (1, 70)], cache=[1, 1])
    assert cells.make_room(POLICY)
    assert cells.done == ["evict", "evict", "preempt 2"]
    assert cells.running == [(1, 50), (1, 60)] and cells.free == 72


def test_the_newest_is_preempted_even_when_it_is_still_prefilling() -> None:
    cells = Cells(free=0, running=[(1, 50), (1, 60), (400, 30)])
    assert cells.make_room(POLICY)
    assert cells.done == ["preempt 2"]


def test_preemption_repeats_until_the_decoders_left_fit() -> None:
    cells = Cells(free=0, running=[(1, 50), (1, 1), (1, 0)])  # the newest hold shared cells
    assert cells.make_room(POLICY)
    assert cells.done == ["preempt 2", "preempt 1"] and cells.running == [(1, 50)]


def test_the_only_running_sequence_ends_with_resources_when_no_cell_is_left() -> None:
    assert POLICY.make_room([1], free=0, cached=0) == Shed(0, end=True)
    cells = Cells(free=0, running=[(1, 0), (1, 0)])
    assert not cells.make_room(POLICY)
    assert cells.done == ["preempt 1", "end 0"] and cells.running == []


def test_a_prompt_chunk_evicts_the_cache_but_never_preempts() -> None:
    assert Scheduler.fit_chunk(100, decoders=2, free=102, cached=3) == 100
    assert Scheduler.fit_chunk(100, decoders=2, free=101, cached=3) == EVICT
    assert Scheduler.fit_chunk(100, decoders=2, free=42, cached=0) == 40
    cells = Cells(free=42, running=[(1, 50), (1, 50), (300, 0)], cache=[30, 30, 30])
    assert cells.fit_chunk(POLICY, 100) == 100  # 102 cells free after two evictions
    assert cells.done == ["evict", "evict"] and cells.cache == [30]
    cells = Cells(free=32, running=[(1, 50), (1, 50), (300, 0)], cache=[30, 30])
    assert cells.fit_chunk(POLICY, 100) == 90  # the cache is gone: what is left of 92 cells
    assert cells.done == ["evict", "evict"] and cells.cache == []


def test_no_prompt_this_step_when_the_decoders_take_every_free_cell() -> None:
    assert Scheduler.fit_chunk(100, decoders=2, free=2, cached=0) == 0


def test_a_lone_prompt_that_cannot_move_ends_the_newest() -> None:
    """Nothing decodes and no cell is left for the prompt: the engine sheds the newest."""
    assert Scheduler.fit_chunk(50, decoders=0, free=0, cached=0) == 0
    assert POLICY.victim(2) == Shed(1, end=False)
    assert POLICY.victim(1) == Shed(0, end=True)


def test_a_refused_decode_preempts_the_newest_or_ends_everyone() -> None:
    assert POLICY.decode_refused(1, running=3) == Shed(2, end=False)
    assert POLICY.decode_refused(1, running=1) is None  # alone: ends with resources
    assert POLICY.decode_refused(-3, running=3) is None  # an error, not a full cache
