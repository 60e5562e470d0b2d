#!/usr/bin/env bash
# The benchmark: a release build, a throwaway PostgreSQL, and a fresh service process for each
# scenario (freed memory is not returned to the OS, so the idle figure needs a new process).
# Runs idle, fanout, lifecycle (spread over source addresses, then all from 127.0.0.1), writes
# (with pgbench running the same transaction beside it), longpoll and feeds, then prints one table. Figures, not assertions: it fails only when delivery is not exact.
#   scripts/bench.sh                     the fixed suite (about 12 minutes after the build)
#   scripts/bench.sh idle fanout         some scenarios only
#   scripts/bench.sh stalled-headers stalled-streams descriptors   stalled connections (not in the fixed suite)
#   scripts/bench.sh fanout-scale        server CPU per delivered event, 1 000 to 19 000 subscribers (not in the fixed suite)
#   scripts/bench.sh listeners           PostgreSQL's CPU per listening instance, NOTIFY's ceiling (not in the fixed suite, ~15 min)
#   BENCH_SKIP_BUILD=1 scripts/bench.sh  use the binaries already in .build-release
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(idle fanout lifecycle lifecycle-loopback writes longpoll feeds)
BUILD="$ROOT/.build-release"
BIN="$BUILD/release/order-status"
LOAD_BIN="$BUILD/release/order-status-load"
WORK="$(mktemp -d /tmp/order-status-bench.XXXXXX)"
RESULTS="$WORK/results"
SERVER_PID=""
FAILED=()
# Settings of the service under test beyond its defaults, as NAME=value words.
SERVICE_ENV=()
# Database sessions for the writes scenario: on 2 cores PostgreSQL commits most with few of them
# (pgbench too: see its two client counts), so the service's pool is sized as one would size it.
WRITE_POOL=8
PGDATA_DIR="$(mktemp -d /tmp/order-status-bench-pg.XXXXXX)"

stop_service() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    stop_service
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] && PG_SCRIPTS_QUIET=1 pg_stop "$PGDATA_DIR" || true
    rm -rf "$WORK" "$PGDATA_DIR"
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench: building release binaries into .build-release"
    swift build -c release --scratch-path "$BUILD" --product order-status
    swift build -c release --scratch-path "$BUILD" --product order-status-load
fi

# Each side of the loopback needs a descriptor per stream: 19,000 streams need the 20,000 a
# process may open here.
ulimit -n "$(ulimit -Hn)"

# This machine's speed varies with its neighbours: a fixed loop, timed before and after the
# suite, says how fast it was while the figures were taken (about 0.65 s when it is quiet).
reference_loop() { python3 -c 'import time; t = time.perf_counter(); sum(range(30_000_000)); print(f"{time.perf_counter() - t:.2f} s")'; }
REFERENCE_BEFORE="$(reference_loop)"

pg_start_throwaway "$PGDATA_DIR" 57000 1000 order_status_bench
PGBIN="$(pg_bin_dir)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_service() {
    local port; port="$(free_port)"
    # SERVICE_NOFILE, when set, is the service's descriptor limit (the descriptors scenario).
    ( [[ -z "${SERVICE_NOFILE:-}" ]] || ulimit -n "$SERVICE_NOFILE"
      exec env "${SERVICE_ENV[@]}" PORT="$port" LOG_LEVEL=warning "$BIN" serve ) > "$WORK/service.log" 2>&1 &
    SERVER_PID=$!
    URL="http://127.0.0.1:$port"
    for _ in $(seq 1 300); do
        curl -fs "$URL/readyz" > /dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/service.log"
    echo "bench: the service did not start"
    exit 1
}

