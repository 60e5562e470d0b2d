#!/usr/bin/env bash
# A PostgreSQL that fails over under the service: etcd, two Patroni nodes (PostgreSQL 15, a primary
# and a synchronous standby) and HAProxy, all from Debian's packages and configured by the files in
# deploy/patroni/ (only ports and paths substituted), each private (its own temp dir and free
# ports). The primary node dies under writes and open streams; see scripts/failover_test.py.
#
#   scripts/failover-test.sh
#
# Environment:
#   ORDER_STATUS_BIN    service binary (default: <repo>/.build/debug/order-status). Never builds.
#   FAILOVER_KILL       node (default: Patroni, postmaster and backends frozen, then killed) or
#                       postmaster (only Patroni and then the postmaster killed)
#   FAILOVER_KEEP_LOGS  a folder to copy every log into when the test fails
#   FAILOVER_LOG_LEVEL  the services' LOG_LEVEL (default info; shown on failure)
# DATABASE_URL is ignored: the test brings up its own cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql-15)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# shellcheck source=scripts/debian-packages.sh
source "$ROOT/scripts/debian-packages.sh"
install_debian_packages failover-test "${missing[@]}"
export PATH="$PATH:/usr/sbin"

exec python3 "$ROOT/scripts/failover_test.py"
