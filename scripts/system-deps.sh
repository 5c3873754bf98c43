#!/bin/sh
# System packages some tests need (a real Prometheus server scraping the agent and promtool for the
# alert rules, Chromium for the showback page, PostgreSQL for the lake's catalog).
# Idempotent and quiet: installs only what is missing, and only where it can
# (root with apt-get, e.g. CI). Elsewhere it says what is missing and exits 0:
# those tests then skip with the reason (or fail under CI=true).
set -eu

missing=""
# Debian's prometheus package ships promtool too (tests/deploy/test_alerts.py: the alert rules' unit tests).
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing="$missing prometheus"
# Headless browser for the built-in page test (tests/web), driven by Playwright.
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
# PostgreSQL's server binaries (initdb, pg_ctl) for the lake store's catalog tests (tests/support/postgres.py
# starts its own throwaway cluster; Debian keeps them under /usr/lib/postgresql/<major>/bin, off PATH).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing="$missing postgresql"

[ -z "$missing" ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing$missing (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    # --no-install-recommends: the server binary only, no node-exporter etc.
    apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
        || echo "system-deps: apt-get install$missing failed; tests needing them will skip (fail under CI=true)"
    # The Debian package may start a system service; the tests run their own.
    (systemctl stop prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true)
    (systemctl stop postgresql >/dev/null 2>&1 || service postgresql stop >/dev/null 2>&1 || true)
else
    echo "system-deps: missing$missing (not root with apt-get; tests needing them will skip)"
fi
