"""The embedded engine: one thread owns the llama.cpp context and steps every running sequence.

Each step is one `llama_decode` over a batch holding one token for every decoding sequence plus,
at most, one prompt chunk. Requests wait in a bounded queue and join between steps. A sequence's
prompt is matched against the prefix cache of its isolation salt; the matched cells are shared
(`llama_memory_seq_cp` on a unified KV cache), so only the rest is prefilled. When cells run
out, cached entries are evicted least-recently-used first, then the newest running sequence is
preempted (its cells freed, its tokens recomputed when it is admitted again).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np

from seekserve.engines.base import (
    EngineFailure,
    EngineOverloaded,
    EngineState,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    QueueTimeout,
    ShuttingDown,
    StartEvent,
)
from seekserve.engines.llamacpp.kvcache import CellLedger, CellPath, PrefixCache, common_prefix
from seekserve.engines.llamacpp.model import LlamaModel, LlamaTokenizer
from seekserve.engines.llamacpp.sampling import Sampler
from seekserve.settings import LlamaCppEngineSettings

log = logging.getLogger(__name__)

_Outbox = asyncio.Queue[GenerationEvent | EngineFailure]

# Cells a newly admitted sequence must find free beyond its prompt, so that admitting it does
# not force a preemption on the very next steps.
_ADMISSION_HEADROOM = 32


@dataclass(eq=False)
class _Sequence:
    """One request inside the engine; after submission only the loop thread mutates it."""

    request: GenerationRequest
    sampler: Sampler
    outbox: _Outbox
    loop: asyncio.AbstractEventLoop
    tokens: list[int]  # prompt, then every sampled token
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    seq_id: int = -1
    path: CellPath | None = None  # cells in the KV cache: tokens[:n_past]
    n_past: int = 0
    cached: int = 0  # prompt tokens reused, settled when the sequence is first fed
    announced: bool = False  # first fed, StartEvent sent
    generated: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: GenerationEvent | EngineFailure) -> None:
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, event)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening
            pass

    @property
    def remaining_prefill(self) -> int:
        """Tokens to feed before this sequence's next token is sampled."""
        return len(self.tokens) - self.n_past

    @property
    def decoding(self) -> bool:
        return self.remaining_prefill == 1


class _SequenceStream:
    """The consumer's side of a sequence: events in order; closing it cancels the sequence."""

    def __init__(self, engine: LlamaCppEngine, seq: _Sequence) -> None:
        self._engine = engine
        self._seq = seq
        self._done = False

    def __aiter__(self) -> _SequenceStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._seq.outbox.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(event, EngineFailure):
            self._done = True
            raise event
        if isinstance(event, FinishEvent):
            self._done = True
        return event

    async def aclose(self) -> None:
        self._done = True
        self._engine.cancel(self._seq)


