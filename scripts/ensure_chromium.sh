#!/usr/bin/env bash
# Headless Chromium for tests/test_browser.py: Debian's `chromium` package, installed when missing.
# The browser test fails (never skips) without it, so `make test` calls this first. Exits non-zero
# with the reason when Chromium is missing and cannot be installed here.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
fail() {
    echo "ensure_chromium: $*" >&2
    echo "ensure_chromium: install Debian's chromium package (apt-get install chromium) and run again" >&2
    exit 1
}
command -v apt-get >/dev/null 2>&1 || fail "chromium is missing and there is no apt-get to install it with"
[ "$(id -u)" = 0 ] || fail "chromium is missing and installing it needs root"
echo "ensure_chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || fail "apt-get update failed"
apt-get install -y -qq chromium >/dev/null || fail "apt-get install chromium failed"
command -v chromium >/dev/null 2>&1 || fail "apt-get installed chromium but there is no chromium command"
chromium --version
