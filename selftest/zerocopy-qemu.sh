#!/bin/bash
# Zero copy end to end: a Linux guest (QEMU, selftest/peers/guest.sh) on a
# VhostUser port fed by an 82599 VMDq pool of the model, whose wire is a
# veth into a network namespace (the outside world):
#
#   ns: P 10.79.0.1 ==veth== V [model port, pool 1] == Intel10g "pool" == VhostUser "vm" == guest 10.79.0.2
#
# The pool's output goes to the port on a link in the copy mode under test,
# the port lends its guest's receive buffers on `vm.supply -> pool.supply`
# (Zero), and the guest's frames go back on `vm.output -> pool.input`.
#
#   1. copy: Zero. Ping from the namespace (every one answered); iperf3 into
#      the guest and out of it (-R), 5 s each. Counters: frames delivered in
#      lent buffers, the port copied no frame into the guest (every one came
#      in a buffer the chip wrote), and the guest's long frames left from
#      lent buffers; frames over the chip's buffer size are counted where
#      they were moved or copied (the driver's rx_gathered/rx_copied_long).
#   2. copy: Simd. The same traffic; nothing lent, every frame copied.
#   3. Live switches: an iperf3 stream into the guest while the config is
#      saved with Simd, Zero, Simd, Zero (every 3 s): the stream finishes,
#      the guest stays connected (one connection), both paths carried frames.
#   4. Jumbo frames (the guest's MTU 9000, its buffers ~1.5 KiB): pings of
#      8000 bytes from the namespace, each frame written by the chip over
#      several of the guest's lent buffers and merged in place (the port
#      moves each later buffer's bytes over its header room, num_buffers):
#      8 of 10 pings answered at least, pool rx_chained and port
#      tx_zc_chained count each frame, no byte copied into the guest.
#   5. Throughout: the model saw no DMA fault (a write outside the guest's
#      buffers or our memory), no protocol violation.
#
# Exit 0 pass, 43 skip (SKIP line), 1 fail. Bounded by $ZEROCOPY_QEMU_LIMIT
# (default 420 s); every process is stopped on exit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
P=$ROOT/selftest/peers
source "$P/lib.sh"
G=$P/guest.sh

LIMIT=${ZEROCOPY_QEMU_LIMIT:-420}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
PASSED=0 FAILED=0
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, veth, QEMU with shared memory)"
for prog in qemu-system-x86_64 busybox iperf3 ip ethtool; do
    command -v "$prog" >/dev/null || skip "$prog is missing (scripts/test.sh installs it)"
done
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi

TAG=zc$$
NS=${TAG}n V=${TAG}v PV=${TAG}p
W=$(mktemp -d "${TMPDIR:-/tmp}/zerocopy-qemu.XXXXXX")
chmod 755 "$W"
export SNABB_RS_PEERS_DIR=$W SNABB_RS_SHM_ROOT=$W/shm
SW="" WATCHDOG=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    "$G" stop g1 --timeout 3 >/dev/null 2>&1
    [ -n "$SW" ] && { kill -INT "$SW" 2>/dev/null; sleep 0.5; kill -KILL "$SW" 2>/dev/null; wait "$SW" 2>/dev/null; }
    if [ -e "/run/netns/$NS" ]; then
        ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
        ip netns del "$NS"
    fi
    ip link del "$V" 2>/dev/null
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then
        rm -rf "$W"
    else
        echo "logs kept in $W"
        for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $(basename "$f") (last 15 lines)"; tail -15 "$f" | tr -d '\r' | cut -c1-200; }; done
    fi
}
trap 'cleanup $?' EXIT
trap 'echo "FAIL interrupted"; FAILED=$((FAILED + 1)); exit 1' INT TERM
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL the suite ran past ${LIMIT} s"
    kill -TERM $$
) &
WATCHDOG=$!

echo "--- namespace $NS, veth $V (model) - $PV (namespace)"
ip netns add "$NS"
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add "$V" type veth peer name "$PV" netns "$NS"
sysctl -qw "net.ipv6.conf.$V.disable_ipv6=1"
# Frames no longer than the MTU both ways: the model's wire reads what the
# kernel hands a raw socket, and segmentation offloads would hand it 64 KiB.
ethtool -K "$V" gro off tso off gso off tx off >/dev/null 2>&1
ip netns exec "$NS" ethtool -K "$PV" gro off tso off gso off tx off >/dev/null 2>&1
# The model's wire takes jumbo frames; the namespace keeps 1500 (so that
# TCP in steps 1-3 uses 1500-byte frames) until step 4.
ip link set "$V" mtu 9000
ip link set "$V" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add 10.79.0.1/24 dev "$PV"
ip netns exec "$NS" ip link set "$PV" up

