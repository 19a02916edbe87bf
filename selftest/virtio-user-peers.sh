#!/bin/bash
# VirtioUser (snabb-rs playing a VM) against real vhost-user backends, each
# in its own process, counts compared exactly:
#   snabb  a second `snabb-rs run` with a VhostUser port is the switch: 64 B
#          frames from the VM, 1500 B frames to it, at once; then the switch
#          process is killed and started again, the VM connects again by
#          itself, and traffic and counts are right for the new switch;
#   io     dpdk-testpmd net_vhost, io forwarding (what it receives it sends
#          back), 64 B;
#   big    the same with 9000-byte frames (mergeable buffers both ways);
#   linux  testpmd txonly 1500 B -> the VM posting 1536-byte buffers as
#          Linux does (each frame in two merged buffers);
#   nomrg  testpmd txonly 1500 B -> the VM without mergeable buffers;
#   mq     two queue pairs, flows from a pcap spread over both (every
#          testpmd receive queue must get some);
#   client testpmd connects (net_vhost client=1) to the VM listening
#          (server: true); testpmd is restarted and connects again;
#   ovs    OVS-DPDK (selftest/peers/ovs.sh: two dpdkvhostuser ports, the
#          NORMAL action, one PMD core) between two VMs, 64 B one way and
#          1500 B the other at once;
#   ovsclient  the same with dpdkvhostuserclient ports (the VMs listen);
#          OVS is stopped and started again, the VMs take it back.
# A case ends by draining: the senders stop (snabb-rs by a live edit of its
# config, testpmd by `stop`), what is in flight arrives, then
#   frames the VM sent = frames the backend received, and
#   frames the backend sent = frames the VM received
# (testpmd: `show port stats all`; snabb-rs: counters in shared memory).
#
#   virtio-user-peers.sh [CASE...]      (default: all of the above)
# Environment: SNABB_RS (the binary; default $CARGO_TARGET_DIR/release/snabb-rs),
# VIRTIO_USER_PEERS_LIMIT (seconds, default 300).
# Exit 0 pass, 43 skip (a SKIP line), 1 fail. Every process, socket and huge
# page file made here is removed on exit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
P=$ROOT/selftest/peers
source "$P/lib.sh"
T=$P/testpmd.sh
O=$P/ovs.sh

LIMIT=${VIRTIO_USER_PEERS_LIMIT:-300}
CASES=${*:-snabb io big linux nomrg mq client ovs ovsclient}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
PASSED=0 FAILED=0
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }

[ "$(id -u)" = 0 ] || skip "needs root (dpdk-testpmd, huge pages)"
command -v dpdk-testpmd >/dev/null || skip "dpdk-testpmd is missing (selftest/peers/install.sh installs it)"
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi
"$B" apps 2>/dev/null | grep -w VirtioUser >/dev/null || skip "this snabb-rs ($B) has no VirtioUser app class"

