"""The compute devices this llama.cpp build has (ggml's backend registry), and where a model's
layers go: what the engine offloads to and what /ready and the start banner report."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Literal

import llama_cpp as lc
import llama_cpp.llama_cpp as lc_lib

SplitMode = Literal["none", "layer", "row"]
SPLIT_MODES: dict[SplitMode, int] = {
    "none": lc.LLAMA_SPLIT_MODE_NONE,
    "layer": lc.LLAMA_SPLIT_MODE_LAYER,
    "row": lc.LLAMA_SPLIT_MODE_ROW,
}
# enum ggml_backend_dev_type
_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    name: str  # ggml's device name: CPU, CUDA0, Vulkan1
    description: str  # what the driver calls it: NVIDIA H200
    backend: str  # the backend that drives it: CPU, CUDA, Vulkan, Metal
    kind: str  # cpu, gpu, igpu, accel
    memory_total: int  # bytes; 0 when the backend does not say

    @property
    def offloads(self) -> bool:
        """Layers can be placed on it (llama.cpp offloads to GPUs and integrated GPUs)."""
        return self.kind in ("gpu", "igpu")

    def __str__(self) -> str:
        memory = f", {self.memory_total / 2**30:.0f} GiB" if self.memory_total else ""
        return f"{self.name} ({self.description}{memory})"


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    # ggml's functions are resolved through libllama's handle, which also finds the symbols of
    # the libraries it links (libggml, libggml-base): no second load of a library that
    # llama_cpp found under LLAMA_CPP_LIB_PATH or its own lib/ folder.
    fn = getattr(lc_lib._lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_dev_count = _bind("ggml_backend_dev_count", ctypes.c_size_t)
_dev_get = _bind("ggml_backend_dev_get", ctypes.c_void_p, ctypes.c_size_t)
_dev_name = _bind("ggml_backend_dev_name", ctypes.c_char_p, ctypes.c_void_p)
_dev_description = _bind("ggml_backend_dev_description", ctypes.c_char_p, ctypes.c_void_p)
_dev_type = _bind("ggml_backend_dev_type", ctypes.c_int, ctypes.c_void_p)
_dev_memory = _bind("ggml_backend_dev_memory", None, ctypes.c_void_p,
                    ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
_dev_reg = _bind("ggml_backend_dev_backend_reg", ctypes.c_void_p, ctypes.c_void_p)
_reg_name = _bind("ggml_backend_reg_name", ctypes.c_char_p, ctypes.c_void_p)


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def devices() -> list[Device]:
    """Every device ggml registered, in its order (GPUs first, then the CPU)."""
    lc.llama_backend_init()  # registers the backends built in (idempotent)
    found = []
    for i in range(_dev_count()):
        dev = _dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(
            name=_text(_dev_name(dev)),
            description=_text(_dev_description(dev)),
            backend=_text(_reg_name(_dev_reg(dev))),
            kind=_KINDS.get(_dev_type(dev), "other"),
            memory_total=int(total.value),
        ))
    return found


def gpus() -> list[Device]:
    """The devices llama.cpp can offload layers to, indexed as `main_gpu` counts them."""
    if not lc.llama_supports_gpu_offload():
        return []
    return [d for d in devices() if d.offloads]


@dataclass(frozen=True)
class Placement:
    """Where a loaded model's layers are: what the engine reports."""

    backend: str  # CUDA, or CPU when nothing is offloaded
    devices: tuple[str, ...]  # the devices holding layers, as Device.__str__ shows them
    gpu_layers: int  # layers offloaded (llama.cpp counts the output layer as one)
    layers: int  # the model's repeating layers + the output layer

    def __str__(self) -> str:
        where = ", ".join(self.devices)
        if not self.gpu_layers:
            return where
        return f"{where} with {self.backend}, {self.gpu_layers}/{self.layers} layers offloaded"


def gpu_layers_wanted(setting: int | None, available: list[Device]) -> int:
    """llama.cpp's n_gpu_layers for a setting: unset means all layers when a GPU is there."""
    if setting is not None:
        return setting if available else 0
    return -1 if available else 0  # llama.cpp reads a negative count as all layers


def placement(n_layer: int, n_gpu_layers: int, main_gpu: int, split_mode: SplitMode,
              available: list[Device]) -> Placement:
    layers = n_layer + 1
    offloaded = layers if n_gpu_layers < 0 else min(n_gpu_layers, layers)
    if not available or offloaded == 0:
        cpu = [str(d) for d in devices() if d.kind == "cpu"]
        return Placement("CPU", tuple(cpu[:1] or ["CPU"]), 0, layers)
    used = [available[main_gpu]] if split_mode == "none" or len(available) == 1 else available
    backends = sorted({d.backend for d in used})
    return Placement("+".join(backends), tuple(str(d) for d in used), offloaded, layers)
