#!/usr/bin/env bash
# Retakes the console's screenshots in docs/console/ (every page at 1280 and 390 px) by running
# its browser tests, which take them: scripts/console_screenshots.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh test
SEEKSERVE_CONSOLE_SCREENSHOTS="$PWD/docs/console" \
    exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_console_browser.py "$@"
