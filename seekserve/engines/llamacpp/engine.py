"""The embedded engine: one thread owns the llama.cpp context and steps every running sequence.

Each step is one `llama_decode` over a batch holding one token for every decoding sequence plus,
at most, one prompt chunk. Requests wait in a bounded queue and join between steps. A sequence's
prompt is matched against the prefix cache of its isolation salt; the matched cells are shared
(`llama_memory_seq_cp` on a unified KV cache), so only the rest is prefilled. When cells run
out, cached entries are evicted least-recently-used first, then the newest running sequence is
preempted (its cells freed, its tokens recomputed when it is admitted again). Those decisions
(who expires, who is admitted, which prompt is fed by how much, who gives way) are the pure
policy in `scheduler.py`; this module describes each situation to it and carries out its answers.

The engine thread also loads the model and frees it: every llama.cpp call that touches the
context or the device runs there. It is started with a deep stack (`ENGINE_STACK_BYTES`): a
CUDA build crashed (SIGSEGV in llama_model_load_from_file) loading from a default-sized worker
thread while the same load worked on the main thread, whose stack is the process's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
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
    TokenEvent,
)
from seekserve.engines.llamacpp import devices
from seekserve.engines.llamacpp.kvcache import CellLedger, CellPath, PrefixCache, common_prefix
from seekserve.engines.llamacpp.model import LlamaModel, LlamaTokenizer
from seekserve.engines.llamacpp.sampling import Pick, Sampler, sample_step
from seekserve.engines.llamacpp.scheduler import Evict, Scheduler, Shed
from seekserve.settings import LlamaCppEngineSettings

log = logging.getLogger(__name__)

_Outbox = asyncio.Queue[GenerationEvent | EngineFailure]

# The engine thread's stack: the main thread's is 8 MiB (or grows without limit), a worker
# thread's is what pthreads gives (2 MiB where the stack rlimit is unlimited); the CUDA runtime
# and ggml's backend setup use deep stacks while loading. Address space only: pages are touched
# as they are used.
ENGINE_STACK_BYTES = 256 * 2**20


def start_deep_stack_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread with ENGINE_STACK_BYTES of stack; the process-wide default for
    threads started later is put back at once."""
    previous = threading.stack_size(ENGINE_STACK_BYTES)
    try:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    finally:
        threading.stack_size(previous)
    return thread


@dataclass(frozen=True)
class LlamaCppEngineState(EngineState):
    """EngineState plus where the model runs (strings: /ready shows them, gauges skip them)."""

    backend: str = ""  # CUDA, CPU
    devices: tuple[str, ...] = ()  # CUDA0 (NVIDIA H200, 140 GiB)
    gpu_layers: int = 0  # layers offloaded, of `layers`
    layers: int = 0


def _deliver(items: list[tuple[_Outbox, GenerationEvent | EngineFailure]]) -> None:
    for outbox, event in items:
        outbox.put_nowait(event)


