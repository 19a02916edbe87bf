#!/bin/bash
# AfXdp against real Linux networking.
#
# Two network namespaces, each with a veth pair whose other end stays in the
# root namespace; there snabb-rs joins the two root-side ends through two
# AfXdp apps (configs/afxdp.ron, with the interface names changed):
#
#     ns1: p1 10.79.0.1 ==veth== v1 [AfXdp if1] snabb-rs [AfXdp if2] v2 ==veth== p2 10.79.0.2 :ns2
#
# Each root-side end gets our XDP program (native XDP on veth) while the app
# runs. Checked:
#   - clear errors at start-up: a missing interface, a missing privilege,
#     another XDP program on the interface (and `replace: true` taking it off);
#   - ping and iperf3 (TCP, both ways) through the graph, and the apps'
#     counters against what the kernel counts for v1 and v2;
#   - MTU 9000 set while running (the sockets are opened again for frames in
#     several buffers): large pings and iperf3;
#   - live reconfiguration: new ring sizes taken in place; an app removed
#     takes its program off, and put back puts it on again;
#   - several queues: v1 with 2 queues and an app on each, frames sent from
#     each CPU of ns1 (XPS) arrive on their own queue;
#   - the program is off each interface after SIGTERM, after `kill -9`, and
#     a program of ours left by a process that died (attached through
#     netlink, as on a kernel without XDP links) is replaced at the next start.
# The namespace ends have TSO, GSO and checksum offload off: AF_XDP carries
# no checksum status, so a frame a local sender left to offload would arrive
# with its checksum unfinished. Everything made here is removed on exit.
# Exit 0 pass, 43 skip (with a SKIP line), anything else fail.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT=${AFXDP_LIMIT:-300} # seconds for the whole suite
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
fail() { echo "FAIL: $*"; exit 1; }
say() { echo "--- $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, veth interfaces, XDP)"
for p in ip ping iperf3 ethtool setpriv od clang taskset; do
    command -v "$p" >/dev/null || skip "$p is not installed (scripts/test.sh installs it)"
done

T=${CARGO_TARGET_DIR:-target}
B=$T/release/snabb-rs
if [ ! -x "$B" ]; then
    say "building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || fail "cargo build"
fi

TAG=ax$$
NS1=${TAG}n1 NS2=${TAG}n2
V1=${TAG}v1 V2=${TAG}v2 P1=${TAG}p1 P2=${TAG}p2
TMP=$(mktemp -d)
chmod 755 "$TMP"
SNABB=
WATCHDOG=
export SNABB_RS_SHM_ROOT=$TMP/shm

cleanup() {
    set +e
    [ -n "$SNABB" ] && kill "$SNABB" 2>/dev/null && wait "$SNABB" 2>/dev/null
    for ns in "$NS1" "$NS2"; do
        if [ -e "/run/netns/$ns" ]; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
            ip netns del "$ns"
        fi
    done
    ip link del "$V1" 2>/dev/null
    ip link del "$V2" 2>/dev/null
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 1' INT TERM
# The sleep is the watchdog's child, killed with it (its trap).
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL: time limit of ${LIMIT}s"
    kill -TERM $$
) 2>/dev/null &
WATCHDOG=$!

# pair N QUEUES: veth vN (root) -- pN (namespace N) with QUEUES queues each.
pair() {
    local n=$1 q=$2 ns v p
    ns=${TAG}n$n v=${TAG}v$n p=${TAG}p$n
    ip link del "$v" 2>/dev/null || true
    ip link add "$v" numtxqueues "$q" numrxqueues "$q" type veth peer name "$p" numtxqueues "$q" numrxqueues "$q" netns "$ns"
    # The root-side end carries nothing of the kernel's own: its counters
    # count only what snabb-rs sends and receives.
    sysctl -qw "net.ipv6.conf.$v.disable_ipv6=1"
    ethtool -K "$v" gro off >/dev/null 2>&1 || true
    ip netns exec "$ns" ethtool -K "$p" tso off gso off tx off >/dev/null
    ip netns exec "$ns" ip addr add "10.79.0.$n/24" dev "$p"
    ip netns exec "$ns" ip link set "$p" up
    ip link set "$v" up
}

say "namespaces $NS1 and $NS2, veth pairs $V1-$P1 and $V2-$P2"
for n in 1 2; do
    ns=${TAG}n$n
    ip netns add "$ns"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip netns exec "$ns" ip link set lo up
    pair "$n" 1
done

xdp_of() { # interface -> "name id" of its XDP program, or nothing
    ip -d link show dev "$1" | awk '/prog\/xdp/ { for (i = 1; i <= NF; i++) { if ($i == "id") id = $(i+1); if ($i == "name") name = $(i+1) } } END { if (id) print name, id }'
}
wait_xdp() { # interface, "on"|"off"; up to 3 s
    local i
    for i in $(seq 30); do
        if [ "$2" = on ]; then [ -n "$(xdp_of "$1")" ] && return 0; else [ -z "$(xdp_of "$1")" ] && return 0; fi
        sleep 0.1
    done
    return 1
}

wire() { # config file, from configs/afxdp.ron with our names, plus sed edits
    sed -e "s/\"veth1\"/\"$V1\"/" -e "s/\"veth2\"/\"$V2\"/" "${@:2}" configs/afxdp.ron >"$1"
    chmod 644 "$1"
}

start() { # config [env...]: start snabb-rs in the background, wait for its counters
    local cfg=$1
    shift
    env "$@" "$B" run "$cfg" >>"$TMP/snabb.log" 2>&1 &
    SNABB=$!
    SHM=$SNABB_RS_SHM_ROOT/$SNABB
    for _ in $(seq 100); do [ -e "$SHM/apps/if2/tx_packets.counter" ] && break; sleep 0.1; done
    [ -e "$SHM/apps/if2/tx_packets.counter" ] || { tail -20 "$TMP/snabb.log"; fail "snabb-rs did not start"; }
}
stop() { # signal
    kill "-$1" "$SNABB"
    wait "$SNABB" 2>/dev/null || true
    SNABB=
}
counter() { od -An -t u8 "$SHM/apps/$1/$2.counter" | tr -d ' '; }

# --- errors at start-up --------------------------------------------------------
say "errors at start-up"
wire "$TMP/wire.ron"
sed -e "s/\"veth1\"/\"${TAG}nope\"/" configs/afxdp.ron >"$TMP/missing.ron"
"$B" config check "$TMP/wire.ron" >/dev/null 2>&1 || fail "config check $TMP/wire.ron"
if out=$("$B" run "$TMP/missing.ron" --duration 1 --no-shm 2>&1); then fail "a missing interface was accepted"; fi
echo "$out" | grep -q "interface \`${TAG}nope\`: no such interface" || fail "missing interface: $out"
echo "  missing interface: $(echo "$out" | tail -1)"
cp "$B" "$TMP/snabb-rs"
chmod 755 "$TMP/snabb-rs"
if out=$(cd "$TMP" && setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
    env SNABB_RS_NO_HUGEPAGES=1 ./snabb-rs run wire.ron --duration 1 --no-shm 2>&1); then
    fail "ran without privileges"
fi
echo "$out" | grep -q "interface \`$V1\`.*CAP_NET_RAW" || fail "missing privilege: $out"
echo "  no privilege: $(echo "$out" | tail -1)"
# Another program on v1 (generic XDP, attached through netlink as `ip` does).
clang -O2 -g -target bpf "-I/usr/include/$(uname -m)-linux-gnu" -c apps/afxdp/tests/xdp_pass.c -o "$TMP/pass.o" ||
    fail "compiling tests/xdp_pass.c"
ip link set dev "$V1" xdpgeneric obj "$TMP/pass.o" sec xdp || fail "attaching another XDP program with ip"
if out=$("$B" run "$TMP/wire.ron" --duration 1 --no-shm 2>&1); then fail "an interface with another XDP program was taken"; fi
echo "$out" | grep -q "interface \`$V1\` already has an XDP program.*other_pass.*replace: true" || fail "another program: $out"
[ "$(xdp_of "$V1" | cut -d' ' -f1)" = other_pass ] || fail "the other program was touched: $(xdp_of "$V1")"
[ -z "$(xdp_of "$V2")" ] || fail "$V2 kept a program after a failed start: $(xdp_of "$V2")"
echo "  another program: $(echo "$out" | tail -1 | cut -c1-160)..."
wire "$TMP/replace.ron" -e "0,/interface: \"$V1\"/s//interface: \"$V1\", replace: true/"
grep -q 'replace: true)' "$TMP/replace.ron" || fail "editing the config for replace"
"$B" run "$TMP/replace.ron" --duration 1 --no-shm >"$TMP/replace.log" 2>&1 || { cat "$TMP/replace.log"; fail "replace: true"; }
grep -q "took off XDP program \`other_pass\`" "$TMP/replace.log" || { cat "$TMP/replace.log"; fail "replace: not logged"; }
wait_xdp "$V1" off || fail "replace: a program is left on $V1: $(xdp_of "$V1")"
echo "  replace: true: other_pass taken off, ours attached, and taken off at exit"

stat() { cat "/sys/class/net/$1/statistics/$2"; }
kernel() { # interface -> "rx_packets rx_bytes tx_packets+tx_dropped tx_bytes tx_dropped"
    echo "$(stat "$1" rx_packets) $(stat "$1" rx_bytes) $(($(stat "$1" tx_packets) + $(stat "$1" tx_dropped))) $(stat "$1" tx_bytes) $(stat "$1" tx_dropped)"
}

iperf() { # direction flag ("" or -R), seconds
    ip netns exec "$NS2" timeout 30 iperf3 -s -1 -B 10.79.0.2 >"$TMP/iperf-server.log" 2>&1 &
    local server=$!
    for _ in $(seq 50); do ip netns exec "$NS2" ss -ltn | grep 10.79.0.2:5201 >/dev/null && break; sleep 0.1; done
    ip netns exec "$NS1" timeout 30 iperf3 -c 10.79.0.2 $1 -t "$2" -f m >"$TMP/iperf.log" 2>&1 || {
        cat "$TMP/iperf.log" "$TMP/iperf-server.log"
        fail "iperf3 $1"
    }
    wait "$server" || true
    local rx
    rx=$(grep -E "receiver$" "$TMP/iperf.log" | tail -1)
    [ -n "$rx" ] || { cat "$TMP/iperf.log"; fail "iperf3 $1: no result"; }
    echo "  iperf3 TCP ${1:-(forward)}: $rx" | tr -s ' '
    echo "$rx" | awk '{ for (i = 1; i <= NF; i++) if ($i == "MBytes" || $i == "GBytes" || $i == "KBytes") { if ($(i-1) + 0 > 0) ok = 1 } } END { exit !ok }' ||
        fail "iperf3 $1 moved nothing"
}
ping_ok() { # count size [extra ping args]
    ip netns exec "$NS1" timeout 30 ping -c "$1" -i 0.2 -W 2 -s "$2" "${@:3}" 10.79.0.2 >"$TMP/ping.log" 2>&1 || { cat "$TMP/ping.log"; fail "ping -s $2"; }
    echo "  ping -s $2: $(grep -E 'packets transmitted' "$TMP/ping.log")"
}

# check APP IFACE BEFORE[] NOW[]: the app's counters against the kernel's.
# With our XDP program on it, a veth counts received bytes (its NAPI path)
# without the 14-byte Ethernet header; frames it sends to a namespace end
# without XDP are counted whole.
ok=1
appc() { # app -> "rx_packets rx_bytes tx_packets tx_bytes xdp_rx_dropped xdp_rx_ring_full rx_oversize"
    local n
    for n in rx_packets rx_bytes tx_packets tx_bytes xdp_rx_dropped xdp_rx_ring_full rx_oversize; do echo -n "$(counter "$1" $n) "; done
}
# check APP IFACE KBEFORE[] KNOW[] ABEFORE[] ANOW[]
check() {
    local app=$1 ifc=$2
    local -n before=$3 now=$4 abefore=$5 anow=$6
    local krx=$((now[0] - before[0])) krxb=$((now[1] - before[1])) ktx=$((now[2] - before[2])) ktxb=$((now[3] - before[3])) kdrop=$((now[4] - before[4]))
    local rx=$((anow[0] - abefore[0])) rxb=$((anow[1] - abefore[1])) tx=$((anow[2] - abefore[2])) txb=$((anow[3] - abefore[3]))
    local kd=$((anow[4] - abefore[4])) rf=$((anow[5] - abefore[5])) over=$((anow[6] - abefore[6]))
    printf "  %-4s %-10s kernel rx %8d frames %11d bytes (+14 each: %11d) | tx %8d frames %11d bytes (%d dropped by veth)\n" \
        "$app" "$ifc" "$krx" "$krxb" $((krxb + 14 * krx)) "$ktx" "$ktxb" "$kdrop"
    printf "  %-4s %-10s app    rx %8d frames %11d bytes %28s | tx %8d frames %11d bytes (%d kernel drops, %d ring full)\n" \
        "$app" "" "$rx" "$rxb" "" "$tx" "$txb" "$kd" "$rf"
    [ "$rx" -gt 0 ] && [ "$tx" -gt 0 ] || { echo "  $app: no traffic"; ok=0; }
    [ $((rx + kd + rf)) = "$krx" ] || { echo "  $app: rx_packets + kernel drops != the kernel's rx_packets"; ok=0; }
    [ $((kd + rf)) != 0 ] || [ "$rxb" = $((krxb + 14 * krx)) ] || { echo "  $app: rx_bytes != the kernel's rx_bytes + 14 per frame"; ok=0; }
    [ "$tx" = "$ktx" ] || { echo "  $app: tx_packets != the kernel's tx_packets + tx_dropped"; ok=0; }
    [ "$kdrop" != 0 ] || [ "$txb" = "$ktxb" ] || { echo "  $app: tx_bytes != the kernel's tx_bytes"; ok=0; }
    [ "$over" = 0 ] || { echo "  $app: oversize frames"; ok=0; }
}
links_clean() {
    local l d
    for l in "if1.tx -> if2.rx" "if2.tx -> if1.rx"; do
        d=$(od -An -t u8 "$SHM/links/$l/txdrop.counter" | tr -d ' ')
        [ "$d" = 0 ] || { echo "  link $l dropped $d"; ok=0; }
    done
}

# --- traffic, counters, MTU 9000, reconfiguration ----------------------------------
K1=($(kernel "$V1"))
K2=($(kernel "$V2"))
say "snabb-rs joining $V1 and $V2"
start "$TMP/wire.ron"
wait_xdp "$V1" on && wait_xdp "$V2" on || fail "no XDP program on $V1/$V2: $(xdp_of "$V1") / $(xdp_of "$V2")"
echo "  XDP: $V1: $(xdp_of "$V1"), $V2: $(xdp_of "$V2"); zero copy $(counter if1 zerocopy), native $(counter if1 xdp_native)"
[ "$(counter if1 xdp_native)" = 1 ] || fail "veth should run XDP natively"

A1=($(appc if1))
A2=($(appc if2))
say "ping and iperf3 $NS1 <-> $NS2 through the graph"
ping_ok 5 56
iperf "" 3
iperf -R 2

say "counters: snabb-rs against the kernel"
sleep 1 # the engine commits counters every 100 breaths; kernel stats are read every 100 ms
kill -0 "$SNABB" 2>/dev/null || { cat "$TMP/snabb.log"; fail "snabb-rs died"; }
N1=($(kernel "$V1"))
N2=($(kernel "$V2"))
B1=($(appc if1))
B2=($(appc if2))
check if1 "$V1" K1 N1 A1 B1
check if2 "$V2" K2 N2 A2 B2
links_clean
[ $ok = 1 ] || fail "counters disagree"

say "MTU 9000 on both pairs while running"
for n in 1 2; do
    ip link set "${TAG}v$n" mtu 9000 || fail "MTU 9000 on ${TAG}v$n (with our XDP program on it)"
    ip netns exec "${TAG}n$n" ip link set "${TAG}p$n" mtu 9000
done
for _ in $(seq 50); do [ "$(counter if1 reopens)" -ge 1 ] && [ "$(counter if2 reopens)" -ge 1 ] && break; sleep 0.1; done
[ "$(counter if1 reopens)" -ge 1 ] || { tail "$TMP/snabb.log"; fail "the socket was not opened again for frames in several buffers"; }
K1=($(kernel "$V1"))
K2=($(kernel "$V2"))
A1=($(appc if1))
A2=($(appc if2))
ping_ok 5 8900 -M do
ping_ok 3 8972 -M do
iperf "" 2
sleep 1
N1=($(kernel "$V1"))
N2=($(kernel "$V2"))
B1=($(appc if1))
B2=($(appc if2))
check if1 "$V1" K1 N1 A1 B1
check if2 "$V2" K2 N2 A2 B2
links_clean
[ $ok = 1 ] || fail "counters disagree with MTU 9000"
[ "$(grep -c 'multi-buffer' "$TMP/snabb.log")" -ge 2 ] || fail "no socket opened with multi-buffer"

say "live reconfiguration"
progs_before="$(xdp_of "$V1") / $(xdp_of "$V2")"
sed -i -e 's/rx_ring: 2048/rx_ring: 1024/' -e 's/tx_ring: 2048/tx_ring: 512/' "$TMP/wire.ron"
for _ in $(seq 50); do grep -q "reconfigured" "$TMP/snabb.log" && break; sleep 0.1; done
grep -q "AfXdp \`if2\`: reconfigured" "$TMP/snabb.log" || { tail "$TMP/snabb.log"; fail "new rings not taken"; }
ping_ok 3 1000
[ "$(xdp_of "$V1") / $(xdp_of "$V2")" = "$progs_before" ] || fail "programs changed on a reconfigure: $progs_before -> $(xdp_of "$V1") / $(xdp_of "$V2")"
cp "$TMP/wire.ron" "$TMP/full.ron"
# if2 out of the graph: v2's program goes; if1 stays.
awk '/"if2": \(class/ { skip = 1 } skip && /^        \)\),/ { skip = 0; next } !skip' "$TMP/full.ron" |
    grep -v '"if1.tx -> if2.rx"\|"if2.tx -> if1.rx"' >"$TMP/one.ron"
"$B" config check "$TMP/one.ron" >/dev/null 2>&1 || { cat "$TMP/one.ron"; fail "config without if2"; }
cp "$TMP/one.ron" "$TMP/wire.ron"
wait_xdp "$V2" off || fail "removing if2 left its program on $V2: $(xdp_of "$V2")"
[ -n "$(xdp_of "$V1")" ] || fail "removing if2 took the program off $V1"
echo "  if2 removed: $V2 has no XDP program, $V1 keeps $(xdp_of "$V1")"
cp "$TMP/full.ron" "$TMP/wire.ron"
wait_xdp "$V2" on || fail "if2 back: no program on $V2"
for _ in $(seq 50); do ip netns exec "$NS1" ping -c 1 -W 1 10.79.0.2 >/dev/null 2>&1 && break; sleep 0.1; done
ping_ok 3 56
echo "  if2 back: $V2 has $(xdp_of "$V2")"

say "SIGTERM takes the programs off"
stop TERM
wait_xdp "$V1" off && wait_xdp "$V2" off || fail "programs left after SIGTERM: $(xdp_of "$V1") / $(xdp_of "$V2")"
echo "  none on $V1 or $V2"

say "kill -9: the kernel takes off programs attached through a BPF link"
start "$TMP/wire.ron"
wait_xdp "$V1" on || fail "no program"
stop KILL
wait_xdp "$V1" off && wait_xdp "$V2" off || fail "programs left after kill -9: $(xdp_of "$V1") / $(xdp_of "$V2")"
echo "  none on $V1 or $V2"

say "kill -9 with programs attached through netlink (as on kernels before 5.9): replaced at the next start"
start "$TMP/wire.ron" SNABB_RS_XDP_NETLINK=1
wait_xdp "$V1" on || fail "no program"
stop KILL
sleep 0.5
stale1=$(xdp_of "$V1")
[ -n "$stale1" ] || fail "no program left after kill -9 with netlink attachment (the test cannot show replacement)"
echo "  left behind: $V1: $stale1, $V2: $(xdp_of "$V2")"
: >"$TMP/snabb.log"
start "$TMP/wire.ron"
grep -q "took off a stale XDP program of ours" "$TMP/snabb.log" || { cat "$TMP/snabb.log"; fail "the stale program was not replaced (or not said)"; }
[ "$(xdp_of "$V1")" != "$stale1" ] || fail "still the stale program on $V1"
ping_ok 3 56
stop TERM
wait_xdp "$V1" off && wait_xdp "$V2" off || fail "programs left: $(xdp_of "$V1") / $(xdp_of "$V2")"
echo "  replaced, traffic passed, none left after SIGTERM"

# --- several queues -----------------------------------------------------------------
say "several queues: $V1 with 2 queues, an app on each"
for n in 1 2; do ip netns exec "${TAG}n$n" ip link set "${TAG}p$n" mtu 1500; done
ip link set "$V2" mtu 1500
pair 1 2
# ns1's CPU 0 sends on queue 0, CPU 1 on queue 1 (XPS); veth delivers a
# frame on the peer's queue of the same number.
ip netns exec "$NS1" sh -c "echo 1 > /sys/class/net/$P1/queues/tx-0/xps_cpus; echo 2 > /sys/class/net/$P1/queues/tx-1/xps_cpus" ||
    fail "XPS"
cat >"$TMP/queues.ron" <<EOF
(
    apps: {
        "q0": (class: "AfXdp", args: (interface: "$V1", queue: 0)),
        "q1": (class: "AfXdp", args: (interface: "$V1", queue: 1)),
        "join": (class: "Join"),
        "if2": (class: "AfXdp", args: (interface: "$V2")),
    },
    links: [
        "q0.tx -> join.q0",
        "q1.tx -> join.q1",
        "join.output -> if2.rx",
        "if2.tx -> q0.rx",
    ],
)
EOF
K1=($(kernel "$V1"))
start "$TMP/queues.ron"
wait_xdp "$V1" on || fail "no program on $V1"
ip netns exec "$NS1" taskset -c 0 ping -c 5 -i 0.2 -W 2 10.79.0.2 >"$TMP/ping0.log" 2>&1 || { cat "$TMP/ping0.log"; fail "ping from CPU 0"; }
ip netns exec "$NS1" taskset -c 1 ping -c 5 -i 0.2 -W 2 10.79.0.2 >"$TMP/ping1.log" 2>&1 || { cat "$TMP/ping1.log"; fail "ping from CPU 1"; }
sleep 1
N1=($(kernel "$V1"))
q0=$(counter q0 rx_packets) q1=$(counter q1 rx_packets)
krx=$((N1[0] - K1[0]))
echo "  queue 0: $q0 frames, queue 1: $q1 frames; kernel: $krx frames on $V1"
[ "$q0" -ge 5 ] && [ "$q1" -ge 5 ] || fail "each queue should have its CPU's pings"
[ $((q0 + q1)) = "$krx" ] || fail "queues' rx_packets do not add up to the kernel's"
[ "$(ip -d link show dev "$V1" | grep -c 'prog/xdp')" = 1 ] || fail "more than one program on $V1"
stop TERM
wait_xdp "$V1" off || fail "program left on $V1"

echo "PASS afxdp: errors, ping and iperf3 with counters matching the kernel's, MTU 9000, live reconfiguration, SIGTERM and kill -9 detach, stale program replaced, 2 queues"
