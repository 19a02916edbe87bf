#!/bin/bash
# snabb-rs vmdq-vswitch end to end: the outside world is a network
# namespace, the VMs are two QEMU guests (selftest/peers/guest.sh) on VLANs
# 10 and 20, and the switch runs its vswitch config between them.
#
#   ns R (router 10.10.0.1 on VLAN 10, 10.20.0.1 on VLAN 20; ip_forward)
#     r10 -veth- b10 \
#     r20 -veth- b20  br0 - t1 ==veth== t0 [uplink] vmdq-vswitch [vm10] g10 10.10.0.2 (VLAN 10)
#                                                                [vm20] g20 10.20.0.2 (VLAN 20)
#
# This kernel has no 802.1Q devices: r10 and r20 are VLAN access ports made
# with a tc BPF program (vmdq-vswitch/vlan-tag.bpf.c: tag on egress, only
# their VLAN let in and untagged on ingress); br0 is a plain bridge. The
# guests route to each other through R.
#
# Three runs (MODES, default "model rawsocket afxdp"):
#   model      the uplink is the 82599 model, its wire t0 (WireSpec::Interface):
#              a hardware VMDq pool per port, in-chip switching; sockets: the
#              switch listens
#   rawsocket  the uplink is t0 through RawSocket: the software splitter;
#              sockets: QEMU listens (server=on) and the switch connects
#   afxdp      the uplink is t0 through AF_XDP (an AfXdp app per queue of t0,
#              our XDP program on it in native mode): the software splitter;
#              QEMU listens. Before it starts, another XDP program on t0 makes
#              the switch refuse to start (and name it); `replace: true` takes
#              it off. R's senders finish their checksums (tx off): AF_XDP
#              carries no checksum status.
# Each run checks, with counts:
#   1. ping R -> each guest, guest 20 -> guest 10 (routed by R); iperf3 R ->
#      guest 10, guest 20 -> guest 10, guest 20 -> R
#   2. broadcast ARP on VLAN 10 reaches guest 10 (it answers each) and not
#      guest 20 (it would answer for its own address); on VLAN 20 the reverse
#   3. unknown unicast from the wire is dropped and counted at the uplink
#   4. live reload while R pings guest 10 (a packet count): a port added,
#      a filter and a rate limit put on guest 20's port, the port removed:
#      no ping to guest 10 lost; then frames from the wire to guest 20,
#      counted: sent = received by the guest + filtered + over the limit
#   4w. with VSWITCH_WORKERS >= 2: guest 20's port moved to another worker
#      and back under a ping: no ping lost, the connection handed over
#      (vhost-user `handoffs`), never dropped
#   5. model: guest 20's QEMU restarted (a new process on the same socket)
#      and it pings again, the switch untouched
#      rawsocket: the switch restarted while both guests run (client mode:
#      it connects again), and guest 20's pings come back
#      afxdp: the same, the switch killed with SIGKILL: the kernel takes its
#      XDP program off t0, and the next start puts it on again
#   6. afxdp: frames the uplink's apps took from t0 and sent on it equal what
#      the kernel counted on t0 (rx_packets, tx_packets + tx_dropped) while
#      the switch ran; t0 has no XDP program once the switch stopped
# VSWITCH_WORKERS=N spreads the ports over N workers (`workers: N`): the
# same checks, each guest's port on a worker of its own.
# Every wait is bounded, the run too ($VSWITCH_LIMIT, default 900 s); every
# process and namespace made here is removed on exit.
# Exit 0 pass, 43 skip (a SKIP line), 1 fail.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
P=$ROOT/selftest/peers
source "$P/lib.sh"
G=$P/guest.sh

LIMIT=${VSWITCH_LIMIT:-900}
MODES=${MODES:-model rawsocket afxdp}
WORKERS=${VSWITCH_WORKERS:-0}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
PASSED=0 FAILED=0
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }

[ "$(id -u)" = 0 ] || skip "needs root (namespaces, QEMU, raw sockets)"
for prog in qemu-system-x86_64 busybox iperf3 tcpdump clang tc ethtool "$PYTHON"; do
    command -v "$prog" >/dev/null || skip "$prog is missing (scripts/test.sh installs it)"
