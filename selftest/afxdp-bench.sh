#!/bin/bash
# AfXdp's packet rate on a veth pair, against RawSocket and DPDK's
# net_af_xdp (dpdk-testpmd) on the same pair, in the same run.
#
#   afxdp-bench.sh [--smoke] [--runs N] [--secs S] [--sizes "64 1500"] [--dirs "rx tx"]
#     --smoke   one short run of 64 and 1500-byte frames each way (what scripts/test.sh
#               runs: proves the harness and that packets move; no figures worth quoting)
#     defaults: 5 runs of 5 s, 64 and 1500-byte frames, both directions (~10 min)
#
# One veth pair, dut (device under test, CPU 0) and gen (CPU 1), both in the
# root namespace. Each run measures the three contenders one after the
# other on the same pair (their order turns from run to run):
#   rx   a generator on gen sends as fast as it can (a second snabb-rs:
#        Source -> AfXdp); the contender on dut receives and drops:
#          afxdp      snabb-rs  AfXdp(dut) -> Sink
#          rawsocket  snabb-rs  RawSocket(dut) -> Sink
#          dpdk       dpdk-testpmd --vdev net_af_xdp,iface=dut --forward-mode=rxonly
#          xdpdrop    no contender: a native XDP program on dut drops every frame,
#                     the least any receiver can cost (the ceiling)
#        rate: frames the contender took in over the window (its rx_packets;
#        testpmd's RX-packets, asked at its prompt; the kernel's rx_packets of
#        dut for xdpdrop). On a veth the receiving end's kernel work (its XDP
#        program and the copy into the UMEM, or the stack and AF_PACKET's copy)
#        runs on the CPU that sends, the generator's: a contender that keeps up
#        measures the generator slowed by that work, and xdpdrop bounds them all
#   tx   the contender sends as fast as it can; gen drops every frame in an
#        XDP program (native, so the veth hands frames over without a stack):
#          afxdp      snabb-rs  Source -> AfXdp(dut)
#          rawsocket  snabb-rs  Source -> RawSocket(dut)
#          dpdk       dpdk-testpmd --vdev net_af_xdp,iface=dut --forward-mode=txonly
#        rate: frames gen received (the kernel's rx_packets of gen)
# Frame sizes are without FCS (64 B: a 64-byte frame, as testpmd's --txpkts).
# snabb-rs runs with --busywait (testpmd polls too). On a veth the kernel does
# the copying into and out of the UMEM (copy mode), on the CPU that sends:
# in rx the generator's CPU also runs dut's XDP program and the copy.
#
# Prints BENCH_CASE lines per measurement and, per direction and size,
#   ratio dir=rx size=64 afxdp/dpdk=R afxdp/rawsocket=R2 afxdp=M dpdk=M rawsocket=M (median Mpps of N runs)
# and for rx the ceiling and each contender's share of what the generator sent:
#   ceiling dir=rx size=64 xdpdrop=M afxdp/xdpdrop=R kept_up: afxdp=P% dpdk=P% rawsocket=P%
# and, with perf installed, what each receiver costs the generator's CPU per frame
# (the samples of snabb-rs on CPU 1, its own sending and dut's kernel receive
# work, over the frames it sent): a figure the scheduler's share of CPU 1 moves
# less than it moves the Mpps of a busy machine (other work on CPU 1 still costs it caches):
#   gen_cpu dir=rx size=64 ns_per_frame: afxdp=N dpdk=N rawsocket=N xdpdrop=N (median)
# and the idle verdict before the runs (numbers from a busy machine mean little).
# Exit 0 when every case moved packets, 43 skip (a SKIP line), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
PEERS=$ROOT/selftest/peers
source "$PEERS/lib.sh"

RUNS=5 SECS=5 SIZES="64 1500" DIRS="rx tx" WARM=1
while [ $# -gt 0 ]; do
    case $1 in
    --smoke) RUNS=1 SECS=2 SIZES="64 1500"; shift;;
    --runs) RUNS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --sizes) SIZES=$2; shift 2;;
    --dirs) DIRS=$2; shift 2;;
    *) echo "usage: $0 [--smoke] [--runs N] [--secs S] [--sizes \"64 1500\"] [--dirs \"rx tx\"]"; exit 2;;
    esac