W=$(mktemp -d "${TMPDIR:-/tmp}/virtio-user-peers.XXXXXX")
chmod 755 "$W"
export SNABB_RS_PEERS_DIR=$W
declare -A PGID
WATCHDOG=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    for t in be be2; do "$T" stop "$t" --timeout 3 >/dev/null 2>&1; "$T" cleanup "$t" >/dev/null 2>&1; done
    "$O" stop ovs --timeout 5 >/dev/null 2>&1
    for n in "${!PGID[@]}"; do stop_snabb "$n"; done
    rm -f "$W"/*.sock
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then rm -rf "$W"; else echo "logs kept in $W"; fi
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
START=$(date +%s)

# --- snabb-rs processes ------------------------------------------------------------
# start_snabb NAME CPU: runs $W/NAME.ron (edited live later), counters in $W/shm-NAME.
start_snabb() {
    local name=$1 cpu=$2
    rm -rf "$W/shm-$name"
    SNABB_RS_SHM_ROOT=$W/shm-$name setsid taskset -c "$cpu" "$B" run "$W/$name.ron" </dev/null >"$W/$name.log" 2>&1 &
    PGID[$name]=$!
}
stop_snabb() { # NAME: SIGINT, then TERM, then KILL
    local g=${PGID[$1]:-} sig i
    [ -n "$g" ] || return 0
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$g" 2>/dev/null || break
        for ((i = 0; i < 50; i++)); do kill -0 -- -"$g" 2>/dev/null || break 2; sleep 0.1; done
    done
    unset "PGID[$1]"
}
ctr() { # NAME APP COUNTER: a u64 counter in NAME's shared memory, 0 when absent
    local f
    f=$(ls -d "$W/shm-$1"/[0-9]*/apps/"$2"/"$3".counter 2>/dev/null | head -1)
    [ -n "$f" ] && od -An -t u8 "$f" | tr -d ' \n' || echo 0
}
counters() { # NAME APP: the nonzero counters, name=value
    local d f v out=""
    d=$(ls -d "$W/shm-$1"/[0-9]*/apps/"$2" 2>/dev/null | head -1)
    for f in "$d"/*.counter; do
        [ -e "$f" ] || continue
        v=$(od -An -t u8 "$f" | tr -d ' \n'); [ "$v" = 0 ] || out+=" $(basename "$f" .counter)=$v"
    done
    echo "${out# }"
}
wait_for() { # SECONDS COMMAND...: until COMMAND succeeds
    local n=$(( $1 * 10 )) i; shift
    for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.1; done
    return 1
}
link_up() { [ "$(ctr "$1" vm link_up)" = 1 ]; }
# settle NAME:APP...: wait (at most 10 s) until the frame counts of these
# apps stop moving for half a second: what was in flight has arrived.
settle() {
    local before="" now i a
    for ((i = 0; i < 20; i++)); do
        now=""
        for a in "$@"; do now+="$(ctr "${a%%:*}" "${a#*:}" tx_packets)/$(ctr "${a%%:*}" "${a#*:}" rx_packets) "; done
        [ "$now" = "$before" ] && return 0
        before=$now
        sleep 0.5
    done
    return 1
}
connections_are() { [ "$(ctr "$1" vm connections)" = "$2" ] && link_up "$1"; }

# The VM: VirtioUser with a generator into it (or not) and a sink after it.
# vm_config NAME ARGS SOURCE: SOURCE is "" (no generator) or a Source/PcapReader app.
vm_config() {
    local gen="" glink=""
    if [ -n "$3" ]; then gen="\"gen\": $3,"; glink='"gen.output -> vm.input",'; fi
    cat >"$W/$1.ron.new" <<EOF
// A VM played by snabb-rs: what "gen" makes is sent, what arrives is sunk.
(
    apps: {
        $gen
        "vm": (class: "VirtioUser", args: ($2)),
        "sink": (class: "Sink"),
    },
    links: [ $glink "vm.output -> sink.input" ],
)
EOF
    mv "$W/$1.ron.new" "$W/$1.ron" # one rename: the running process never reads half a file
}

# testpmd's port 0 counts: "rx tx"
tp_stats() { # NAME
    "$T" cmd "$1" "show port stats all" | awk '/RX-packets:/ { rx = $2 } /TX-packets:/ { tx = $2; exit } END { print rx + 0, tx + 0 }'
}
start_tp() { # NAME SOCK FWD LEN EXTRA...
    local name=$1 sock=$2 fwd=$3 len=$4; shift 4
    "$T" start "$name" --vhost "$sock" --cpu 0 --fwd "$fwd" --txpkts "$len" --interactive --paused --stats-period 0 \
        "$@" >>"$W/started" || return 1
    local r; r=$("$T" wait-ready "$name" --timeout 30) || { echo "  $name: $r"; tail -5 "$W/$name.log" | sed 's/^/    /'; return 1; }
}

# compare LABEL SENT RECEIVED: one direction's counts
OK=1 WHY=""
compare() {
    if [ "$2" != "$3" ]; then OK=0; WHY+=" $1: sent $2, received $3;"; fi
    if [ "$2" = 0 ]; then OK=0; WHY+=" $1: nothing sent;"; fi
}
verdict() { # TITLE [LOGS...]
    local title=$1; shift
    if [ "$OK" = 1 ]; then pass "$title"; else
        fail "$title:$WHY"
        local l; for l in "$@"; do [ -f "$l" ] && { echo "  --- $l"; tail -8 "$l" | sed 's/^/    /'; }; done
    fi
    OK=1 WHY=""
}

# A pcap of 64 UDP flows (ports 1024..1087), 64-byte frames: for the queue pairs.
flows_pcap() {
    "$PYTHON" - "$1" <<'EOF'
import struct, sys
out = open(sys.argv[1], "wb")
out.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
for i in range(64):
    udp = struct.pack("!HHHH", 1024 + i, 4789, 30, 0) + bytes(22)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    f = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + udp
    out.write(struct.pack("<IIII", 0, i, len(f), len(f)) + f)
EOF
}

# --- the cases -------------------------------------------------------------------------
case_snabb() {
    echo "--- snabb: VirtioUser <-> VhostUser in two snabb-rs processes, then the switch restarts"
    local sock=$W/sw.sock s1 r1 s2 r2
    sw_config() {
        local gen="" glink=""
        if [ "$1" = on ]; then gen='"gen": (class: "Source", args: (size: 1500)),'; glink='"gen.output -> sw.input",'; fi
        cat >"$W/sw.ron.new" <<EOF
(
    apps: {
        $gen
        "sw": (class: "VhostUser", args: (socket: "$sock", server: true)),
        "sink": (class: "Sink"),
    },
    links: [ $glink "sw.output -> sink.input" ],
)
EOF
        mv "$W/sw.ron.new" "$W/sw.ron"
    }
    # One session: both generators on for 3 s, off, drained; the counts of
    # this switch process against the VM's counts since BASE ("tx rx").
    session() { # BASE_TX BASE_RX
        sw_config on
        vm_config vm "socket: \"$sock\"" '(class: "Source", args: (size: 64))'
        sleep 3
        vm_config vm "socket: \"$sock\"" ""
        sw_config off
        sleep 0.5
        settle vm:vm sw:sw
        local vtx vrx stx srx
        vtx=$(( $(ctr vm vm tx_packets) - $1 )) vrx=$(( $(ctr vm vm rx_packets) - $2 ))
        srx=$(ctr sw sw rx_packets) stx=$(ctr sw sw tx_packets)
        echo "  VM sent $vtx, the switch received $srx; the switch sent $stx, the VM received $vrx"
        echo "  VM: $(counters vm vm)"
        echo "  switch: $(counters sw sw)"
        compare "VM to switch" "$vtx" "$srx"
        compare "switch to VM" "$stx" "$vrx"
        [ "$(ctr vm vm rx_bytes)" -ge $((1500 * vrx)) ] || { OK=0; WHY+=" rx_bytes $(ctr vm vm rx_bytes);"; }
    }
    sw_config off
    start_snabb sw 0
    wait_socket "$sock" 20 || { fail "snabb: the switch did not listen"; return; }
    vm_config vm "socket: \"$sock\"" ""
    start_snabb vm 1
    wait_for 20 link_up vm || { fail "snabb: the VM did not set up"; stop_snabb vm; stop_snabb sw; return; }
    session 0 0
    verdict "snabb: VirtioUser <-> VhostUser across processes, counts agree" "$W/vm.log" "$W/sw.log"
    s1=$(ctr vm vm tx_packets) r1=$(ctr vm vm rx_packets)
    # The switch dies (SIGKILL: no goodbye) and comes back on the same socket.
    kill -KILL -- -"${PGID[sw]}"; wait "${PGID[sw]}" 2>/dev/null; unset "PGID[sw]"
    wait_for 10 bash -c "[ \"\$(od -An -t u8 $W/shm-vm/[0-9]*/apps/vm/link_up.counter | tr -d ' ')\" = 0 ]" ||
        { OK=0; WHY+=" the VM did not notice the switch dying;"; }
    sw_config off
    start_snabb sw 0
    wait_for 20 connections_are vm 2 || { OK=0; WHY+=" the VM did not connect again (connections $(ctr vm vm connections));"; }
    [ "$OK" = 1 ] && session "$s1" "$r1"
    s2=$(ctr vm vm disconnects)
    [ "$s2" = 1 ] || { OK=0; WHY+=" disconnects $s2;"; }
    verdict "snabb: the switch killed and restarted, the VM connects again, counts agree" "$W/vm.log" "$W/sw.log"
    stop_snabb vm; stop_snabb sw
    grep -E 'panicked' "$W/vm.log" "$W/sw.log" && fail "snabb: a panic in a log"
}

