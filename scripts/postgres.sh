#!/usr/bin/env bash
# Helpers for running private PostgreSQL clusters (dev and throwaway test ones).
# Source this file; it only defines functions. The server refuses to run as
# root, so every server-side command goes through pg_as_postgres.
#
#   pg_ensure_installed          install the server (apt) if initdb is missing
#   pg_bin_dir                   newest /usr/lib/postgresql/*/bin
#   pg_can_reach DIR             can the postgres user traverse DIR (or its nearest existing ancestor)?
#   pg_init_cluster DIR PORT [--throwaway]
#                                initdb DIR (once) and (re)write our settings
#   pg_set_port DIR PORT         change the port of an initialised cluster
#   pg_port DIR                  port the cluster is configured for
#   pg_is_running DIR            0 when the cluster's postmaster is up
#   pg_start DIR                 start (or reuse) the cluster; log in DIR/server.log
#   pg_stop DIR                  fast shutdown if running
#   pg_wait_ready PORT [SECONDS] wait until it accepts TCP connections
#   pg_port_is_free PORT / pg_pick_free_port [BASE] [SPAN]
#   pg_create_database PORT NAME create NAME if it does not exist
#
# Set PG_SCRIPTS_QUIET=1 to silence the informational messages.

PG_SERVICE_USER="${PG_SERVICE_USER:-postgres}"

pg_info() { [[ "${PG_SCRIPTS_QUIET:-0}" == 1 ]] || echo "[postgres] $*" >&2; }
pg_fail() { echo "[postgres] ERROR: $*" >&2; return 1; }

# Run a command as the postgres OS user. cd / first so tools do not complain
# about an unreadable working directory (e.g. a repo under /root).
pg_as_postgres() {
    if [[ "$(id -un)" == "$PG_SERVICE_USER" ]]; then
        (cd / && "$@")
    elif [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u "$PG_SERVICE_USER" -- "$@")
    else
        pg_fail "must run as root or as '$PG_SERVICE_USER' to manage the PostgreSQL server"
    fi
}

# Newest installed server version's bin dir (the one holding initdb).
pg_bin_dir() {
    local d
    d="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    [[ -n "$d" && -x "$d/initdb" ]] || return 1
    echo "$d"
}

pg_ensure_installed() {
    if ! pg_bin_dir >/dev/null; then
        [[ "$(id -u)" == 0 ]] || pg_fail "PostgreSQL server is not installed and we are not root; run: apt-get install postgresql" || return 1
        pg_info "initdb not found; installing PostgreSQL from apt (one-time)..."
        # The package may create+start a default 'main' cluster on 5432; we never use it.
        apt-get update -qq >&2 || return 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
        pg_bin_dir >/dev/null || pg_fail "installed 'postgresql' but no /usr/lib/postgresql/*/bin/initdb found" || return 1
    fi
    # The package normally creates the user; make sure anyway (e.g. odd images).
    if ! id -u "$PG_SERVICE_USER" >/dev/null 2>&1; then
        [[ "$(id -u)" == 0 ]] || pg_fail "OS user '$PG_SERVICE_USER' is missing" || return 1
        pg_info "creating OS user '$PG_SERVICE_USER'"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash "$PG_SERVICE_USER" || return 1
    fi
}

# True when the postgres user can reach DIR: checks DIR itself if it exists,
# otherwise its nearest existing ancestor (which we would mkdir under as root).
pg_can_reach() {
    local p="$1"
    while [[ ! -e "$p" ]]; do p="$(dirname "$p")"; done
    pg_as_postgres test -x "$p" 2>/dev/null
}

