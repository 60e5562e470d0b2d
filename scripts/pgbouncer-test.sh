#!/usr/bin/env bash
# The whole contract through a real PgBouncer (Debian's package) in transaction mode, configured by
# deploy/pgbouncer/pgbouncer.ini: the service's request pool through PgBouncer, its LISTEN
# connection direct. The PgBouncer is private (its own ini, userlist, socket, pid and log under a
# temp dir, a free port) and runs in the foreground of the test. See scripts/pgbouncer_test.py.
#
#   DATABASE_URL=postgres://user@host:port/db scripts/pgbouncer-test.sh
#
# Environment:
#   DATABASE_URL               (required) the PostgreSQL PgBouncer connects to and the listener uses
#                              directly; scripts/test.sh exports one for its throwaway cluster.
#   ORDER_STATUS_BIN           service binary (default: <repo>/.build/debug/order-status). Never builds.
#   PGBOUNCER_ST_MAX_EXAMPLES  schemathesis examples per operation (default 60).
#   PGBOUNCER_TEST_STATEMENTS  DATABASE_STATEMENTS for the service (default unnamed; prepared fails).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL database}"

if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    echo "pgbouncer-test: installing Debian's pgbouncer"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    # A policy-rc.d answering 101 keeps the package from starting a system PgBouncer on 6432
    # where init would allow it; one the machine already has is left as it is.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        "${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    install_rc=0
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq pgbouncer postgresql-client >/dev/null || install_rc=$?
    [[ -n $made_policy ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    [[ $install_rc == 0 ]] || { echo "pgbouncer-test: apt-get install pgbouncer failed" >&2; exit 1; }
fi

export PATH="$PATH:/usr/sbin"
exec python3 "$ROOT/scripts/pgbouncer_test.py"
