#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl) are here for the tests' throwaway
# server (tests/pg.py). Looks where tests/pg.py looks: PATH, then /usr/lib/postgresql/*/bin.
# Missing, and root on Debian/Ubuntu: installs the `postgresql` package. Otherwise says how
# and exits 1. `--check` only looks, never installs.
set -euo pipefail

found() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
            return 0
        fi
    done
    return 1
}

howto="Install PostgreSQL's server (15 or newer): as root on Debian/Ubuntu, apt-get install -y postgresql; \
elsewhere, your system's PostgreSQL server package, with initdb and pg_ctl on PATH."

if found; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "PostgreSQL's initdb and pg_ctl are missing. $howto" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL's initdb and pg_ctl are missing, and this script installs them only as root with apt-get. $howto" >&2
    exit 1
fi
echo "Installing PostgreSQL (Debian package postgresql) for the tests' throwaway server..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
if ! found; then
    echo "apt-get installed postgresql, but initdb and pg_ctl are still not found. $howto" >&2
    exit 1
fi
