#!/usr/bin/env bash
# Command 1: run the service locally.
#   scripts/run.sh [--release] [serve args...]
# Without DATABASE_URL, creates (first time) or reuses a private PostgreSQL
# cluster on 127.0.0.1:55432 with database order_status; stop it with
# scripts/stop-postgres.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/postgres.sh source-path=SCRIPTDIR/..
source "$ROOT/scripts/postgres.sh"

# CI/fresh shells may not have the toolchain on PATH.
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

build_args=(--product order-status)
if [[ "${1:-}" == "--release" ]]; then
    shift
    # Separate scratch path so release and debug builds don't evict each other.
    build_args+=(-c release --scratch-path .build-release)
fi

PGDATA_DIR="(external)"
PGLOG="(external)"
if [[ -z "${DATABASE_URL:-}" ]]; then
    pg_ensure_installed
    PGDATA_DIR="$(pg_dev_data_dir "$ROOT")"
    PGLOG="$PGDATA_DIR/server.log"
    PG_PORT="${ORDER_STATUS_PG_PORT:-55432}"
    pg_init_cluster "$PGDATA_DIR" "$PG_PORT"
    pg_start "$PGDATA_DIR"
    pg_wait_ready "$PG_PORT"
    pg_create_database "$PG_PORT" order_status
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/order_status"
fi

swift build "${build_args[@]}"
BIN_DIR="$(swift build "${build_args[@]}" --show-bin-path)"

# Best-effort guess of the listen address for the banner (env or CLI flags).
LISTEN_HOST="${HOST:-127.0.0.1}"
LISTEN_PORT="${PORT:-8080}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --host | --hostname) LISTEN_HOST="${args[i + 1]:-$LISTEN_HOST}" ;;
        --host=* | --hostname=*) LISTEN_HOST="${args[i]#*=}" ;;
        --port) LISTEN_PORT="${args[i + 1]:-$LISTEN_PORT}" ;;
        --port=*) LISTEN_PORT="${args[i]#*=}" ;;
    esac
done

# A wildcard bind address is not something to curl.
CURL_HOST="$LISTEN_HOST"
[[ "$CURL_HOST" == 0.0.0.0 || "$CURL_HOST" == "::" ]] && CURL_HOST=127.0.0.1

# Authorization is on exactly when a key is configured (environment or flags); say which, so
# nobody runs it open believing it is protected.
AUTH_STATE="off: anyone who reaches the port may read and change orders (README: Authorization)"
[[ -n "${AUTH_HS256_SECRET:-}${AUTH_HS256_SECRET_FILE:-}${AUTH_PUBLIC_KEYS:-}${AUTH_JWKS_FILE:-}" ]] && AUTH_STATE=on
for arg in "$@"; do
    case "$arg" in --auth-hs256-secret* | --auth-public-keys* | --auth-jwks-file*) AUTH_STATE=on ;; esac
done
[[ "$AUTH_STATE" == on ]] && AUTH_STATE="on: bearer tokens required; mint one with $BIN_DIR/order-status token --scope orders:read"

# A certificate and key (environment or flags) turn on HTTPS with HTTP/2 (README: HTTP/2).
SCHEME=http
PROTOCOLS="HTTP/1.1"
CURL_FLAGS=""
[[ -n "${TLS_CERTIFICATE_FILE:-}" ]] && SCHEME=https
for arg in "$@"; do
    case "$arg" in --tls-certificate-file*) SCHEME=https ;; esac
done
if [[ "$SCHEME" == https ]]; then
    PROTOCOLS="HTTP/2 and HTTP/1.1 over TLS"
    CURL_FLAGS="--http2 -k " # -k: for a self-signed certificate
fi

# The password stays out of the banner, as it does out of the service's log.
SHOWN_DATABASE_URL="$(sed -E 's#(://[^:/@]*):[^/]*@#\1:<redacted>@#' <<<"$DATABASE_URL")"

cat <<EOF
------------------------------------------------------------------
 order-status
   postgres data : $PGDATA_DIR
   postgres log  : $PGLOG
   DATABASE_URL  : $SHOWN_DATABASE_URL
   listening on  : $SCHEME://$LISTEN_HOST:$LISTEN_PORT ($PROTOCOLS)
   live page     : open $SCHEME://$CURL_HOST:$LISTEN_PORT/
   authorization : $AUTH_STATE
   try           : curl $CURL_FLAGS$SCHEME://$CURL_HOST:$LISTEN_PORT/healthz
   stop database : scripts/stop-postgres.sh
------------------------------------------------------------------
EOF

exec "$BIN_DIR/order-status" serve "$@"
