#!/usr/bin/env bash
# The live page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
# by Selenium (PyPI) against the already built service. See scripts/browser_test.py for the checks.
#
#   DATABASE_URL=postgres://user@host:port/db scripts/browser-test.sh
#
# Environment:
#   DATABASE_URL      (required) database the service migrates and uses; scripts/test.sh exports
#                     one for its throwaway cluster.
#   ORDER_STATUS_BIN  service binary (default: <repo>/.build/debug/order-status). Never builds.
# Screenshots: .ci-artifacts/live-page.png (EventSource) and .ci-artifacts/live-page-long-poll.png.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL database}"

# Debian's packages, so the browser and its driver come as one matched pair.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "browser-test: installing Debian's chromium and chromium-driver"
    if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! python3 -c 'import selenium' >/dev/null 2>&1; then
    echo "browser-test: installing selenium from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check selenium
fi
# Selenium is given chromedriver's path; this keeps its driver manager from looking online.
export SE_OFFLINE=true

exec python3 "$ROOT/scripts/browser_test.py"
