#!/usr/bin/env bash
# Command 2: run the whole test suite.
#   scripts/test.sh [swift test args...]     e.g. --filter OrderStatusServiceTests
# Without DATABASE_URL, a throwaway PostgreSQL cluster is created in a fresh
# /tmp dir on a free port and removed on exit. The tests get
#   DATABASE_URL, ORDER_STATUS_TEST_PGDATA, ORDER_STATUS_TEST_PGBIN,
#   ORDER_STATUS_TEST_PGCTL (= scripts/test-pg-ctl.sh)
# so they can stop/start/restart it: "$ORDER_STATUS_TEST_PGCTL" restart.
# (Raw `runuser -u postgres -- $PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w
# start` also works from a shell, but from Foundation.Process the new
# postmaster inherits a socket and waitUntilExit() hangs; see test-pg-ctl.sh.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"

command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

summary() { echo "test.sh: $*"; }

TEST_PGDATA=""
# shellcheck disable=SC2329  # invoked via trap
cleanup() {
    local rc=$?
    if [[ -n "$TEST_PGDATA" && -d "$TEST_PGDATA" ]]; then
        PG_SCRIPTS_QUIET=1 pg_stop "$TEST_PGDATA" || true
        rm -rf "$TEST_PGDATA"
    fi
    return "$rc"
}

if [[ -z "${DATABASE_URL:-}" ]]; then
    pg_ensure_installed
    # Reap clusters of earlier runs that were SIGKILLed (their trap never ran).
    for old in /tmp/order-status-test-pg.*; do
        [[ -f "$old/test-sh.pid" ]] || continue
        owner="$(cat "$old/test-sh.pid")"
        # Owner alive (and not a zombie awaiting its reaper): leave it alone.
        if [[ -r "/proc/$owner/status" ]] && ! grep -q '^State:.*zombie' "/proc/$owner/status"; then continue; fi
        echo "test.sh: removing stale test cluster $old"
        PG_SCRIPTS_QUIET=1 pg_stop "$old" || true
        rm -rf "$old"
    done

    # Ensure cleanup on normal exit, failure and Ctrl-C/kill. (A TERM/INT
    # handler runs once the foreground command, e.g. swift test, has ended.)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    TEST_PGDATA="$(mktemp -d /tmp/order-status-test-pg.XXXXXX)"

    PG_PORT="$(pg_pick_free_port 56000 1000)"
    pg_init_cluster "$TEST_PGDATA" "$PG_PORT" --throwaway
    echo $$ >"$TEST_PGDATA/test-sh.pid"
    # The port may be taken between picking and binding (parallel runs): retry.
    for attempt in 1 2 3 4 5; do
        if pg_start "$TEST_PGDATA"; then break; fi
        [[ $attempt == 5 ]] && { summary "FAILED: could not start throwaway PostgreSQL"; exit 1; }
        PG_PORT="$(pg_pick_free_port 56000 1000)"
        pg_set_port "$TEST_PGDATA" "$PG_PORT"
    done
    pg_wait_ready "$PG_PORT"
    pg_create_database "$PG_PORT" order_status_test

    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/order_status_test"
    export ORDER_STATUS_TEST_PGDATA="$TEST_PGDATA"
    ORDER_STATUS_TEST_PGBIN="$(pg_bin_dir)"
    export ORDER_STATUS_TEST_PGBIN
    export ORDER_STATUS_TEST_PGCTL="$ROOT/scripts/test-pg-ctl.sh"
    echo "test.sh: throwaway PostgreSQL at $DATABASE_URL (data: $TEST_PGDATA, log: $TEST_PGDATA/server.log)"
else
    echo "test.sh: using external DATABASE_URL (restart tests cannot control it)"
fi

if [[ -f scripts/validate-openapi.sh ]]; then
    bash scripts/validate-openapi.sh || { summary "FAILED: OpenAPI validation"; exit 1; }
fi

# The live page's script is compiled into the binary as it is: a syntax error in it would show
# only in a browser, so check it here (Debian's nodejs, installed when missing, as postgres.sh does).
if ! command -v node >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || { summary "FAILED: node is not installed and we are not root; run: apt-get install nodejs"; exit 1; }
    echo "test.sh: node not found; installing nodejs from apt (one-time)..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs; } >&2 || { summary "FAILED: apt-get install nodejs"; exit 1; }
fi
node --check Sources/OrderStatusService/HTTP/LivePage/app.js || { summary "FAILED: node --check of the live page's app.js"; exit 1; }

swift build --build-tests || { summary "FAILED: swift build --build-tests"; exit 1; }

status=0
swift test "$@" || status=$?
if [[ $status != 0 ]]; then
    summary "FAILED: swift test${*:+ $*} exited with $status"
    exit "$status"
fi
summary "PASSED: swift test${*:+ $*}"

# With no arguments this is the whole suite: the contract checked by schemathesis against the
# live service, the live page in headless Chromium, the service behind a real nginx, behind
# PgBouncer, four instances behind HAProxy, a Patroni failover, and a one-minute soak, run on the
# binaries just built.
if [[ $# == 0 ]]; then
    if [[ -x scripts/schemathesis.sh ]]; then
        bash scripts/schemathesis.sh || { summary "FAILED: schemathesis"; exit 1; }
    fi
    bash scripts/browser-test.sh || { summary "FAILED: browser test"; exit 1; }
    bash scripts/nginx-test.sh || { summary "FAILED: nginx test"; exit 1; }
    bash scripts/pgbouncer-test.sh || { summary "FAILED: pgbouncer test"; exit 1; }
    bash scripts/balancer-test.sh || { summary "FAILED: balancer test"; exit 1; }
    bash scripts/failover-test.sh || { summary "FAILED: failover test"; exit 1; }
    bash scripts/soak.sh "${SOAK_SECONDS:-60}" || { summary "FAILED: soak"; exit 1; }
    summary "PASSED: swift test, schemathesis, the browser, nginx, PgBouncer, balancer and failover tests, and the soak"
fi
