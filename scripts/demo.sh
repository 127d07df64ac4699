#!/usr/bin/env bash
# `make demo`: the whole service on this machine, used over HTTP.
#   1. `circuitd up` (API + one Celery worker, embedded SQLite store and SQLite broker, auth on)
#      on a free port with a fresh data dir, so runs never collide and no Redis is needed;
#   2. wait until GET /readyz answers 200;
#   3. submit a zoo:synth IOI job (EAP-IG, top 150 edges), watch it, download its circuit,
#      print the circuit's summary;
#   4. stop the service and delete the data dir, also on failure or Ctrl-C.
# Environment: BIN (the venv's bin, default .venv/bin), DEMO_PORT (a fixed port; default: a
# free one), DEMO_OUT (the circuit file, default demo-circuit.json), DEMO_READY_TIMEOUT (s, 120).
set -euo pipefail

BIN="${BIN:-.venv/bin}"
OUT="${DEMO_OUT:-demo-circuit.json}"
READY_TIMEOUT="${DEMO_READY_TIMEOUT:-120}"
HOST=127.0.0.1
PY="$BIN/python"
CIRCUITD="$BIN/circuitd"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[[ -x "$CIRCUITD" ]] || die "$CIRCUITD not found: run 'make install' first"

# Self-contained: ignore a store, broker, key or URL set for another deployment.
unset DATABASE_URL CIRCUITD_DATABASE_URL BROKER_URL CIRCUITD_BROKER_URL CIRCUITD_AUTH_DISABLED \
      CIRCUITD_API_KEY CIRCUITD_URL

port_free() {
    "$PY" -c 'import socket, sys
s = socket.socket()
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)' "$HOST" "$1"
}

if [[ -n "${DEMO_PORT:-}" ]]; then
    PORT="$DEMO_PORT"
    port_free "$PORT" || die "port $PORT on $HOST is taken: choose another DEMO_PORT or leave it unset"
else
    PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
URL="http://$HOST:$PORT"

DATA="$(mktemp -d "${TMPDIR:-/tmp}/circuitd-demo.XXXXXX")"
LOG="$DATA/up.log"
UP_PID=""
STATUS=1

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
        step "stopping the service (pid $UP_PID)"
        kill -TERM "$UP_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do  # `up` gives its worker --grace 10 s, then kills it
            kill -0 "$UP_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$UP_PID" 2>/dev/null; then
            kill -KILL -- "-$UP_PID" 2>/dev/null || kill -KILL "$UP_PID" 2>/dev/null || true
        fi
        wait "$UP_PID" 2>/dev/null || true
        echo "service stopped"
    fi
    if [[ "$STATUS" != 0 && -f "$LOG" ]]; then
        echo "--- last lines of the service log ($LOG) ---" >&2
        tail -n 40 "$LOG" >&2 || true
    fi
    rm -rf "$DATA"
    if [[ "$STATUS" != 0 && "$code" == 0 ]]; then
        code=1
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

step "starting the service: circuitd up --port $PORT --data-dir $DATA"
# Its own session (where setsid exists), so the cleanup can kill the whole group if need be;
# Ctrl-C reaches it through the trap above.
LAUNCH=()
command -v setsid >/dev/null 2>&1 && LAUNCH=(setsid)
${LAUNCH[@]+"${LAUNCH[@]}"} "$CIRCUITD" up --host "$HOST" --port "$PORT" --data-dir "$DATA" --loglevel WARNING \
    --grace 10 >"$LOG" 2>&1 &
UP_PID=$!

ready() {
    "$PY" -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)' "$URL/readyz"
}

deadline=$((SECONDS + READY_TIMEOUT))
until ready; do
    kill -0 "$UP_PID" 2>/dev/null || die "circuitd up exited before $URL/readyz answered"
    ((SECONDS < deadline)) || die "$URL/readyz did not answer within $READY_TIMEOUT s"
    sleep 0.5
done
echo "service ready at $URL (GET /readyz: 200; store and broker are SQLite files in $DATA)"

KEY_FILE="$DATA/api-key"
[[ -s "$KEY_FILE" ]] || die "circuitd up saved no API key in $KEY_FILE"
CIRCUITD_API_KEY="$(<"$KEY_FILE")"
export CIRCUITD_URL="$URL" CIRCUITD_API_KEY
echo "API key: the one 'circuitd up' created (saved in $KEY_FILE)"

SPEC="$DATA/spec.json"
printf '%s\n' '{"model": "zoo:synth", "task": "ioi", "method": "eap-ig", "top_n": 150}' >"$SPEC"
step "submitting the job (POST $URL/v1/jobs): $(<"$SPEC")"
JOB="$("$CIRCUITD" submit "$SPEC")"
echo "submitted job $JOB"

step "watching job $JOB (GET $URL/v1/jobs/$JOB)"
"$CIRCUITD" status "$JOB" --watch --interval 0.5 || die "job $JOB did not succeed"

step "downloading the circuit (GET $URL/v1/jobs/$JOB/graph)"
"$CIRCUITD" download "$JOB" -o "$OUT"

step "summary of $OUT (the circuit job $JOB computed in the service)"
"$CIRCUITD" summary "$OUT"
STATUS=0
