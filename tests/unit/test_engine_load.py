"""The embedded engine loads its model on its own thread, started with a deep stack, and steps
on that same thread; load errors reach start() as clear errors. A CUDA build crashed loading
from a default-sized worker thread (issue 15); this is the code path that fix changed, on the CPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp as lc
import pytest

from seekserve.app import default_model_path
from seekserve.engines.base import EngineFailure, FinishEvent, GenerationRequest, SamplingParams
from seekserve.engines.llamacpp import devices
from seekserve.engines.llamacpp import engine as engine_module
from seekserve.engines.llamacpp.engine import ENGINE_STACK_BYTES, LlamaCppEngine
from seekserve.engines.llamacpp.model import ModelLoadError
from seekserve.settings import LlamaCppEngineSettings, Settings


def _stack_bytes() -> int:
    """The calling thread's real stack size, as pthreads allocated it."""
    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_ulong
    attr = ctypes.create_string_buffer(128)  # pthread_attr_t is 56 bytes on x86-64 glibc
    assert libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr) == 0
    addr, size = ctypes.c_void_p(), ctypes.c_size_t()
    assert libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) == 0
    libc.pthread_attr_destroy(attr)
    return size.value


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Which thread loaded the model (and its stack), which ones decoded, and every
    threading.stack_size call."""
    seen: dict[str, list[Any]] = {"load": [], "decode": [], "stack_size": []}
    real_load, real_decode = lc.llama_model_load_from_file, lc.llama_decode
    real_stack_size = threading.stack_size

    def load(path: bytes, params: Any) -> Any:
        seen["load"].append((threading.current_thread(), _stack_bytes(), params.n_gpu_layers))
        return real_load(path, params)

    def decode(ctx: Any, batch: Any) -> int:
        seen["decode"].append(threading.current_thread())
        return int(real_decode(ctx, batch))

    def stack_size(*size: int) -> int:
        seen["stack_size"].append(size)
        return real_stack_size(*size)

    monkeypatch.setattr(lc, "llama_model_load_from_file", load)
    monkeypatch.setattr(lc, "llama_decode", decode)
    monkeypatch.setattr(threading, "stack_size", stack_size)
    yield seen


def _settings(**fields: Any) -> LlamaCppEngineSettings:
    return LlamaCppEngineSettings(n_ctx=512, max_running=2, prefix_cache_entries=0, **fields)


async def _generate(engine: LlamaCppEngine) -> list[Any]:
    tokenizer = engine.tokenizer
    request = GenerationRequest(request_id="load-test", prompt=tokenizer.encode("Hello"),
                                max_tokens=3, sampling=SamplingParams(temperature=0.0))
    return [event async for event in engine.generate(request)]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the stack with pthread_getattr_np")
@pytest.mark.model
def test_the_model_loads_and_decodes_on_the_engine_thread_with_a_deep_stack(
        calls: dict[str, list[Any]]) -> None:
    before = threading.stack_size()
    engine = LlamaCppEngine(_settings(), default_model_path(Settings().data_dir, progress=False))

    async def run() -> list[Any]:
        await engine.start()
        try:
            return await _generate(engine)
        finally:
            await engine.aclose()

    events = asyncio.run(run())
    assert isinstance(events[-1], FinishEvent) and events[-1].completion_tokens == 3
    [(load_thread, stack, n_gpu_layers)] = calls["load"]
    assert load_thread.name == "llamacpp-engine"
    assert load_thread is not threading.main_thread()
    assert stack >= ENGINE_STACK_BYTES
    assert calls["decode"] and all(t is load_thread for t in calls["decode"])
    # The deep stack was asked for once and the process default put back at once.
    assert next(c for c in calls["stack_size"] if c) == (ENGINE_STACK_BYTES,)
    assert threading.stack_size() == before
    # This CPU build offloads nothing, and says so.
    assert n_gpu_layers == (-1 if devices.gpus() else 0)
    state = engine.state()
    assert state.backend == ("CPU" if not devices.gpus() else state.backend)
    assert state.layers == 25 and state.devices


def test_a_file_that_is_not_gguf_fails_start_with_an_error_naming_it(
        tmp_path: Path, calls: dict[str, list[Any]]) -> None:
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file" * 100)
    engine = LlamaCppEngine(_settings(), bad)
    with pytest.raises(ModelLoadError, match=r"could not load .*not-a-model\.gguf"):
        asyncio.run(engine.start())
    [(load_thread, stack, _)] = calls["load"]
    assert load_thread.name == "llamacpp-engine" and stack >= ENGINE_STACK_BYTES
    assert not load_thread.is_alive()
    assert not engine.state().loaded
    with pytest.raises(EngineFailure, match="not loaded"):
        engine.tokenizer  # noqa: B018


def test_a_missing_file_fails_start_before_llama_cpp_is_called(
        tmp_path: Path, calls: dict[str, list[Any]]) -> None:
    engine = LlamaCppEngine(_settings(), tmp_path / "absent.gguf")
    with pytest.raises(ModelLoadError, match=r"absent\.gguf does not exist"):
        asyncio.run(engine.start())
    assert calls["load"] == []


def test_a_main_gpu_past_the_listed_gpus_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = devices.Device("CUDA0", "NVIDIA H200", "CUDA", "gpu", 150 * 2**30)
    monkeypatch.setattr(engine_module.devices, "gpus", lambda: [gpu])
    engine = LlamaCppEngine(_settings(main_gpu=1), tmp_path / "absent.gguf")
    with pytest.raises(EngineFailure, match=r"main_gpu is 1 but llama.cpp lists 1 GPU\(s\): "
                                            r"CUDA0 \(NVIDIA H200, 150 GiB\)"):
        asyncio.run(engine.start())


def test_this_build_lists_its_devices_with_backend_names() -> None:
    found = devices.devices()
    assert found, "ggml registers at least the CPU"
    cpu = [d for d in found if d.kind == "cpu"]
    assert cpu and cpu[0].backend == "CPU" and cpu[0].name == "CPU"
    assert bool(devices.gpus()) == (lc.llama_supports_gpu_offload() and
                                    any(d.offloads for d in found))


def test_gpu_layers_default_to_all_on_a_gpu_build_and_none_on_the_cpu() -> None:
    gpu = devices.Device("CUDA0", "NVIDIA H200", "CUDA", "gpu", 150 * 2**30)
    assert devices.gpu_layers_wanted(None, [gpu]) == -1
    assert devices.gpu_layers_wanted(None, []) == 0
    assert devices.gpu_layers_wanted(10, [gpu]) == 10
    assert devices.gpu_layers_wanted(10, []) == 0
    where = devices.placement(24, -1, 0, "layer", [gpu])
    assert (where.backend, where.gpu_layers, where.layers) == ("CUDA", 25, 25)
    assert str(where) == "CUDA0 (NVIDIA H200, 150 GiB) with CUDA, 25/25 layers offloaded"
    other = devices.Device("CUDA1", "NVIDIA H200", "CUDA", "gpu", 150 * 2**30)
    assert devices.placement(24, 99, 1, "none", [gpu, other]).devices == (str(other),)
    assert len(devices.placement(24, 99, 0, "layer", [gpu, other]).devices) == 2
    on_cpu = devices.placement(24, 0, 0, "layer", [gpu])
    assert (on_cpu.backend, on_cpu.gpu_layers) == ("CPU", 0)
    assert str(on_cpu).startswith("CPU (")


def test_the_settings_take_gpu_layers_main_gpu_and_split_mode() -> None:
    s = LlamaCppEngineSettings(gpu_layers=12, main_gpu=1, split_mode="none")
    assert (s.gpu_layers, s.main_gpu, s.split_mode) == (12, 1, "none")
    assert LlamaCppEngineSettings().gpu_layers is None
    with pytest.raises(ValueError, match="gpu_layers"):
        LlamaCppEngineSettings(gpu_layers=-2)
    with pytest.raises(ValueError, match="split_mode"):
        LlamaCppEngineSettings(split_mode="tensor")  # type: ignore[arg-type]


@pytest.mark.model
def test_the_end_tokens_are_found_once_per_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    from seekserve.engines.llamacpp.model import LlamaModel

    model = LlamaModel(default_model_path(Settings().data_dir, progress=False), vocab_only=True)
    try:
        calls = [0]
        real = lc.llama_vocab_is_eog

        def counted(vocab: Any, token: int) -> bool:
            calls[0] += 1
            return bool(real(vocab, token))

        monkeypatch.setattr(lc, "llama_vocab_is_eog", counted)
        first = model.tokenizer.end_tokens()
        first.append(7)  # a caller's copy: the tokenizer's own stays
        again = model.tokenizer.end_tokens()
        assert 151645 in again and 7 not in again  # <|im_end|>
        assert calls[0] == model.tokenizer.n_vocab  # one scan for both
    finally:
        model.close()


@pytest.mark.model
def test_a_start_cancelled_while_loading_is_stopped_and_freed_by_aclose(
        calls: dict[str, list[Any]]) -> None:
    engine = LlamaCppEngine(_settings(), default_model_path(Settings().data_dir, progress=False))

    async def run() -> None:
        starting = asyncio.create_task(engine.start())
        # Until the engine thread is inside llama_model_load_from_file (set on that thread).
        while not calls["load"]:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await engine.aclose()

    asyncio.run(run())
    [(load_thread, _, _)] = calls["load"]
    assert not load_thread.is_alive()
    assert not engine.state().loaded
    with pytest.raises(EngineFailure, match="not loaded"):
        engine.tokenizer  # noqa: B018
