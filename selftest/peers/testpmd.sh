#!/bin/bash
# Run DPDK's dpdk-testpmd as a vhost-user peer, and read what it measured.
#
#   testpmd.sh start NAME PORTS [options] [-- testpmd-args]   in the background
#   testpmd.sh run NAME PORTS [options] [-- testpmd-args]     in the foreground, until SIGINT/SIGTERM
#   testpmd.sh wait-ready NAME [--timeout S]   until forwarding started (and server sockets exist)
#   testpmd.sh stop NAME [--timeout S]         SIGINT (final statistics), KILL if it hangs, cleanup
#   testpmd.sh pps NAME [--port N] [--rx|--tx] [--skip K]   median rate of the per-second samples
#   testpmd.sh counters NAME                   per-port packet counts of the finished run
#   testpmd.sh cleanup NAME                    remove its huge page files and runtime dir
#   testpmd.sh cmd NAME COMMAND...             send a command to an --interactive testpmd
#
# PORTS (repeatable, in port order):
#   --vhost SOCK           a net_vhost port: testpmd is the vhost-user backend; it listens on SOCK
#                          (--vhost-client: connect to SOCK instead, and reconnect)
#   --virtio-user SOCK     a net_virtio_user port: testpmd is the frontend (a "guest"); it connects
#                          to SOCK (--virtio-user-server: listen instead)
#   --af-xdp IFACE         a net_af_xdp port on a Linux interface, queues 0..--queues (DPDK's
#                          AF_XDP PMD: libxdp attaches its own XDP program while testpmd runs)
# options:
#   --dir DIR              NAME.log, NAME.pid, NAME.prefix live here ($SNABB_RS_PEERS_DIR or /tmp/snabb-rs-peers)
#   --cpu N                CPU for both lcores: --lcores '0@N,1@N' (default 0). The main lcore only
#                          prints statistics, so the forwarding lcore gets the CPU to itself.
#   --fwd MODE             io|mac|macswap|rxonly|txonly|flowgen|... (default io)
#   --txpkts LEN           frame length sent by txonly/flowgen (default 64)
#   --burst N              packets per burst (default 32)
#   --queues N             queue pairs per port (default 1)
#   --packed               packed virtqueues on virtio-user ports
#   --mrg-rxbuf 0|1        virtio-user mergeable rx buffers (default: DPDK's, on)
#   --mem MB               memory (default 512); huge pages when enough are free, else --no-huge
#   --no-huge              ordinary memory even when huge pages are free
#   --mbufs N              --total-num-mbufs (default 32768)
#   --stats-period S       statistics every S seconds (default 1; 0 = none)
#   --vdev-args STR        appended to every --vdev, e.g. tso=1
#   --log-level STR        e.g. lib.vhost.config:debug (every vhost-user message)
#   --interactive          testpmd's prompt reads NAME.in (a FIFO): drive it with `testpmd.sh cmd`,
#                          e.g. "stop" (forwarding stops, ports stay connected), "start",
#                          "show port stats all". Forwarding starts at once (--auto-start); there
#                          are no per-second statistics in this mode.
#   --paused               with --interactive: do not start forwarding until `cmd NAME start`
#   -- ARGS                more testpmd application arguments, e.g. --tx-first
#
# Output lines (stdout), for scripts:
#   TESTPMD_STARTED name=N pid=P log=F prefix=X huge=yes|no cpu=C
#   TESTPMD_READY name=N                      (wait-ready; exit 1 on timeout, 2 if it died or failed)
#   TESTPMD_STOPPED name=N how=gone|signal|kill
#   TESTPMD_PORT name=N port=I rx_packets=R rx_dropped=D tx_packets=T tx_dropped=E   (stop, counters:
#                                             from the last "Forward statistics" block of each port)
#   TESTPMD_PPS name=N port=I dir=rx|tx median=PPS samples=S first=F last=L     (pps; median=0 if none)
set -uo pipefail
source "$(dirname "$0")/lib.sh"

