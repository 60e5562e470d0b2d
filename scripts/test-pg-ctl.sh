#!/usr/bin/env bash
# pg_ctl for tests, as the postgres user:
#   "$ORDER_STATUS_TEST_PGCTL" start|stop|restart|status
#       -> the throwaway cluster of scripts/test.sh ($ORDER_STATUS_TEST_PGDATA),
#          with -w, -l $ORDER_STATUS_TEST_PGDATA/server.log and stop -m fast
#   "$ORDER_STATUS_TEST_PGCTL" ACTION -D DIR [any pg_ctl args]
#       -> any other cluster; arguments passed through as given
# Why not call runuser/pg_ctl directly from Swift: it first closes inherited
# file descriptors. swift-corelibs-foundation's Process hands each child one
# end of a socketpair and treats its EOF as "child exited"; a postmaster
# started underneath inherits it, so waitUntilExit() hangs until the server
# stops.
set -euo pipefail

action="${1:?usage: test-pg-ctl.sh start|stop|restart|status [-D DIR] [pg_ctl args]}"
shift

for fd in /proc/self/fd/*; do
    fd="${fd##*/}"
    # Keep stdio and bash's own script fd.
    if ((fd > 2 && fd != 255)); then exec {fd}>&- 2>/dev/null || true; fi
done

bin="${ORDER_STATUS_TEST_PGBIN:-}"
if [[ -z "$bin" ]]; then
    bin="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi

args=()
if [[ " $* " != *" -D "* && " $* " != *" --pgdata"* ]]; then
    : "${ORDER_STATUS_TEST_PGDATA:?not set (run via scripts/test.sh) and no -D given}"
    args=(-D "$ORDER_STATUS_TEST_PGDATA" -w -t 60)
    case "$action" in
        start | restart) args+=(-l "$ORDER_STATUS_TEST_PGDATA/server.log") ;;
        stop) args+=(-m fast) ;;
    esac
fi

cd / # the postgres user may not be able to read the caller's cwd
if [[ "$(id -u)" == 0 ]]; then
    exec runuser -u postgres -- "$bin/pg_ctl" "$action" "${args[@]}" "$@"
else
    exec "$bin/pg_ctl" "$action" "${args[@]}" "$@"
fi
