#!/usr/bin/env bash
# The service behind a real nginx (Debian's package) configured by deploy/nginx.conf: events arrive
# unbuffered and at once, heartbeats pass, the long poll and plain REST work. The nginx is private
# (its own prefix, pid, logs and free port under a temp dir) and runs in the foreground of the test.
# See scripts/nginx_test.py for the checks.
#
#   DATABASE_URL=postgres://user@host:port/db scripts/nginx-test.sh
#
# Environment:
#   DATABASE_URL      (required) database the service migrates and uses; scripts/test.sh exports
#                     one for its throwaway cluster.
#   ORDER_STATUS_BIN  service binary (default: <repo>/.build/debug/order-status). Never builds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL database}"

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    echo "nginx-test: installing Debian's nginx"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    # A policy-rc.d answering 101 keeps the package from starting a system nginx on port 80
    # where init would allow it; one the machine already has is left as it is.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        "${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    install_rc=0
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nginx >/dev/null || install_rc=$?
    [[ -n $made_policy ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    [[ $install_rc == 0 ]] || { echo "nginx-test: apt-get install nginx failed" >&2; exit 1; }
fi

exec python3 "$ROOT/scripts/nginx_test.py"
