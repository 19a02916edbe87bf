#!/bin/bash
# VM-to-VM switching benchmark: OVS-DPDK (a) against a vhost-user switch you
# start with a command (b; by default snabb-rs with two VhostUser ports
# joined through the software VmdqSplitter, the stand-in for vmdq-vswitch),
# both fed by the same frontends: two VirtioUser "VMs" in one snabb-rs on
# the other CPU, vm1 sending to vm2 as fast as the switch takes it (vm2
# counts what arrives and drops it unread, as testpmd's rxonly).
#
#   bench-vswitch.sh [options] [-- SWITCH_CMD...]
#
# The switch gets one CPU (--sw-cpu; OVS: one PMD thread there), the two VMs
# the other (--fe-cpu). A run: the switch, then the VMs, SKIP warm-up
# seconds, SECS one-second samples of what vm2 received; the run's figure
# is the median of those samples (frames per second delivered VM to VM).
# vm1's accepted rate is printed too. The switches alternate run by run; a
# case's figure is the median of its runs on an idle machine when most of
# every switch's runs were idle, else of all runs (marked busy). An idle
# check (idle.sh) runs before each run and watches during it.
#
# SWITCH_CMD is a template, started per run in its own process group on
# --sw-cpu and stopped with SIGINT (then TERM, KILL). It must listen on
# {sock0} (vm1's port) and {sock1} (vm2's) and forward frames for
# 02:00:00:00:00:02 from vm1 to vm2 (and for ..:01 the other way).
# Placeholders: {sock0} {sock1} {cpu} {dir} {size}. Without one: snabb-rs
#   VhostUser vm1 -> VmdqSplitter (pool vm2: ..:02) -> VhostUser vm2, and back,
#   `snabb-rs run --busywait`, on --sw-cpu.
# OVS: selftest/peers/ovs.sh, two dpdkvhostuser ports, the NORMAL action,
# static MAC entries for both VMs (as learned), one PMD on --sw-cpu.
#
# options:
#   --runs N (5)   --secs S (8)   --skip K (2)   --sizes "64 1500"
#   --sw-cpu N (0)   --fe-cpu N (1)
#   --name NAME    label of switch (b) (default snabb-rs)
#   --no-ovs       measure (b) only            --only-ovs   measure OVS only
#   --queue-size N the VMs' rings (default 256)
#   --smoke        one run of 3 s per switch, 64 B only (CI: proves it runs and frames move)
#   --dir DIR      keep logs here (default: a new temp dir, removed unless --keep)   --keep
# Environment: SNABB_RS (the binary; default $CARGO_TARGET_DIR/release/snabb-rs).
# Output lines: BENCH_ENV, IDLE (before each run), BENCH_RUN, BENCH_CASE, ratio,
# pairs, cost, then a table.
#   BENCH_RUN switch=S size=B run=R rx_pps=P tx_pps=P samples=N idle=yes|no ticks_per_frame=T
#     (T: the switch's CPU per frame in TSC ticks, from OVS's pmd-stats
#     "avg processing cycles per packet" or a snabb-rs switch's
#     engine/busy_ticks over the frames vm2 received; "-" when unknown)
#   BENCH_CASE switch=S size=B median_mpps=M runs=N clean=C busy=yes|no
#   ratio size=B value=V switch=S base=ovs mpps=M base_mpps=M busy=yes|no
#     (mpps: the switch measured, base_mpps: OVS; value = mpps / base_mpps)
#   pairs size=B median=V values=V,V,.. switch=S base=ovs
#     (each run's figure over OVS's run next to it, and their median)
#   cost size=B median=V values=V,V,.. ticks=T base_ticks=T switch=S base=ovs
#     (per run pair OVS's ticks per frame over the switch's: above 1 the
#     switch spends less CPU on a frame; read it when the rate was capped
#     by the frontends, as in the host's slow mode: see BENCHMARKS.md)
# Exit 0 when every case moved frames, 1 otherwise.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
ROOT=$(cd "$PEERS_DIR/../.." && pwd)

