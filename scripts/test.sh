#!/usr/bin/env bash
# Installs what is missing, with the test extra (scripts/install.sh test), then runs the tests:
#   scripts/test.sh [pytest args...]        (pytest settings live in pyproject.toml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
