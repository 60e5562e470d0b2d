#!/usr/bin/env bash
# The service's CPU per write, as instructions (callgrind: the same run to run, whatever the
# machine's neighbours do) and, roughly, as CPU microseconds from /proc.
#
# The service runs under valgrind --tool=callgrind against a throwaway PostgreSQL. After a warm-up
# (statements prepared, histograms made) the counters are zeroed, a fixed set of writes is driven
# (scripts/cpu_per_write.py: creates and status changes over keep-alive connections) and dumped;
# then the same process idles (up to 30 s, scaled to the writes' time) and is dumped again.
# Instructions per write are (writes window - idle) / writes. A second, native run of the same
# binary gives CPU seconds per write from /proc/PID/stat over the same writes.
#   scripts/cpu-per-write.sh [BINARY]      default .build/debug/order-status
#   ORDERS=400 CONNECTIONS=8 KEEP=DIR      writes = 5 x ORDERS; KEEP keeps the callgrind files in DIR
#   NATIVE_ORDERS=2000                     the native run's orders (0 skips it)
#   MODE=streams                           instructions per order-page stream instead: opened from
#                                          Last-Event-ID 0 on an order walked to shipped (a replay of
#                                          four events, then the hub), read, and closed by the client
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"
BIN="$(realpath "${1:-$ROOT/.build/debug/order-status}")"
ORDERS="${ORDERS:-400}"
CONNECTIONS="${CONNECTIONS:-8}"
MODE="${MODE:-writes}"
NATIVE_ORDERS="${NATIVE_ORDERS:-2000}"
WORK="$(mktemp -d /tmp/order-status-cpw.XXXXXX)"
PGDATA_DIR="$(mktemp -d /tmp/order-status-cpw-pg.XXXXXX)"
SERVER_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] && PG_SCRIPTS_QUIET=1 pg_stop "$PGDATA_DIR" || true
    [[ -z "${KEEP:-}" ]] || { mkdir -p "$KEEP"; cp "$WORK"/cg.out* "$WORK"/*.log "$KEEP"/ 2>/dev/null || true; }
    rm -rf "$WORK" "$PGDATA_DIR"
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v valgrind > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind > /dev/null; }
pg_start_throwaway "$PGDATA_DIR" 59000 900 order_status_cpw

# valgrind 3.19 writes into the mask a program hands sigsuspend (to unblock its own signal), and
# libdispatch's main thread passes a constant one: a copy in writable memory keeps valgrind alive.
cat > "$WORK/sigsuspend_copy.c" <<'C'
#include <signal.h>
int __sigsuspend(const sigset_t *);
int sigsuspend(const sigset_t *mask) { sigset_t copy = *mask; return __sigsuspend(&copy); }
C
CC="$(command -v cc || command -v clang || echo /opt/swift/usr/bin/clang)"
"$CC" -shared -fPIC -O2 -o "$WORK/sigsuspend_copy.so" "$WORK/sigsuspend_copy.c"
# valgrind 3.19 cannot read the DWARF 5 the Swift toolchain writes: profile a copy without it
# (callgrind then names functions from the symbol table).
cp "$BIN" "$WORK/order-status" && strip --strip-debug "$WORK/order-status"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts "$@" as the service on a free port and waits for /readyz (under valgrind: minutes).
start_service() {
    local port; port="$(free_port)"
    URL="http://127.0.0.1:$port"
    PORT="$port" LOG_LEVEL=warning DATABASE_TIMEOUT_SECONDS=120 LISTENER_PING_TIMEOUT_SECONDS=120 "$@" > "$WORK/service.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 1800); do
        curl -fs "$URL/readyz" > /dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    cat "$WORK/service.log"
    echo "cpu-per-write: the service did not start"
    exit 1
}

stop_service() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

drive() { python3 "$ROOT/scripts/cpu_per_write.py" "$URL" "$1" "$CONNECTIONS" "$2" "${3:-writes}"; }

# The measured work on orders named PREFIX-n: writes, or streams on orders made for them beforehand.
prepare() { [[ "$MODE" == writes ]] || drive "$1" "$2" streams-setup > /dev/null; }
measured() { drive "$1" "$2" "$MODE"; }

# The instructions of the newest dump file.
dumped_instructions() {
    local file; file="$(ls -t "$WORK"/cg.out.* | head -n 1)"
    sed -n 's/^summary: \([0-9]*\).*/\1/p; s/^totals: \([0-9]*\).*/\1/p' "$file" | head -n 1
}

# Waits until callgrind has written one more dump file than `$1`.
await_dump() {
    for _ in $(seq 1 600); do
        [[ "$(find "$WORK" -name 'cg.out.*' | wc -l)" -gt "$1" ]] && { sleep 1; return 0; }
        sleep 0.2
    done
    echo "cpu-per-write: callgrind wrote no dump"
    exit 1
}

dump() {
    local before; before="$(find "$WORK" -name 'cg.out.*' | wc -l)"
    callgrind_control -d "$SERVER_PID" > /dev/null
    await_dump "$before"
}

echo "cpu-per-write: $BIN under callgrind, $MODE on $ORDERS orders over $CONNECTIONS connections"
start_service env LD_PRELOAD="$WORK/sigsuspend_copy.so" \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$WORK/order-status" serve
prepare "$((CONNECTIONS * 10))" warm
measured "$((CONNECTIONS * 10))" warm > /dev/null
prepare "$ORDERS" timed
callgrind_control -z "$SERVER_PID" > /dev/null
sleep 1
started=$(date +%s.%N)
writes="$(measured "$ORDERS" timed)"
seconds="$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
dump 0
window="$(dumped_instructions)"
# The idle cost (timers, the listener's ping) over up to 30 s, scaled to the writes window.
idle_seconds="$(awk -v s="$seconds" 'BEGIN { print (s < 30 ? s : 30) }')"
callgrind_control -z "$SERVER_PID" > /dev/null
sleep "$idle_seconds"
dump 1
idle="$(awk -v i="$(dumped_instructions)" -v s="$seconds" -v t="$idle_seconds" 'BEGIN { printf "%.0f", i * s / t }')"
stop_service
per_write=$(( (window - idle) / writes ))
echo "cpu-per-write: $writes $MODE in $seconds s: $window instructions, idle for as long $idle: $per_write instructions per operation"
# Without the idle subtraction too: the idle figure is scaled from a shorter window, and varies more.
echo "RESULT cpu-per-write mode=$MODE operations=$writes instructions_per_operation=$per_write window_per_operation=$(( window / writes )) window=$window idle=$idle"

if [[ "$NATIVE_ORDERS" -gt 0 ]]; then
    start_service "$BIN" serve
    prepare "$((CONNECTIONS * 10))" warm-native
    measured "$((CONNECTIONS * 10))" warm-native > /dev/null
    prepare "$NATIVE_ORDERS" native
    cpu() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
    before="$(cpu)"
    native_writes="$(measured "$NATIVE_ORDERS" native)"
    after="$(cpu)"
    stop_service
    micros=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / native_writes ))
    echo "cpu-per-write: native, $native_writes $MODE: $micros µs of service CPU per operation"
    echo "RESULT cpu-per-write-native mode=$MODE operations=$native_writes service_cpu_us=$micros"
fi
