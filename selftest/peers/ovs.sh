#!/bin/bash
# Run Open vSwitch with DPDK (Debian's openvswitch-switch-dpdk, OVS 3.1) as a
# vhost-user switch peer: its own database, run and log directory (never
# the system's service), one PMD thread on one CPU, a netdev bridge of
# vhost-user ports, the NORMAL action (MAC learning switch).
#
#   ovs.sh start NAME [options]      in the background; prints the sockets
#   ovs.sh run NAME [options]        in the foreground, until SIGINT/SIGTERM (for benchmark templates)
#   ovs.sh wait-ready NAME [--timeout S]   until every port is added and its socket listens (or is connected)
#   ovs.sh wait-up NAME [--timeout S]      until every port has a frontend set up (link_state up), and
#                                    a moment more for the PMD to take its queues
#   ovs.sh stats NAME                per-port drops and the PMD's packet counts, now
#   ovs.sh stop NAME [--timeout S]   ovs-vswitchd and ovsdb-server exit (KILL if they hang); sockets and
#                                    the database removed, the logs kept in DIR/NAME.ovs/
#   ovs.sh cmd NAME vsctl|ofctl|appctl ARGS...   talk to this instance
#
# options:
#   --dir DIR        state goes in DIR/NAME.ovs/ ($SNABB_RS_PEERS_DIR or /tmp/snabb-rs-peers)
#   --ports N        vhost-user ports vhu0..vhuN-1 (default 2); OVS listens on DIR/NAME.ovs/vhuK
#                    (type dpdkvhostuser)
#   --client PATH    instead: a dpdkvhostuserclient port connecting to PATH (repeatable, in port
#                    order; the frontend listens there, and OVS reconnects when it restarts)
#   --cpu N          the PMD thread's CPU (pmd-cpu-mask), and the CPU of the whole process (default 0)
#   --mem MB         DPDK memory (dpdk-socket-mem, default 1024); huge pages are required
#   --mtu N          mtu_request of every port (default 1500)
#   --mac PORT=MAC   a static MAC table entry (fdb/add), so frames to MAC go to port PORT (vhuK)
#                    at once, without waiting for them to be learned (repeatable)
#   --flows ARG      the bridge's OpenFlow table: "normal" (default: one flow, actions=NORMAL)
#
# It installs openvswitch-switch-dpdk when missing (as root). Huge pages
# must be reserved (scripts/test.sh does); DPDK runs --in-memory with its
# own --file-prefix, so nothing is left in hugetlbfs.
#
# Output lines (stdout), for scripts:
#   OVS_STARTED name=N pid=P dir=D ports=K socks=S1,S2 cpu=C log=F     (socks: the server sockets, or the client paths)
#   OVS_READY name=N                       (wait-ready; exit 1 timeout, 2 ovs-vswitchd died or DPDK failed)
#   OVS_UP name=N                          (wait-up; exit 1 timeout)
#   OVS_PORT name=N port=vhuK state=up|down tx_failure_drops=D tx_mtu_drops=M qos_drops=Q
#   OVS_PMD name=N core=C received=R emc_hits=E megaflow_hits=M upcalls=U processing_pct=P
#   OVS_STOPPED name=N how=exit|kill|gone
# OVS_PORT's drop counts are OVS's Interface statistics, which ovs-vswitchd
# refreshes every 5 s; `stats --fresh` waits for the next refresh. (This
# build cannot report per-port packet counts of vhost ports: "Protocol
# error"; count at the frontends and with OVS_PMD's received.)
set -uo pipefail
source "$(dirname "$0")/lib.sh"

DIR=${SNABB_RS_PEERS_DIR:-/tmp/snabb-rs-peers}
VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
SCHEMA=/usr/share/openvswitch/vswitch.ovsschema

usage() { usage_of "$0" "${1:-0}"; }

ensure_installed() {
    [ -x "$VSWITCHD" ] && [ -f "$SCHEMA" ] && command -v ovsdb-server >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "openvswitch-switch-dpdk is missing and we are not root to install it"
    say "installing openvswitch-switch-dpdk"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openvswitch-switch-dpdk >/dev/null ||
        die "apt-get install openvswitch-switch-dpdk failed"
    [ -x "$VSWITCHD" ] || die "openvswitch-switch-dpdk installed, but $VSWITCHD is not there"
}

# Paths of instance NAME.
paths() {
    R=$DIR/$1.ovs
    DB=unix:$R/db.sock
}
vsctl() { ovs-vsctl --db="$DB" --timeout=10 "$@"; }
appctl() { ovs-appctl -t "$R/ovs-vswitchd.ctl" --timeout=10 "$@"; }
ofctl() { OVS_RUNDIR=$R ovs-ofctl --timeout=10 "$@"; }