DIR=${SNABB_RS_PEERS_DIR:-/tmp/snabb-rs-peers}
TESTPMD=${TESTPMD:-dpdk-testpmd}

usage() { usage_of "$0" "${1:-0}"; }

# --- start / run ---------------------------------------------------------------------
parse_start() {
    NAME=$1; shift
    PORTS=() CPU=0 FWD=io TXPKTS=64 BURST=32 QUEUES=1 PACKED=0 MRG="" MEM=512 NOHUGE=0 MBUFS=32768
    PERIOD=1 VDEVARGS="" LOGLEVEL="" VHOST_CLIENT=0 VU_SERVER=0 INTERACTIVE=0 PAUSED=0 EXTRA=()
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --vhost) PORTS+=("vhost:$2"); shift 2;;
        --virtio-user) PORTS+=("virtio:$2"); shift 2;;
        --af-xdp) PORTS+=("afxdp:$2"); shift 2;;
        --vhost-client) VHOST_CLIENT=1; shift;;
        --virtio-user-server) VU_SERVER=1; shift;;
        --cpu) CPU=$2; shift 2;;
        --fwd) FWD=$2; shift 2;;
        --txpkts) TXPKTS=$2; shift 2;;
        --burst) BURST=$2; shift 2;;
        --queues) QUEUES=$2; shift 2;;
        --packed) PACKED=1; shift;;
        --mrg-rxbuf) MRG=$2; shift 2;;
        --mem) MEM=$2; shift 2;;
        --no-huge) NOHUGE=1; shift;;
        --mbufs) MBUFS=$2; shift 2;;
        --stats-period) PERIOD=$2; shift 2;;
        --vdev-args) VDEVARGS=$2; shift 2;;
        --log-level) LOGLEVEL=$2; shift 2;;
        --interactive) INTERACTIVE=1; shift;;
        --paused) PAUSED=1; shift;;
        --) shift; EXTRA=("$@"); break;;
        *) die "testpmd.sh: unknown option $1";;
        esac
    done
    [ ${#PORTS[@]} -gt 0 ] || die "testpmd.sh: give at least one --vhost SOCK, --virtio-user SOCK or --af-xdp IFACE"
    [ "$PAUSED" = 1 ] && [ "$INTERACTIVE" = 0 ] && die "testpmd.sh: --paused needs --interactive"
    [[ $CPU =~ ^[0-9]+$ ]] || die "--cpu takes one CPU number"
}

build_cmd() {
    # A prefix of our own: huge page files and the runtime dir are named after it,
    # so parallel runs (other suites, other developers) never collide or clean up each other.
    PREFIX="pr-${NAME//[^A-Za-z0-9]/}-$$"
    local huge=yes p kind sock vdev has_virtio=0
    if [ "$NOHUGE" = 1 ] || [ -z "$(hugepage_dir)" ] || [ "$(hugepages_free)" -lt $(( MEM / 2 + 16 )) ]; then
        huge=no
    fi
    HUGE=$huge
    # Line-buffered, so the log shows each statistics block and command answer as it is printed.
    CMD=(stdbuf -oL "$TESTPMD" --lcores "0@$CPU,1@$CPU" --no-pci --file-prefix="$PREFIX" -m "$MEM")
    [ "$huge" = no ] && CMD+=(--no-huge)
    [ -n "$LOGLEVEL" ] && CMD+=(--log-level="$LOGLEVEL")
    local nv=0 nu=0 nx=0
    for p in "${PORTS[@]}"; do
        kind=${p%%:*} sock=${p#*:}
        if [ "$kind" = afxdp ]; then
            vdev="net_af_xdp$nx,iface=$sock,start_queue=0,queue_count=$QUEUES"
            nx=$((nx + 1))
        elif [ "$kind" = vhost ]; then
            vdev="net_vhost$nv,iface=$sock,queues=$QUEUES"
            [ "$VHOST_CLIENT" = 1 ] && vdev+=",client=1"
            nv=$((nv + 1))
        else
            vdev="net_virtio_user$nu,path=$sock,queues=$QUEUES"
            [ "$VU_SERVER" = 1 ] && vdev+=",server=1"
            [ "$PACKED" = 1 ] && vdev+=",packed_vq=1"
            [ -n "$MRG" ] && vdev+=",mrg_rxbuf=$MRG"
            nu=$((nu + 1)); has_virtio=1
        fi
        [ -n "$VDEVARGS" ] && vdev+=",$VDEVARGS"
        CMD+=(--vdev "$vdev")
    done
    # virtio-user hands its memory to the backend as fds; with one file per
    # huge page it runs out of memory-table slots and moves nothing.
    [ "$has_virtio" = 1 ] && [ "$huge" = yes ] && CMD+=(--single-file-segments)
    # --no-flush-rx: packets that arrive before forwarding starts are counted, not
    # silently flushed, so the counts of two peers can be compared exactly.
    CMD+=(-- --forward-mode="$FWD" --txpkts="$TXPKTS" --burst="$BURST" --nb-cores=1 --no-flush-rx
        --total-num-mbufs="$MBUFS" --rxq="$QUEUES" --txq="$QUEUES")
    if [ "$INTERACTIVE" = 1 ]; then
        CMD+=(-i)
        [ "$PAUSED" = 1 ] || CMD+=(--auto-start)
    elif [ "$PERIOD" != 0 ]; then
        CMD+=(--stats-period "$PERIOD")
    fi
    CMD+=("${EXTRA[@]}")
}

launch() {
    mkdir -p "$DIR"
    local log=$DIR/$NAME.log pidf=$DIR/$NAME.pid old
    old=$(cat "$pidf" 2>/dev/null || true)
    pid_is "$old" dpdk-testpmd && die "testpmd $NAME is already running (pid $old); stop it first"
    local p
    for p in "${PORTS[@]}"; do
        # A stale socket file from a crashed run would make the server's bind fail.
        case $p in vhost:*) [ "$VHOST_CLIENT" = 0 ] && rm -f "${p#*:}";; virtio:*) [ "$VU_SERVER" = 1 ] && rm -f "${p#*:}";; esac
    done
    echo "$PREFIX" > "$DIR/$NAME.prefix"
    printf '%q ' "${CMD[@]}" > "$DIR/$NAME.cmd"
    # The sockets a backend listens on: wait-ready waits for them.
    : > "$DIR/$NAME.socks"
    for p in "${PORTS[@]}"; do
        case $p in
        vhost:*) [ "$VHOST_CLIENT" = 0 ] && echo "${p#*:}" >> "$DIR/$NAME.socks";;
        virtio:*) [ "$VU_SERVER" = 1 ] && echo "${p#*:}" >> "$DIR/$NAME.socks";;
        esac
    done
    [ -f "$log" ] && mv -f "$log" "$log.prev"
    # stdin is a FIFO that testpmd opens read-write, so it never sees
    # end-of-file: the prompt of --interactive reads commands from it, and
    # without --stats-period testpmd waits on it ("Press enter to exit").
    rm -f "$DIR/$NAME.in"; mkfifo "$DIR/$NAME.in"
    [ "$INTERACTIVE" = 1 ] && echo interactive > "$DIR/$NAME.mode" || echo batch > "$DIR/$NAME.mode"
    setsid "${CMD[@]}" <>"$DIR/$NAME.in" >"$log" 2>&1 &
    PID=$!
    echo "$PID" > "$pidf"
    echo "TESTPMD_STARTED name=$NAME pid=$PID log=$log prefix=$PREFIX huge=$HUGE cpu=$CPU fwd=$FWD txpkts=$TXPKTS ports=${#PORTS[@]}"
}

