#!/usr/bin/env bash
# Updates the locks of tested versions that scripts/install.sh installs by default:
#   scripts/lock.sh              add or drop what pyproject.toml's changes need, keep every
#                                other pin as it is
#   scripts/lock.sh --upgrade    re-resolve everything to the newest versions pyproject allows
#                                (then run the whole suite on them before committing)
#
# requirements/lock.txt holds seekserve[embedded], requirements/lock-test.txt
# seekserve[embedded,test]: one resolution for every platform and Python >= 3.11 (uv's
# --universal), so a user's install gets what CI tested. llama-cpp-python's metadata is read
# from the wheel scripts/install.sh built (run it first); nothing is compiled here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ -x .venv/bin/python ]] || { echo "lock.sh: run scripts/install.sh first" >&2; exit 1; }
UV_VERSION=0.13.9
if [[ "$(.venv/bin/uv --version 2>/dev/null || true)" != "uv $UV_VERSION"* ]]; then
    .venv/bin/python -m pip install --quiet "uv==$UV_VERSION"
fi

links=()
for dir in "${XDG_CACHE_HOME:-$HOME/.cache}"/seekserve/wheels/llama-cpp-python-*/; do
    [[ -d "$dir" ]] && links+=(--find-links "$dir")
done

mkdir -p requirements
for extras in embedded embedded,test; do
    out=requirements/lock.txt
    [[ "$extras" == embedded ]] || out="requirements/lock-${extras#embedded,}.txt"
    # uv keeps the pins of the file it writes (unless --upgrade): start from the lock.
    if [[ -f "$out" ]]; then cp "$out" "$out.new"; else rm -f "$out.new"; fi
    args=()
    for extra in ${extras//,/ }; do args+=(--extra "$extra"); done
    UV_CUSTOM_COMPILE_COMMAND="scripts/lock.sh" .venv/bin/uv pip compile pyproject.toml \
        "${args[@]}" --universal --python-version 3.11 --no-header --quiet \
        "${links[@]}" "$@" -o "$out.new"
    {
        echo "# The versions seekserve[$extras] was tested with; scripts/install.sh installs"
        echo "# them (as pip constraints). Update with scripts/lock.sh (see there); do not edit."
        cat "$out.new"
    } >"$out"
    rm -f "$out.new"
    echo "wrote $out ($(grep -c '^[A-Za-z0-9]' "$out") packages)"
done