parse_start() {
    NAME=$1; shift
    NPORTS=2 CLIENTS=() CPU=0 MEM=1024 MTU=1500 MACS=() FLOWS=normal
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --ports) NPORTS=$2; shift 2;;
        --client) CLIENTS+=("$2"); shift 2;;
        --cpu) CPU=$2; shift 2;;
        --mem) MEM=$2; shift 2;;
        --mtu) MTU=$2; shift 2;;
        --mac) MACS+=("$2"); shift 2;;
        --flows) FLOWS=$2; shift 2;;
        *) die "ovs.sh: unknown option $1";;
        esac
    done
    [ ${#CLIENTS[@]} -gt 0 ] && NPORTS=${#CLIENTS[@]}
    [[ $CPU =~ ^[0-9]+$ ]] || die "--cpu takes one CPU number"
    [[ $NPORTS =~ ^[1-9][0-9]*$ ]] || die "--ports takes a number"
    [ "$FLOWS" = normal ] || die "--flows: only normal is known"
}

cmd_start() {
    parse_start "$@"
    ensure_installed
    [ "$(id -u)" = 0 ] || die "ovs.sh needs root (huge pages, DPDK)"
    [ -n "$(hugepage_dir)" ] || die "no hugetlbfs mount (scripts/test.sh mounts /dev/hugepages)"
    [ "$(hugepages_free)" -ge $((MEM / 2)) ] || die "$((MEM / 2)) free huge pages needed for --mem $MEM, $(hugepages_free) free"
    paths "$NAME"
    local old
    old=$(cat "$R/ovs-vswitchd.pid" 2>/dev/null || true)
    pid_is "$old" ovs-vswitchd && die "OVS $NAME is already running (pid $old); stop it first"
    rm -rf "$R"; mkdir -p "$R"
    # Everything OVS reads or writes by default goes here, not /var/run/openvswitch.
    export OVS_RUNDIR=$R OVS_LOGDIR=$R OVS_DBDIR=$R OVS_SYSCONFDIR=$R
    ovsdb-tool create "$R/conf.db" "$SCHEMA" || die "ovsdb-tool create failed"
    ovsdb-server "$R/conf.db" --remote="punix:$R/db.sock" --pidfile="$R/ovsdb-server.pid" \
        --unixctl="$R/ovsdb-server.ctl" --log-file="$R/ovsdb-server.log" --detach --no-chdir \
        </dev/null >>"$R/ovsdb-server.out" 2>&1 ||
        die "ovsdb-server did not start (see $R/ovsdb-server.log)"
    local prefix="ovs-${NAME//[^A-Za-z0-9]/}-$$"
    echo "$prefix" >"$R/prefix"
    vsctl --no-wait init
    # One PMD thread on CPU; DPDK's memory in huge pages, in memory only
    # (OVS adds --in-memory), under a prefix of its own.
    vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true \
        "other_config:dpdk-socket-mem=$MEM" "other_config:pmd-cpu-mask=$(printf '%#x' $((1 << CPU)))" \
        "other_config:dpdk-extra=--file-prefix=$prefix --no-pci" \
        "other_config:vhost-sock-dir=." || die "ovs-vsctl set failed"
    # The whole process on CPU: its other threads (main, handlers,
    # revalidators) mostly sleep, and the frontends keep the other CPU.
    taskset -c "$CPU" "$VSWITCHD" "$DB" --pidfile="$R/ovs-vswitchd.pid" --unixctl="$R/ovs-vswitchd.ctl" \
        --log-file="$R/ovs-vswitchd.log" --detach --no-chdir </dev/null >>"$R/ovs-vswitchd.out" 2>&1 ||
        die "ovs-vswitchd did not start (see $R/ovs-vswitchd.log)"
    vsctl set Open_vSwitch . other_config:dummy=1 >/dev/null 2>&1 # waits for vswitchd to catch up
    [ "$(vsctl get Open_vSwitch . dpdk_initialized)" = true ] || die "DPDK did not initialize (see $R/ovs-vswitchd.log)"
    vsctl add-br br0 -- set bridge br0 datapath_type=netdev || die "add-br failed"
    local i socks=() args
    for ((i = 0; i < NPORTS; i++)); do
        if [ ${#CLIENTS[@]} -gt 0 ]; then
            args=(type=dpdkvhostuserclient "options:vhost-server-path=${CLIENTS[$i]}")
            socks+=("${CLIENTS[$i]}")
        else
            args=(type=dpdkvhostuser)
            socks+=("$R/vhu$i")
        fi
        # (Queue pairs are the frontend's choice: vhost ports take no n_rxq.)
        vsctl add-port br0 "vhu$i" -- set Interface "vhu$i" "${args[@]}" "mtu_request=$MTU" ||
            die "add-port vhu$i failed"
    done
    # The NORMAL action: learn source MACs, forward to the learned port, flood the rest.
    ofctl del-flows br0 && ofctl add-flow br0 "priority=0,actions=NORMAL" || die "ovs-ofctl add-flow failed"
    local m
    for m in "${MACS[@]}"; do
        appctl fdb/add br0 "${m%%=*}" 0 "${m#*=}" >/dev/null || die "fdb/add ${m%%=*} ${m#*=} failed"
    done
    printf '%s\n' "${socks[@]}" >"$R/socks"
    [ ${#CLIENTS[@]} -gt 0 ] && echo client >"$R/mode" || echo server >"$R/mode"
    printf '%s\n' "${MACS[@]}" >"$R/macs"
    PID=$(cat "$R/ovs-vswitchd.pid")
    echo "OVS_STARTED name=$NAME pid=$PID dir=$R ports=$NPORTS socks=$(IFS=,; echo "${socks[*]}") cpu=$CPU log=$R/ovs-vswitchd.log"
}

cmd_run() {
    cmd_start "$@"
    trap 'cmd_stop "$NAME" >/dev/null; exit 0' INT TERM
    while pid_is "$PID" ovs-vswitchd; do sleep 0.5; done
    say "ovs-vswitchd $NAME exited by itself (see $R/ovs-vswitchd.log)"
    cmd_stop "$NAME" >/dev/null
    exit 1
}

cmd_wait_ready() {
    local name=$1; shift
    local timeout=30
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "ovs.sh wait-ready: unknown option $1";;
        esac
    done
    paths "$name"
    local pid deadline n s ok
    pid=$(cat "$R/ovs-vswitchd.pid" 2>/dev/null || true)
    deadline=$(( $(date +%s) + timeout ))
    n=$(grep -c . "$R/socks" 2>/dev/null || echo 0)
    while :; do
        if grep -q -E 'EAL: (Error|FATAL)|Cannot init|PANIC' "$R/ovs-vswitchd.log" 2>/dev/null; then
            echo "OVS_FAILED name=$name reason=$(grep -m1 -o -E 'EAL: (Error|FATAL).*|Cannot init.*|PANIC.*' "$R/ovs-vswitchd.log" | tr ' ' _)"
            return 2
        fi
        pid_is "$pid" ovs-vswitchd || { echo "OVS_FAILED name=$name reason=exited"; return 2; }
        ok=1
        [ "$(grep -c 'bridge|INFO|bridge br0: added interface vhu' "$R/ovs-vswitchd.log" 2>/dev/null)" -ge "$n" ] || ok=0
        if [ "$(cat "$R/mode" 2>/dev/null)" = server ]; then
            while read -r s; do [ -S "$s" ] || ok=0; done <"$R/socks"
        fi
        [ "$ok" = 1 ] && { echo "OVS_READY name=$name"; return 0; }
        [ "$(date +%s)" -ge "$deadline" ] && { echo "OVS_TIMEOUT name=$name"; return 1; }
        sleep 0.1
    done
}

cmd_wait_up() {
    local name=$1; shift
    local timeout=30
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "ovs.sh wait-up: unknown option $1";;
        esac
    done
    paths "$name"
    local deadline p ok
    deadline=$(( $(date +%s) + timeout ))
    while :; do
        ok=1
        for p in $(vsctl list-ports br0 2>/dev/null); do
            [ "$(vsctl get Interface "$p" link_state 2>/dev/null)" = up ] || ok=0
        done
        if [ "$ok" = 1 ]; then
            # A frame sent before OVS has taken the new device's queues is
            # dropped where this build cannot count it: give it a moment.
            sleep 1
            echo "OVS_UP name=$name"
            return 0
        fi
        [ "$(date +%s)" -ge "$deadline" ] && { echo "OVS_TIMEOUT name=$name"; return 1; }
        sleep 0.1
    done
}

cmd_stats() {
    local name=$1; shift
    local fresh=0
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --fresh) fresh=1; shift;;
        *) die "ovs.sh stats: unknown option $1";;
        esac
    done
    paths "$name"
    if [ "$fresh" = 1 ]; then
        # Interface statistics are written every 5 s: wait until they change once.
        local before i
        before=$(vsctl --columns=statistics list Interface 2>/dev/null | md5sum)
        for ((i = 0; i < 70; i++)); do
            sleep 0.1
            [ "$(vsctl --columns=statistics list Interface 2>/dev/null | md5sum)" != "$before" ] && break
        done
        # (Unchanged for 7 s: nothing moved; they were fresh already.)
    fi
    local p st
    for p in $(vsctl list-ports br0); do
        st=$(vsctl get Interface "$p" statistics 2>/dev/null)
        get() { sed -n "s/.*[{ ]$1=\([0-9]*\).*/\1/p" <<<"$st" | head -1; }
        echo "OVS_PORT name=$name port=$p state=$(vsctl get Interface "$p" link_state 2>/dev/null | tr -d '"')" \
            "tx_failure_drops=$(get ovs_tx_failure_drops)" "tx_mtu_drops=$(get ovs_tx_mtu_exceeded_drops)" \
            "qos_drops=$(( $(get ovs_rx_qos_drops) + $(get ovs_tx_qos_drops) ))" "tx_retries=$(get ovs_tx_retries)"
    done
    appctl dpif-netdev/pmd-stats-show 2>/dev/null | awk -v name="$name" '
        /^pmd thread/ { core = $NF; sub(":", "", core) }
        /^main thread/ { core = "" }
        core != "" && /packets received:/ { rx = $3 }
        core != "" && /emc hits:/ { emc = $3 }
        core != "" && /megaflow hits:/ { mf = $3 }
        core != "" && /miss with success upcall:/ { up = $5 }
        core != "" && /processing cycles:/ { pct = $4; gsub(/[()%]/, "", pct)
            printf "OVS_PMD name=%s core=%s received=%s emc_hits=%s megaflow_hits=%s upcalls=%s processing_pct=%s\n", name, core, rx, emc, mf, up, pct }'
}

cmd_stop() {
    local name=$1; shift
    local timeout=10
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "ovs.sh stop: unknown option $1";;
        esac
    done
    paths "$name"
    local pid dbpid how=gone i prefix hp
    pid=$(cat "$R/ovs-vswitchd.pid" 2>/dev/null || true)
    dbpid=$(cat "$R/ovsdb-server.pid" 2>/dev/null || true)
    if pid_is "$pid" ovs-vswitchd; then
        appctl exit >/dev/null 2>&1
        for ((i = 0; i < timeout * 10; i++)); do pid_is "$pid" ovs-vswitchd || { how=exit; break; }; sleep 0.1; done
        pid_is "$pid" ovs-vswitchd && how=$(stop_pid "$pid" TERM 3)
    fi
    if pid_is "$dbpid" ovsdb-server; then
        ovs-appctl -t "$R/ovsdb-server.ctl" --timeout=5 exit >/dev/null 2>&1
        for ((i = 0; i < 50; i++)); do pid_is "$dbpid" ovsdb-server || break; sleep 0.1; done
        pid_is "$dbpid" ovsdb-server && stop_pid "$dbpid" TERM 3 >/dev/null
    fi
    echo "OVS_STOPPED name=$name how=$how"
    prefix=$(cat "$R/prefix" 2>/dev/null || true)
    hp=$(hugepage_dir)
    [ -n "$prefix" ] && [ -n "$hp" ] && rm -f "$hp/${prefix}"map_* && rm -rf "/var/run/dpdk/$prefix"
    # The logs stay (in the caller's directory); sockets and the database go.
    rm -f "$R"/*.sock "$R"/*.ctl "$R"/*.mgmt "$R"/*.snoop "$R"/vhu* "$R"/conf.db "$R"/.conf.db.~lock~ "$R"/*.pid
    return 0
}

cmd_cmd() { # NAME vsctl|ofctl|appctl ARGS...
    local name=$1 what=$2; shift 2
    paths "$name"
    case $what in
    vsctl) vsctl "$@";;
    ofctl) ofctl "$@";;
    appctl) appctl "$@";;
    *) die "ovs.sh cmd: vsctl, ofctl or appctl";;
    esac
}

case ${1:-} in
start) shift; [ $# -ge 1 ] || usage 1; cmd_start "$@";;
run) shift; [ $# -ge 1 ] || usage 1; cmd_run "$@";;
wait-ready) shift; [ $# -ge 1 ] || usage 1; cmd_wait_ready "$@";;
wait-up) shift; [ $# -ge 1 ] || usage 1; cmd_wait_up "$@";;
stats) shift; [ $# -ge 1 ] || usage 1; cmd_stats "$@";;
stop) shift; [ $# -ge 1 ] || usage 1; cmd_stop "$@";;
cmd) shift; [ $# -ge 3 ] || usage 1; cmd_cmd "$@";;
-h|--help|"") usage 0;;
*) die "unknown subcommand $1 (start|run|wait-ready|wait-up|stats|stop|cmd)";;
esac
