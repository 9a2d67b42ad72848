#!/usr/bin/env bash
# Issue 15's measurements on a GPU machine that has no package index. Run from the repo root
# with .gpu/ carried (bench/gpu/make_kit.sh made it on a machine with an index):
#
#   bash bench/gpu/device_run.sh [build|model|probe|bench|all]      (default: all)
#
#   build  install the kit's wheels into .gpu-work/site; build llama.cpp from .gpu/lcpp.tgz
#          with the CMake arguments scripts/llama_cmake_args.sh picks (CUDA when nvcc and a GPU
#          are there), shared libraries + llama-server + llama-batched-bench
#   model  the random-weight model with the default model's shapes (bench/gpu/make_model.py)
#   probe  bench/gpu/load_probe.py: the load on the main thread, on default and 2 MiB thread
#          stacks, and through the engine (the crash of issue 15)
#   bench  bench/gpu_throughput.py (seekserve, llama-server -np 64, llama-batched-bench) at
#          $STREAMS streams, $TOKENS tokens each; then bench/step_overhead.py --engine and
#          bench/http_ceiling.py (the app over an engine that costs nothing)
#
# Everything it makes is under .gpu-work/ (git-ignored; kept between calls on a warm machine, so
# `build` in one call and `probe bench` in the next works); results and logs go to $OUT
# (default .gpu-work/out), each file written as soon as its step ends.
# Knobs: STREAMS=1,8,32,64 TOKENS=128 ROUNDS=2 STEP_TOKENS=64 PYTHON=python3 JOBS=$(nproc)
#        MODEL=path (skip `model`), LLAMA_LIB_DIR=dir with libllama.so (skip `build`: a CPU
#        dry run uses the venv's llama_cpp/lib), SEEKSERVE_LLAMA_BACKEND=cpu|cuda.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
K=.gpu
W=${GPU_WORK:-$PWD/.gpu-work}
OUT=${OUT:-$W/out}
PYTHON=${PYTHON:-python3}
STREAMS=${STREAMS:-1,8,32,64}
TOKENS=${TOKENS:-128}
ROUNDS=${ROUNDS:-2}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/device_run.log") 2>&1
step() { echo "== $(date -u +%T) $*"; }
fail() {
    echo "device_run.sh: $*" >&2
    exit 1
}
[[ -d $K/whl ]] || fail "no $K/ here: run bench/gpu/make_kit.sh on a machine with a package index, carry $K"

BUILD=$W/build
LIB_DIR=${LLAMA_LIB_DIR:-$BUILD/bin}
MODEL=${MODEL:-$W/model.gguf}
export PYTHONPATH=$PWD:$W/site:$PWD/$K/py${PYTHONPATH:+:$PYTHONPATH}
export LLAMA_CPP_LIB_PATH=$LIB_DIR
export SEEKSERVE_DATA_DIR=$W/data

