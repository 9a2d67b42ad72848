#!/usr/bin/env bash
# Prints the CMAKE_ARGS for building llama-cpp-python on the CPU this runs on.
# GGML_NATIVE=OFF with each SIMD level turned on only where /proc/cpuinfo reports it; the AMX
# kernels stay off everywhere: their repack path crashes llama_decode on AMX-capable Xeons
# (see shared/DESIGN.md), and we do not turn them on until that is understood.
set -euo pipefail
flags=" $(grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { [[ "$flags" == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
args+=" -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2) -DGGML_FMA=$(onoff fma) -DGGML_F16C=$(onoff f16c)"
args+=" -DGGML_BMI2=$(onoff bmi2)"
args+=" -DGGML_AVX512=$(onoff avx512f) -DGGML_AVX512_VBMI=$(onoff avx512_vbmi)"
args+=" -DGGML_AVX512_VNNI=$(onoff avx512_vnni) -DGGML_AVX512_BF16=$(onoff avx512_bf16)"
args+=" -DGGML_AVX_VNNI=$(onoff avx_vnni)"
args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
echo "$args"
