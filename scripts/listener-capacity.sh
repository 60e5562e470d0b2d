#!/usr/bin/env bash
# What each listening instance costs PostgreSQL per change, and the write ceiling with NOTIFY
# (issue 14, item 5; docs/operations.md, "Capacity"). Starts its own throwaway PostgreSQL (so
# its processes, and no other cluster's, are the ones measured), runs `order-status migrate`,
# then scripts/listener_capacity.py: pgbench writing the service's own status change beside
# 0, 1, 2, 4, 8 and 16 `order-status serve` instances, printing one table. About 15 minutes.
# Figures, not assertions: it fails only when a run fails.
#
#   scripts/listener-capacity.sh
#   scripts/bench.sh listeners             the same, with the bench's release build
#
# Environment:
#   ORDER_STATUS_BIN   service binary (default: .build-release/release/order-status when built,
#                      else .build/debug/order-status). Never builds.
#   LISTENER_ROUNDS (2), LISTENER_RATE (200 changes/s), LISTENER_RATE_SECONDS (20),
#   LISTENER_CEILING_SECONDS (8), LISTENER_CEILING_CLIENTS ("1 4 16"), LISTENER_LADDER_CLIENTS (8),
#   LISTENER_COUNTS ("0 1 2 4 8 16")   sizes of the run; see scripts/listener_capacity.py
#   LISTENER_RAW       a file to append every point's figures to, one JSON object a line
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"

if [[ -z "${ORDER_STATUS_BIN:-}" ]]; then
    ORDER_STATUS_BIN="$ROOT/.build/debug/order-status"
    [[ -x "$ROOT/.build-release/release/order-status" ]] && ORDER_STATUS_BIN="$ROOT/.build-release/release/order-status"
fi
[[ -x "$ORDER_STATUS_BIN" ]] || { echo "listener-capacity: no service binary at $ORDER_STATUS_BIN (swift build, or set ORDER_STATUS_BIN)"; exit 1; }
export ORDER_STATUS_BIN

PGDATA_DIR="$(mktemp -d /tmp/order-status-listeners-pg.XXXXXX)"
DRIVER_PID=""
cleanup() {
    local rc=$?
    # The driver stops its instances and pgbench on SIGTERM before the cluster goes.
    if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null || true
        wait "$DRIVER_PID" 2>/dev/null || true
    fi
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] && PG_SCRIPTS_QUIET=1 pg_stop "$PGDATA_DIR" || true
    rm -rf "$PGDATA_DIR"
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_start_throwaway "$PGDATA_DIR" 58000 1000 order_status_listeners
PGBIN="$(pg_bin_dir)"
export PGBIN PGDATA_DIR
"$ORDER_STATUS_BIN" migrate > /dev/null
python3 "$ROOT/scripts/listener_capacity.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"
