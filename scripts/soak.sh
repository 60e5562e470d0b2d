#!/usr/bin/env bash
# A bounded soak against a fresh service process: streams churning, steady writes, long polls.
# Prints RSS, open streams and delivered-versus-expected every minute, then checks exact delivery
# and that the gauges return to baseline.
#   DATABASE_URL=... scripts/soak.sh [seconds] [streams]      (defaults: 60 s, 200 streams)
# Uses the debug build unless ORDER_STATUS_BIN / ORDER_STATUS_LOAD_BIN point elsewhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL database}"
SECONDS_TO_RUN="${1:-60}"
STREAMS="${2:-200}"
BIN="${ORDER_STATUS_BIN:-$ROOT/.build/debug/order-status}"
LOAD_BIN="${ORDER_STATUS_LOAD_BIN:-$ROOT/.build/debug/order-status-load}"

# Let the kernel pick a port: bind 0 in Python and read it back.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PORT="$PORT" LOG_LEVEL=warning "$BIN" serve > /tmp/order-status-soak.log 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 200); do
    if curl -fs "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat /tmp/order-status-soak.log; echo "soak: the service did not start"; exit 1; }
    sleep 0.1
done

echo "soak: ${SECONDS_TO_RUN}s, $STREAMS churning streams, 20 pollers, 50 writes/s against http://127.0.0.1:$PORT (pid $SERVER_PID)"
"$LOAD_BIN" soak --url "http://127.0.0.1:$PORT" --server-pid "$SERVER_PID" --seconds "$SECONDS_TO_RUN" \
    --streams "$STREAMS" --pollers 20 --writes-per-second 50
