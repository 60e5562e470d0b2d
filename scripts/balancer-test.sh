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
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "balancer-test: installing Debian's ${missing[*]}"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    # A policy-rc.d answering 101 keeps the package from starting a system haproxy on port 80
    # where init would allow it; one the machine already has is left as it is.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        "${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    install_rc=0
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null || install_rc=$?
    [[ -n $made_policy ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    [[ $install_rc == 0 ]] || { echo "balancer-test: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

exec python3 "$ROOT/scripts/balancer_test.py"