MAC=52:54:00:79:00:02
write_config() { # MODE
    cat >"$W/zc.ron.new" <<EOF
(
    apps: {
        "pool": (class: "Intel10g", args: (pci: "model:$TAG", wire: Interface("$V"), link_wait: 2.0,
                 mode: Vmdq(pools: 64), pool: 1, macs: ["$MAC"])),
        "vm": (class: "VhostUser", args: (socket: "$W/vm.sock", mac: Some("$MAC"), mtu: 9000)),
    },
    links: [
        (link: "pool.output -> vm.input", copy: $1),
        (link: "vm.supply -> pool.supply", copy: $1),
        (link: "vm.output -> pool.input", copy: $1),
    ],
)
EOF
    mv "$W/zc.ron.new" "$W/zc.ron"
}

# ctr APP NAME: a counter of the running snabb-rs (0 when absent).
ctr() {
    local f="$W/shm/$SW/apps/$1/$2.counter"
    [ -f "$f" ] && od -An -t u8 "$f" | tr -d ' ' || echo 0
}

start_switch() { # MODE
    write_config "$1"
    "$B" config check "$W/zc.ron" >/dev/null 2>"$W/check.log" || { fail "config check ($(tail -1 "$W/check.log"))"; return 1; }
    "$B" run "$W/zc.ron" >"$W/switch.log" 2>&1 &
    SW=$!
}
stop_switch() {
    [ -n "$SW" ] && { kill -INT "$SW" 2>/dev/null; wait "$SW" 2>/dev/null; }
    SW=""
}

nsx() { ip netns exec "$NS" "$@"; }
IPERF_N=0
iperf_ns() { # ARGS...: one iperf3 client run in the namespace; prints bits per second received
    IPERF_N=$((IPERF_N + 1))
    local j="$W/iperf$IPERF_N.json" bps
    nsx timeout 60 iperf3 -c 10.79.0.2 -t "${SECS:-5}" -J "$@" >"$j" 2>&1
    bps=$(awk '/"sum_received"/ { on = 1 } on && /"bits_per_second"/ { sub(/.*:[ \t]*/, ""); sub(/[ \t]*,.*/, ""); printf "%d\n", $0; exit }' "$j")
    [ -n "$bps" ] || echo "    iperf3 $*: $(grep -m1 '"error"' "$j" | tr -d '\t')" >&2
    echo "${bps:-0}"
}

# traffic MODE: ping and iperf3 both ways through the running switch and guest.
traffic() {
    local m=$1 got bps
    got=$(nsx ping -c 10 -i 0.2 -W 2 10.79.0.2 2>/dev/null | sed -n 's/.* \([0-9]*\) received.*/\1/p')
    check "$m: ping from the namespace: ${got:-0} of 10 answered" [ "${got:-0}" = 10 ]
    bps=$(iperf_ns)
    check "$m: iperf3 into the guest: $bps bit/s" [ "${bps:-0}" -gt 1000000 ]
    bps=$(iperf_ns -R)
    check "$m: iperf3 out of the guest (-R): $bps bit/s" [ "${bps:-0}" -gt 1000000 ]
}

model_clean() { # the model's DMA faults and violations, from the pool's counters
    local f v
    f=$(ctr pool model_dma_faults) v=$(ctr pool model_violations)
    check "$1: the model saw no DMA fault ($f) and no violation ($v)" [ "$f" = 0 ] && [ "$v" = 0 ]
}

# --- the guest -----------------------------------------------------------------------
start_switch Zero || exit 1
"$G" start g1 --sock "$W/vm.sock" --mode iperf-daemon --ip 10.79.0.2/24 --mac "$MAC" --mtu 9000 --mem 256 >/dev/null ||
    { fail "guest start"; exit 1; }
"$G" wait g1 IPERF_DAEMON --timeout 120 >/dev/null || { fail "the guest did not come up"; exit 1; }

# --- 1. zero copy ---------------------------------------------------------------------
echo "--- 1. copy: Zero"
traffic Zero
zc=$(ctr vm tx_zc_packets) copied=$(ctr vm tx_copied_bytes) txzc=$(ctr vm rx_zc_packets)
gathered=$(ctr pool rx_gathered) long=$(ctr pool rx_copied_long) unreach=$(ctr vm zc_unreachable)
echo "    to the guest: $zc frames in lent buffers, $copied bytes copied by the port;" \
     "frames over the chip's buffer: $gathered moved into their first buffer, $long copied; out: $txzc lent"
