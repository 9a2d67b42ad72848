"""scripts/llama_cmake_args.sh: CUDA when the toolkit and a GPU are present, the CPU flags
otherwise (unchanged, so the cached CPU wheel keeps its key), and the override."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama_cmake_args.sh"
# The flags of the 2-core build machine whose CPU wheel is cached as ...-e801dca9317e.
CPU_FLAGS = "flags\t\t: fpu fma avx f16c avx2 bmi2 avx512f avx_vnni avx512_bf16 avx512_vnni\n"
CPU_KEY = "e801dca9317e"


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, Path]:
    """A bin dir for stub tools (nothing else of the host's on PATH) and a fake cpuinfo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "grep", "cut", "cat"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True, check=True).stdout.strip()
        (bin_dir / tool).symlink_to(real)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPU_FLAGS)
    return {"bin": bin_dir, "cpuinfo": cpuinfo, "root": tmp_path}


def _stub(bin_dir: Path, name: str, output: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\n")
    path.chmod(0o755)


def _run(machine: dict[str, Path], **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": str(machine["bin"]), "SEEKSERVE_CPUINFO": str(machine["cpuinfo"]),
            "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([str(machine["bin"] / "bash"), str(SCRIPT)], env=base | env,
                          capture_output=True, text=True)


def _key(args: str) -> str:
    # install.sh hashes the output without its trailing newline ($(...) strips it).
    return hashlib.sha256(args.rstrip("\n").encode()).hexdigest()[:12]


def test_a_machine_without_cuda_gets_the_cpu_build_under_its_old_cache_key(
        machine: dict[str, Path]) -> None:
    result = _run(machine)
    assert result.returncode == 0, result.stderr
    assert "GGML_CUDA" not in result.stdout
    assert "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=OFF" in result.stdout
    assert _key(result.stdout) == CPU_KEY
    assert "llama.cpp backend: cpu (no CUDA toolkit" in result.stderr


def test_nvcc_and_a_listed_gpu_pick_cuda_for_the_native_architecture(
        machine: dict[str, Path]) -> None:
    _stub(machine["bin"], "nvcc", "")
    _stub(machine["bin"], "nvidia-smi", "GPU 0: NVIDIA H200 (UUID: GPU-0)\n")
    result = _run(machine)
    assert result.returncode == 0, result.stderr
    args = result.stdout.split()
    assert "-DGGML_CUDA=ON" in args
    assert "-DCMAKE_CUDA_ARCHITECTURES=native" in args
    assert "-DGGML_CUDA_FA=ON" in args
    assert f"-DCMAKE_CUDA_COMPILER={machine['bin'] / 'nvcc'}" in args
    assert _key(result.stdout) != CPU_KEY
    assert "llama.cpp backend: cuda (nvcc at" in result.stderr
    assert "1 GPU(s)" in result.stderr


def test_cuda_home_stands_for_nvcc_on_path(machine: dict[str, Path]) -> None:
    cuda_bin = machine["root"] / "cuda" / "bin"
    cuda_bin.mkdir(parents=True)
    _stub(cuda_bin, "nvcc", "")
    _stub(machine["bin"], "nvidia-smi", "GPU 0: NVIDIA H200 (UUID: GPU-0)\n")
    result = _run(machine, CUDA_HOME=str(machine["root"] / "cuda"))
    assert f"-DCMAKE_CUDA_COMPILER={cuda_bin / 'nvcc'}" in result.stdout.split()


def test_a_toolkit_without_a_gpu_stays_on_the_cpu(machine: dict[str, Path]) -> None:
    _stub(machine["bin"], "nvcc", "")
    _stub(machine["bin"], "nvidia-smi", "No devices were found\n")
    result = _run(machine)
    assert _key(result.stdout) == CPU_KEY
    assert "nvcc found but nvidia-smi lists no GPU" in result.stderr


def test_the_override_forces_cpu_on_a_gpu_machine(machine: dict[str, Path]) -> None:
    _stub(machine["bin"], "nvcc", "")
    _stub(machine["bin"], "nvidia-smi", "GPU 0: NVIDIA H200 (UUID: GPU-0)\n")
    result = _run(machine, SEEKSERVE_LLAMA_BACKEND="cpu")
    assert _key(result.stdout) == CPU_KEY
    assert "llama.cpp backend: cpu (SEEKSERVE_LLAMA_BACKEND=cpu)" in result.stderr


def test_forcing_cuda_without_a_gpu_needs_named_architectures(machine: dict[str, Path]) -> None:
    _stub(machine["bin"], "nvcc", "")
    refused = _run(machine, SEEKSERVE_LLAMA_BACKEND="cuda")
    assert refused.returncode == 2
    assert "SEEKSERVE_CUDA_ARCHITECTURES" in refused.stderr
    named = _run(machine, SEEKSERVE_LLAMA_BACKEND="cuda", SEEKSERVE_CUDA_ARCHITECTURES="90")
    assert named.returncode == 0, named.stderr
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in named.stdout.split()


def test_forcing_cuda_without_nvcc_and_a_bad_value_are_refused(machine: dict[str, Path]) -> None:
    no_nvcc = _run(machine, SEEKSERVE_LLAMA_BACKEND="cuda")
    assert no_nvcc.returncode == 2
    assert "no nvcc" in no_nvcc.stderr
    bad = _run(machine, SEEKSERVE_LLAMA_BACKEND="rocm")
    assert bad.returncode == 2
    assert "must be cpu or cuda, not 'rocm'" in bad.stderr