NAME=snabb-rs RUNS=5 SECS=8 SKIP=2 SIZES="64 1500" SW_CPU=0 FE_CPU=1 OVS=1 OURS=1 QSIZE=256 WORK="" KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --runs) RUNS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --skip) SKIP=$2; shift 2;;
    --sizes) SIZES=$2; shift 2;;
    --sw-cpu) SW_CPU=$2; shift 2;;
    --fe-cpu) FE_CPU=$2; shift 2;;
    --name) NAME=$2; shift 2;;
    --no-ovs) OVS=0; shift;;
    --only-ovs) OURS=0; shift;;
    --queue-size) QSIZE=$2; shift 2;;
    --smoke) RUNS=1 SECS=3 SKIP=1 SIZES=64; shift;;
    --dir) WORK=$2; KEEP=1; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) usage_of "$0";;
    --) shift; break;;
    *) die "bench-vswitch.sh: unknown option $1";;
    esac
done
TEMPLATE=("$@")
[ "$SECS" -ge 1 ] || die "--secs must be at least 1"
[ "$OVS" = 1 ] || [ "$OURS" = 1 ] || die "nothing to measure"
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
[ -x "$B" ] || die "no snabb-rs at $B (cargo build --release)"
"$B" apps 2>/dev/null | grep -w VirtioUser >/dev/null || die "$B has no VirtioUser"
O=$PEERS_DIR/ovs.sh

[ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-vswitch.XXXXXX")
mkdir -p "$WORK"
export SNABB_RS_PEERS_DIR=$WORK
SWITCHES=()
[ "$OVS" = 1 ] && SWITCHES+=(ovs)
[ "$OURS" = 1 ] && SWITCHES+=("$NAME")

SW_PGID="" FE_PGID=""
stop_group() { # PGID: SIGINT, then TERM, then KILL
    local g=$1 sig i
    [ -n "$g" ] || return 0
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$g" 2>/dev/null || return 0
        for ((i = 0; i < 100; i++)); do kill -0 -- -"$g" 2>/dev/null || return 0; sleep 0.1; done
    done
}
cleanup() {
    trap - EXIT INT TERM
    stop_group "$FE_PGID"; stop_group "$SW_PGID"
    "$O" stop bench >/dev/null 2>&1
    rm -f "$WORK"/*.sock
    if [ "$KEEP" = 1 ]; then say "logs in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctr() { # APP COUNTER of the frontends' process
    local f
    f=$(ls -d "$WORK/shm-fe"/[0-9]*/apps/"$1"/"$2".counter 2>/dev/null | head -1)
    [ -n "$f" ] && od -An -t u8 "$f" | tr -d ' \n' || echo 0
}
sw_busy() { # the snabb-rs switch's engine/busy_ticks (empty: not a snabb-rs switch publishing in $WORK/shm-sw)
    local f
    f=$(ls -d "$WORK/shm-sw"/[0-9]*/engine/busy_ticks.counter 2>/dev/null | head -1)
    [ -n "$f" ] && od -An -t u8 "$f" | tr -d ' \n'
}

# The default switch (b)'s config: two VhostUser ports through VmdqSplitters.
snabb_switch_config() { # SOCK0 SOCK1
    cat >"$WORK/switch.ron" <<EOF
// Two VM ports, frames sorted to the other port by destination MAC (the
// software VMDq splitter, as vmdq-vswitch does without an 82599).
(
    apps: {
        "vm1": (class: "VhostUser", args: (socket: "$1")),
        "vm2": (class: "VhostUser", args: (socket: "$2")),
        "from_vm1": (class: "VmdqSplitter", args: (pools: [(name: "vm2", macs: ["02:00:00:00:00:02"])])),
        "from_vm2": (class: "VmdqSplitter", args: (pools: [(name: "vm1", macs: ["02:00:00:00:00:01"])])),
    },
    links: [
        "vm1.output -> from_vm1.input", "from_vm1.vm2 -> vm2.input",
        "vm2.output -> from_vm2.input", "from_vm2.vm1 -> vm1.input",
    ],
)
EOF
}