done
# Debian's python3 has python3-scapy; another python3 first in PATH may not.
SCAPY_PY=""
for py in /usr/bin/python3 "$PYTHON"; do
    "$py" -c 'import scapy.all' 2>/dev/null && { SCAPY_PY=$py; break; }
done
[ -n "$SCAPY_PY" ] || skip "python3-scapy is missing"
[ -f /usr/include/bpf/bpf_helpers.h ] || skip "libbpf-dev is missing (bpf_helpers.h)"
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi

TAG=vs$$
NSR=${TAG}r T0=${TAG}t0
W=$(mktemp -d "${TMPDIR:-/tmp}/vmdq-vswitch.XXXXXX")
chmod 755 "$W"
export SNABB_RS_PEERS_DIR=$W SNABB_RS_SHM_ROOT=$W/shm
SW_PID="" SW_N=0 WATCHDOG="" DUMP=""
MAC10=52:54:00:10:00:02 MAC20=52:54:00:20:00:02 FAKE=02:00:00:00:ee:01

stop_switch() {
    [ -n "$SW_PID" ] || return 0
    local how
    how=$(stop_pid "$SW_PID" INT 10)
    wait "$SW_PID" 2>/dev/null
    SW_PID=""
    echo "switch stopped ($how)"
}
cleanup() {
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    [ -n "$DUMP" ] && kill "$DUMP" 2>/dev/null
    for g in g10 g20; do "$G" stop "$g" --timeout 3 >/dev/null 2>&1; done
    stop_switch >/dev/null 2>&1
    if [ -e "/run/netns/$NSR" ]; then
        ip netns pids "$NSR" 2>/dev/null | xargs -r kill 2>/dev/null
        ip netns del "$NSR"
    fi
    ip link del "$T0" 2>/dev/null
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then
        rm -rf "$W"
    else
        echo "logs kept in $W"
        for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $(basename "$f") (last 15 lines)"; tail -15 "$f" | tr -d '\r' | cut -c1-220; }; done
    fi
}
trap 'cleanup $?' EXIT
trap 'echo "FAIL interrupted"; FAILED=$((FAILED + 1)); exit 1' INT TERM
children_of() {
    local f stat fields
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }"
        [ "${fields[1]:-}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
}
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL the suite ran past ${LIMIT} s"
    kill -TERM $$
    for pid in $(children_of $$); do [ "$pid" != "$BASHPID" ] && kill -TERM "$pid" 2>/dev/null; done
) &
WATCHDOG=$!
START=$(date +%s)
R() { ip netns exec "$NSR" "$@"; }

# --- the outside world ----------------------------------------------------------------
echo "--- namespace $NSR: router on VLANs 10 and 20, a bridge, the trunk $T0 (the switch's side)"
for v in 10 20; do
    clang -O2 -target bpf -I/usr/include/x86_64-linux-gnu -DVLAN_ID=$v \
        -c "$ROOT/selftest/vmdq-vswitch/vlan-tag.bpf.c" -o "$W/vlan$v.o" || { echo "FAIL clang (BPF)"; exit 1; }
done
ip netns add "$NSR"
R sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.ip_forward=1
R ip link set dev lo up
R ip link add name br0 type bridge
ip link add name "$T0" type veth peer name t1 netns "$NSR"
sysctl -qw "net.ipv6.conf.$T0.disable_ipv6=1"
R ip link set dev t1 master br0
for v in 10 20; do
    R ip link add name "r$v" type veth peer name "b$v"
    R ip link set dev "b$v" master br0
    R ip addr add "10.$v.0.1/24" dev "r$v"
    R tc qdisc add dev "r$v" clsact
    R tc filter add dev "r$v" egress bpf da obj "$W/vlan$v.o" sec tc/egress
    R tc filter add dev "r$v" ingress bpf da obj "$W/vlan$v.o" sec tc/ingress
