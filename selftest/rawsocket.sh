#!/bin/bash
# RawSocket against real Linux networking.
#
# Two network namespaces, each with a veth pair whose other end stays in the
# root namespace; there snabb-rs joins the two root-side ends through two
# RawSocket apps (configs/rawsocket.ron, with the interface names changed):
#
#     ns1: p1 10.77.0.1 ==veth== v1 [RawSocket if1] snabb-rs [RawSocket if2] v2 ==veth== p2 10.77.0.2 :ns2
#
# ping and iperf3 (TCP, a few seconds each way) between the namespaces must
# pass through the graph, and the apps' counters must match what the kernel
# counts for v1 and v2. The namespace ends keep checksum offload on, so the
# TCP frames reach snabb-rs with their checksums unfinished (RawSocket
# finishes them); TSO and GSO are off there, as a frame bigger than a packet
# cannot pass. Also: a missing interface and a missing privilege are clear
# errors at start-up. Everything made here is removed on exit, pass or fail.
# Exit 0 pass, 43 skip (with a SKIP line), anything else fail.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT=${RAWSOCKET_LIMIT:-240} # seconds for the whole suite
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
fail() { echo "FAIL: $*"; exit 1; }
say() { echo "--- $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, veth interfaces)"
for p in ip ping iperf3 ethtool setpriv od; do
    command -v "$p" >/dev/null || skip "$p is not installed (scripts/test.sh installs it)"
done

T=${CARGO_TARGET_DIR:-target}
B=$T/release/snabb-rs
if [ ! -x "$B" ]; then
    say "building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || fail "cargo build"
fi

TAG=rs$$
NS1=${TAG}n1 NS2=${TAG}n2
V1=${TAG}v1 V2=${TAG}v2 P1=${TAG}p1 P2=${TAG}p2
TMP=$(mktemp -d)
chmod 755 "$TMP"
SNABB=
WATCHDOG=

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
# The sleep is the watchdog's child, killed with it (its trap): left
# behind, it would hold inherited fds open until the limit.
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL: time limit of ${LIMIT}s"
    kill -TERM $$
) 2>/dev/null &
WATCHDOG=$!

say "namespaces $NS1 and $NS2, veth pairs $V1-$P1 and $V2-$P2"
n=1
for ns in "$NS1" "$NS2"; do
    v=${TAG}v$n p=${TAG}p$n
    ip netns add "$ns"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip link add "$v" type veth peer name "$p" netns "$ns"
    # The root-side end carries nothing of the kernel's own: counters then
    # count only what snabb-rs sends and receives.
    sysctl -qw "net.ipv6.conf.$v.disable_ipv6=1"
    ethtool -K "$v" gro off >/dev/null 2>&1 || true
    ip netns exec "$ns" ethtool -K "$p" tso off gso off >/dev/null
    ip netns exec "$ns" ip addr add "10.77.0.$n/24" dev "$p"
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set "$p" up
    ip link set "$v" up
    n=$((n + 1))
done

say "errors at start-up"
sed -e "s/\"veth1\"/\"$V1\"/" -e "s/\"veth2\"/\"$V2\"/" configs/rawsocket.ron >"$TMP/wire.ron"
sed -e "s/\"veth1\"/\"${TAG}nope\"/" configs/rawsocket.ron >"$TMP/missing.ron"
"$B" config check "$TMP/wire.ron" >/dev/null 2>&1 || fail "config check $TMP/wire.ron"
if out=$("$B" run "$TMP/missing.ron" --duration 1 --no-shm 2>&1); then fail "a missing interface was accepted"; fi
echo "$out" | grep -q "interface \`${TAG}nope\`: no such interface" || fail "missing interface: $out"
echo "  missing interface: $(echo "$out" | tail -1)"
cp "$B" "$TMP/snabb-rs"
chmod 755 "$TMP/snabb-rs"
chmod 644 "$TMP/wire.ron"
if out=$(cd "$TMP" && setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
    env SNABB_RS_NO_HUGEPAGES=1 ./snabb-rs run wire.ron --duration 1 --no-shm 2>&1); then
    fail "ran without CAP_NET_RAW"
fi
echo "$out" | grep -q "interface \`$V1\`.*CAP_NET_RAW" || fail "missing privilege: $out"
echo "  no privilege: $(echo "$out" | tail -1)"

stat() { cat "/sys/class/net/$1/statistics/$2"; }
kernel() { # interface -> "rx_packets rx_bytes tx_packets+tx_dropped tx_bytes tx_dropped"
    echo "$(stat "$1" rx_packets) $(stat "$1" rx_bytes) $(($(stat "$1" tx_packets) + $(stat "$1" tx_dropped))) $(stat "$1" tx_bytes) $(stat "$1" tx_dropped)"
}
K1=($(kernel "$V1"))
K2=($(kernel "$V2"))

say "snabb-rs joining $V1 and $V2"
export SNABB_RS_SHM_ROOT=$TMP/shm
"$B" run "$TMP/wire.ron" >"$TMP/snabb.log" 2>&1 &
SNABB=$!
SHM=$SNABB_RS_SHM_ROOT/$SNABB
for _ in $(seq 100); do [ -e "$SHM/apps/if2/tx_packets.counter" ] && break; sleep 0.1; done
[ -e "$SHM/apps/if2/tx_packets.counter" ] || { cat "$TMP/snabb.log"; fail "snabb-rs did not start"; }
counter() { od -An -t u8 "$SHM/apps/$1/$2.counter" | tr -d ' '; }

