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

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
# shellcheck source=scripts/debian-packages.sh
source "$ROOT/scripts/debian-packages.sh"
install_debian_packages nginx-test "${missing[@]}"

exec python3 "$ROOT/scripts/nginx_test.py"