done
# No frame bigger than a packet: no segmentation offload on the way out,
# no receive merging where the switch reads.
# And no checksum left to offload by R's own senders (AF_XDP carries no
# checksum status: a frame left to offload would reach the guests unfinished).
for i in r10 r20 b10 b20 t1 br0; do R ethtool -K "$i" tso off gso off gro off >/dev/null 2>&1; done
for i in r10 r20; do R ethtool -K "$i" tx off >/dev/null 2>&1; done
# VLAN tags in the frame's bytes, not beside them: the tc programs tag in the
# skb's metadata, which an XDP program on t0 does not see (a NIC's `rxvlan
# off` for AF_XDP); t1 without tag insertion puts the tag in the frame.
R ethtool -K t1 txvlan off >/dev/null 2>&1
ethtool -K "$T0" gro off lro off tso off gso off >/dev/null 2>&1
for i in r10 r20 b10 b20 t1 br0; do R ip link set dev "$i" up; done
ip link set dev "$T0" up

ctr() { # APP COUNTER of the running switch
    local f
    # (An app on a worker has its counters under workers/<name>/.)
    f=$(ls -d "$W/shm"/[0-9]*/apps/"$1"/"$2".counter "$W/shm"/[0-9]*/workers/*/apps/"$1"/"$2".counter 2>/dev/null | head -1)
    [ -n "$f" ] && od -An -t u8 "$f" | tr -d ' \n' || echo 0
}
# Frames from the wire that no port took, as the report counts them.
no_port() {
    if [ "$MODE" = model ]; then
        # The 82599 counts every arrival (TPR) and what its filters kept
        # (GPRC), on whichever pool's app reports for the port.
        local a n=0
        for a in vm10-pool vm20-pool; do
            a=$(( $(ctr $a dev_rxtotal) - $(ctr $a dev_rxpackets) - $(ctr $a dev_rxmissed) - $(ctr $a dev_rxerrors) ))
            [ "$a" -gt "$n" ] && n=$a
        done
        echo "$n"
    else
        echo $(( $(ctr switch drop/unknown_unicast) + $(ctr switch drop/vlan) + $(ctr switch drop/no_pool) ))
    fi
}

# write_config EXTRA: the vswitch config of this mode, with more ports or settings for vm20.
write_config() {
    local uplink server=false vm20extra=${1:-} more=${2:-}
    case $MODE in
    model) uplink="Model(port: \"$TAG\", wire: Interface(\"$T0\"))" server=true;;
    rawsocket) uplink="RawSocket(interface: \"$T0\")";;
    afxdp) uplink="AfXdp(interface: \"$T0\"${REPLACE:+, replace: true})";;
    esac
    cat >"$W/vsw.ron.new" <<EOF
(
    uplink: $uplink,
    ports: [
        (name: "vm10", socket: "$W/v10.sock", server: $server, macs: ["$MAC10"], vlan: 10),
        (name: "vm20", socket: "$W/v20.sock", server: $server, macs: ["$MAC20"], vlan: 20$vm20extra),
        $more
    ],
    workers: $WORKERS,
)
EOF
    mv -f "$W/vsw.ron.new" "$W/vsw.ron"
}

start_switch() {
    SW_N=$((SW_N + 1))
    setsid "$B" vmdq-vswitch "$W/vsw.ron" --report 0 </dev/null >"$W/switch-$MODE-$SW_N.log" 2>&1 &
    SW_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [ -d "$W/shm/$SW_PID/engine" ] && return 0
        kill -0 "$SW_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "  the switch did not start:"; tail -20 "$W/switch-$MODE-$SW_N.log" | sed 's/^/    /'
    return 1
}
switch_alive() { [ -n "$SW_PID" ] && kill -0 "$SW_PID" 2>/dev/null; }
configs() { od -An -t u8 "$W/shm/$SW_PID/engine/configs.counter" 2>/dev/null | tr -d ' \n'; }
reload() { # wait until the switch applied one more config
    local c i
    c=$(configs)
    kill -HUP "$SW_PID"
    for ((i = 0; i < 100; i++)); do [ "$(configs)" -gt "$c" ] && return 0; sleep 0.1; done
    return 1
}

gstart() {
    local out
    out=$("$G" start "$@" 2>&1) || { echo "$out" | sed 's/^/  /'; return 1; }
    echo "  $(grep GUEST_STARTED <<<"$out" | cut -d' ' -f1-5,8-)"
}

# scapy in R: COUNT frames out of t1 (straight onto the trunk).
scapy_send() { # PYTHON-EXPRESSION-OF-A-FRAME COUNT
    R "$SCAPY_PY" - "$1" "$2" <<'EOF' 2>&1 | grep -v WARNING
import sys
from scapy.all import Ether, Dot1Q, ARP, IP, UDP, Raw, sendp
frame = eval(sys.argv[1])
sendp([frame] * int(sys.argv[2]), iface="t1", verbose=0)
EOF
}

# --- AF_XDP helpers ---------------------------------------------------------------------
kstat() { cat "/sys/class/net/$1/statistics/$2"; }
xdp_of() { # interface -> "name id" of its XDP program, or nothing
    ip -d link show dev "$1" | awk '/prog\/xdp/ { for (i = 1; i <= NF; i++) { if ($i == "id") id = $(i+1); if ($i == "name") name = $(i+1) } } END { if (id) print name, id }'
}
wait_xdp() { # interface, ours|off: up to 5 s
    local i x
    for ((i = 0; i < 50; i++)); do
        x=$(xdp_of "$1")
        case $2 in
        ours) [ -n "$x" ] && [ "${x#snabb_xsk}" != "$x" ] && return 0;;
        off) [ -z "$x" ] && return 0;;
        esac
        sleep 0.1
    done
    return 1
}
# Another's XDP program on t0: the switch refuses to start, naming it; told
# to replace it, it starts (the caller starts it, with REPLACE set).
foreign_program_refused() {
    cat >"$W/other.c" <<'EOF'
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int other_prog(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
EOF
    clang -O2 -target bpf "-I/usr/include/$(uname -m)-linux-gnu" -c "$W/other.c" -o "$W/other.o" &&
        ip link set dev "$T0" xdp obj "$W/other.o" sec xdp || { fail "$MODE 0. another XDP program put on t0"; return; }
    local out rc
    out=$(timeout 30 "$B" vmdq-vswitch "$W/vsw.ron" --report 0 2>&1 </dev/null); rc=$?
    check "$MODE 0. with another's XDP program on t0 the switch refuses to start (exit $rc): $(grep -m1 'already has' <<<"$out" | cut -c1-200)" \
        test "$rc" != 0 -a "$rc" != 124 -a -n "$(grep 'already has an XDP program' <<<"$out" | grep other_prog | grep 'replace: true')"
    check "$MODE 0. and leaves it there ($(xdp_of "$T0"))" test "$(xdp_of "$T0" | cut -d' ' -f1)" = other_prog
    REPLACE=1
    write_config
}
# The uplink's apps' counts (every queue) against t0's since the switch
# started (k0_rx, k0_tx): read when two readings of ours agree, traffic quiet.
uplink_sum() { # counter
    local a n=0
    for a in "$W/shm/$SW_PID/apps"/uplink-q*; do
        n=$((n + $(od -An -t u8 "$a/$1.counter" | tr -d ' \n')))
    done
    echo "$n"
}
counts_match() {
    local i a1 a2 t1 t2 krx ktx ok=0
    for ((i = 0; i < 30; i++)); do
        a1=$(( $(uplink_sum rx_packets) + $(uplink_sum xdp_rx_dropped) )) t1=$(uplink_sum tx_packets)
        krx=$(( $(kstat "$T0" rx_packets) - k0_rx )) ktx=$(( $(kstat "$T0" tx_packets) + $(kstat "$T0" tx_dropped) - k0_tx ))
        sleep 0.3
        a2=$(( $(uplink_sum rx_packets) + $(uplink_sum xdp_rx_dropped) )) t2=$(uplink_sum tx_packets)
        if [ "$a1" = "$a2" ] && [ "$t1" = "$t2" ]; then
            ok=1
            [ "$a1" = "$krx" ] && [ "$t1" = "$ktx" ] && break
        fi
    done
    check "$MODE 6. frames from the wire: the uplink took $a1, the kernel counted $krx on t0 (rx_packets)" test "$ok" = 1 -a "$a1" = "$krx" -a "$a1" -gt 20
    check "$MODE 6. frames to the wire: the uplink sent $t1, the kernel counted $ktx on t0 (tx_packets + tx_dropped)" test "$ok" = 1 -a "$t1" = "$ktx" -a "$t1" -gt 20
}

for MODE in $MODES; do
    case $MODE in
    model) what="82599 model on $T0 (hardware pools), the switch listens";;
    rawsocket) what="RawSocket on $T0 (software splitter), QEMU listens";;
    afxdp) what="AfXdp on $T0 (software splitter), QEMU listens";;
    *) fail "unknown mode $MODE (model, rawsocket, afxdp)"; continue;;
    esac
    echo "=== mode $MODE: $what"
    REPLACE=""
    rm -f "$W"/v*.sock
    write_config
    if [ "$MODE" = model ]; then
        start_switch || { fail "$MODE: the switch starts"; continue; }
        wait_socket "$W/v10.sock" 20 && wait_socket "$W/v20.sock" 20 || fail "$MODE: the switch listens"
        gargs=()
    else
        gargs=(--server)
    fi
    t0=$(date +%s.%N)
    gstart g10 --sock "$W/v10.sock" "${gargs[@]}" --mac $MAC10 --ip 10.10.0.2/24 --gw 10.10.0.1 \
        --mode iperf-server --tests 2 --secs 3 --wait 200 --after idle
    gstart g20 --sock "$W/v20.sock" "${gargs[@]}" --mac $MAC20 --ip 10.20.0.2/24 --gw 10.20.0.1 \
        --mode iperf-client --peer 10.10.0.2 --peer2 10.20.0.1 --secs 3 --count 5 --after idle
    if [ "$MODE" != model ]; then
        wait_socket "$W/v10.sock" 10 && wait_socket "$W/v20.sock" 10 || fail "$MODE: QEMU listens"
        [ "$MODE" = afxdp ] && foreign_program_refused
        start_switch || { fail "$MODE: the switch starts"; continue; }
        if [ "$MODE" = afxdp ]; then
            check "$MODE 0. t0 has our XDP program while the switch runs ($(xdp_of "$T0"))" wait_xdp "$T0" ours
            grep -a -m1 'AfXdp `uplink-q0`' "$W/switch-$MODE-$SW_N.log" | sed 's/^/  /'
        fi
    fi

    echo "--- $MODE 1. ping and iperf3"
    R timeout 200 iperf3 -s -1 -B 10.20.0.1 >"$W/iperf-r-server.log" 2>&1 &
    IPS=$!
    line=$("$G" wait g20 FIRST_PING_OK --timeout 200)
    check "$MODE 1. guest 20 reaches guest 10 through R (VLAN 20 -> 10), $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}') s after start: $line" grep -q '^FIRST_PING_OK' <<<"$line"
    line=$("$G" wait g20 PING_RESULT --timeout 30)
    check "$MODE 1. ping guest 20 -> guest 10: $line" test "$(field "$line" received)" = 5
    out=$(R ping -c 5 -i 0.2 -W 2 10.10.0.2 | grep transmitted)
    check "$MODE 1. ping R -> guest 10: $out" grep -q ' 5 received' <<<"$out"
    out=$(R ping -c 5 -i 0.2 -W 2 10.20.0.2 | grep transmitted)
    check "$MODE 1. ping R -> guest 20: $out" grep -q ' 5 received' <<<"$out"
    line=$("$G" wait g20 IPERF_RESULT --timeout 90)
    check "$MODE 1. iperf3 guest 20 -> guest 10: $line" test "$(field "$line" bits_per_second)0" -gt 10000000
    line=$("$G" wait g20 IPERF_RESULT --nth 2 --timeout 60)
    check "$MODE 1. iperf3 guest 20 -> R: $line" test "$(field "$line" bits_per_second)0" -gt 10000000
    ok=0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        # guest 10 serves one test at a time: retry while it is busy.
        if R iperf3 -c 10.10.0.2 -t 3 -J >"$W/iperf-r.json" 2>&1; then ok=1; break; fi
        sleep 2
    done
    bps=$(grep -m1 -A8 '"sum_received"' "$W/iperf-r.json" | sed -n 's/.*"bits_per_second":[ \t]*\([0-9]*\).*/\1/p' | head -1)
    check "$MODE 1. iperf3 R -> guest 10: ${bps:-none} bits/s" test "$ok" = 1 -a "${bps:-0}0" -gt 10000000
    wait "$IPS" 2>/dev/null

    echo "--- $MODE 2. broadcast ARP reaches exactly its VLAN's guest"
    R tcpdump -i t1 -n -e -U -w "$W/arp-$MODE.pcap" "ether dst $FAKE" 2>"$W/tcpdump-$MODE.log" &
    DUMP=$!
    for _ in $(seq 50); do grep -q listening "$W/tcpdump-$MODE.log" 2>/dev/null && break; sleep 0.1; done
    for v in 10 20; do
        for target in 10 20; do
            # Who has guest $target's address, asked on VLAN $v from a host that is not there.
            scapy_send "Ether(dst='ff:ff:ff:ff:ff:ff', src='$FAKE')/Dot1Q(vlan=$v)/ARP(op=1, hwsrc='$FAKE', psrc='10.$v.0.99', pdst='10.$target.0.2')" 20
        done
    done
    sleep 2
    kill "$DUMP" 2>/dev/null; wait "$DUMP" 2>/dev/null; DUMP=""
    replies() { tcpdump -n -e -r "$W/arp-$MODE.pcap" 2>/dev/null | grep -c "vlan $1,.*Reply 10.$2.0.2 is-at"; }
    a=$(replies 10 10) b=$(replies 20 20) c=$(replies 10 20) d=$(replies 20 10)
    check "$MODE 2. guest 10 answered the 20 VLAN 10 broadcasts for it ($a), guest 20 the 20 on VLAN 20 ($b)" test "$a" = 20 -a "$b" = 20
    check "$MODE 2. no guest answered a broadcast of the other VLAN ($c on VLAN 10 from guest 20, $d on VLAN 20 from guest 10)" test "$c" = 0 -a "$d" = 0

    echo "--- $MODE 3. unknown unicast from the wire is dropped and counted"
    before=$(no_port)
    scapy_send "Ether(dst='02:00:00:00:99:99', src='$FAKE')/Dot1Q(vlan=10)/IP(src='10.10.0.99', dst='10.10.0.98')/UDP(dport=7)/Raw(b'x'*40)" 30
    sleep 1
    after=$(no_port)
    check "$MODE 3. 30 frames to an unknown address: counted at the uplink ($before -> $after)" test $((after - before)) -ge 30

    echo "--- $MODE 4. live reload under a packet count; a filter and a rate limit, counted"
    R ping -c 150 -i 0.05 -W 2 10.10.0.2 >"$W/ping-reload.log" 2>&1 &
    PING=$!
    sleep 1
    drops10() { echo $(( $(ctr vm10 tx_backlog_drops) + $(ctr vm10 tx_no_guest) + $(ctr vm10 tx_no_room) )); }
    d0=$(drops10)
    write_config "" "(name: \"vm30\", socket: \"$W/v30.sock\", macs: [\"52:54:00:30:00:02\"], vlan: 30),"
    check "$MODE 4. port vm30 added" reload
    write_config ", to_guest: (filter: \"not udp port 9999\", limit: (pps: 0.001, burst_packets: 50))" \
        "(name: \"vm30\", socket: \"$W/v30.sock\", macs: [\"52:54:00:30:00:02\"], vlan: 30),"
    check "$MODE 4. vm20 given a filter and a rate limit" reload
    write_config ", to_guest: (filter: \"not udp port 9999\", limit: (pps: 0.001, burst_packets: 50))"
    check "$MODE 4. port vm30 removed" reload
    wait "$PING"
    out=$(grep transmitted "$W/ping-reload.log")
    check "$MODE 4. R pinged guest 10 through three reloads: $out" grep -q '150 packets transmitted, 150 received' <<<"$out"
    check "$MODE 4. and vm10 dropped nothing ($d0 -> $(drops10))" test "$(drops10)" = "$d0"
    rx20=$(ctr vm20 tx_packets)
    scapy_send "Ether(dst='$MAC20', src='$FAKE')/Dot1Q(vlan=20)/IP(src='10.20.0.99', dst='10.20.0.2')/UDP(sport=9, dport=9999)/Raw(b'x'*40)" 100
    scapy_send "Ether(dst='$MAC20', src='$FAKE')/Dot1Q(vlan=20)/IP(src='10.20.0.99', dst='10.20.0.2')/UDP(sport=9, dport=9998)/Raw(b'x'*40)" 200
    sleep 1.5
    rej=$(ctr vm20-to-guest-filter rejected) lin=$(ctr vm20-to-guest-limit rxpackets)
    pas=$(ctr vm20-to-guest-limit txpackets) lim=$(ctr vm20-to-guest-limit dropped)
    got=$(( $(ctr vm20 tx_packets) - rx20 ))
    check "$MODE 4. filter: the 100 frames to UDP port 9999 rejected ($rej)" test "$rej" = 100
    check "$MODE 4. rate limit: 50 of the $lin frames after the filter passed ($pas), the rest dropped ($lim)" test "$pas" = 50 -a $((pas + lim)) = "$lin"
    check "$MODE 4. sent = received + dropped: 300 = $got (guest 20) + $rej (filter) + $lim (limit)" test $((got + rej + lim)) = 300

    if [ "$WORKERS" -ge 2 ]; then
        echo "--- $MODE 4w. guest 20's port moved to another worker and back under a ping: its connection goes with it"
        write_config
        reload >/dev/null
        ws=$WORKERS
        h0=$(ctr vm20 handoffs) d0=$(ctr vm20 disconnects)
        R ping -c 100 -i 0.05 -W 2 10.20.0.2 >"$W/ping-move.log" 2>&1 &
        PING=$!
        sleep 1
        # Port i runs on worker i mod n: with one worker vm20 (port 1) joins vm10's.
        WORKERS=1 write_config
        check "$MODE 4w. one worker: vm20 moved" reload
        sleep 1
        WORKERS=$ws write_config
        check "$MODE 4w. $ws workers: vm20 moved back" reload
        wait "$PING"
        out=$(grep transmitted "$W/ping-move.log")
        check "$MODE 4w. R pinged guest 20 through both moves: $out" grep -q '100 packets transmitted, 100 received' <<<"$out"
        sleep 1 # (the counters of the port's last instance committed)
        check "$MODE 4w. vm20's connection was handed over twice ($h0 -> $(ctr vm20 handoffs)), never dropped ($d0 -> $(ctr vm20 disconnects))" \
            test "$(ctr vm20 handoffs)" = $((h0 + 2)) -a "$(ctr vm20 disconnects)" = "$d0"
    fi

    if [ "$MODE" = model ]; then
        echo "--- $MODE 5. guest 20's QEMU restarted on the same socket"
        write_config
        reload >/dev/null
        pid=$SW_PID
        "$G" stop g20 >/dev/null
        gstart g20 --sock "$W/v20.sock" --mac $MAC20 --ip 10.20.0.2/24 --gw 10.20.0.1 --mode ping \
            --peer 10.10.0.2 --count 5 --after idle
        line=$("$G" wait g20 PING_RESULT --timeout 200)
        check "$MODE 5. the new guest 20 pings guest 10: $line" test "$(field "$line" received)" = 5
        check "$MODE 5. the switch was not restarted (pid $pid)" switch_alive
    elif [ "$MODE" = afxdp ]; then
        echo "--- $MODE 5. the switch killed (SIGKILL) under running guests and started again"
        # `replace` off again: taken live (each queue's socket opened anew), and
        # the next start must find t0 free of any program but a stale one of ours.
        REPLACE=""
        write_config
        check "$MODE 5. reload with replace: false (the uplink's apps reconfigured)" reload
        "$G" stop g20 >/dev/null
        rm -f "$W/v20.sock"
        gstart g20 --sock "$W/v20.sock" --server --mac $MAC20 --ip 10.20.0.2/24 --gw 10.20.0.1 \
            --mode ping-watch --count 0 --peer 10.10.0.2
        line=$("$G" wait g20 PING_OK --timeout 200)
        check "$MODE 5. guest 20 pings guest 10: $line" grep -q '^PING_OK' <<<"$line"
        kill -KILL "$SW_PID"
        wait "$SW_PID" 2>/dev/null
        SW_PID=""
        # With an XDP link the kernel takes the program off with the process;
        # attached through netlink (older kernels), ours stays until the next start.
        left=$(xdp_of "$T0")
        check "$MODE 5. after SIGKILL t0 has no XDP program, or a stale one of ours (${left:-none})" \
            test -z "$left" -o "${left#snabb_xsk}" != "$left"
        sleep 1
        k0_rx=$(kstat "$T0" rx_packets) k0_tx=$(( $(kstat "$T0" tx_packets) + $(kstat "$T0" tx_dropped) ))
        start_switch || fail "$MODE 5. the switch starts again (replace: false)"
        check "$MODE 5. our XDP program is on t0 again ($(xdp_of "$T0"))" wait_xdp "$T0" ours
        n=$(tr -d '\r' <"$W/g20.log" | grep -a -c PING_OK)
        line=$("$G" wait g20 PING_OK --nth $((n + 2)) --timeout 60)
        check "$MODE 5. after the restart guest 20 pings guest 10 again: $line" grep -q '^PING_OK' <<<"$line"
        out=$(R ping -c 20 -i 0.05 -W 2 10.20.0.2 | grep transmitted)
        check "$MODE 5. ping R -> guest 20: $out" grep -q ' 20 received' <<<"$out"

        echo "--- $MODE 6. the uplink's counts against the kernel's; off on stop"
        for g in g10 g20; do "$G" stop "$g" >/dev/null; done
        counts_match
        echo "  $(stop_switch)"
        check "$MODE 6. t0 has no XDP program after the switch stopped ($(xdp_of "$T0"))" wait_xdp "$T0" off
    else
        echo "--- $MODE 5. the switch restarted under running guests (client mode: it connects again)"
        write_config
        reload >/dev/null
        "$G" stop g20 >/dev/null
        rm -f "$W/v20.sock"
        gstart g20 --sock "$W/v20.sock" --server --mac $MAC20 --ip 10.20.0.2/24 --gw 10.20.0.1 \
            --mode ping-watch --count 0 --peer 10.10.0.2
        line=$("$G" wait g20 PING_OK --timeout 200)
        check "$MODE 5. guest 20 pings guest 10: $line" grep -q '^PING_OK' <<<"$line"
        echo "  $(stop_switch)"
        nl=$(tr -d '\r' <"$W/g20.log" | grep -a -c PING_LOST)
        line=$("$G" wait g20 PING_LOST --nth $((nl + 1)) --timeout 20)
        check "$MODE 5. with the switch stopped, pings are lost: $line" grep -q '^PING_LOST' <<<"$line"
        sleep 1
        start_switch || fail "$MODE 5. the switch starts again"
        n=$(tr -d '\r' <"$W/g20.log" | grep -a -c PING_OK)
        line=$("$G" wait g20 PING_OK --nth $((n + 2)) --timeout 60)
        check "$MODE 5. after the restart guest 20 pings guest 10 again: $line" grep -q '^PING_OK' <<<"$line"
    fi
    for g in g10 g20; do "$G" stop "$g" >/dev/null 2>&1; done
    echo "  $(stop_switch)"
    if grep -a -E 'panicked|ERROR' "$W/switch-$MODE-"*.log; then fail "$MODE: the switch logged errors"; fi
done

echo "vmdq-vswitch: $PASSED passed, $FAILED failed in $(( $(date +%s) - START )) s"
[ "$FAILED" = 0 ]
