#!/bin/bash
# The 82599 model cabled to real Linux networking.
#
# A network namespace holds one end of a veth pair; the model port's wire is
# the other end (WireSpec::Interface, an AF_PACKET socket), so frames the
# kernel sends in the namespace reach the model's receive filters, and
# frames the driver sends come out in the namespace:
#
#   ns: p 10.78.0.1 [model port B] ==veth== v [model port A] Intel10g apps
#
# The port runs VMDq with three pools:
#   pool 0  MAC 02:00:00:78:00:10, untagged     -> pcap file
#   pool 1  MAC 02:00:00:78:00:11, VLAN 10 only -> pcap file (tag stripped)
#   pool 2  MAC 02:00:00:78:00:12, sends numbered frames to the namespace
# The namespace pings 10.78.0.10 (pool 0's MAC as its neighbour) and
# 10.78.0.99 (a MAC no pool has); a second snabb-rs in the namespace sends
# VLAN 10 frames to pool 1 through its own model port on the namespace's
# end (this kernel may have no 802.1Q devices). Each pool must get exactly
# its frames, and tcpdump in the namespace must see pool 2's.
# Exit 0 pass, 43 skip (with a SKIP line), anything else fail.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT=${INTEL10G_NETNS_LIMIT:-180}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
fail() { echo "FAIL: $*"; exit 1; }
say() { echo "--- $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, veth interfaces, raw sockets)"
for p in ip ping tcpdump; do
    command -v "$p" >/dev/null || skip "$p is not installed (scripts/test.sh installs it)"
done

T=${CARGO_TARGET_DIR:-target}
B=$T/release/snabb-rs
if [ ! -x "$B" ]; then
    say "building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || fail "cargo build"
fi

TAG=i10g$$
NS=${TAG}n V=${TAG}v P=${TAG}p
TMP=$(mktemp -d)
SNABB= DUMP= WATCHDOG=
cleanup() {
    set +e
    [ -n "$SNABB" ] && kill "$SNABB" 2>/dev/null && wait "$SNABB" 2>/dev/null
    [ -n "$DUMP" ] && kill "$DUMP" 2>/dev/null && wait "$DUMP" 2>/dev/null
    if [ -e "/run/netns/$NS" ]; then
        ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
        ip netns del "$NS"
    fi
    ip link del "$V" 2>/dev/null
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "kept $TMP" || rm -rf "$TMP"
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

say "namespace $NS, veth $V (model side) - $P (namespace side)"
ip netns add "$NS"
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add "$V" type veth peer name "$P" netns "$NS"
sysctl -qw "net.ipv6.conf.$V.disable_ipv6=1"
ip link set "$V" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add 10.78.0.1/24 dev "$P"
ip netns exec "$NS" ip link set "$P" up
# Neighbours by hand: the model answers no ARP.
ip netns exec "$NS" ip neigh add 10.78.0.10 lladdr 02:00:00:78:00:10 dev "$P"
ip netns exec "$NS" ip neigh add 10.78.0.99 lladdr 02:00:00:78:00:99 dev "$P"

cat > "$TMP/netns.ron" <<EOF
(
    apps: {
        "pool0": (class: "Intel10g", args: (pci: "model:$TAG", wire: Interface("$V"), link_wait: 2.0,
                  mode: Vmdq(pools: 64), pool: 0, macs: ["02:00:00:78:00:10"], accept_broadcast: false)),
        "pool1": (class: "Intel10g", args: (pci: "model:$TAG", mode: Vmdq(pools: 64), pool: 1,
                  macs: ["02:00:00:78:00:11"], vlans: [10], accept_broadcast: false)),
        "pool2": (class: "Intel10g", args: (pci: "model:$TAG", mode: Vmdq(pools: 64), pool: 2,
                  macs: ["02:00:00:78:00:12"], accept_broadcast: false)),
        "cap0": (class: "PcapWriter", args: (file: "$TMP/pool0.pcap")),
        "cap1": (class: "PcapWriter", args: (file: "$TMP/pool1.pcap")),
        "gen": (class: "Source", args: (size: 100, count: 300, numbered: true,
                dst: "02:00:00:78:ee:01", src: "02:00:00:78:00:12")),
    },
    links: [
        "pool0.output -> cap0.input",
        "pool1.output -> cap1.input",
        "gen.output -> pool2.input",
    ],
)
EOF
cat > "$TMP/peer.ron" <<EOF
(
    apps: {
        "nic": (class: "Intel10g", args: (pci: "model:${TAG}b", wire: Interface("$P"), link_wait: 2.0)),
        "gen": (class: "Source", args: (size: 64, count: 30, vlan: 10,
                dst: "02:00:00:78:00:11", src: "02:00:00:78:ee:02")),
        "sink": (class: "Sink"),
    },
    links: ["gen.output -> nic.input", "nic.output -> sink.input"],
)
EOF
"$B" config check "$TMP/netns.ron" >/dev/null || fail "config check"
"$B" config check "$TMP/peer.ron" >/dev/null || fail "config check"

say "tcpdump in the namespace, then snabb-rs"
ip netns exec "$NS" tcpdump -i "$P" -w "$TMP/ns.pcap" -U 'ether proto 0x88b5' 2>"$TMP/tcpdump.log" &
DUMP=$!
for _ in $(seq 50); do grep -q listening "$TMP/tcpdump.log" 2>/dev/null && break; sleep 0.1; done
"$B" run "$TMP/netns.ron" --duration 6 --no-shm >"$TMP/run.log" 2>&1 &
SNABB=$!
sleep 2
kill -0 "$SNABB" 2>/dev/null || { cat "$TMP/run.log"; fail "snabb-rs exited early"; }

say "pings from the namespace"
ip netns exec "$NS" ping -q -c 40 -i 0.02 -W 1 10.78.0.10 >/dev/null 2>&1 || true
ip netns exec "$NS" ping -q -c 25 -i 0.02 -W 1 10.78.0.99 >/dev/null 2>&1 || true
ip netns exec "$NS" "$B" run "$TMP/peer.ron" --duration 1 --no-shm >"$TMP/peer.log" 2>&1 || { cat "$TMP/peer.log"; fail "the namespace's snabb-rs failed"; }
grep -E "WARN|ERROR" "$TMP/peer.log" && fail "the namespace's snabb-rs logged warnings or errors"

wait "$SNABB" || { cat "$TMP/run.log"; fail "snabb-rs failed"; }
SNABB=
sleep 0.5
kill "$DUMP" 2>/dev/null; wait "$DUMP" 2>/dev/null || true
DUMP=
grep -E "WARN|ERROR" "$TMP/run.log" && fail "snabb-rs logged warnings or errors (model violations?)"

count() { tcpdump -n -r "$1" "$2" 2>/dev/null | grep -c "^[0-9]" || true; }
p0=$(count "$TMP/pool0.pcap" "icmp and dst host 10.78.0.10")
p0all=$(count "$TMP/pool0.pcap" "")
p1=$(tcpdump -n -e -r "$TMP/pool1.pcap" 2>/dev/null | grep -c "02:00:00:78:ee:02 > 02:00:00:78:00:11, ethertype Unknown (0x88b5), length 60" || true)
p1all=$(count "$TMP/pool1.pcap" "")
ns=$(tcpdump -n -e -r "$TMP/ns.pcap" 2>/dev/null | grep -c "02:00:00:78:00:12 > 02:00:00:78:ee:01" || true)
echo "pool 0: $p0 of 40 pings ($p0all frames); pool 1: $p1 of 30 VLAN 10 frames, untagged ($p1all frames); namespace: $ns of 300 from pool 2"
[ "$p0" = 40 ] && [ "$p0all" = 40 ] || fail "pool 0 should get exactly its 40 pings"
[ "$p1" = 30 ] && [ "$p1all" = 30 ] || fail "pool 1 should get exactly the 30 VLAN 10 frames, tags stripped"
[ "$ns" = 300 ] || fail "the namespace should see pool 2's 300 frames"
echo "PASS intel10g model on a veth pair: VMDq pools, VLAN strip, transmit"