cmd_start() { parse_start "$@"; build_cmd; launch; }

cmd_run() { # foreground: a backend command for bench-vhost.sh, or a switch a test starts and kills
    parse_start "$@"; build_cmd
    launch
    trap 'cmd_stop "$NAME"; exit 0' INT TERM
    # `wait` returns early when a trapped signal arrives; loop until testpmd is gone.
    while kill -0 "$PID" 2>/dev/null; do wait "$PID"; done
    say "testpmd $NAME exited by itself"
    cmd_counters "$NAME"
    cmd_cleanup "$NAME" >/dev/null
    exit 1
}

# --- wait-ready ------------------------------------------------------------------------
cmd_wait_ready() {
    local name=$1; shift
    local timeout=30
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "testpmd.sh wait-ready: unknown option $1";;
        esac
    done
    local log=$DIR/$name.log pid deadline socks
    pid=$(cat "$DIR/$name.pid" 2>/dev/null || true)
    deadline=$(( $(date +%s) + timeout ))
    socks=$(cat "$DIR/$name.socks" 2>/dev/null)
    while :; do
        if grep -q -E 'Too many memory regions|Failed to start device|Cause:|EAL: Error' "$log" 2>/dev/null; then
            echo "TESTPMD_FAILED name=$name reason=$(grep -m1 -o -E 'Too many memory regions|Failed to start device|Cause:.*|EAL: Error.*' "$log" | tr ' ' _)"
            return 2
        fi
        if grep -q -E 'start packet forwarding|Press enter to exit|^testpmd> ' "$log" 2>/dev/null; then
            local s ok=1
            for s in $socks; do [ -S "$s" ] || ok=0; done
            [ "$ok" = 1 ] && { echo "TESTPMD_READY name=$name"; return 0; }
        fi
        if ! pid_is "$pid" dpdk-testpmd; then
            echo "TESTPMD_FAILED name=$name reason=exited"
            return 2
        fi
        [ "$(date +%s)" -ge "$deadline" ] && { echo "TESTPMD_TIMEOUT name=$name"; return 1; }
        sleep 0.1
    done
}