do_build() {
    step "python packages"
    "$PYTHON" --version
    if [[ ! -f $W/site/.done ]]; then
        if "$PYTHON" -m pip install -q --no-index --no-deps --target "$W/site" $K/whl/*.whl; then
            touch "$W/site/.done"
        elif "$PYTHON" -c 'import fastapi, llguidance, uvicorn, pydantic_core' 2>/dev/null; then
            echo "the kit's wheels are for CPython 3.12; using $PYTHON's own packages"
            rm -rf "$W/site"
        else
            fail "pip could not install the kit's wheels (they are for CPython 3.12)"
        fi
    fi
    "$PYTHON" -c 'import numpy; print("numpy", numpy.__version__)' ||
        fail "numpy is missing (the kit leaves it to the image): copy in a numpy wheel"
    if [[ -n ${LLAMA_LIB_DIR:-} ]]; then
        echo "using llama.cpp libraries in $LLAMA_LIB_DIR (no build)"
        return
    fi
    step "llama.cpp build"
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || true
    if ! command -v nvcc >/dev/null && [[ -z ${CUDA_HOME:-} && -x /usr/local/cuda/bin/nvcc ]]; then
        export CUDA_HOME=/usr/local/cuda # the toolkit is there, off PATH
    fi
    "$(command -v nvcc || echo "${CUDA_HOME:-/nonexistent}/bin/nvcc")" --version | tail -1 || true
    args=$(bash scripts/llama_cmake_args.sh) || fail "no CMake arguments"
    echo "CMAKE_ARGS=$args" | tee "$OUT/cmake_args.txt"
    if [[ ! -x $BUILD/bin/llama-server || "$(cat "$BUILD/.args" 2>/dev/null)" != "$args" ]]; then
        rm -rf "$W/lcpp" "$BUILD"
        tar xzf $K/lcpp.tgz -C "$W"
        gen=()
        command -v ninja >/dev/null && gen=(-G Ninja)
        # shellcheck disable=SC2086  # $args is a list of -D flags
        cmake -S "$W/lcpp" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release $args \
            -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
            -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF >"$OUT/cmake_configure.log" 2>&1 ||
            { tail -30 "$OUT/cmake_configure.log"; fail "cmake configure failed"; }
        time cmake --build "$BUILD" -j "$JOBS" --target llama llama-server llama-batched-bench \
            >"$OUT/cmake_build.log" 2>&1 ||
            { tail -40 "$OUT/cmake_build.log"; fail "llama.cpp build failed"; }
        echo "$args" >"$BUILD/.args"
    fi
    ls "$BUILD/bin" | head -30
}

do_model() {
    if [[ -f $MODEL ]]; then
        echo "model: $MODEL ($(du -h "$MODEL" | cut -f1))"
        return
    fi
    step "random-weight model"
    GGUF_PY=$PWD/$K/gguf-py "$PYTHON" bench/gpu/make_model.py build $K/vocab "$MODEL" ||
        fail "could not make the model"
}

do_probe() {
    step "load probe"
    "$PYTHON" -c 'import llama_cpp, seekserve.engines.llamacpp.devices as d
print("gpu offload:", llama_cpp.llama_supports_gpu_offload())
for dev in d.devices(): print(" ", dev, dev.backend, dev.kind)' | tee "$OUT/devices.txt"
    "$PYTHON" bench/gpu/load_probe.py "$MODEL" | tee "$OUT/load_probe.txt"
}

do_bench() {
    # The table first: on a lent machine whose time may run out it matters most.
    step "throughput"
    extra=()
    [[ -x $BUILD/bin/llama-server ]] && extra+=(--llama-server "$BUILD/bin/llama-server")
    [[ -x $BUILD/bin/llama-batched-bench ]] &&
        extra+=(--batched-bench "$BUILD/bin/llama-batched-bench")
    "$PYTHON" bench/gpu_throughput.py --model-path "$MODEL" --streams "$STREAMS" \
        --tokens "$TOKENS" --rounds "$ROUNDS" --json "$OUT/throughput.json" \
        --keep-server-log "${extra[@]}" | tee "$OUT/throughput.md"
    cp /tmp/seekserve-gpu-*/*.log "$OUT/" 2>/dev/null || true
    step "step overhead"
    timeout 300 "$PYTHON" bench/step_overhead.py --engine --model "$MODEL" --streams "$STREAMS" \
        --tokens "${STEP_TOKENS:-64}" --steps 5 | tee "$OUT/step_overhead.md"
    step "HTTP ceiling (no engine cost)"
    timeout 300 "$PYTHON" bench/http_ceiling.py --streams "$STREAMS" --tokens "$TOKENS" |
        tee "$OUT/http_ceiling.md"
}

phases=("$@")
[[ ${#phases[@]} -eq 0 || ${phases[0]} == all ]] && phases=(build model probe bench)
for phase in "${phases[@]}"; do
    case $phase in
    build) do_build ;;
    model) do_model ;;
    probe) do_probe ;;
    bench) do_bench ;;
    *) fail "unknown phase $phase (build, model, probe, bench, all)" ;;
    esac
done
step "done; results in $OUT"