# Writes DIR/order-status.conf (included from postgresql.conf) so port and
# settings can be rewritten on reuse without touching initdb's file.
_pg_write_conf() {
    local dir="$1" port="$2" throwaway="$3" sockdir="$1"
    # Unix socket paths are limited to ~107 bytes; fall back to TCP-only.
    if (( ${#sockdir} + 20 > 100 )); then
        pg_info "data dir path too long for a unix socket; using TCP only"
        sockdir=""
    fi
    {
        echo "# Written by scripts/postgres.sh; rewritten on every init/port change."
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        # Keep sockets inside the cluster so /var/run/postgresql is not needed.
        echo "unix_socket_directories = '$sockdir'"
        echo "max_connections = 300"
        if [[ "$throwaway" == 1 ]]; then
            echo "# Throwaway test cluster: durability is irrelevant, speed matters."
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } | pg_as_postgres tee "$dir/order-status.conf" >/dev/null
}

pg_init_cluster() {
    local dir="${1:?pg_init_cluster DIR PORT [--throwaway]}" port="${2:?port required}" throwaway=0 bin
    [[ "${3:-}" == "--throwaway" ]] && throwaway=1
    [[ "$dir" == /* ]] || pg_fail "pg_init_cluster needs an absolute path, got '$dir'" || return 1
    bin="$(pg_bin_dir)" || pg_fail "PostgreSQL is not installed (run pg_ensure_installed)" || return 1

    if [[ -f "$dir/PG_VERSION" ]]; then
        pg_info "reusing cluster in $dir (PostgreSQL $(cat "$dir/PG_VERSION"))"
    else
        pg_can_reach "$(dirname "$dir")" \
            || pg_fail "the '$PG_SERVICE_USER' user cannot traverse $(dirname "$dir"); choose a data dir outside it (e.g. /var/lib/... or /tmp)" \
            || return 1
        mkdir -p "$dir" || return 1
        [[ -z "$(ls -A "$dir")" ]] || pg_fail "$dir exists, is not a cluster and is not empty" || return 1
        if [[ "$(id -u)" == 0 ]]; then chown "$PG_SERVICE_USER": "$dir" || return 1; fi
        chmod 700 "$dir" || return 1
        # mkdir -p under a strict umask can create dirs postgres cannot enter.
        pg_as_postgres test -w "$dir" -a -x "$dir" 2>/dev/null \
            || pg_fail "the '$PG_SERVICE_USER' user cannot write $dir (check permissions of its parent dirs)" || return 1
        pg_info "initdb $dir"
        local out
        out="$(pg_as_postgres "$bin/initdb" -D "$dir" --auth=trust --username=postgres \
            --encoding=UTF8 --locale=C.UTF-8 2>&1)" \
            || { echo "$out" >&2; pg_fail "initdb failed for $dir"; return 1; }
        echo "include_if_exists = 'order-status.conf'" | pg_as_postgres tee -a "$dir/postgresql.conf" >/dev/null
    fi
    _pg_write_conf "$dir" "$port" "$throwaway"
}

# Port from our include file (the value the server uses on next start).
pg_port() {
    sed -n "s/^port = \([0-9]*\)$/\1/p" "${1:?pg_port DIR}/order-status.conf" 2>/dev/null | tail -n 1
}

pg_set_port() {
    local dir="${1:?pg_set_port DIR PORT}" port="${2:?port required}"
    pg_as_postgres sed -i "s/^port = [0-9]*$/port = $port/" "$dir/order-status.conf"
}

pg_is_running() {
    local bin; bin="$(pg_bin_dir)" || return 1
    pg_as_postgres "$bin/pg_ctl" -D "${1:?pg_is_running DIR}" status >/dev/null 2>&1
}

pg_start() {
    local dir="${1:?pg_start DIR}" bin
    bin="$(pg_bin_dir)" || return 1
    if pg_is_running "$dir"; then
        pg_info "cluster $dir already running on port $(pg_port "$dir")"
        return 0
    fi
    pg_info "starting cluster $dir on port $(pg_port "$dir") (log: $dir/server.log)"
    # -l: the postmaster must not inherit our stdout/stderr (it would keep
    # pipes of callers open long after they finish).
    if ! pg_as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null; then
        echo "---- tail of $dir/server.log ----" >&2
        tail -n 20 "$dir/server.log" >&2 2>/dev/null || true
        pg_fail "could not start cluster $dir"
        return 1
    fi
}

pg_stop() {
    local dir="${1:?pg_stop DIR}" bin
    bin="$(pg_bin_dir)" || return 1
    if ! pg_is_running "$dir"; then
        pg_info "cluster $dir is not running"
        return 0
    fi
    pg_info "stopping cluster $dir"
    pg_as_postgres "$bin/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null \
        || pg_as_postgres "$bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null
}

pg_wait_ready() {
    local port="${1:?pg_wait_ready PORT [SECONDS]}" timeout="${2:-30}" bin i
    bin="$(pg_bin_dir)" || return 1
    for ((i = 0; i < timeout * 5; i++)); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && return 0
        sleep 0.2
    done
    pg_fail "PostgreSQL on 127.0.0.1:$port not ready after ${timeout}s"
}

pg_port_is_free() {
    local port="${1:?pg_port_is_free PORT}"
    if command -v ss >/dev/null 2>&1; then
        ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q .
    else
        # Connection refused => nobody listening.
        ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

pg_pick_free_port() {
    local base="${1:-56000}" span="${2:-1000}" port i
    for ((i = 0; i < 200; i++)); do
        port=$((base + RANDOM % span))
        pg_port_is_free "$port" && { echo "$port"; return 0; }
    done
    pg_fail "no free port found in $base..$((base + span - 1))"
}

pg_create_database() {
    local port="${1:?pg_create_database PORT NAME}" name="${2:?name required}" bin exists
    bin="$(pg_bin_dir)" || return 1
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || pg_fail "refusing odd database name '$name'" || return 1
    # Trust auth over TCP as role postgres; no OS user switch needed for a client.
    exists="$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -tA -v ON_ERROR_STOP=1 \
        -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" || return 1
    if [[ "$exists" != 1 ]]; then
        pg_info "creating database $name"
        "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE \"$name\"" || return 1
    fi
}

# A throwaway cluster in DIR (fsync off) on a free port from FIRST (SPAN ports tried), with
# database NAME: sets PG_PORT and exports DATABASE_URL. For the measuring scripts.
pg_start_throwaway() {
    local dir="${1:?pg_start_throwaway DIR FIRST SPAN NAME}" first="$2" span="$3" name="$4"
    pg_ensure_installed || return 1
    PG_PORT="$(pg_pick_free_port "$first" "$span")" || return 1
    PG_SCRIPTS_QUIET=1 pg_init_cluster "$dir" "$PG_PORT" --throwaway || return 1
    PG_SCRIPTS_QUIET=1 pg_start "$dir" || return 1
    pg_wait_ready "$PG_PORT" || return 1
    PG_SCRIPTS_QUIET=1 pg_create_database "$PG_PORT" "$name" || return 1
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$name"
}

# order-status dev cluster location: REPO/.local/postgres (gitignored) when the
# postgres user can reach it, else a fixed system path (e.g. repo under /root).
pg_dev_data_dir() {
    local root="${1:?pg_dev_data_dir REPO_ROOT}"
    local local_dir="$root/.local/postgres" fallback="/var/lib/order-status/postgres"
    if pg_can_reach "$local_dir"; then
        echo "$local_dir"
    else
        pg_info "user '$PG_SERVICE_USER' cannot traverse $root; dev cluster lives in $fallback instead"
        echo "$fallback"
    fi
}
