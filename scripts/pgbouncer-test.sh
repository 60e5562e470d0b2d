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

missing=()
command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# shellcheck source=scripts/debian-packages.sh
source "$ROOT/scripts/debian-packages.sh"
install_debian_packages pgbouncer-test "${missing[@]}"

export PATH="$PATH:/usr/sbin"
exec python3 "$ROOT/scripts/pgbouncer_test.py"