# --- stop / cleanup ------------------------------------------------------------------------
cmd_stop() {
    local name=$1; shift
    local timeout=10
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "testpmd.sh stop: unknown option $1";;
        esac
    done
    local pid how=gone
    pid=$(cat "$DIR/$name.pid" 2>/dev/null || true)
    # "quit" at the prompt, or SIGINT: testpmd stops forwarding, prints its
    # forward statistics and closes the ports.
    if [ "$(cat "$DIR/$name.mode" 2>/dev/null)" = interactive ] && pid_is "$pid" dpdk-testpmd; then
        timeout 2 sh -c 'echo quit > "$1"' _ "$DIR/$name.in"
        local i
        for ((i = 0; i < timeout * 10; i++)); do pid_is "$pid" dpdk-testpmd || { how=quit; break; }; sleep 0.1; done
    fi
    pid_is "$pid" dpdk-testpmd && how=$(stop_pid "$pid" INT "$timeout")
    echo "TESTPMD_STOPPED name=$name how=$how"
    cmd_counters "$name"
    cmd_cleanup "$name" >/dev/null
}

cmd_cleanup() {
    local name=$1
    [ "${2:-}" = --dir ] && DIR=$3
    local prefix hp
    prefix=$(cat "$DIR/$name.prefix" 2>/dev/null || true)
    rm -f "$DIR/$name.pid"
    [ -n "$prefix" ] || return 0
    # Even after a clean exit testpmd leaves its huge page files, and the pages
    # stay reserved until they are removed.
    hp=$(hugepage_dir)
    [ -n "$hp" ] && rm -f "$hp/${prefix}"map_*
    rm -rf "/var/run/dpdk/$prefix"
    rm -f "$DIR/$name.prefix" "$DIR/$name.in" "$DIR/$name.mode"
    echo "TESTPMD_CLEANED name=$name prefix=$prefix"
}

# --- reading the log ---------------------------------------------------------------------------
log_of() { # NAME or --log FILE
    if [ "$1" = --log ]; then echo "$2"; else echo "$DIR/$1.log"; fi
}

