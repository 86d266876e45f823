#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the console's browser test
# (tests/system/test_console.py), which drives them through Playwright: Playwright's own
# browser download cannot be relied on. `make test` runs this; nothing else needs a browser.
set -euo pipefail

# Installed only when missing.
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "install-browser: chromium is present ($(command -v chromium))"
elif [ "${SKIP_CHROMIUM:-}" = 1 ]; then
    echo "install-browser: SKIP_CHROMIUM=1: no chromium; tests/system/test_console.py will fail" >&2
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium chromium-driver
else
    echo "install-browser: chromium and chromium-driver are missing and this is not root on a Debian-like" >&2
    echo "install-browser: system, so they cannot be installed here. Install them (Debian/Ubuntu:" >&2
    echo "install-browser: sudo apt-get install -y --no-install-recommends chromium chromium-driver)," >&2
    echo "install-browser: or run with SKIP_CHROMIUM=1 to test without the console's browser test." >&2
    exit 1
fi