done

ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
[ "$(id -u)" = 0 ] || skip "needs root (veth, XDP, dpdk-testpmd)"
for p in ip dpdk-testpmd clang taskset; do
    command -v "$p" >/dev/null || skip "$p is not installed (scripts/test.sh installs it)"
done
[ "$(nproc)" -ge 2 ] || skip "needs 2 CPUs (contender and generator on their own)"
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi

TAG=xb$$
DUT=${TAG}d GEN=${TAG}g
TMP=$(mktemp -d)
export SNABB_RS_PEERS_DIR=$TMP/peers
export SNABB_RS_SHM_ROOT=$TMP/shm
PIDS=()
# libxdp (in DPDK's PMD) needs more locked memory than the default for its programs.
ulimit -l unlimited 2>/dev/null || true

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    "$PEERS/testpmd.sh" stop dpdk >/dev/null 2>&1
    ip link del "$DUT" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 1' INT TERM

ip link add "$DUT" numtxqueues 1 numrxqueues 1 type veth peer name "$GEN" numtxqueues 1 numrxqueues 1 || {
    echo "FAIL making the veth pair"
    exit 1
}
for i in "$DUT" "$GEN"; do
    sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
    ip link set "$i" up
done
# gen's sink in tx: a native XDP program that drops everything.
cat >"$TMP/drop.c" <<'EOF'
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int bench_drop(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] __attribute__((section("license"), used)) = "Apache-2.0";
EOF
clang -O2 -target bpf "-I/usr/include/$(uname -m)-linux-gnu" -c "$TMP/drop.c" -o "$TMP/drop.o" || {
    echo "FAIL compiling the drop program"
    exit 1
}

graph() { # file, apps..., -- links...
    local f=$1 apps=() links=() x
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do apps+=("$1"); shift; done
    shift
    links=("$@")
    {
        echo "( apps: {"
        for x in "${apps[@]}"; do echo "    $x,"; done
        echo "  }, links: ["
        for x in "${links[@]}"; do echo "    \"$x\","; done
        echo "] )"
    } >"$f"
}

