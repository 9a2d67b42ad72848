#!/usr/bin/env bash
# Creates bench/.venv-litellm: LiteLLM's proxy, the peer of bench/gateway_overhead.py.
#
#   bash bench/setup_litellm.sh [python] [version]
#
# python: the interpreter for the venv (default python3); version: the litellm release to
# install (default: the one bench/RESULTS.md was measured with; `latest` takes PyPI's newest).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-litellm"
python="${1:-python3}"
version="${2:-1.106.2}"

if [ "$version" = "latest" ]; then
    spec="litellm[proxy]"
else
    spec="litellm[proxy]==$version"
fi
echo "setup_litellm: creating $venv with $spec" >&2

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# prometheus_client: its `prometheus` callback (the metrics seekserve always has) needs it.
"$venv/bin/pip" install --quiet "$spec" prometheus_client==0.26.0
"$venv/bin/python" -c "from importlib.metadata import version; \
print('setup_litellm: ok, litellm', version('litellm'))"
"$venv/bin/litellm" --help >/dev/null