# One measurement. Sets RX_PPS TX_PPS SAMPLES IDLE_OK, and TPF: the
# switch's CPU per frame over the samples, in TSC ticks spent on breaths
# (OVS: PMD iterations) that moved packets, over the frames vm2 received
# ("-" when the switch does not tell). Unlike the rate, it does not depend
# on whether the switch or the frontends were the bottleneck.
measure() { # SWITCH SIZE RUN
    local sw=$1 size=$2 run=$3 tag=$1-$2-$3 s0 s1
    RX_PPS=0 TX_PPS=0 SAMPLES=0 IDLE_OK=yes TPF=-
    rm -rf "$WORK/shm-sw"
    local before
    before=$("$PEERS_DIR/idle.sh" --seconds 1 --spin-seconds 0.3)
    grep '^IDLE ' <<<"$before"
    grep -q 'verdict=idle' <<<"$before" || IDLE_OK=no
    rm -f "$WORK"/*.sock
    if [ "$sw" = ovs ]; then
        "$O" start bench --ports 2 --cpu "$SW_CPU" --mac vhu0=02:00:00:00:00:01 --mac vhu1=02:00:00:00:00:02 \
            >"$WORK/ovs-$tag.start" 2>&1 && "$O" wait-ready bench --timeout 60 >/dev/null ||
            { say "OVS did not start: $(tail -3 "$WORK/ovs-$tag.start")"; "$O" stop bench >/dev/null 2>&1; return 1; }
        s0=$WORK/bench.ovs/vhu0 s1=$WORK/bench.ovs/vhu1
        SW_PGID=""
    else
        s0=$WORK/sw0.sock s1=$WORK/sw1.sock
        if [ ${#TEMPLATE[@]} -gt 0 ]; then
            local words=() w
            for w in "${TEMPLATE[@]}"; do
                w=${w//\{sock0\}/$s0}; w=${w//\{sock1\}/$s1}; w=${w//\{cpu\}/$SW_CPU}; w=${w//\{dir\}/$WORK}
                w=${w//\{size\}/$size}; words+=("$w")
            done
            setsid "${words[@]}" </dev/null >"$WORK/sw-$tag.log" 2>&1 &
        else
            snabb_switch_config "$s0" "$s1"
            SNABB_RS_SHM_ROOT=$WORK/shm-sw setsid taskset -c "$SW_CPU" "$B" run "$WORK/switch.ron" --busywait \
                </dev/null >"$WORK/sw-$tag.log" 2>&1 &
        fi
        SW_PGID=$!
        if ! wait_socket "$s0" 30 || ! wait_socket "$s1" 30; then
            say "switch $sw did not listen on both sockets (log: $WORK/sw-$tag.log)"
            stop_group "$SW_PGID"; SW_PGID=""
            return 1
        fi
    fi
    cat >"$WORK/vms.ron" <<EOF
// Two VMs: vm1 sends $size-byte frames to vm2 as fast as the switch takes
// them; vm2, with no output link, counts what arrives and drops it unread
// (as testpmd's rxonly).
(
    apps: {
        "gen": (class: "Source", args: (size: $size, src: "02:00:00:00:00:01", dst: "02:00:00:00:00:02")),
        "vm1": (class: "VirtioUser", args: (socket: "$s0", queue_size: $QSIZE)),
        "vm2": (class: "VirtioUser", args: (socket: "$s1", queue_size: $QSIZE)),
    },
    links: [ "gen.output -> vm1.input" ],
)
EOF
    rm -rf "$WORK/shm-fe"
    SNABB_RS_SHM_ROOT=$WORK/shm-fe setsid taskset -c "$FE_CPU" "$B" run "$WORK/vms.ron" --busywait \
        </dev/null >"$WORK/fe-$tag.log" 2>&1 &
    FE_PGID=$!
    local i ok=0
    for ((i = 0; i < 300; i++)); do
        [ "$(ctr vm1 link_up)" = 1 ] && [ "$(ctr vm2 link_up)" = 1 ] && { ok=1; break; }
        sleep 0.1
    done
    [ "$ok" = 1 ] && [ "$sw" = ovs ] && { "$O" wait-up bench --timeout 30 >/dev/null || ok=0; }
    local watch="" samples=() txs=() rx0 tx0 rx1 tx1
    if [ "$ok" = 1 ]; then
        sleep "$SKIP"
        local ignore=$FE_PGID
        [ -n "$SW_PGID" ] && ignore+=",$SW_PGID"
        [ "$sw" = ovs ] && ignore+=",$(cat "$WORK/bench.ovs/ovs-vswitchd.pid" 2>/dev/null)"
        "$PEERS_DIR/idle.sh" --passive --seconds "$SECS" --ignore-pgid "$ignore" >"$WORK/idle-$tag.txt" &
        watch=$!
        local busy0 busy1 first_rx
        if [ "$sw" = ovs ]; then
            "$O" cmd bench appctl dpif-netdev/pmd-stats-clear >/dev/null 2>&1
        else
            busy0=$(sw_busy)
        fi
        rx0=$(ctr vm2 rx_packets) tx0=$(ctr vm1 tx_packets)
        first_rx=$rx0
        local t0 t1
        t0=$(date +%s.%N)
        for ((i = 0; i < SECS; i++)); do
            sleep 1
            t1=$(date +%s.%N)
            rx1=$(ctr vm2 rx_packets) tx1=$(ctr vm1 tx_packets)
            samples+=("$(awk -v a="$rx0" -v b="$rx1" -v t="$t0" -v u="$t1" 'BEGIN { printf "%.0f", (b - a) / (u - t) }')")
            txs+=("$(awk -v a="$tx0" -v b="$tx1" -v t="$t0" -v u="$t1" 'BEGIN { printf "%.0f", (b - a) / (u - t) }')")
            rx0=$rx1 tx0=$tx1 t0=$t1
        done
        if [ "$sw" = ovs ]; then
            TPF=$("$O" cmd bench appctl dpif-netdev/pmd-stats-show 2>/dev/null |
                awk '/avg processing cycles per packet:/ { sub(/.*per packet: */, ""); v = $1 } END { if (v != "") printf "%.1f", v; else print "-" }')
        else
            busy1=$(sw_busy)
            [ -n "$busy0" ] && [ -n "$busy1" ] &&
                TPF=$(awk -v a="$busy0" -v b="$busy1" -v n="$((rx0 - first_rx))" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / n; else print "-" }')
        fi
    else
        say "the VMs did not set up on $sw (log: $WORK/fe-$tag.log)"
        IDLE_OK=no
    fi
    stop_group "$FE_PGID"; FE_PGID=""
    if [ "$sw" = ovs ]; then
        "$O" stats bench >"$WORK/ovs-$tag.stats" 2>&1
        cp "$WORK/bench.ovs/ovs-vswitchd.log" "$WORK/ovs-$tag.log" 2>/dev/null
        "$O" stop bench >/dev/null 2>&1
    else
        stop_group "$SW_PGID"; SW_PGID=""
    fi
    if [ -n "$watch" ]; then
        wait "$watch"
        grep -q 'verdict=idle' "$WORK/idle-$tag.txt" || IDLE_OK=no
        grep -q 'verdict=busy' "$WORK/idle-$tag.txt" && sed -n 's/^IDLE verdict=busy/  during the run: busy/p' "$WORK/idle-$tag.txt"
    fi
    SAMPLES=${#samples[@]}
    [ "$SAMPLES" -gt 0 ] || return 1
    RX_PPS=$(printf '%s\n' "${samples[@]}" | median)
    TX_PPS=$(printf '%s\n' "${txs[@]}" | median)
    [ "${RX_PPS%.*}" -gt 0 ] || { say "no frames reached vm2 through $sw (logs in $WORK)"; return 1; }
}

