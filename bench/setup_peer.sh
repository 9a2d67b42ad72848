#!/usr/bin/env bash
# Creates bench/.venv-peer: llama-cpp-python's own OpenAI server on the same llama-cpp-python
# build as seekserve (the wheel scripts/install.sh cached), for bench/concurrent_vs_peer.py.
#
#   bash bench/setup_peer.sh [python]      # python: the interpreter for the venv (default python3)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peer"
python="${1:-python3}"
wheel_dir="${SEEKSERVE_WHEEL_CACHE:-$HOME/.cache/seekserve/wheels}"

shopt -s nullglob
wheels=("$wheel_dir"/*/llama_cpp_python-0.3.36-*.whl)
if [ "${#wheels[@]}" -eq 0 ]; then
    echo "setup_peer: no llama_cpp_python 0.3.36 wheel under $wheel_dir;" \
         "run scripts/install.sh first (it builds and caches one)" >&2
    exit 1
fi
# The newest one, if the cache holds several builds.
wheel="$(ls -t "${wheels[@]}" | head -n 1)"
echo "setup_peer: creating $venv with $wheel" >&2

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$wheel" sse-starlette starlette-context pydantic-settings \
    fastapi uvicorn pyyaml
"$venv/bin/python" -c "import llama_cpp.server.app, llama_cpp; print('setup_peer: ok,', \
llama_cpp.__version__)"
