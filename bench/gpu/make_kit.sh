#!/usr/bin/env bash
# Builds .gpu/ (git-ignored, under 64 MiB): what a GPU machine without a package index needs to
# build llama.cpp with CUDA and run bench/gpu/device_run.sh. Run from the repo root after
# scripts/install.sh (the venv and the default model are there). The rest travels with the
# checkout (seekserve/, bench/, scripts/).
#
#   .gpu/whl/       Python 3.12 manylinux wheels of seekserve's and llama-cpp-python's runtime
#                   dependencies, at the versions this venv resolved (what the tests ran with),
#                   but numpy (the device image's)
#   .gpu/lcpp.tgz   llama.cpp's source from the llama-cpp-python sdist, docs/tests/models removed
#   .gpu/py/llama_cpp  llama-cpp-python's pure-Python package (loads build/bin via
#                   LLAMA_CPP_LIB_PATH)
#   .gpu/gguf-py    gguf-py (writes the random-weight model)
#   .gpu/vocab/     the default model's metadata and tokenizer without tensors + tensor manifest
#
# Method and earlier numbers: shared/gpu/README.md of the project's shared notes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
K=.gpu
V=0.3.36
SD=${SDIST_DIR:-/tmp/gpu-sd}
PY=.venv/bin/python
model=$("$PY" -c 'from seekserve.app import default_model_path; from seekserve.settings import Settings; print(default_model_path(Settings().data_dir, progress=False))')

# --- wheels: the closure of seekserve's requirements, as installed here ---------------------
pins=$("$PY" - <<'PY'
import importlib.metadata as md
import re

from packaging.requirements import Requirement

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

seen: dict[str, str] = {}

def walk(name: str, extras: tuple[str, ...] = ()) -> None:
    dist = md.distribution(name)
    seen[norm(name)] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": e, "python_version": "3.12"})
                for e in ("", *extras)):
            continue
        if norm(req.name) in seen and not req.extras:
            continue
        try:
            walk(req.name, tuple(req.extras))
        except md.PackageNotFoundError:
            pass  # an optional dependency not installed here

walk("seekserve")
walk("llama-cpp-python")  # its Python package's own imports (diskcache, jinja2, numpy)
seen.pop("seekserve")
seen.pop("llama-cpp-python")
# Left to the device's image (a PyTorch image has numpy; device_run.sh checks): numpy is 16 MB of
# the 64 MiB a run may carry. uvicorn[standard]'s file watcher and websockets are not used.
for provided in ("numpy", "watchfiles", "websockets"):
    seen.pop(provided, None)
print("\n".join(f"{k}=={v}" for k, v in sorted(seen.items())))
PY
)
rm -rf $K/whl && mkdir -p $K/whl
PLAT=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 any; do
    PLAT+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLAT[@]}" -d $K/whl $pins

# --- llama.cpp's source and llama-cpp-python's Python package ---------------------------------
mkdir -p "$SD"
[[ -f "$SD/llama_cpp_python-$V.tar.gz" ]] ||
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$SD" "llama-cpp-python==$V"
rm -rf "$SD/src" && mkdir -p "$SD/src" && tar xzf "$SD/llama_cpp_python-$V.tar.gz" -C "$SD/src"
S="$SD/src/llama_cpp_python-$V"
rm -rf "$SD/lcpp" && cp -r "$S/vendor/llama.cpp" "$SD/lcpp"
(cd "$SD/lcpp" && rm -rf models docs media benches tests examples pocs .github &&
    mkdir -p examples tests && touch examples/CMakeLists.txt)
tar czf $K/lcpp.tgz -C "$SD" lcpp
rm -rf $K/py $K/gguf-py $K/vocab && mkdir -p $K/py
cp -r "$S/llama_cpp" $K/py/llama_cpp
rm -rf $K/py/llama_cpp/lib $K/py/llama_cpp/server
cp -r "$SD/lcpp/gguf-py" $K/gguf-py
GGUF_PY=$PWD/$K/gguf-py "$PY" bench/gpu/make_model.py extract "$model" $K/vocab
find $K -name __pycache__ -prune -exec rm -rf {} +
echo "$(ls $K/whl | wc -l) wheels; kit: $(du -sh $K | cut -f1)"