class LlamaCppEngine:
    """Implements engines.base.Engine on llama-cpp-python's low-level API."""

    def __init__(self, settings: LlamaCppEngineSettings, model_path: Path) -> None:
        self._settings = settings
        self._model_path = model_path
        self._model: LlamaModel | None = None
        self._ctx: ctypes.c_void_p | None = None
        self._mem: ctypes.c_void_p | None = None
        self._batch: lc.llama_batch | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Condition()
        # Guarded by _wake: the queue, what it holds, and whether work is still taken.
        self._queue: deque[_Sequence] = deque()
        self._queued_tokens = 0
        self._accepting = False
        self._aborting = False  # drain's grace is over: end what still runs
        self._stopping = False
        # Engine thread only.
        self._running: list[_Sequence] = []
        self._n_seq_ids = settings.max_running + settings.prefix_cache_entries + 1
        self._free_seq_ids: list[int] = list(range(self._n_seq_ids))[::-1]
        self._cells = CellLedger(settings.n_ctx)
        self._cache = PrefixCache(settings.prefix_cache_entries)
        self._prefill_rate = 100.0  # tokens/s, updated from measured prefill steps
        self._max_seq_tokens = 0
        self._counters = {"prompt": 0, "hit": 0, "preempted": 0, "resources": 0}
        self._snapshot = EngineState(False, 0, 0, settings.n_ctx, 0)

    # ----- Engine protocol -----

    @property
    def tokenizer(self) -> LlamaTokenizer:
        return self._loaded().tokenizer

    @property
    def chat_template(self) -> str | None:
        if self._settings.chat_template is not None:
            return self._settings.chat_template
        return self._loaded().chat_template

    @property
    def max_sequence_tokens(self) -> int:
        return self._max_seq_tokens

    @property
    def description(self) -> str:
        model = self._loaded()
        return f"llama.cpp {model.name} ({model.path.name})"

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        with self._wake:
            self._accepting = True
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()
        self._publish()

    async def drain(self, grace_s: float) -> None:
        with self._wake:
            self._accepting = False
            self._wake.notify_all()
        if self._thread is None:
            return
        if not await asyncio.to_thread(self._wait_idle, grace_s):
            with self._wake:
                self._aborting = True
                self._wake.notify_all()
            await asyncio.to_thread(self._wait_idle, None)

    def _wait_idle(self, timeout: float | None) -> bool:
        with self._wake:
            return self._wake.wait_for(
                lambda: self._thread is None or (not self._running and not self._queue), timeout)

    async def aclose(self) -> None:
        with self._wake:
            self._accepting = False
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._unload()
        self._publish()

    def state(self) -> EngineState:
        snap = self._snapshot
        with self._wake:
            queued, queued_tokens = len(self._queue), self._queued_tokens
        return EngineState(
            loaded=self._ctx is not None and self._thread is not None,
            running=snap.running,
            queued=queued,
            kv_cells_total=snap.kv_cells_total,
            kv_cells_used=snap.kv_cells_used,
            queued_tokens=queued_tokens,
            cache_entries=snap.cache_entries,
            cache_cells=snap.cache_cells,
            prompt_tokens_total=snap.prompt_tokens_total,
            cache_hit_tokens_total=snap.cache_hit_tokens_total,
            preemptions_total=snap.preemptions_total,
            resource_finishes_total=snap.resource_finishes_total,
        )

    def generate(self, request: GenerationRequest) -> _SequenceStream:
        prompt_len = len(request.prompt)
        if prompt_len == 0:
            raise EngineFailure("the prompt is empty")
        if prompt_len + request.max_tokens > self._max_seq_tokens:
            raise EngineFailure(
                f"prompt ({prompt_len}) + max_tokens ({request.max_tokens}) exceeds "
                f"the sequence limit ({self._max_seq_tokens})"
            )
        seq = _Sequence(
            request=request,
            sampler=Sampler(request.sampling),
            outbox=asyncio.Queue(),
            loop=asyncio.get_running_loop(),
            tokens=list(request.prompt),
        )
        s = self._settings
        with self._wake:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= s.max_queued:
                raise EngineOverloaded(
                    f"{len(self._queue)} requests are already queued "
                    f"(engines.max_queued is {s.max_queued})", self._retry_after())
            if self._queue and self._queued_tokens + prompt_len > s.max_queued_tokens:
                raise EngineOverloaded(
                    f"{self._queued_tokens} prompt tokens are already queued "
                    f"(engines.max_queued_tokens is {s.max_queued_tokens})", self._retry_after())
            self._queue.append(seq)
            self._queued_tokens += prompt_len
            self._wake.notify_all()
        return _SequenceStream(self, seq)

    def cancel(self, seq: _Sequence) -> None:
        seq.cancelled.set()
        with self._wake:
            self._wake.notify_all()

    def _retry_after(self) -> int:
        """Seconds until the queued prompts are likely prefilled (caller holds _wake)."""
        return max(1, min(60, math.ceil(self._queued_tokens / self._prefill_rate)))

    # ----- loading -----

    def _loaded(self) -> LlamaModel:
        if self._model is None:
            raise EngineFailure("the model is not loaded")
        return self._model

    def _load(self) -> None:
        model = LlamaModel(self._model_path)
        s = self._settings
        params = lc.llama_context_default_params()
        params.n_ctx = s.n_ctx
        params.n_batch = s.n_batch
        params.n_ubatch = s.n_batch
        params.n_seq_max = self._n_seq_ids
        # One pool of cells for all sequences: a long prompt is not held to n_ctx / n_seq_max,
        # and a copied prefix shares cells instead of duplicating them.
        params.kv_unified = True
        # Sliding-window models keep every cell, so a cached prefix stays whole.
        params.swa_full = True
        params.flash_attn_type = 1 if s.flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_ENABLED/DISABLED
        threads = s.n_threads or os.cpu_count() or 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        ctx = lc.llama_init_from_model(model.ptr, params)
        if not ctx:
            model.close()
            raise EngineFailure(f"llama.cpp could not create a context of {s.n_ctx} cells")
        model.tokenizer.grammar_vocabulary()  # built now rather than in a first request
        self._model = model
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        self._batch = lc.llama_batch_init(s.n_batch, 0, 1)
        limit = s.max_sequence_tokens or s.n_ctx
        self._max_seq_tokens = min(limit, s.n_ctx, model.n_ctx_train or limit)
        log.info("loaded %s: n_ctx=%d, max sequence tokens=%d, max running=%d, cache entries=%d,"
                 " threads=%d", model.path, s.n_ctx, self._max_seq_tokens, s.max_running,
                 s.prefix_cache_entries, threads)

    def _unload(self) -> None:
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    # ----- the loop (engine thread only from here on) -----

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._running and not self._queue:
                        self._wake.notify_all()  # a drain may be waiting for this
                        self._wake.wait()
                    if self._stopping:
                        break
                    aborting = self._aborting
                if aborting:
                    self._abort_running()
                self._expire_queued()
                self._retire_cancelled()
                self._admit()
                if self._running:
                    self._step()
                self._publish()
        except Exception:
            log.exception("the engine loop failed")
            self._fail_all(EngineFailure("the engine failed"))
            return
        self._fail_all(ShuttingDown("the server is shutting down"))

    def _publish(self) -> None:
        running_paths = [s.path for s in self._running if s.path is not None]
        in_running = self._cells.held_by(running_paths)
        c = self._counters
        self._snapshot = EngineState(
            loaded=True,
            running=len(self._running),
            queued=0,
            kv_cells_total=self._cells.total,
            kv_cells_used=self._cells.used,
            cache_entries=len(self._cache),
            cache_cells=self._cells.used - in_running,
            prompt_tokens_total=c["prompt"],
            cache_hit_tokens_total=c["hit"],
            preemptions_total=c["preempted"],
            resource_finishes_total=c["resources"],
        )

    def _dequeue(self, seq: _Sequence) -> None:
        with self._wake:
            self._queue.remove(seq)
            self._queued_tokens -= len(seq.tokens)

    def _expire_queued(self) -> None:
        now = time.monotonic()
        deadline = self._settings.queue_deadline_s
        with self._wake:
            accepting = self._accepting
            waiting = list(self._queue)
        for seq in waiting:
            if seq.cancelled.is_set():
                self._dequeue(seq)
            elif not accepting and seq.started is None:
                self._dequeue(seq)
                seq.emit(ShuttingDown("the server is shutting down"))
            elif seq.started is None and now - seq.submitted > deadline:
                self._dequeue(seq)
                seq.emit(QueueTimeout(
                    f"the request was not started within {deadline:g} s "
                    "(engines.queue_deadline_s); the server is overloaded"))

    def _retire_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled.is_set()]:
            self._retire(seq, keep=True)

    def _admit(self) -> None:
        """Start queued sequences, oldest first, while a slot and their prompt's cells are free."""
        while len(self._running) < self._settings.max_running:
            with self._wake:
                if not self._queue:
                    return
                seq = self._queue[0]
            salt = seq.request.cache_salt
            entry, hit = (self._cache.longest_match(salt, seq.tokens)
                          if self._settings.prefix_cache_entries else (None, 0))
            hit = min(hit, len(seq.tokens) - 1)  # the last token is fed to get logits
            running_paths = [s.path for s in self._running if s.path is not None]
            available = self._cells.total - self._cells.held_by(running_paths)
            needed = len(seq.tokens) - hit + _ADMISSION_HEADROOM + len(self._running)
            if needed > available and self._running:
                return  # head-of-line: wait for running sequences to free cells
            self._dequeue(seq)
            seq.seq_id = self._free_seq_ids.pop()
            if entry is not None and hit > 0:
                assert self._mem is not None
                lc.llama_memory_seq_cp(self._mem, entry.seq_id, seq.seq_id, 0, hit)
                seq.path = self._cells.share_prefix(entry.path, hit)
            else:
                seq.path = self._cells.new_path()
            seq.n_past = hit
            if seq.started is None:
                seq.started = time.monotonic()
            self._running.append(seq)

    def _step(self) -> None:
        """One llama_decode: a token per decoding sequence, then at most one prompt chunk."""
        decoders = [s for s in self._running if s.decoding]
        while self._evict_until(len(decoders)) < len(decoders):
            if not self._shed_load():
                return
            decoders = [s for s in self._running if s.decoding]
        chunk_seq, chunk = self._pick_prefill(decoders)
        if chunk_seq is not None:
            if not chunk_seq.announced and self._adopt_running_prefix(chunk_seq):
                chunk = min(chunk, chunk_seq.remaining_prefill)
            chunk = min(chunk, self._evict_until(len(decoders) + chunk) - len(decoders))
            if chunk <= 0:
                chunk_seq = None
                if not decoders:  # nothing can move until some cells come back
                    self._shed_load()
                    return

        batch = self._batch
        assert batch is not None and self._ctx is not None
        n = 0
        fed: list[tuple[_Sequence, int, int]] = []  # (sequence, first batch index, count)
        for seq in decoders:
            self._put(batch, n, seq, seq.n_past, True)
            fed.append((seq, n, 1))
            n += 1
        if chunk_seq is not None:
            end = chunk_seq.n_past + chunk
            for pos in range(chunk_seq.n_past, end):
                self._put(batch, n, chunk_seq, pos, pos == len(chunk_seq.tokens) - 1)
                n += 1
            fed.append((chunk_seq, n - chunk, chunk))
        for seq, _, _ in fed:
            if not seq.announced:
                self._announce(seq)
        batch.n_tokens = n
        began = time.perf_counter()
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            self._recover_from_decode_failure(rc)
            return
        if chunk_seq is not None and chunk >= 32:
            rate = chunk / max(time.perf_counter() - began, 1e-6)
            self._prefill_rate = 0.8 * self._prefill_rate + 0.2 * rate
        for seq, _, count in fed:
            assert seq.path is not None
            self._cells.append(seq.path, seq.tokens[seq.n_past:seq.n_past + count])
            seq.n_past += count
        for seq, first, count in fed:
            if seq.n_past == len(seq.tokens):
                self._advance(seq, first + count - 1)

    def _adopt_running_prefix(self, seq: _Sequence) -> bool:
        """Before a sequence computes anything itself, share a longer prefix that a running
        sequence of the same salt has computed: requests that arrive together with one system
        prompt find no finished entry to reuse, but the first one's cells serve the rest."""
        if not self._settings.prefix_cache_entries:
            return False
        salt = seq.request.cache_salt
        best: _Sequence | None = None
        best_n = seq.n_past
        for other in self._running:
            if other is seq or other.path is None or other.request.cache_salt != salt:
                continue
            n = min(common_prefix(other.path.tokens, seq.tokens), len(seq.tokens) - 1)
            if n > best_n:
                best, best_n = other, n
        if best is None or best.path is None or seq.path is None:
            return False
        assert self._mem is not None
        lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        self._cells.drop(seq.path)
        lc.llama_memory_seq_cp(self._mem, best.seq_id, seq.seq_id, 0, best_n)
        seq.path = self._cells.share_prefix(best.path, best_n)
        seq.n_past = best_n
        return True

    def _announce(self, seq: _Sequence) -> None:
        """The sequence is fed for the first time: what it reused is now settled."""
        seq.announced = True
        seq.cached = seq.n_past
        self._counters["prompt"] += len(seq.request.prompt)
        self._counters["hit"] += seq.n_past
        started = seq.started if seq.started is not None else seq.submitted
        seq.emit(StartEvent(cached_tokens=seq.cached, queued_s=started - seq.submitted))

    @staticmethod
    def _put(batch: lc.llama_batch, n: int, seq: _Sequence, pos: int, logits: bool) -> None:
        batch.token[n] = seq.tokens[pos]
        batch.pos[n] = pos  # type: ignore[call-overload]  # llama_pos*, typed loosely upstream
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq.seq_id
        batch.logits[n] = logits

    def _pick_prefill(self, decoders: list[_Sequence]) -> tuple[_Sequence | None, int]:
        """Which prompt to feed this step, and how many of its tokens.

        With nothing decoding, or for a short prompt, the prompt with the fewest tokens left
        goes in whole (up to n_batch): short requests see their first token soonest. A long
        prompt that arrives while streams decode is fed `prefill_per_decode` tokens per
        running stream each step, so those streams slow by about that factor, no more.
        """
        s = self._settings
        prefilling = [q for q in self._running if not q.decoding]
        if not prefilling:
            return None, 0
        room = s.n_batch - len(decoders)
        short = [q for q in prefilling
                 if not decoders or q.remaining_prefill <= s.long_prompt_tokens]
        if short:
            seq = min(short, key=lambda q: q.remaining_prefill)
            return seq, min(seq.remaining_prefill, room)
        seq = prefilling[0]
        trickle = max(1, int(s.prefill_per_decode * len(decoders)))
        return seq, min(seq.remaining_prefill, trickle, room)

    def _evict_until(self, cells: int) -> int:
        """Evict cached entries, least recently used first, until `cells` are free (or none
        is left); returns the free cell count."""
        while self._cells.free < cells:
            entry = self._cache.pop_lru()
            if entry is None:
                break
            self._release(entry.seq_id, entry.path)
        return self._cells.free

    def _shed_load(self) -> bool:
        """The cache holds no more cells to give: preempt the newest running sequence, or end
        the only one with `resources`. Returns whether others are still running."""
        victim = self._running[-1]
        if len(self._running) == 1:
            self._finish(victim, "resources")
            return False
        self._preempt(victim)
        return True

    def _release(self, seq_id: int, path: CellPath) -> None:
        assert self._mem is not None
        lc.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
        self._cells.drop(path)
        self._free_seq_ids.append(seq_id)

    def _preempt(self, seq: _Sequence) -> None:
        """Free a running sequence's cells and queue it first; it resumes where it stopped."""
        assert seq.path is not None
        log.info("preempting %s after %d tokens: the KV cache is full",
                 seq.request.request_id, seq.generated)
        self._running.remove(seq)
        self._release(seq.seq_id, seq.path)
        seq.path, seq.seq_id, seq.n_past = None, -1, 0
        self._counters["preempted"] += 1
        with self._wake:
            self._queue.appendleft(seq)
            self._queued_tokens += len(seq.tokens)

    def _retire(self, seq: _Sequence, *, keep: bool) -> None:
        """Take a sequence out of the running set; its cells become a cache entry if `keep`."""
        self._running.remove(seq)
        path = seq.path
        assert path is not None
        if keep and self._settings.prefix_cache_entries and len(path) > 0:
            for stale in self._cache.insert(seq.seq_id, seq.request.cache_salt, path):
                self._release(stale.seq_id, stale.path)
            while len(self._cache) > self._settings.prefix_cache_entries:
                entry = self._cache.pop_lru()
                assert entry is not None
                self._release(entry.seq_id, entry.path)
        else:
            self._release(seq.seq_id, path)
        seq.path = None

    def _advance(self, seq: _Sequence, index: int) -> None:
        assert self._ctx is not None and self._model is not None
        logits = np.ctypeslib.as_array(
            lc.llama_get_logits_ith(self._ctx, index), shape=(self._model.tokenizer.n_vocab,)
        )
        constraint = seq.request.constraint
        if constraint is None:
            event = seq.sampler.sample(logits)
        else:
            forced = constraint.forced_token()
            model_logits = logits.copy() if seq.sampler.params.logprobs else None
            if forced is None:
                constraint.mask_logits(logits)
                forced = constraint.forced_token()  # masking may decide to force
            event = seq.sampler.sample(logits, model_logits=model_logits, forced=forced)
            constraint.accept(event.token_id)
        seq.generated += 1
        seq.tokens.append(event.token_id)
        reason: FinishReason | None = None
        if self._model.tokenizer.is_end_of_generation(event.token_id):
            reason = "eos"
        else:
            seq.emit(event)
            if constraint is not None and constraint.finished:
                reason = "eos"
            elif seq.generated >= seq.request.max_tokens:
                reason = "length"
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        # An end-of-generation token is counted: it was generated, as OpenAI counts it.
        # Retired first, so the engine state is settled when the consumer sees the finish.
        self._retire(seq, keep=reason != "resources")
        if reason == "resources":
            self._counters["resources"] += 1
        self._publish()
        started = seq.started if seq.started is not None else seq.submitted
        seq.emit(FinishEvent(reason=reason, prompt_tokens=len(seq.request.prompt),
                             completion_tokens=seq.generated, cached_tokens=seq.cached,
                             queued_s=started - seq.submitted))

    def _recover_from_decode_failure(self, rc: int) -> None:
        """llama_decode refused the batch (its memory is unchanged): shed load and go on."""
        if rc == 1 and len(self._running) > 1:
            log.warning("llama_decode found no KV slot for %d sequences; preempting one",
                        len(self._running))
            self._preempt(self._running[-1])
            return
        log.error("llama_decode returned %d with %d running sequences", rc, len(self._running))
        for seq in list(self._running):
            self._finish(seq, "resources")

    def _abort_running(self) -> None:
        for seq in list(self._running):
            self._retire(seq, keep=False)
            seq.emit(ShuttingDown("the server shut down before the answer was complete"))

    def _fail_all(self, failure: EngineFailure) -> None:
        with self._wake:
            waiting = list(self._queue)
            self._queue.clear()
            self._queued_tokens = 0
        for seq in waiting + self._running:
            seq.emit(failure)
        for seq in list(self._running):
            if seq.path is not None and self._mem is not None:
                self._retire(seq, keep=False)
