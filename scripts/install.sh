#!/usr/bin/env bash
# Installs seekserve into .venv and fetches the default model: scripts/install.sh [extra]
#
#   1. .venv with python3 >= 3.11 (PYTHON=/path/to/python overrides the choice), pip upgraded
#      when the venv is created;
#   2. llama-cpp-python, built ONCE per (version, CMAKE_ARGS) from source with flags picked for
#      this machine by scripts/llama_cmake_args.sh (CUDA when the CUDA toolkit and a GPU are
#      present, else the CPU; SEEKSERVE_LLAMA_BACKEND=cpu|cuda overrides), into
#      ${XDG_CACHE_HOME:-~/.cache}/seekserve/wheels/llama-cpp-python-<ver>-<sha256(args)[:12]>/.
#      pip caches builds by version only and would happily reuse one made with other flags, so
#      the build never goes through pip's cache (--no-cache-dir) and never takes a prebuilt
#      wheel (--no-binary);
#   3. seekserve itself, editable, with the "embedded" extra (plus [extra], e.g. "test"), every
#      dependency at the version CI tested: requirements/lock.txt (lock-test.txt with "test")
#      as pip constraints. SEEKSERVE_NO_LOCK=1 resolves the newest versions pyproject.toml
#      allows instead; scripts/lock.sh updates the locks;
#   4. the default model, assembled into the data dir (`seekserve model pull`).
#
# Every step is skipped when already done, so a second run takes a second or two.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LLAMA_VERSION=0.3.36
extra="${1:-}"

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

[[ "$extra" =~ ^[A-Za-z0-9_,-]*$ ]] || die "bad extra '$extra' (expected e.g. 'test')"

# One install at a time per checkout (serve.sh and test.sh may start together): lock this file.
if command -v flock >/dev/null; then
    exec 9<"${BASH_SOURCE[0]}"
    flock 9
fi

py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

# --- 1. virtual environment -----------------------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
    python="${PYTHON:-}"
    if [[ -z "$python" ]]; then
        for candidate in python3 python3.13 python3.12 python3.11; do
            if command -v "$candidate" >/dev/null && py_ok "$candidate"; then
                python="$candidate"
                break
            fi
        done
    fi
    if [[ -z "$python" ]] || ! py_ok "$python"; then
        found="$("${python:-python3}" --version 2>&1 || echo "no ${python:-python3} on PATH")"
        die "seekserve needs Python >= 3.11 (found: $found). Install Python 3.11 or newer," \
            "or point PYTHON at one: PYTHON=/path/to/python3.12 $0"
    fi
    echo "Creating .venv with $python ($("$python" --version 2>&1))"
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        die "could not create .venv with $python (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
py_ok .venv/bin/python ||
    die ".venv has $(.venv/bin/python --version 2>&1) but seekserve needs >= 3.11; remove .venv" \
        "and run this again"
.venv/bin/python -m pip --version >/dev/null 2>&1 ||
    die ".venv has no working pip; remove .venv and run this again"

sha256_hex() { # of stdin
    .venv/bin/python -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# The tested versions, as constraints for every install below.
lock=requirements/lock.txt
[[ -z "$extra" ]] || lock="requirements/lock-${extra//,/-}.txt"
constraints=()
if [[ "${SEEKSERVE_NO_LOCK:-}" == 1 ]]; then
    lock=""
elif [[ -f "$lock" ]]; then
    constraints=(-c "$lock")
else
    echo "install.sh: warning: no $lock; installing the newest versions pyproject.toml allows" >&2
    lock=""
fi

# --- 2. llama-cpp-python, built for this machine --------------------------------------------------
cmake_args="$(bash scripts/llama_cmake_args.sh)" || die "no CMake arguments for llama.cpp (above)"
backend=cpu
[[ "$cmake_args" == *"-DGGML_CUDA=ON"* ]] && backend=cuda
key="$(printf '%s' "$cmake_args" | sha256_hex | cut -c1-12)"
wheel_id="llama-cpp-python-$LLAMA_VERSION-$key"
wheel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/seekserve/wheels/$wheel_id"
record=.venv/.seekserve-llama-wheel

installed_llama="$(.venv/bin/python -c \
    'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)"
recorded="$(cat "$record" 2>/dev/null || true)"
if [[ "$installed_llama" == "$LLAMA_VERSION" && "$recorded" == "$wheel_id" ]]; then
    echo "llama-cpp-python $LLAMA_VERSION already installed ($wheel_id, $backend)"
else
    find_wheel() {
        local matches=("$wheel_dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
        [[ -e "${matches[0]}" ]] && echo "${matches[0]}"
    }
    mkdir -p "$(dirname "$wheel_dir")"
    wheel="$(find_wheel || true)"
    if [[ -z "$wheel" ]]; then
        # Other checkouts share the wheel cache: one build per key at a time.
        if command -v flock >/dev/null; then
            exec 8>"$wheel_dir.lock"
            flock 8
        fi
        wheel="$(find_wheel || true)"
    fi
    if [[ -z "$wheel" ]]; then
        compiler=""
        for candidate in "${CXX:-}" c++ g++ clang++; do
            if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null; then
                compiler="$candidate"
                break
            fi
        done
        [[ -n "$compiler" ]] ||
            die "building llama-cpp-python needs a C/C++ compiler (Debian/Ubuntu:" \
                "apt-get install build-essential; macOS: xcode-select --install)"
        jobs="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
        echo "Building llama-cpp-python $LLAMA_VERSION from source for $backend with $jobs jobs."
        echo "This takes ~10 minutes the first time (longer with CUDA on few cores); the wheel" \
            "is kept in $wheel_dir"
        echo "CMAKE_ARGS=$cmake_args"
        tmp="$(mktemp -d "$wheel_dir.tmp.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
            .venv/bin/python -m pip wheel --no-deps --no-cache-dir \
            --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION" -w "$tmp"
        # Only a finished build lands in the keyed dir (a killed one leaves nothing there).
        mkdir -p "$wheel_dir"
        mv "$tmp"/llama_cpp_python-"$LLAMA_VERSION"-*.whl "$wheel_dir"/
        rm -rf "$tmp"
        trap - EXIT
        wheel="$(find_wheel)"
    fi
    echo "Installing $(basename "$wheel") ($wheel_id, $backend)"
    # --force-reinstall: the same version built with other flags may be installed already.
    .venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$wheel"
    .venv/bin/python -m pip install --quiet ${constraints[@]+"${constraints[@]}"} "$wheel" # its dependencies
    echo "$wheel_id" >"$record"
fi

# --- 3. seekserve -------------------------------------------------------------------------------
extras="embedded${extra:+,$extra}"
stamp=".venv/.seekserve-install-${extras//,/-}"
want="$(cat pyproject.toml ${lock:+"$lock"} | sha256_hex)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" || ! -x .venv/bin/seekserve ]]; then
    echo "Installing seekserve[$extras] (editable${lock:+, versions from $lock})"
    .venv/bin/python -m pip install --quiet --find-links "$wheel_dir" ${constraints[@]+"${constraints[@]}"} \
        -e ".[$extras]"
    echo "$want" >"$stamp"
else
    echo "seekserve[$extras] already installed"
fi

# --- 4. the default model -------------------------------------------------------------------------
.venv/bin/seekserve model pull