check "Zero: frames reached the guest in lent buffers ($zc)" [ "$zc" -gt 1000 ]
check "Zero: the port copied no frame into the guest ($copied bytes)" [ "$copied" = 0 ]
check "Zero: the guest's long frames left from lent buffers ($txzc)" [ "$txzc" -gt 100 ]
check "Zero: guest memory reachable ($unreach refusals)" [ "$unreach" = 0 ]
model_clean Zero

# --- 2. copies ------------------------------------------------------------------------
echo "--- 2. copy: Simd (saved live)"
zc0=$(ctr vm tx_zc_packets) c0=$(ctr vm tx_copied_bytes)
write_config Simd
sleep 2
traffic Simd
zc1=$(ctr vm tx_zc_packets) c1=$(ctr vm tx_copied_bytes)
check "Simd: nothing more lent ($((zc1 - zc0)) frames), frames copied ($((c1 - c0)) bytes)" \
    [ "$((zc1 - zc0))" -lt 50 ] && [ "$((c1 - c0))" -gt 1000000 ]
model_clean Simd

# --- 3. switching under a stream ------------------------------------------------------
echo "--- 3. copy modes switched under iperf3"
conns0=$(ctr vm connections)
SECS=14 iperf_ns >"$W/live.bps" &
IP=$!
for m in Zero Simd Zero Simd Zero; do sleep 2.5; write_config "$m"; done
wait "$IP"
bps=$(cat "$W/live.bps")
check "switching: the stream finished at $bps bit/s" [ "${bps:-0}" -gt 1000000 ]
check "switching: the guest stayed connected (connections $conns0 -> $(ctr vm connections))" \
    [ "$(ctr vm connections)" = "$conns0" ]
check "switching: lending and copying both carried frames" \
    [ "$(ctr vm tx_zc_packets)" -gt "$zc1" ] && [ "$(ctr vm tx_copied_bytes)" -gt "$c1" ]
traffic "after switching"

# --- 4. jumbo frames over several lent buffers -----------------------------------------
echo "--- 4. jumbo frames into lent buffers, several per frame (copy: Zero)"
nsx ip link set "$PV" mtu 9000
ch0=$(ctr pool rx_chained) zch0=$(ctr vm tx_zc_chained) c0=$(ctr vm tx_copied_bytes) mv0=$(ctr vm tx_zc_moved_bytes)
# (A request that finds too few of the guest's buffers posted, 8 per frame,
# is dropped by the chip and counted in rxdrop: a slow guest may lose one.)
got=$(nsx ping -c 10 -i 0.3 -W 3 -M do -s 8000 10.79.0.2 2>/dev/null | sed -n 's/.* \([0-9]*\) received.*/\1/p')
check "jumbo: ping -s 8000 from the namespace: ${got:-0} of 10 answered" [ "${got:-0}" -ge 8 ]
sleep 1 # the counters reach shared memory every 100 breaths
ch=$(($(ctr pool rx_chained) - ch0)) zch=$(($(ctr vm tx_zc_chained) - zch0))
c=$(($(ctr vm tx_copied_bytes) - c0)) mv=$(($(ctr vm tx_zc_moved_bytes) - mv0))
check "jumbo: frames merged in the lent buffers the chip wrote (pool chained $ch over $(ctr pool rx_chained_buffers) buffers so far, port $zch, $mv bytes moved, $c copied)" \
    [ "$ch" -ge "${got:-1}" ] && [ "$zch" = "$ch" ] && [ "$c" = 0 ] && [ "$mv" -gt 0 ]
model_clean "end"
echo "    port: $(for n in tx_zc_packets tx_copied_bytes tx_zc_unsuitable tx_zc_unused rx_zc_packets rx_zc_bound rx_zc_unsuitable rx_copied_bytes quiesces zc_lent; do printf '%s=%s ' $n "$(ctr vm $n)"; done)"
echo "    pool: $(for n in rxpackets rxdrop rxerrors rx_lend rx_bsize rx_lent rx_supply_refused rx_restarts rx_revoked rx_restart_drop rx_gathered rx_chained rx_copied_long txsplit txcopied; do printf '%s=%s ' $n "$(ctr pool $n)"; done)"

stop_switch
echo "zerocopy-qemu: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