echo "BENCH_ENV date=$(date -u +%FT%TZ) host_kernel=$(uname -r) cpus=$(nproc)" \
    "ovs=$(ovs-vswitchd --version 2>/dev/null | awk 'NR == 1 { print $NF }') dpdk=$(dpkg-query -W -f '${Version}' dpdk 2>/dev/null)" \
    "sw_cpu=$SW_CPU fe_cpu=$FE_CPU runs=$RUNS secs=$SECS queue_size=$QSIZE frontends=VirtioUser switches=$(IFS=,; echo "${SWITCHES[*]}")"

declare -A RES CLEAN ALL TPFS
status=0
for size in $SIZES; do
    for run in $(seq "$RUNS"); do
        for sw in "${SWITCHES[@]}"; do
            if measure "$sw" "$size" "$run"; then :; else RX_PPS=0 TX_PPS=0; fi
            echo "BENCH_RUN switch=$sw size=$size run=$run rx_pps=$RX_PPS tx_pps=$TX_PPS samples=$SAMPLES idle=$IDLE_OK ticks_per_frame=$TPF"
            k="$sw $size"
            ALL[$k]+="$RX_PPS "
            TPFS[$k]+="$TPF "
            [ "$IDLE_OK" = yes ] && [ "${RX_PPS%.*}" -gt 0 ] && CLEAN[$k]+="$RX_PPS "
        done
    done
