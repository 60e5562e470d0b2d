# Sourced by the scenario scripts: installs Debian packages they need and the machine lacks.
#   install_debian_packages SCRIPT-NAME PACKAGE...    (nothing to do without packages)
# A policy-rc.d answering 101 keeps the packages from starting system daemons (nginx on 80,
# haproxy, etcd, PgBouncer, PostgreSQL) where init would allow it; a policy the machine already
# has is left as it is.
install_debian_packages() {
    local script="$1"
    shift
    (($#)) || return 0
    echo "$script: installing Debian's $*"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    local made_policy="" install_rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null || install_rc=$?
    [[ -z $made_policy ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    [[ $install_rc == 0 ]] || { echo "$script: apt-get install $* failed" >&2; return 1; }
}