say "ping $NS1 -> $NS2 through the graph"
ip netns exec "$NS1" timeout 20 ping -c 5 -i 0.2 -W 2 10.77.0.2 >"$TMP/ping.log" 2>&1 || { cat "$TMP/ping.log"; fail "ping"; }
grep -E "packets transmitted|rtt" "$TMP/ping.log" | sed 's/^/  /'

iperf() { # direction flag ("" or -R), seconds
    ip netns exec "$NS2" timeout 30 iperf3 -s -1 -B 10.77.0.2 >"$TMP/iperf-server.log" 2>&1 &
    local server=$!
    for _ in $(seq 50); do ip netns exec "$NS2" ss -ltn | grep 10.77.0.2:5201 >/dev/null && break; sleep 0.1; done
    ip netns exec "$NS1" timeout 30 iperf3 -c 10.77.0.2 $1 -t "$2" -f m >"$TMP/iperf.log" 2>&1 || {
        cat "$TMP/iperf.log" "$TMP/iperf-server.log"
        fail "iperf3 $1"
    }
    wait "$server" || true
    local rx
    rx=$(grep -E "receiver$" "$TMP/iperf.log" | tail -1)
    [ -n "$rx" ] || { cat "$TMP/iperf.log"; fail "iperf3 $1: no result"; }
    echo "  iperf3 TCP ${1:-(forward)}: $rx" | tr -s ' '
    # Some data must have arrived.
    echo "$rx" | awk '{ for (i = 1; i <= NF; i++) if ($i == "MBytes" || $i == "GBytes" || $i == "KBytes") { if ($(i-1) + 0 > 0) ok = 1 } } END { exit !ok }' ||
        fail "iperf3 $1 moved nothing"
}
say "iperf3 TCP $NS1 -> $NS2, then $NS2 -> $NS1"
iperf "" 3
iperf -R 2

say "counters: snabb-rs against the kernel"
sleep 1 # the engine commits counters every 100 breaths; the ring retires blocks within 1 ms
kill -0 "$SNABB" 2>/dev/null || { cat "$TMP/snabb.log"; fail "snabb-rs died"; }
N1=($(kernel "$V1"))
N2=($(kernel "$V2"))
ok=1
check() { # app iface before[] now[]
    local app=$1 ifc=$2
    local -n before=$3 now=$4
    local krx=$((now[0] - before[0])) krxb=$((now[1] - before[1])) ktx=$((now[2] - before[2])) ktxb=$((now[3] - before[3])) kdrop=$((now[4] - before[4]))
    local rx rxb drops tx txb csum over
    rx=$(counter "$app" rx_packets) rxb=$(counter "$app" rx_bytes) drops=$(counter "$app" rx_kernel_drops)
    tx=$(counter "$app" tx_packets) txb=$(counter "$app" tx_bytes) csum=$(counter "$app" rx_csum_completed) over=$(counter "$app" rx_oversize)
    printf "  %-4s %-10s kernel rx %8d frames %11d bytes | tx %8d frames %11d bytes (%d dropped by veth)\n" "$app" "$ifc" "$krx" "$krxb" "$ktx" "$ktxb" "$kdrop"
    printf "  %-4s %-10s app    rx %8d frames %11d bytes | tx %8d frames %11d bytes (%d ring drops, %d oversize, %d checksums finished)\n" "$app" "" "$rx" "$rxb" "$tx" "$txb" "$drops" "$over" "$csum"
    [ "$rx" -gt 0 ] && [ "$tx" -gt 0 ] || { echo "  $app: no traffic"; ok=0; }
    [ $((rx + drops)) = "$krx" ] || { echo "  $app: rx_packets + rx_kernel_drops != the kernel's rx_packets"; ok=0; }
    [ "$drops" != 0 ] || [ "$rxb" = "$krxb" ] || { echo "  $app: rx_bytes != the kernel's rx_bytes"; ok=0; }
    [ "$tx" = "$ktx" ] || { echo "  $app: tx_packets != the kernel's tx_packets + tx_dropped"; ok=0; }
    [ "$kdrop" != 0 ] || [ "$txb" = "$ktxb" ] || { echo "  $app: tx_bytes != the kernel's tx_bytes"; ok=0; }
    [ "$over" = 0 ] || { echo "  $app: oversize frames (offloads not off?)"; ok=0; }
}
check if1 "$V1" K1 N1
check if2 "$V2" K2 N2
csum=$(($(counter if1 rx_csum_completed) + $(counter if2 rx_csum_completed)))
[ "$csum" -gt 0 ] || { echo "  no checksum was left to offload: the test did not exercise completion"; ok=0; }
# What came in on one side went out of the other (the links dropped nothing).
for l in "if1.tx -> if2.rx" "if2.tx -> if1.rx"; do
    d=$(od -An -t u8 "$SHM/links/$l/txdrop.counter" | tr -d ' ')
    [ "$d" = 0 ] || { echo "  link $l dropped $d"; ok=0; }
done
[ $ok = 1 ] || fail "counters disagree"
kill "$SNABB"
wait "$SNABB" || fail "snabb-rs exited with an error: $(tail -3 "$TMP/snabb.log")"
SNABB=
echo "PASS rawsocket: ping and iperf3 through snabb-rs, counters match the kernel's"
