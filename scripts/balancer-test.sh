#!/usr/bin/env bash
# Four order-status instances on one database behind a real HAProxy (Debian's package) configured
# by deploy/four-instances/haproxy.cfg: 2,000 streams, feeds and long polls spread over the four
# get every change exactly once, in order, whichever instance committed it; then a reconnect storm
# (SIGKILL to one instance under writes: time until every client is live again, and what it costs
# PostgreSQL) and a rolling restart (SIGTERM to each in turn under writes: no error response).
# The HAProxy is private (its own config, stats socket and log under a temp dir) and runs in the
# foreground of the test. See scripts/balancer_test.py for the checks.
#
#   DATABASE_URL=postgres://user@host:port/db scripts/balancer-test.sh
#
# Environment:
#   DATABASE_URL      (required) database the instances migrate and share; scripts/test.sh exports
#                     one for its throwaway cluster.
#   ORDER_STATUS_BIN  service binary (default: <repo>/.build/debug/order-status). Never builds.
#   BALANCER_STREAMS  order streams to spread over the four (default 2000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL database}"

missing=()
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# shellcheck source=scripts/debian-packages.sh
source "$ROOT/scripts/debian-packages.sh"
install_debian_packages balancer-test "${missing[@]}"

exec python3 "$ROOT/scripts/balancer_test.py"