# Runs one load-tool scenario against a fresh service, keeping its RESULT line. With --keep the
# service is left running for what follows.
run_load() {
    local keep=0
    [[ "$1" == --keep ]] && { keep=1; shift; }
    local scenario="$1"; shift
    start_service
    echo "bench: $scenario against $URL (pid $SERVER_PID)"
    if ! "$LOAD_BIN" "$scenario" --url "$URL" --server-pid "$SERVER_PID" "$@" | tee "$WORK/$scenario.out"; then
        FAILED+=("$scenario")
    fi
    grep '^RESULT ' "$WORK/$scenario.out" >> "$RESULTS" || true
    [[ $keep == 1 ]] || stop_service
}

# pgbench runs the service's status-change statement on orders seeded for it, with the same
# number of clients as the service has writers, over the extended protocol the service uses. The
# service stays up, idle, so PostgreSQL wakes its LISTEN connection at every commit as it does
# for the service's own writes: the same database doing the same work per transaction.
run_pgbench() {
    local clients="$1" seconds="$2" orders=20000
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c \
        "INSERT INTO orders (id, status, version, created_at, updated_at, last_event_id)
         SELECT 'pgb-' || n, 'pending', 1, now(), now(), 0 FROM generate_series(1, $orders) n
         ON CONFLICT (id) DO NOTHING"
    echo "bench: pgbench, $clients clients for $seconds s, the same transaction"
    local database_before; database_before="$(postgres_cpu_ticks)"
    local TIMEFORMAT='%U %S'
    { time "$PGBIN/pgbench" -n -M prepared -c "$clients" -j 2 -T "$seconds" -D orders="$orders" \
        -f scripts/bench/status-change.sql "$DATABASE_URL" > "$WORK/pgbench.out" 2>&1; } 2> "$WORK/pgbench.time"
    local database_after; database_after="$(postgres_cpu_ticks)"
    cat "$WORK/pgbench.out"
    local tps latency transactions
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.out" | head -n 1)"
    latency="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$WORK/pgbench.out")"
    transactions="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/pgbench.out")"
    # CPU microseconds per transaction of PostgreSQL and of pgbench itself, as the writes row gives them.
    read -r user system < "$WORK/pgbench.time"
    local database_us client_us
    database_us=$(( (database_after - database_before) * 1000000 / $(getconf CLK_TCK) / transactions ))
    client_us="$(awk -v u="$user" -v s="$system" -v n="$transactions" 'BEGIN { printf "%.0f", (u + s) * 1e6 / n }')"
    echo "RESULT pgbench clients=$clients changes_per_s=${tps%.*} avg_ms=$latency postgres_cpu_us=$database_us client_cpu_us=$client_us" >> "$RESULTS"
}

