#!/usr/bin/env bash
# Installs what is missing (scripts/install.sh), then runs the server:
#   scripts/serve.sh [seekserve serve args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec .venv/bin/seekserve serve "$@"
