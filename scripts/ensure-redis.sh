#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 (REDIS_HOST/REDIS_PORT override) for the service
# tests: do nothing if one answers, else start redis-server in the background (installing it
# from Debian's packages if it is missing), then wait until it answers.
set -euo pipefail
HOST="${REDIS_HOST:-127.0.0.1}"
PORT="${REDIS_PORT:-6379}"

answers() {
    # Plain bash, so the check works without redis-cli.
    { exec 3<>"/dev/tcp/$HOST/$PORT"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    local line=""
    read -r -t 2 line <&3 || true
    exec 3<&- 3>&-
    [[ "$line" == +PONG* ]]
}

if answers; then
    exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "ensure-redis: nothing answers on $HOST:$PORT and redis-server is not installed" >&2
        exit 1
    fi
fi
redis-server --daemonize yes --bind "$HOST" --port "$PORT" --save '' --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/circuitd-redis-$PORT.log"
for _ in $(seq 50); do
    if answers; then
        echo "ensure-redis: started redis-server on $HOST:$PORT" >&2
        exit 0
    fi
    sleep 0.2
done
echo "ensure-redis: redis-server did not answer on $HOST:$PORT" >&2
exit 1