cmd_counters() {
    local log
    log=$(log_of "$@")
    [ "${1:-}" = --log ] && set -- "$(basename "$2" .log)"
    # The "Forward statistics for port N" blocks testpmd prints when it stops.
    tr -d '\r' <"$log" | awk -v name="$1" '
        /Forward statistics for port/ { port = $(NF - 1); on = 1; next }
        on && /RX-packets:/ { rx = $2; rxd = $4 }
        on && /TX-packets:/ {
            if (!(port in line)) order[n++] = port
            line[port] = sprintf("TESTPMD_PORT name=%s port=%s rx_packets=%s rx_dropped=%s tx_packets=%s tx_dropped=%s", name, port, rx, rxd, $2, $4)
            on = 0
        }
        END { for (i = 0; i < n; i++) print line[order[i]] }'
}

cmd_pps() {
    local name=$1; shift
    local log port=0 dir=rx skip=2
    if [ "$name" = --log ]; then log=$1; name=$(basename "$1" .log); shift; else log=$DIR/$name.log; fi
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; log=$DIR/$name.log; shift 2;;
        --port) port=$2; shift 2;;
        --rx) dir=rx; shift;;
        --tx) dir=tx; shift;;
        --skip) skip=$2; shift 2;;
        *) die "testpmd.sh pps: unknown option $1";;
        esac
    done
    # The samples of one port and direction. Leading zeros (no peer yet) go,
    # then SKIP warm-up samples, and the last one (cut short by the stop).
    local samples
    samples=$(tr -d '\r' <"$log" | awk -v port="$port" -v key="$([ "$dir" = rx ] && echo Rx-pps: || echo Tx-pps:)" '
        /NIC statistics for port/ { p = $(NF - 1) }
        p == port && $1 == key { print $2 }' |
        awk -v skip="$skip" '$1 > 0 { started = 1 } started { a[n++] = $1 } END { for (i = skip; i < n - 1; i++) print a[i] }')
    local n med first last
    n=$(grep -c . <<<"$samples")
    med=$(median <<<"$samples"); first=$(head -1 <<<"$samples"); last=$(tail -1 <<<"$samples")
    echo "TESTPMD_PPS name=$name port=$port dir=$dir median=${med:-0} samples=$n first=${first:-0} last=${last:-0}"
}

cmd_cmd() { # NAME [--dir DIR] COMMAND...
    local name=$1; shift
    if [ "${1:-}" = --dir ]; then DIR=$2; shift 2; fi
    [ "$(cat "$DIR/$name.mode" 2>/dev/null)" = interactive ] || die "testpmd $name was not started with --interactive"
    local log=$DIR/$name.log before
    before=$(wc -c <"$log")
    timeout 2 sh -c 'echo "$2" > "$1"' _ "$DIR/$name.in" "$*" || die "testpmd $name does not read its commands"
    # Its answer: what the log gained until the next prompt (at most 5 s).
    local i
    for ((i = 0; i < 50; i++)); do
        sleep 0.1
        tail -c +"$((before + 1))" "$log" | grep 'testpmd> ' >/dev/null && break
    done
    tail -c +"$((before + 1))" "$log" | tr -d '\r' | grep -v '^testpmd> $' | sed 's/^testpmd> //'
}

case ${1:-} in
cmd) shift; [ $# -ge 2 ] || usage 1; cmd_cmd "$@";;
start) shift; [ $# -ge 1 ] || usage 1; cmd_start "$@";;
run) shift; [ $# -ge 1 ] || usage 1; cmd_run "$@";;
wait-ready) shift; [ $# -ge 1 ] || usage 1; cmd_wait_ready "$@";;
stop) shift; [ $# -ge 1 ] || usage 1; cmd_stop "$@";;
cleanup) shift; [ $# -ge 1 ] || usage 1; cmd_cleanup "$@";;
counters) shift; [ $# -ge 1 ] || usage 1
    if [ "$1" != --log ] && [ "${2:-}" = --dir ]; then DIR=$3; fi
    cmd_counters "$@";;
pps) shift; [ $# -ge 1 ] || usage 1; cmd_pps "$@";;
-h|--help|"") usage 0;;
*) die "unknown subcommand $1 (start|run|wait-ready|stop|pps|counters|cleanup|cmd)";;
esac
