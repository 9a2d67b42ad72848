#!/usr/bin/env bash
# Prints the CMAKE_ARGS for building llama-cpp-python on the machine this runs on, and says on
# stderr which backend it picked and why.
#
# CPU: GGML_NATIVE=OFF with each SIMD level turned on only where /proc/cpuinfo reports it; the AMX
# kernels stay off everywhere: their repack path crashes llama_decode on AMX-capable Xeons
# (see shared/DESIGN.md), and we do not turn them on until that is understood.
# CUDA: the same CPU flags plus CUDA for the GPUs present (`native` architectures) with the
# flash-attention kernels, picked when the CUDA toolkit (nvcc on PATH, or $CUDA_HOME/bin/nvcc)
# is installed AND nvidia-smi lists a GPU.
#
# SEEKSERVE_LLAMA_BACKEND=cpu|cuda forces the choice (cuda without a GPU present builds for
# SEEKSERVE_CUDA_ARCHITECTURES, which `native` cannot find then). The CPU output is byte-for-byte
# what it was before CUDA was an option: install.sh keys its wheel cache on it.
set -euo pipefail
flags=" $(grep -m1 -E '^flags' "${SEEKSERVE_CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2) "
has() { [[ "$flags" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
args+=" -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2) -DGGML_FMA=$(onoff fma) -DGGML_F16C=$(onoff f16c)"
args+=" -DGGML_BMI2=$(onoff bmi2)"
args+=" -DGGML_AVX512=$(onoff avx512f) -DGGML_AVX512_VBMI=$(onoff avx512_vbmi)"
args+=" -DGGML_AVX512_VNNI=$(onoff avx512_vnni) -DGGML_AVX512_BF16=$(onoff avx512_bf16)"
args+=" -DGGML_AVX_VNNI=$(onoff avx_vnni)"
args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

nvcc=""
if command -v nvcc >/dev/null; then
    nvcc="$(command -v nvcc)"
elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    nvcc="$CUDA_HOME/bin/nvcc"
fi
gpus=0
if command -v nvidia-smi >/dev/null; then
    gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
fi

backend="${SEEKSERVE_LLAMA_BACKEND:-auto}"
case "$backend" in
auto)
    if [[ -n "$nvcc" && "$gpus" -gt 0 ]]; then
        backend=cuda
        why="nvcc at $nvcc and $gpus GPU(s) listed by nvidia-smi"
    else
        backend=cpu
        why="$([[ -n "$nvcc" ]] && echo "nvcc found but nvidia-smi lists no GPU" ||
            echo "no CUDA toolkit (nvcc on PATH or \$CUDA_HOME/bin/nvcc)")"
    fi
    ;;
cpu | cuda) why="SEEKSERVE_LLAMA_BACKEND=$backend" ;;
*)
    echo "llama_cmake_args.sh: SEEKSERVE_LLAMA_BACKEND must be cpu or cuda, not '$backend'" >&2
    exit 2
    ;;
esac

if [[ "$backend" == cuda ]]; then
    [[ -n "$nvcc" ]] || {
        echo "llama_cmake_args.sh: SEEKSERVE_LLAMA_BACKEND=cuda but no nvcc on PATH or in" \
            "\$CUDA_HOME/bin" >&2
        exit 2
    }
    archs="${SEEKSERVE_CUDA_ARCHITECTURES:-native}"
    if [[ "$archs" == native && "$gpus" -eq 0 ]]; then
        echo "llama_cmake_args.sh: no GPU is listed, so 'native' CUDA architectures cannot be" \
            "found; set SEEKSERVE_CUDA_ARCHITECTURES (e.g. 90 for H100/H200)" >&2
        exit 2
    fi
    args+=" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$archs -DGGML_CUDA_FA=ON"
    args+=" -DCMAKE_CUDA_COMPILER=$nvcc"
fi
echo "llama.cpp backend: $backend ($why); SEEKSERVE_LLAMA_BACKEND=cpu|cuda overrides" >&2
echo "$args"