done

mpps() { awk -v p="$1" 'BEGIN { printf "%.2f", p / 1e6 }'; }
summary=()
for size in $SIZES; do
    everyclean=yes
    for sw in "${SWITCHES[@]}"; do
        [ $((2 * $(wc -w <<<"${CLEAN[$sw $size]:-}"))) -gt "$RUNS" ] || everyclean=no
    done
    for sw in "${SWITCHES[@]}"; do
        k="$sw $size"
        # shellcheck disable=SC2086
        if [ "$everyclean" = yes ]; then set -- ${CLEAN[$k]}; busy=no; else set -- ${ALL[$k]}; busy=yes; fi
        med=$(printf '%s\n' "$@" | median)
        RES[$k]=${med:-0}
        RES[$k busy]=$busy
        [ "${med%.*}" -gt 0 ] 2>/dev/null || status=1
        echo "BENCH_CASE switch=$sw size=$size median_mpps=$(mpps "${med:-0}") runs=$RUNS clean=$(wc -w <<<"${CLEAN[$k]:-}") busy=$busy"
    done
    row="$(printf '%5s' "$size")"
    for sw in "${SWITCHES[@]}"; do
        mark=""; [ "${RES[$sw $size busy]}" = yes ] && mark="*"
        row+="$(printf ' %14s' "$(mpps "${RES[$sw $size]}")$mark")"
    done
    if [ ${#SWITCHES[@]} = 2 ]; then
        a=${RES[ovs $size]} b=${RES[$NAME $size]}
        busy=no; [ "${RES[ovs $size busy]}" = yes ] || [ "${RES[$NAME $size busy]}" = yes ] && busy=yes
        value=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "nan" }')
        echo "ratio size=$size value=$value switch=$NAME base=ovs mpps=$(mpps "$b") base_mpps=$(mpps "$a") busy=$busy"
        # Each run against the base's run next to it: the host's fast and
        # slow modes (BENCHMARKS.md) move both alike only within a pair.
        pairs=$(paste -d' ' <(tr ' ' '\n' <<<"${ALL[ovs $size]:-}" | grep .) \
            <(tr ' ' '\n' <<<"${ALL[$NAME $size]:-}" | grep .) | awk '$1 > 0 { printf "%.3f\n", $2 / $1 }')
        pmed=$(median <<<"$pairs")
        echo "pairs size=$size median=${pmed:-nan} values=$(paste -sd, <<<"$pairs") switch=$NAME base=ovs"
        # The switches' CPU per frame, run by run: OVS's over ours (above 1:
        # ours costs less), whichever side was the bottleneck.
        cpairs=$(paste -d' ' <(tr ' ' '\n' <<<"${TPFS[ovs $size]:-}" | grep .) \
            <(tr ' ' '\n' <<<"${TPFS[$NAME $size]:-}" | grep .) |
            awk '$1 != "-" && $2 != "-" && $2 > 0 { printf "%.3f\n", $1 / $2 }')
        cmed=$(median <<<"$cpairs")
        omed=$(tr ' ' '\n' <<<"${TPFS[ovs $size]:-}" | grep -v -e '^-$' -e '^$' | median)
        smed=$(tr ' ' '\n' <<<"${TPFS[$NAME $size]:-}" | grep -v -e '^-$' -e '^$' | median)
        echo "cost size=$size median=${cmed:-nan} values=$(paste -sd, <<<"$cpairs") ticks=${smed:--} base_ticks=${omed:--} switch=$NAME base=ovs"
        row+="$(printf ' %9s' "$value")"
    fi
    summary+=("$row")
done

echo
header="$(printf '%5s' bytes)"
for sw in "${SWITCHES[@]}"; do header+="$(printf ' %14s' "$sw Mpps")"; done
[ ${#SWITCHES[@]} = 2 ] && header+="$(printf ' %9s' "$NAME/ovs")"
echo "VM to VM through the switch (frames/s vm2 received; VirtioUser frontends on CPU $FE_CPU, switch on CPU $SW_CPU)"
echo "$header"
printf '%s\n' "${summary[@]}"
echo "(each cell: median of $RUNS runs, each the median of $SECS one-second samples; * = not enough runs on an idle machine)"
exit $status