# CPU clock ticks used so far by this bench's cluster: its postmaster, with the exited backends
# (pgbench's) it has reaped into its children's times, and each live child. Only this cluster's:
# other PostgreSQL servers on the machine would inflate the figure.
postgres_cpu_ticks() {
    local total=0 pid postmaster
    postmaster="$(head -n 1 "$PGDATA_DIR/postmaster.pid")"
    for pid in "$postmaster" $(pgrep -P "$postmaster"); do
        total=$(( total + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
    done
    echo "$total"
}

for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
        idle) run_load idle --streams 19000 --orders 1000 --hold 20 ;;
        fanout) run_load fanout --subscribers 10000 --orders 1000 --rate 200 ;;
        # Not in the fixed suite: the same 4 000 changes to 1 000 ... 19 000 subscribers. The
        # server's CPU grows by a cost per delivered event, which the table prints between sizes.
        fanout-scale)
            for subscribers in 1000 5000 10000 19000; do
                run_load fanout --subscribers "$subscribers" --orders 1000 --rate 200
            done
            awk '/^RESULT fanout/ { for (i = 3; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
                     if (n++) printf "fanout   %d -> %d subscribers: %.1f µs of server CPU per further delivered event\n", s, v["subscribers"], (v["server_cpu_ms"] - m) * 1000 / (v["delivered"] - d)
                     s = v["subscribers"]; m = v["server_cpu_ms"]; d = v["delivered"] }' "$RESULTS" > "$WORK/fanout-scale.txt"
            ;;
        # Order pages as they live: each order walked to delivered, its streams then moving to the
        # next order (about 500 new streams a second), once from spread source addresses and once
        # with every connection from 127.0.0.1, as an independent client makes them.
        lifecycle) run_load lifecycle --subscribers 10000 --orders 1000 --rate 200 --seconds 20 ;;
        lifecycle-loopback) run_load lifecycle --subscribers 10000 --orders 1000 --rate 200 --seconds 20 --source-addresses 0 ;;
        writes)
            # Rounds alternate so that both sides see the same drift of a shared machine.
            SERVICE_ENV=(DATABASE_POOL_SIZE=$WRITE_POOL)
            for round in 1 2 3; do
                run_load --keep writes --writers 32 --seconds 10
                run_pgbench "$WRITE_POOL" 10
                run_pgbench 32 10
                stop_service
            done
            SERVICE_ENV=()
            ;;
        longpoll) run_load longpoll --clients 500 --orders 100 --rate 100 --seconds 20 ;;
        feeds)
            # The writes scenario's writers and pool, with a feed of every order and 100 of three.
            SERVICE_ENV=(DATABASE_POOL_SIZE=$WRITE_POOL)
            run_load feeds --writers 32 --seconds 10 --filtered-feeds 100 --orders-per-feed 3
            SERVICE_ENV=()
            ;;
        # Not in the fixed suite: what stalled connections hold (BENCHMARKS.md, "Stalled connections").
        stalled-headers) run_load stalled --kind headers --connections 2000 ;;
        stalled-streams) run_load stalled --kind streams --connections 2000 --orders 200 ;;
        # Issue 12's exhaustion: more trickling clients than the service has descriptors. The read
        # bound must free them (the backlog's in a second round) and /healthz must answer again.
        descriptors)
            SERVICE_NOFILE=300
            run_load stalled --kind headers --connections 320 --close-within 60
            SERVICE_NOFILE=""
            ;;
        # Issue 14: what each listening instance costs PostgreSQL per change, and the write ceiling
        # with NOTIFY (BENCHMARKS.md, "Listeners"). Its own cluster, so that only its processes are counted.
        listeners)
            ORDER_STATUS_BIN="$BIN" bash scripts/listener-capacity.sh | tee "$WORK/listeners.out" || FAILED+=(listeners)
            grep '^RESULT ' "$WORK/listeners.out" >> "$RESULTS" || true
            ;;
        *) echo "bench: unknown scenario '$scenario' (idle, fanout, fanout-scale, lifecycle, lifecycle-loopback, writes, longpoll, feeds, stalled-headers, stalled-streams, descriptors, listeners)"; exit 2 ;;
    esac
done

# The table: one row per scenario with its figures as they were printed.
echo
echo "bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -n 1); reference loop $REFERENCE_BEFORE before, $(reference_loop) after"
awk '{ printf "%-9s", $2; for (i = 3; i <= NF; i++) printf " %s", $i; printf "\n" }' "$RESULTS"
if grep -q '^RESULT writes' "$RESULTS" && grep -q '^RESULT pgbench' "$RESULTS"; then
    awk '/^RESULT writes/ { n++; for (i = 3; i <= NF; i++) if ($i ~ /^changes_per_s=/) { split($i, a, "="); s += a[2] } }
         /^RESULT pgbench/ { c = ""; r = 0
             for (i = 3; i <= NF; i++) { split($i, a, "="); if (a[1] == "clients") c = a[2]; if (a[1] == "changes_per_s") r = a[2] }
             p[c] += r }
         END { for (c in p) printf "writes   service (%d pooled connections) at %.0f%% of pgbench with %s clients, the same transaction (mean of %d rounds)\n", '"$WRITE_POOL"', 100 * s / p[c], c, n }' "$RESULTS"
fi
[[ ! -f "$WORK/fanout-scale.txt" ]] || cat "$WORK/fanout-scale.txt"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "bench: FAILED (inexact delivery or an error): ${FAILED[*]}"
    exit 1
fi