class _Mailbox:
    """Events the engine thread posts during a step, handed to each consumer's event loop in one
    call per step: one wake-up of the loop for 64 streams' tokens, not 64. Engine thread only."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop,
                            list[tuple[_Outbox, GenerationEvent | EngineFailure]]] = {}

    def post(self, loop: asyncio.AbstractEventLoop, outbox: _Outbox,
             event: GenerationEvent | EngineFailure) -> None:
        self._by_loop.setdefault(loop, []).append((outbox, event))

    def flush(self) -> None:
        by_loop, self._by_loop = self._by_loop, {}
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is gone: nobody is listening
                pass


@dataclass(eq=False)
class _Sequence:
    """One request inside the engine; after submission only the loop thread mutates it."""

    request: GenerationRequest
    sampler: Sampler
    outbox: _Outbox
    loop: asyncio.AbstractEventLoop
    mailbox: _Mailbox
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
        """Delivered when the engine thread flushes its mailbox (after each step)."""
        self.mailbox.post(self.loop, self.outbox, event)

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
        self._policy = Scheduler.from_settings(settings)
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
        self._mailbox = _Mailbox()
        self._n_seq_ids = settings.max_running + settings.prefix_cache_entries + 1
        self._free_seq_ids: list[int] = list(range(self._n_seq_ids))[::-1]
        self._cells = CellLedger(settings.n_ctx)
        self._cache = PrefixCache(settings.prefix_cache_entries)
        self._prefill_rate = 100.0  # tokens/s, updated from measured prefill steps
        self._max_seq_tokens = 0
        self._counters = {"prompt": 0, "hit": 0, "preempted": 0, "resources": 0}
        self._snapshot = EngineState(False, 0, 0, settings.n_ctx, 0)
        self._placement: devices.Placement | None = None
        # Helps the engine thread read a big step's logits (sampling.sample_step).
        self._sample_pool_size = min(8, (os.cpu_count() or 1) // 2)
        self._sample_pool: concurrent.futures.ThreadPoolExecutor | None = None

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
        where = f" on {self._placement}" if self._placement is not None else ""
        return f"llama.cpp {model.name} ({model.path.name}){where}"

    @property
    def placement(self) -> devices.Placement | None:
        """Where the loaded model's layers are (None before it is loaded)."""
        return self._placement

    async def start(self) -> None:
        """Start the engine thread; it loads the model, then steps. Load errors raise here.
        Cancelled while loading, the thread goes on: aclose() stops it and frees the model."""
        loaded = threading.Event()
        failure: list[BaseException] = []
        self._thread = start_deep_stack_thread(lambda: self._serve(loaded, failure),
                                               "llamacpp-engine")
        await asyncio.to_thread(loaded.wait)
        if failure:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise failure[0]
        with self._wake:
            self._accepting = True
        self._publish()

    def _serve(self, loaded: threading.Event, failure: list[BaseException]) -> None:
        """The engine thread: load, step until stopped, free what was loaded."""
        try:
            self._load()
        except BaseException as exc:  # start() raises it
            failure.append(exc)
            return
        finally:
            loaded.set()
        if self._run():
            self._unload()

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
        self._unload()  # when the loop failed; a stopped loop has unloaded on its own thread
        self._publish()

    def state(self) -> EngineState:
        snap = self._snapshot
        with self._wake:
            queued, queued_tokens = len(self._queue), self._queued_tokens
        where = self._placement
        return LlamaCppEngineState(
            backend=where.backend if where else "",
            devices=where.devices if where else (),
            gpu_layers=where.gpu_layers if where else 0,
            layers=where.layers if where else 0,
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
            mailbox=self._mailbox,
            tokens=list(request.prompt),
        )
        with self._wake:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            refusal = self._policy.refusal(len(self._queue), self._queued_tokens, prompt_len)
            if refusal is not None:
                raise EngineOverloaded(refusal, self._policy.retry_after(
                    self._queued_tokens, self._prefill_rate))
            self._queue.append(seq)
            self._queued_tokens += prompt_len
            self._wake.notify_all()
        return _SequenceStream(self, seq)

    def cancel(self, seq: _Sequence) -> None:
        seq.cancelled.set()
        with self._wake:
            self._wake.notify_all()

    # ----- loading -----

    def _loaded(self) -> LlamaModel:
        if self._model is None:
            raise EngineFailure("the model is not loaded")
        return self._model

    def _load(self) -> None:
        s = self._settings
        gpus = devices.gpus()
        if gpus and s.main_gpu >= len(gpus):
            raise EngineFailure(
                f"engines main_gpu is {s.main_gpu} but llama.cpp lists {len(gpus)} GPU(s): "
                + ", ".join(str(d) for d in gpus))
        if s.gpu_layers and not gpus:
            log.warning("gpu_layers is %d but this llama.cpp build has no GPU backend "
                        "(scripts/install.sh builds with CUDA where nvcc and a GPU are found); "
                        "the model runs on the CPU", s.gpu_layers)
        n_gpu_layers = devices.gpu_layers_wanted(s.gpu_layers, gpus)
        model = LlamaModel(self._model_path, gpu_layers=n_gpu_layers, main_gpu=s.main_gpu,
                           split_mode=devices.SPLIT_MODES[s.split_mode])
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
        if self._sample_pool_size > 1:
            self._sample_pool = concurrent.futures.ThreadPoolExecutor(
                self._sample_pool_size, thread_name_prefix="llamacpp-sampling")
        limit = s.max_sequence_tokens or s.n_ctx
        self._max_seq_tokens = min(limit, s.n_ctx, model.n_ctx_train or limit)
        self._placement = devices.placement(model.n_layer, n_gpu_layers, s.main_gpu,
                                            s.split_mode, gpus)
        log.info("loaded %s on %s: n_ctx=%d, max sequence tokens=%d, max running=%d, "
                 "cache entries=%d, threads=%d", model.path, self._placement, s.n_ctx,
                 self._max_seq_tokens, s.max_running, s.prefix_cache_entries, threads)

    def _unload(self) -> None:
        if self._sample_pool is not None:
            self._sample_pool.shutdown()
            self._sample_pool = None
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

    def _run(self) -> bool:
        """Step until stopped (True) or until the loop fails (False)."""
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._running and not self._queue:
                        self._wake.notify_all()  # a drain may be waiting for this
                        self._wake.wait()
                    if self._stopping:
                        break
                    aborting = self._aborting
                try:
                    if aborting:
                        self._abort_running()
                    self._expire_queued()
                    self._retire_cancelled()
                    self._admit()
                    if self._running:
                        self._step()
                    self._publish()
                finally:
                    self._mailbox.flush()
        except Exception:
            log.exception("the engine loop failed")
            self._fail_all(EngineFailure("the engine failed"))
            return False
        self._fail_all(ShuttingDown("the server is shutting down"))
        return True

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
        with self._wake:
            accepting = self._accepting
            waiting = list(self._queue)
        for seq in waiting:
            expiry = self._policy.expiry(seq.submitted, seq.started is not None,
                                         seq.cancelled.is_set(), now, accepting)
            if expiry is None:
                continue
            self._dequeue(seq)
            if expiry == "shutdown":
                seq.emit(ShuttingDown("the server is shutting down"))
            elif expiry == "timeout":
                seq.emit(QueueTimeout(
                    f"the request was not started within {self._policy.queue_deadline_s:g} s "
                    "(engines.queue_deadline_s); the server is overloaded"))

    def _retire_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled.is_set()]:
            self._retire(seq, keep=True)

    def _admit(self) -> None:
        """Start queued sequences, oldest first, while a slot and their prompt's cells are free."""
        while self._policy.has_slot(len(self._running)):
            with self._wake:
                if not self._queue:
                    return
                seq = self._queue[0]
            salt = seq.request.cache_salt
            entry, hit = (self._cache.longest_match(salt, seq.tokens)
                          if self._settings.prefix_cache_entries else (None, 0))
            hit = self._policy.reusable(len(seq.tokens), hit)
            running_paths = [s.path for s in self._running if s.path is not None]
            available = self._cells.total - self._cells.held_by(running_paths)
            if not self._policy.fits(len(seq.tokens), hit, len(self._running), available):
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
        if not self._make_room():
            return
        decoders = [s for s in self._running if s.decoding]
        pick = self._policy.pick_prefill(self._left())
        chunk_seq, chunk = None, 0
        if pick is not None:
            chunk_seq, chunk = self._running[pick.index], pick.tokens
            if not chunk_seq.announced and self._adopt_running_prefix(chunk_seq):
                chunk = min(chunk, chunk_seq.remaining_prefill)
            chunk = self._fit_chunk(chunk, len(decoders))
            if chunk <= 0:
                chunk_seq = None
                if not decoders:  # nothing can move until some cells come back
                    self._shed(self._policy.victim(len(self._running)))
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
        ready = [(seq, first + count - 1) for seq, first, count in fed
                 if seq.n_past == len(seq.tokens)]
        if ready:
            self._sample([seq for seq, _ in ready], ready[-1][1])

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

    def _left(self) -> list[int]:
        """What the policy sees of the running sequences: the tokens each has left to feed."""
        return [s.remaining_prefill for s in self._running]

    def _make_room(self) -> bool:
        """Free a cell for every decoding sequence, as the policy says; False when the only
        running sequence had to end, so there is no step."""
        while True:
            action = self._policy.make_room(self._left(), self._cells.free, len(self._cache))
            if action is None:
                return True
            if isinstance(action, Evict):
                self._evict_lru()
            elif not self._shed(action):
                return False

    def _fit_chunk(self, chunk: int, decoders: int) -> int:
        """The prompt chunk that fits once cache entries are evicted for it, as the policy says."""
        while isinstance(fitted := self._policy.fit_chunk(
                chunk, decoders, self._cells.free, len(self._cache)), Evict):
            self._evict_lru()
        return fitted

    def _evict_lru(self) -> None:
        entry = self._cache.pop_lru()
        assert entry is not None
        self._release(entry.seq_id, entry.path)

    def _shed(self, shed: Shed) -> bool:
        """Preempt the victim, or end it with `resources`; returns whether it was preempted."""
        victim = self._running[shed.victim]
        if shed.end:
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

    def _sample(self, ready: list[_Sequence], last_index: int) -> None:
        """The next token of every sequence whose prompt is all fed, from the step's logits.

        Only these sequences' tokens asked for logits, and llama.cpp stores those rows
        contiguously in batch order: one (sequences, vocabulary) matrix, sampled at once.
        `last_index` is the batch index of the last of them."""
        assert self._ctx is not None and self._model is not None
        n_vocab = self._model.tokenizer.n_vocab
        first = lc.llama_get_logits(self._ctx)
        last = lc.llama_get_logits_ith(self._ctx, last_index)
        # The layout this relies on, checked at the cost of two pointers.
        assert (ctypes.addressof(last.contents) - ctypes.addressof(first.contents)
                == (len(ready) - 1) * n_vocab * ctypes.sizeof(ctypes.c_float))
        matrix = np.ctypeslib.as_array(first, shape=(len(ready), n_vocab))
        picks = []
        for row, seq in enumerate(ready):
            constraint = seq.request.constraint
            forced = model_logits = None
            if constraint is not None:
                forced = constraint.forced_token()
                if forced is None:
                    if seq.sampler.params.logprobs:
                        model_logits = matrix[row].copy()
                    constraint.mask_logits(matrix[row])
                    forced = constraint.forced_token()  # masking may decide to force
            picks.append(Pick(row, seq.sampler, forced, model_logits))
        events = sample_step(matrix, picks, pool=self._sample_pool,
                             pool_size=self._sample_pool_size)
        for seq, event in zip(ready, events, strict=True):
            self._advance(seq, event)

    def _advance(self, seq: _Sequence, event: TokenEvent) -> None:
        assert self._model is not None
        constraint = seq.request.constraint
        if constraint is not None:
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
        shed = self._policy.decode_refused(rc, len(self._running))
        if shed is not None:
            log.warning("llama_decode found no KV slot for %d sequences; preempting one",
                        len(self._running))
            self._shed(shed)
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
        self._mailbox.flush()
        for seq in list(self._running):
            if seq.path is not None and self._mem is not None:
                self._retire(seq, keep=False)
