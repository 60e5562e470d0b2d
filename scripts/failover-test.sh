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
if (( ${#missing[@]} )); then
    echo "failover-test: installing Debian's ${missing[*]}"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    # A policy-rc.d answering 101 keeps the packages from starting a system etcd, haproxy or
    # PostgreSQL where init would allow it; one the machine already has is left as it is.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        "${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    install_rc=0
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null || install_rc=$?
    [[ -n $made_policy ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    [[ $install_rc == 0 ]] || { echo "failover-test: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
export PATH="$PATH:/usr/sbin"

exec python3 "$ROOT/scripts/failover_test.py"
