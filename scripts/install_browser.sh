#!/usr/bin/env bash
# Installs Debian's Chromium (and its driver) for the console's browser tests when it is missing:
#   scripts/install_browser.sh
# Needs root and apt-get (CI has both). Elsewhere it says what to do and exits 0: the browser
# tests are then skipped with the same instructions, never passed silently.
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
        || [[ -n "${SEEKSERVE_CHROMIUM:-}" ]]; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: Chromium is missing and this is not root with apt-get; the" \
        "console's browser tests will be skipped (install: apt-get install -y chromium" \
        "chromium-driver)" >&2
    exit 0
fi
echo "Installing Chromium for the console's browser tests (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium \
        chromium-driver >/dev/null; }; then
    echo "install_browser.sh: apt-get could not install chromium; the console's browser" \
        "tests will be skipped" >&2
fi