# One testpmd case. MODE: io (the VM sends, testpmd sends it back) | tx (testpmd sends to the VM).
tp_case() { # TITLE MODE LEN VM_ARGS GEN TP_EXTRA...
    local title=$1 mode=$2 len=$3 vmargs=$4 gen=$5; shift 5
    echo "--- $title"
    local sock=$W/tp.sock fwd=io vtx vrx trx ttx
    [ "$mode" = tx ] && fwd=txonly
    start_tp be "$sock" "$fwd" "$len" "$@" || { fail "$title: testpmd did not start"; return; }
    vm_config vm "socket: \"$sock\", $vmargs" ""
    start_snabb vm 1
    wait_for 20 link_up vm || { fail "$title: the VM did not set up"; stop_snabb vm; "$T" stop be >/dev/null; return; }
    "$T" cmd be start >/dev/null
    [ -n "$gen" ] && vm_config vm "socket: \"$sock\", $vmargs" "$gen"
    sleep 3
    vm_config vm "socket: \"$sock\", $vmargs" ""
    [ "$mode" = tx ] && "$T" cmd be stop >/dev/null
    sleep 0.5
    settle vm:vm
    [ "$mode" = io ] && "$T" cmd be stop >/dev/null
    read -r trx ttx <<<"$(tp_stats be)"
    vtx=$(ctr vm vm tx_packets) vrx=$(ctr vm vm rx_packets)
    echo "  VM sent $vtx, testpmd received $trx; testpmd sent $ttx, the VM received $vrx"
    echo "  VM: $(counters vm vm)"
    [ "$mode" = io ] && compare "VM to testpmd" "$vtx" "$trx"
    compare "testpmd to VM" "$ttx" "$vrx"
    if [ -n "${CHECK_QUEUES:-}" ]; then
        "$T" stop be >/dev/null
        local qi rxq
        for ((qi = 0; qi < CHECK_QUEUES; qi++)); do
            rxq=$(tr -d '\r' <"$W/be.log" | awk -v q="$qi" '
                /Forward Stats for RX Port=/ { on = ($0 ~ ("Queue= *" q " ")) }
                on && /RX-packets:/ { s += $2; on = 0 } END { print s + 0 }')
            echo "  testpmd rx queue $qi: $rxq packets"
            [ "$rxq" -gt 0 ] || { OK=0; WHY+=" testpmd's rx queue $qi received nothing;"; }
        done
    fi
    [ "$(ctr vm vm setup_errors)" = 0 ] || { OK=0; WHY+=" setup errors;"; }
    local f; f=$(ctr vm vm features)
    echo "  features negotiated: $(printf '%#x' "$f")"
    if [ -n "${NO_FEATURE:-}" ] && [ $(( (f >> NO_FEATURE) & 1 )) = 1 ]; then OK=0; WHY+=" feature bit $NO_FEATURE negotiated;"; fi
    verdict "$title: counts agree" "$W/vm.log" "$W/be.log"
    stop_snabb vm
    "$T" stop be >/dev/null 2>&1
}

case_io() { tp_case "io: testpmd net_vhost io forwarding, 64 B" io 64 "" '(class: "Source", args: (size: 64))'; }
case_big() {
    tp_case "big: testpmd io forwarding, 9000 B frames" io 9000 "" '(class: "Source", args: (size: 9000))' \
        -- --max-pkt-len=9600
}
case_linux() { tp_case "linux: testpmd txonly 1500 B to 1536-byte buffers" tx 1500 "rx_buffer: 1536" ""; }
case_nomrg() {
    NO_FEATURE=15 tp_case "nomrg: testpmd txonly 1500 B without mergeable buffers" tx 1500 "mrg_rxbuf: false" ""
}
case_mq() {
    flows_pcap "$W/flows.pcap"
    CHECK_QUEUES=2 tp_case "mq: two queue pairs, 64 flows" io 64 "queues: 2" \
        "(class: \"PcapReader\", args: (file: \"$W/flows.pcap\", loop: true))" --queues 2
}
case_client() {
    echo "--- client: the VM listens, testpmd connects (client=1), testpmd restarts"
    local sock=$W/vm.sock title="client: VM server, testpmd client" trx ttx vtx vrx round base_tx=0 base_rx=0
    vm_config vm "socket: \"$sock\", server: true" ""
    start_snabb vm 1
    wait_socket "$sock" 20 || { fail "$title: the VM did not listen"; stop_snabb vm; return; }
    for round in 1 2; do
        start_tp be "$sock" io 64 --vhost-client || { fail "$title: testpmd did not start"; break; }
        wait_for 20 connections_are vm "$round" || { fail "$title: round $round: no connection"; "$T" stop be >/dev/null; break; }
        "$T" cmd be start >/dev/null
        vm_config vm "socket: \"$sock\", server: true" '(class: "Source", args: (size: 64))'
        sleep 2
        vm_config vm "socket: \"$sock\", server: true" ""
        sleep 0.5
        settle vm:vm
        "$T" cmd be stop >/dev/null
        read -r trx ttx <<<"$(tp_stats be)"
        vtx=$(( $(ctr vm vm tx_packets) - base_tx )) vrx=$(( $(ctr vm vm rx_packets) - base_rx ))
        echo "  round $round: VM sent $vtx, testpmd received $trx; testpmd sent $ttx, the VM received $vrx"
        compare "round $round VM to testpmd" "$vtx" "$trx"
        compare "round $round testpmd to VM" "$ttx" "$vrx"
        "$T" stop be >/dev/null
        wait_for 10 bash -c "[ \"\$(od -An -t u8 $W/shm-vm/[0-9]*/apps/vm/link_up.counter | tr -d ' ')\" = 0 ]" ||
            { OK=0; WHY+=" the VM did not notice testpmd leaving;"; }
        base_tx=$(ctr vm vm tx_packets) base_rx=$(ctr vm vm rx_packets)
    done
    echo "  VM: $(counters vm vm)"
    verdict "$title, restarted once: counts agree" "$W/vm.log" "$W/be.log"
    stop_snabb vm
}

# --- OVS-DPDK between two VMs -----------------------------------------------------------
# Two VMs in one snabb-rs process: vm1 (MAC ..:01) sends 64 B frames to vm2,
# vm2 (MAC ..:02) sends 1500 B frames to vm1. vms_config on|off ARGS1 ARGS2.
vms_config() {
    local gen="" glink=""
    if [ "$1" = on ]; then
        gen='"gen1": (class: "Source", args: (size: 64, src: "02:00:00:00:00:01", dst: "02:00:00:00:00:02")),
        "gen2": (class: "Source", args: (size: 1500, src: "02:00:00:00:00:02", dst: "02:00:00:00:00:01")),'
        glink='"gen1.output -> vm1.input", "gen2.output -> vm2.input",'
    fi
    cat >"$W/vms.ron.new" <<EOF
// Two VMs played by snabb-rs, one on each port of a switch.
(
    apps: {
        $gen
        "vm1": (class: "VirtioUser", args: ($2)),
        "vm2": (class: "VirtioUser", args: ($3)),
        "sink1": (class: "Sink"),
        "sink2": (class: "Sink"),
    },
    links: [ $glink "vm1.output -> sink1.input", "vm2.output -> sink2.input" ],
)
EOF
    mv "$W/vms.ron.new" "$W/vms.ron"
}
both_up() { [ "$(ctr vms vm1 link_up)" = 1 ] && [ "$(ctr vms vm2 link_up)" = 1 ]; }
both_connected() { [ "$(ctr vms vm1 connections)" = "$1" ] && [ "$(ctr vms vm2 connections)" = "$1" ] && both_up; }
both_down() { [ "$(ctr vms vm1 link_up)" = 0 ] && [ "$(ctr vms vm2 link_up)" = 0 ]; }

# One session through OVS: traffic both ways for 3 s, drained, then
#   vm1 sent = vm2 received + OVS's drops at vhu1 (and the other way),
#   what OVS's PMD received = what both sent.
# Counts since BASE ("tx1 rx1 tx2 rx2 pmd"); sets SESSION to the new totals.
ovs_session() { # A1 A2 BASE...
    local a1=$1 a2=$2 b_tx1=$3 b_rx1=$4 b_tx2=$5 b_rx2=$6 b_pmd=$7
    vms_config on "$a1" "$a2"
    sleep 3
    vms_config off "$a1" "$a2"
    sleep 0.5
    settle vms:vm1 vms:vm2
    local st tx1 rx1 tx2 rx2 d0 d1 pmd
    st=$("$O" stats ovs --fresh)
    tx1=$(( $(ctr vms vm1 tx_packets) - b_tx1 )) rx1=$(( $(ctr vms vm1 rx_packets) - b_rx1 ))
    tx2=$(( $(ctr vms vm2 tx_packets) - b_tx2 )) rx2=$(( $(ctr vms vm2 rx_packets) - b_rx2 ))
    drops() { awk -v p="port=$1 " '$0 ~ p { for (i = 1; i <= NF; i++) if ($i ~ /_drops=/) { split($i, a, "="); s += a[2] } } END { print s + 0 }' <<<"$st"; }
    d0=$(drops vhu0) d1=$(drops vhu1)
    pmd=$(( $(sed -n 's/^OVS_PMD.* received=\([0-9]*\).*/\1/p' <<<"$st" | head -1) - b_pmd ))
    echo "  vm1 sent $tx1, vm2 received $rx2, OVS dropped $d1 for vm2; vm2 sent $tx2, vm1 received $rx1, OVS dropped $d0 for vm1"
    echo "  OVS's PMD received $pmd; $(grep OVS_PMD <<<"$st" | cut -d' ' -f3-)"
    echo "  vm1: $(counters vms vm1)"
    echo "  vm2: $(counters vms vm2)"
    compare "vm1 to vm2 (with OVS's drops)" "$tx1" "$((rx2 + d1))"
    compare "vm2 to vm1 (with OVS's drops)" "$tx2" "$((rx1 + d0))"
    compare "into OVS" "$((tx1 + tx2))" "$pmd"
    [ "$rx1" -gt 0 ] && [ "$rx2" -gt 0 ] || { OK=0; WHY+=" not both ways;"; }
    SESSION="$((b_tx1 + tx1)) $((b_rx1 + rx1)) $((b_tx2 + tx2)) $((b_rx2 + rx2)) $((b_pmd + pmd))"
}

case_ovs() {
    echo "--- ovs: two VMs through OVS-DPDK (dpdkvhostuser ports, NORMAL, one PMD on CPU 0)"
    local title="ovs: VirtioUser <-> OVS-DPDK <-> VirtioUser" r
    r=$("$O" start ovs --ports 2 --cpu 0 --mem 1024 --mac vhu0=02:00:00:00:00:01 --mac vhu1=02:00:00:00:00:02 2>&1) ||
        { fail "$title: OVS did not start: $r"; return; }
    "$O" wait-ready ovs --timeout 60 >/dev/null || { fail "$title: OVS not ready"; "$O" stop ovs >/dev/null; return; }
    local a1="socket: \"$W/ovs.ovs/vhu0\"" a2="socket: \"$W/ovs.ovs/vhu1\""
    vms_config off "$a1" "$a2"
    start_snabb vms 1
    if wait_for 30 both_up && "$O" wait-up ovs --timeout 30 >/dev/null; then
        ovs_session "$a1" "$a2" 0 0 0 0 0
    else
        OK=0; WHY+=" the VMs did not set up ($(counters vms vm1); $(counters vms vm2));"
    fi
    verdict "$title, counts agree" "$W/vms.log" "$W/ovs.ovs/ovs-vswitchd.log"
    stop_snabb vms
    "$O" stop ovs >/dev/null
}

case_ovsclient() {
    echo "--- ovsclient: two VMs listening, OVS-DPDK connecting (dpdkvhostuserclient), OVS restarted"
    local title="ovsclient: OVS-DPDK as client, restarted" round base="0 0 0 0"
    local a1="socket: \"$W/vm1.sock\", server: true" a2="socket: \"$W/vm2.sock\", server: true"
    vms_config off "$a1" "$a2"
    start_snabb vms 1
    wait_socket "$W/vm1.sock" 20 && wait_socket "$W/vm2.sock" 20 || { fail "$title: the VMs did not listen"; stop_snabb vms; return; }
    for round in 1 2; do
        "$O" start ovs --client "$W/vm1.sock" --client "$W/vm2.sock" --cpu 0 --mem 1024 \
            --mac vhu0=02:00:00:00:00:01 --mac vhu1=02:00:00:00:00:02 >/dev/null &&
            "$O" wait-ready ovs --timeout 60 >/dev/null || { OK=0; WHY+=" round $round: OVS did not start;"; break; }
        wait_for 30 both_connected "$round" && "$O" wait-up ovs --timeout 30 >/dev/null ||
            { OK=0; WHY+=" round $round: the VMs were not taken ($(counters vms vm1));"; break; }
        # Each OVS counts from 0.
        # shellcheck disable=SC2086
        ovs_session "$a1" "$a2" $base 0
        base=${SESSION% *}
        "$O" stop ovs >/dev/null
        wait_for 10 both_down || { OK=0; WHY+=" round $round: the VMs did not notice OVS leaving;"; }
    done
    verdict "$title, counts agree" "$W/vms.log" "$W/ovs.ovs/ovs-vswitchd.log"
    stop_snabb vms
    "$O" stop ovs >/dev/null 2>&1
}

echo "--- $B; cases: $CASES"
for c in $CASES; do
    declare -F "case_$c" >/dev/null || { fail "no case $c"; continue; }
    "case_$c"
done

left=0
for prefix in $(grep -o 'prefix=[^ ]*' "$W/started" 2>/dev/null | cut -d= -f2); do
    for f in "$(hugepage_dir)/${prefix}"map_*; do [ -e "$f" ] && left=$((left + 1)); done
done
[ "$left" = 0 ] && pass "no huge page files left by our testpmds" || fail "$left huge page files left"
echo "virtio-user-peers: $PASSED passed, $FAILED failed in $(( $(date +%s) - START )) s"
[ "$FAILED" = 0 ]
