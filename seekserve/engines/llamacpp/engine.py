"""The embedded engine: one thread owns the llama.cpp context and steps every running sequence."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np

from seekserve.engines.base import (
    EngineFailure,
    EngineState,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
)
from seekserve.engines.llamacpp.model import LlamaModel, LlamaTokenizer
from seekserve.engines.llamacpp.sampling import Sampler
from seekserve.settings import LlamaCppEngineSettings

log = logging.getLogger(__name__)

_Outbox = asyncio.Queue[GenerationEvent | EngineFailure]


@dataclass(eq=False)
class _Sequence:
    """One request inside the engine loop; only the loop thread touches its mutable state."""

    request: GenerationRequest
    sampler: Sampler
    outbox: _Outbox
    loop: asyncio.AbstractEventLoop
    reserved: int
    seq_id: int = -1
    n_past: int = 0  # tokens already in the KV cache for this sequence
    generated: int = 0
    next_token: int = -1  # sampled, not yet decoded
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: GenerationEvent | EngineFailure) -> None:
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, event)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.request.prompt)


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
        self._inbox: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free_seq_ids: list[int] = list(range(settings.max_running))[::-1]
        self._reserved_cells = 0
        self._stopping = False
        self._max_seq_tokens = 0

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
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._unload()

    def state(self) -> EngineState:
        with self._wake:
            return EngineState(
                loaded=self._ctx is not None and self._thread is not None,
                running=len(self._running),
                queued=len(self._inbox),
                kv_cells_total=self._settings.n_ctx,
                kv_cells_used=self._reserved_cells,
            )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if self._thread is None:
            raise EngineFailure("the engine is not running")
        reserved = len(request.prompt) + request.max_tokens
        if reserved > self._max_seq_tokens:
            raise EngineFailure(
                f"prompt ({len(request.prompt)}) + max_tokens ({request.max_tokens}) exceeds "
                f"the sequence limit ({self._max_seq_tokens})"
            )
        seq = _Sequence(
            request=request,
            sampler=Sampler(request.sampling),
            outbox=asyncio.Queue(),
            loop=asyncio.get_running_loop(),
            reserved=reserved,
        )
        with self._wake:
            if self._stopping:
                raise EngineFailure("the server is shutting down")
            self._inbox.append(seq)
            self._wake.notify()
        try:
            while True:
                event = await seq.outbox.get()
                if isinstance(event, EngineFailure):
                    raise event
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            # Runs on normal end, on the consumer closing the iterator and on cancellation.
            seq.cancelled.set()
            with self._wake:
                self._wake.notify()

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
        params.n_seq_max = s.max_running
        # One pool of cells for all sequences: a long prompt is not held to n_ctx / n_seq_max.
        params.kv_unified = True
        threads = s.n_threads or os.cpu_count() or 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        ctx = lc.llama_init_from_model(model.ptr, params)
        if not ctx:
            model.close()
            raise EngineFailure(f"llama.cpp could not create a context of {s.n_ctx} cells")
        self._model = model
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        self._batch = lc.llama_batch_init(s.n_batch, 0, 1)
        limit = s.max_sequence_tokens or s.n_ctx
        self._max_seq_tokens = min(limit, s.n_ctx, model.n_ctx_train or limit)
        log.info("loaded %s: n_ctx=%d, max sequence tokens=%d, max running=%d, threads=%d",
                 model.path, s.n_ctx, self._max_seq_tokens, s.max_running, threads)

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

    # ----- the loop (engine thread only) -----

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._running and not self._inbox:
                        self._wake.wait()
                    if self._stopping:
                        break
                    self._admit()
                self._drop_cancelled()
                if self._running:
                    self._step()
        except Exception:
            log.exception("the engine loop failed")
            self._fail_all(EngineFailure("the engine failed"))
            return
        self._fail_all(EngineFailure("the server is shutting down"))

    def _admit(self) -> None:
        """Move queued sequences in while a sequence slot and their worst-case cells are free."""
        while self._inbox and self._free_seq_ids:
            seq = self._inbox[0]
            if seq.cancelled.is_set():
                self._inbox.popleft()
                continue
            if self._reserved_cells + seq.reserved > self._settings.n_ctx:
                break
            self._inbox.popleft()
            seq.seq_id = self._free_seq_ids.pop()
            self._reserved_cells += seq.reserved
            self._running.append(seq)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled.is_set()]:
            self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        assert self._mem is not None
        lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        with self._wake:
            self._running.remove(seq)
            self._free_seq_ids.append(seq.seq_id)
            self._reserved_cells -= seq.reserved

    def _step(self) -> None:
        """One llama_decode over every running sequence: one token each, prompt chunks after."""
        batch = self._batch
        assert batch is not None and self._ctx is not None
        budget = self._settings.n_batch
        n = 0
        outputs: list[tuple[_Sequence, int]] = []

        def put(seq: _Sequence, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = seq.n_past  # type: ignore[call-overload]  # llama_pos*, typed loosely upstream
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = logits
            if logits:
                outputs.append((seq, n))
            seq.n_past += 1
            n += 1

        for seq in self._running:
            if not seq.prefilling:
                put(seq, seq.next_token, True)
        for seq in self._running:
            prompt = seq.request.prompt
            while seq.prefilling and n < budget:
                put(seq, prompt[seq.n_past], seq.n_past == len(prompt) - 1)
        batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            self._recover_from_decode_failure(rc)
            return
        for seq, index in outputs:
            self._advance(seq, index)

    def _advance(self, seq: _Sequence, index: int) -> None:
        assert self._ctx is not None and self._model is not None
        logits = np.ctypeslib.as_array(
            lc.llama_get_logits_ith(self._ctx, index), shape=(self._model.tokenizer.n_vocab,)
        )
        event = seq.sampler.sample(logits)
        seq.generated += 1
        seq.next_token = event.token_id
        reason: FinishReason | None = None
        if self._model.tokenizer.is_end_of_generation(event.token_id):
            reason = "eos"
        else:
            seq.emit(event)
            if seq.generated >= seq.request.max_tokens:
                reason = "length"
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        # An end-of-generation token is counted: it was generated, as OpenAI counts it.
        # Released first, so the engine state is settled when the consumer sees the finish.
        self._release(seq)
        seq.emit(FinishEvent(reason=reason, prompt_tokens=len(seq.request.prompt),
                             completion_tokens=seq.generated))

    def _recover_from_decode_failure(self, rc: int) -> None:
        """llama_decode refused the batch: end the running sequences, keep the engine serving."""
        log.error("llama_decode returned %d with %d running sequences", rc, len(self._running))
        for seq in list(self._running):
            self._release(seq)
            seq.emit(FinishEvent(reason="resources", prompt_tokens=len(seq.request.prompt),
                                 completion_tokens=seq.generated))

    def _fail_all(self, failure: EngineFailure) -> None:
        with self._wake:
            waiting = list(self._inbox) + list(self._running)
            self._inbox.clear()
        for seq in waiting:
            seq.emit(failure)
        for seq in list(self._running):
            self._release(seq)