snabb_start() { # name cpu config -> pid in $!; waits for its counters
    local name=$1 cpu=$2 cfg=$3
    taskset -c "$cpu" "$B" run "$cfg" --busywait >"$TMP/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    local i
    for i in $(seq 100); do [ -d "$SNABB_RS_SHM_ROOT/$pid/apps" ] && break; sleep 0.1; done
    sleep 0.3
    kill -0 "$pid" 2>/dev/null || { cat "$TMP/$name.log"; echo "FAIL $name did not start"; exit 1; }
    LAST=$pid
}
snabb_stop() { # pid
    kill -INT "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}
counter() { od -An -t u8 "$SNABB_RS_SHM_ROOT/$1/apps/$2/$3.counter" 2>/dev/null | tr -d ' '; }
kstat() { cat "/sys/class/net/$1/statistics/$2"; }
no_xdp() { # iface: take off whatever a contender left
    ip link set dev "$1" xdp off 2>/dev/null
    ip link set dev "$1" xdpgeneric off 2>/dev/null
}
mpps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.3f", n / s / 1e6 }'; }
# Frames testpmd's port has taken in so far (its prompt answers at once;
# the per-second statistics of batch mode come late on a busy CPU).
dpdk_rx() {
    "$PEERS/testpmd.sh" cmd dpdk "show port stats 0" | awk '/RX-packets:/ { print $2; exit }'
}

# One measurement: M = the Mpps of contender $3 in direction $1 at size $2,
# GEN_MPPS = what the generator sent (rx).
measure() {
    M=0 GEN_MPPS=- GEN_NS=-
    local dir=$1 size=$2 who=$3 gen=
    local t0 t1 a b dut=
    if [ "$dir" = rx ]; then
        case $who in
        afxdp) graph "$TMP/dut.ron" "\"dut\": (class: \"AfXdp\", args: (interface: \"$DUT\"))" '"sink": (class: "Sink")' -- "dut.tx -> sink.input";;
        rawsocket) graph "$TMP/dut.ron" "\"dut\": (class: \"RawSocket\", args: (interface: \"$DUT\"))" '"sink": (class: "Sink")' -- "dut.tx -> sink.input";;
        esac
        if [ "$who" = dpdk ]; then
            "$PEERS/testpmd.sh" start dpdk --af-xdp "$DUT" --cpu 0 --fwd rxonly --interactive >/dev/null || return 1
            "$PEERS/testpmd.sh" wait-ready dpdk --timeout 30 >/dev/null || { cat "$SNABB_RS_PEERS_DIR/dpdk.log" >&2; return 1; }
        elif [ "$who" = xdpdrop ]; then
            ip link set dev "$DUT" xdp obj "$TMP/drop.o" sec xdp || return 1
        else
            snabb_start dut 0 "$TMP/dut.ron"
            dut=$LAST
        fi
        graph "$TMP/gen.ron" "\"src\": (class: \"Source\", args: (size: $size))" "\"gen\": (class: \"AfXdp\", args: (interface: \"$GEN\"))" -- "src.output -> gen.rx"
        snabb_start gen 1 "$TMP/gen.ron"
        gen=$LAST
        sleep "$WARM"
        local g0 g1
        rx_now() {
            if [ -n "$dut" ]; then counter "$dut" dut rx_packets
            elif [ "$who" = xdpdrop ]; then kstat "$DUT" rx_packets
            else dpdk_rx; fi
        }
        g0=$(counter "$gen" gen tx_packets)
        a=$(rx_now)
        t0=$(date +%s.%N)
        if [ -n "$PERF" ]; then
            # Software sampling (no PMU needed) of CPU 1 at 4 kHz: 250 us a sample.
            "$PERF" record -q -F 4000 -C 1 -o "$TMP/perf.data" -- sleep "$SECS" >/dev/null 2>&1
        else
            sleep "$SECS"
        fi
        t1=$(date +%s.%N)
        b=$(rx_now)
        g1=$(counter "$gen" gen tx_packets)
        snabb_stop "$gen"
        local secs
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
        GEN_MPPS=$(mpps $((g1 - g0)) "$secs")
        GEN_NS=-
        if [ -n "$PERF" ] && [ -s "$TMP/perf.data" ]; then
            local samples
            samples=$("$PERF" report -i "$TMP/perf.data" --sort comm --stdio -n 2>/dev/null | awk '$3 == "snabb-rs" { print $2 }')
            GEN_NS=$(awk -v s="${samples:-0}" -v n=$((g1 - g0)) 'BEGIN { if (n > 0 && s > 0) printf "%.0f", s * 250000 / n; else print "-" }')
            rm -f "$TMP/perf.data"
        fi
        if [ -n "$dut" ]; then snabb_stop "$dut"
        elif [ "$who" = dpdk ]; then "$PEERS/testpmd.sh" stop dpdk >/dev/null; fi
        M=$(mpps $((b - a)) "$secs")
    else
        ip link set dev "$GEN" xdp obj "$TMP/drop.o" sec xdp || return 1
        case $who in
        afxdp) graph "$TMP/dut.ron" "\"src\": (class: \"Source\", args: (size: $size))" "\"dut\": (class: \"AfXdp\", args: (interface: \"$DUT\"))" -- "src.output -> dut.rx";;
        rawsocket) graph "$TMP/dut.ron" "\"src\": (class: \"Source\", args: (size: $size))" "\"dut\": (class: \"RawSocket\", args: (interface: \"$DUT\"))" -- "src.output -> dut.rx";;
        esac
        if [ "$who" = dpdk ]; then
            "$PEERS/testpmd.sh" start dpdk --af-xdp "$DUT" --cpu 0 --fwd txonly --txpkts "$size" >/dev/null || return 1
            "$PEERS/testpmd.sh" wait-ready dpdk --timeout 30 >/dev/null || { cat "$SNABB_RS_PEERS_DIR/dpdk.log" >&2; return 1; }
        else
            snabb_start dut 0 "$TMP/dut.ron"
            dut=$LAST
        fi
        sleep "$WARM"
        a=$(kstat "$GEN" rx_packets)
        t0=$(date +%s.%N)
        sleep "$SECS"
        t1=$(date +%s.%N)
        b=$(kstat "$GEN" rx_packets)
        if [ -n "$dut" ]; then snabb_stop "$dut"; else "$PEERS/testpmd.sh" stop dpdk >/dev/null; fi
        no_xdp "$GEN"
        M=$(mpps $((b - a)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    fi
    no_xdp "$DUT"
}

PERF=$(command -v perf || true)
idle=$("$PEERS/idle.sh" --seconds 1 2>/dev/null | grep '^IDLE verdict')
echo "--- ${idle:-IDLE verdict=unknown}"
echo "--- $RUNS run(s) of ${SECS} s; sizes $SIZES; directions $DIRS; dut=$DUT (CPU 0), gen=$GEN (CPU 1)"
ok=1
for dir in $DIRS; do
    # In rx, the kernel dropping at dut's XDP hook is the ceiling, measured
    # in the same rotation.
    WHO=(afxdp rawsocket dpdk)
    [ "$dir" = rx ] && WHO+=(xdpdrop)
    n=${#WHO[@]}
    for size in $SIZES; do
        declare -A R=() KEPT=() NS=()
        for run in $(seq "$RUNS"); do
            for k in $(seq 0 $((n - 1))); do
                who=${WHO[$(((k + run - 1) % n))]}
                measure "$dir" "$size" "$who" || M=0
                m=${M:-0}
                echo "BENCH_CASE dir=$dir size=$size dut=$who run=$run mpps=$m gen_mpps=$GEN_MPPS gen_ns_per_frame=$GEN_NS"
                [ "$GEN_NS" != - ] && NS[$who]+="$GEN_NS "
                awk -v m="$m" 'BEGIN { exit !(m > 0) }' || { echo "FAIL $who $dir $size moved no packets"; ok=0; }
                R[$who]+="$m "
                # The share of the generator's frames it took.
                [ "$GEN_MPPS" != - ] && KEPT[$who]+="$(awk -v m="$m" -v g="$GEN_MPPS" 'BEGIN { if (g > 0) printf "%.0f", 100 * m / g; else print 0 }') "
            done
        done
        med() { tr ' ' '\n' <<<"$1" | grep . | median; }
        ma=$(med "${R[afxdp]}") mr=$(med "${R[rawsocket]}") md=$(med "${R[dpdk]}")
        ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
        echo "ratio dir=$dir size=$size afxdp/dpdk=$(ratio "$ma" "$md") afxdp/rawsocket=$(ratio "$ma" "$mr") afxdp=$ma dpdk=$md rawsocket=$mr (median Mpps of $RUNS runs)"
        if [ "$dir" = rx ]; then
            mx=$(med "${R[xdpdrop]}")
            echo "ceiling dir=rx size=$size xdpdrop=$mx afxdp/xdpdrop=$(ratio "$ma" "$mx") dpdk/xdpdrop=$(ratio "$md" "$mx") kept_up: afxdp=$(med "${KEPT[afxdp]}")% dpdk=$(med "${KEPT[dpdk]}")% rawsocket=$(med "${KEPT[rawsocket]}")% (median share of the generator's frames taken; near 100%: the generator's CPU, which also runs dut's kernel receive path, is the limit, not the contender)"
        fi
        if [ "$dir" = rx ] && [ -n "${NS[afxdp]:-}" ]; then
            echo "gen_cpu dir=rx size=$size ns_per_frame: afxdp=$(med "${NS[afxdp]:-}") dpdk=$(med "${NS[dpdk]:-}") rawsocket=$(med "${NS[rawsocket]:-}") xdpdrop=$(med "${NS[xdpdrop]:-}") (median; the generator's CPU time per frame sent, dut's kernel receive work included: lower is a cheaper receiver)"
        fi
        unset R KEPT NS
    done
done
[ "$ok" = 1 ] && echo "PASS afxdp-bench: every case moved packets"
[ "$ok" = 1 ]
