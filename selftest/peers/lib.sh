# Shared helpers of the peer scripts (sourced, not run).
# shellcheck shell=bash

# shellcheck disable=SC2034 # used by the scripts that source this
PEERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

say() { echo "peers: $*" >&2; }
die() { echo "peers: error: $*" >&2; exit 1; }

# The hugetlbfs mount DPDK uses (first one), or nothing.
hugepage_dir() {
    awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts
}

# Free 2 MiB huge pages.
hugepages_free() {
    awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo
}

# Wait until FILE is a socket, or SECONDS pass (fractions allowed).
wait_socket() { # FILE SECONDS
    local n=$(( ${2%.*} * 10 + 1 )) i
    for ((i = 0; i < n; i++)); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# Send SIG, wait up to SECONDS for PID to go, then SIGKILL. Returns how it went:
# prints gone|signal|kill.
stop_pid() { # PID SIG SECONDS
    local pid=$1 sig=$2 n=$(( $3 * 10 )) i
    kill -0 "$pid" 2>/dev/null || { echo gone; return 0; }
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < n; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo signal; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo kill
}

# Whether PID is alive and runs a program whose name starts with one of
# NAMES (guards against a reused pid). The launchers (setsid, taskset,
# stdbuf) count too: they exec the program an instant after starting.
pid_is() { # PID NAME|NAME...
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    [[ $comm =~ ^($2|setsid|taskset|stdbuf) ]]
}

# Median of the numbers on stdin (one a line); prints nothing when empty.
median() {
    sort -g | awk '{ a[n++] = $1 } END { if (n) { if (n % 2) print a[(n - 1) / 2]; else printf "%.10g\n", (a[n / 2 - 1] + a[n / 2]) / 2 } }'
}

# The comment block at the top of SCRIPT (after the #! line): its usage text.
usage_of() { # SCRIPT [EXIT]
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
    exit "${2:-0}"
}
