"""The embedded engine's scheduling policy: who waits, who is admitted, who is prefilled by how
many tokens, and who gives way when KV cells run out.

Plain data in, decisions out: no llama.cpp, no threads, no clock. `LlamaCppEngine` describes
each situation it meets (the queue, the running sequences by the prompt tokens each has left
to feed, the free cells, the cache entries) and carries out what the policy answers. Running
sequences are indexed in admission order, so the last one is the newest.

A running sequence with 1 token left to feed is decoding (its last sampled token goes in next
step); more than 1 means its prompt, or a preempted sequence's recomputed tokens, is still being
prefilled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from seekserve.settings import LlamaCppEngineSettings

# Cells a newly admitted sequence must find free beyond its prompt, so that admitting it does
# not force a preemption on the very next steps.
ADMISSION_HEADROOM = 32

# A waiting request leaves the queue: its client left, the server is draining, or it was not
# started within the queue deadline.
Expiry = Literal["cancelled", "shutdown", "timeout"]


@dataclass(frozen=True)
class Evict:
    """Free the least recently used prefix-cache entry, then ask again."""


EVICT = Evict()


@dataclass(frozen=True)
class Shed:
    """The cache holds no more cells to give: the running sequence at `victim` gives way.
    Preempted (`end` False): its cells are freed and it is queued first, to resume later.
    Ended with `resources` (`end` True): it was the only one running."""

    victim: int
    end: bool


@dataclass(frozen=True)
class Prefill:
    """Feed `tokens` prompt tokens of the running sequence at `index` this step."""

    index: int
    tokens: int


@dataclass(frozen=True)
class Scheduler:
    """The policy, with the limits it applies (from `engines.<name>` in the settings)."""

    max_running: int
    n_batch: int
    long_prompt_tokens: int
    prefill_per_decode: float
    queue_deadline_s: float
    max_queued: int
    max_queued_tokens: int

    @classmethod
    def from_settings(cls, s: LlamaCppEngineSettings) -> Scheduler:
        return cls(max_running=s.max_running, n_batch=s.n_batch,
                   long_prompt_tokens=s.long_prompt_tokens,
                   prefill_per_decode=s.prefill_per_decode,
                   queue_deadline_s=s.queue_deadline_s, max_queued=s.max_queued,
                   max_queued_tokens=s.max_queued_tokens)

    # ----- the queue -----

    def refusal(self, queued: int, queued_tokens: int, prompt: int) -> str | None:
        """Why a new request cannot join the queue (a 503), or None when it can. A prompt
        longer than the token bound alone still joins an empty queue."""
        if queued >= self.max_queued:
            return (f"{queued} requests are already queued "
                    f"(engines.max_queued is {self.max_queued})")
        if queued and queued_tokens + prompt > self.max_queued_tokens:
            return (f"{queued_tokens} prompt tokens are already queued "
                    f"(engines.max_queued_tokens is {self.max_queued_tokens})")
        return None

    @staticmethod
    def retry_after(queued_tokens: int, prefill_rate: float) -> int:
        """Seconds until the queued prompts are likely prefilled, 1 to 60."""
        return max(1, min(60, math.ceil(queued_tokens / prefill_rate)))

    def expiry(self, submitted: float, started: bool, cancelled: bool, now: float,
               accepting: bool) -> Expiry | None:
        """Whether a queued request leaves the queue without running (None: it stays).
        `submitted` and `now` are on one monotonic clock; a `started` request was preempted:
        it is never expired, only resumed. Called for every queued request each step, so it
        takes plain values rather than a view built for it."""
        if cancelled:
            return "cancelled"
        if started:
            return None
        if not accepting:
            return "shutdown"
        if now - submitted > self.queue_deadline_s:
            return "timeout"
        return None

    # ----- admission: oldest first, head-of-line -----

    def has_slot(self, running: int) -> bool:
        return running < self.max_running

    @staticmethod
    def reusable(prompt: int, hit: int) -> int:
        """Cached tokens a sequence of `prompt` tokens can reuse: never its last one, which is
        fed to get the logits of its first new token."""
        return min(hit, prompt - 1)

    @staticmethod
    def fits(prompt: int, reused: int, running: int, available: int) -> bool:
        """Whether the queue's head starts now. `available` is the cells not held by running
        sequences (free or only cached). It needs its uncomputed tokens, some headroom and a
        cell per running sequence for the next step; when nothing runs it starts anyway (the
        cache gives way; a sequence that outgrows the cells alone ends with `resources`).
        When it does not fit, the requests behind it wait too: a long prompt is not overtaken
        for ever."""
        needed = prompt - reused + ADMISSION_HEADROOM + running
        return needed <= available or running == 0

    # ----- a step: a token per decoding sequence, then at most one prompt chunk -----

    def make_room(self, left: Sequence[int], free: int, cached: int) -> Evict | Shed | None:
        """Before a step: every decoding sequence needs a cell. `left` is the tokens each
        running sequence has left to feed, `free` the free cells, `cached` the cache entries.
        Cache entries go first; then the newest sequence gives way. None: the step goes on."""
        decoders = sum(1 for n in left if n == 1)
        if free >= decoders:
            return None
        if cached:
            return EVICT
        return self.victim(len(left))

    @staticmethod
    def victim(running: int) -> Shed:
        """Who gives way when cells run out: the newest; ended only when it is alone."""
        return Shed(running - 1, end=running == 1)

    def pick_prefill(self, left: Sequence[int]) -> Prefill | None:
        """Which prompt to feed this step, and how many of its tokens (at most n_batch with
        the decoding tokens).

        With nothing decoding, or for a short prompt, the prompt with the fewest tokens left
        goes in whole: short requests see their first token soonest. A long prompt that
        arrives while streams decode is fed `prefill_per_decode` tokens per running stream
        each step, the oldest first, so those streams slow by about that factor, no more.
        """
        decoders = sum(1 for n in left if n == 1)
        prefilling = [i for i, n in enumerate(left) if n != 1]
        if not prefilling:
            return None
        room = self.n_batch - decoders
        short = [i for i in prefilling if not decoders or left[i] <= self.long_prompt_tokens]
        if short:
            index = min(short, key=lambda i: left[i])
            return Prefill(index, min(left[index], room))
        index = prefilling[0]
        trickle = max(1, int(self.prefill_per_decode * decoders))
        return Prefill(index, min(left[index], trickle, room))

    @staticmethod
    def fit_chunk(chunk: int, decoders: int, free: int, cached: int) -> Evict | int:
        """The prompt chunk this step can hold once the decoders have their cells: cache
        entries are evicted for it, no running sequence is. 0 or less: no prompt this step."""
        if free >= decoders + chunk or not cached:
            return min(chunk, free - decoders)
        return EVICT

    def decode_refused(self, rc: int, running: int) -> Shed | None:
        """llama_decode refused the batch: with no KV slot (rc 1) and others running, the
        newest is preempted; otherwise (None) every running sequence ends with `resources`."""
        if rc == 1 and running > 1:
            return self.victim(running)
        return None
