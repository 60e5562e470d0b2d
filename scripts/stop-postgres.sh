#!/usr/bin/env bash
# Stop the local dev cluster started by scripts/run.sh (its data is kept).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"

if ! pg_bin_dir >/dev/null; then
    echo "PostgreSQL is not installed; nothing to stop."
    exit 0
fi

# Same location logic as run.sh.
dir="$(pg_dev_data_dir "$ROOT")"
if [[ ! -f "$dir/PG_VERSION" ]]; then
    echo "No local cluster in $dir; nothing to stop."
    exit 0
fi
pg_stop "$dir"
