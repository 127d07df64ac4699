#!/usr/bin/env bash
# Make sure a headless Chromium exists for the browser tests (tests/browser): do nothing if one
# is found ($CIRCUITD_CHROMIUM, `chromium` or `chromium-browser`), else install Debian's
# `chromium` package when root with apt-get. Playwright's own browser download is not used:
# its server is unreachable on the build machines, so the tests launch this binary instead.
set -euo pipefail

found() {
    if [[ -n "${CIRCUITD_CHROMIUM:-}" ]]; then
        [[ -x "$CIRCUITD_CHROMIUM" ]] || command -v "$CIRCUITD_CHROMIUM" >/dev/null 2>&1
        return
    fi
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if found; then
    exit 0
fi
if [[ -n "${CIRCUITD_CHROMIUM:-}" ]]; then
    echo "ensure-chromium: CIRCUITD_CHROMIUM=$CIRCUITD_CHROMIUM is not an executable" >&2
    exit 1
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    # apt and debconf chatter goes to a log that is shown only if the install fails.
    log="$(mktemp)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
        cat "$log" >&2
    fi
    rm -f "$log"
fi
if found; then
    exit 0
fi
echo "ensure-chromium: no chromium binary (chromium, chromium-browser or \$CIRCUITD_CHROMIUM) and it could not be installed with apt-get (needs root)" >&2
exit 1
