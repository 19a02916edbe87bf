#!/bin/bash
# The cross-worker link against DPDK's rte_ring, in the same run:
#   ours:  snabb-rs bench interlink (60-byte packets, Source on CPU A, Sink on
#          CPU B, batch 32): TSC ticks per packet.
#   DPDK:  dpdk-test ring_perf_autotest, "Testing using two physical cores",
#          legacy APIs SP/SC bulk (size: 32): TSC ticks per element (the
#          test pins its two lcores to A and B).
# They run in ROUNDS pairs, ours then DPDK's, back to back: this host
# switches between a fast and a slow mode for two-CPU work, and both tests
# fall into it, so a ratio means something only within a pair. Each pair's
# ratio is printed; the ratio line is the median of the pairs' ratios.
# Then basic1 on two workers against basic1 on one engine.
#   DPDK doing our work: selftest/peers/dpdk-pktpipe.c (built here with
#          pkg-config libdpdk, Debian's dpdk-dev), 60-byte mbufs allocated
#          and filled on lcore A, an SP/SC rte_ring, freed on lcore B (home
#          through the mempool's caches), bursts of 32, huge pages: TSC
#          ticks per packet.
# A ratio is DPDK/ours: above 1.0 means our link costs less per packet.
# Ours moves packets (alloc, fill, cross, free, return home); the ring
# test moves bare pointers (the issue's yardstick; it favours DPDK), the
# pipeline moves packets as ours does (like for like).
# Usage: scripts/bench-interlink.sh [--smoke]   (env: ROUNDS, PACKETS, CPUS=A,B)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
PACKETS=${PACKETS:-20000000}
CPUS=${CPUS:-0,1}
if [ "${1:-}" = --smoke ]; then ROUNDS=1; PACKETS=1000000; fi
A=${CPUS%,*}; B=${CPUS#*,}

DPDK_TEST=$(command -v dpdk-test || true)
[ -n "$DPDK_TEST" ] || DPDK_TEST=$(ls /usr/bin/dpdk-test /usr/lib/*/dpdk-test 2>/dev/null | head -1 || true)
if [ -z "$DPDK_TEST" ] && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpdk >/dev/null || true
    DPDK_TEST=$(command -v dpdk-test || true)
fi
[ -n "$DPDK_TEST" ] || { echo "dpdk-test not found (Debian package dpdk)"; exit 1; }

cargo build --release -q -p snabb-rs
BIN=target/release/snabb-rs

# The like-for-like peer, built against the installed DPDK.
PIPE=target/peers/dpdk-pktpipe
if ! pkg-config --exists libdpdk 2>/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpdk-dev pkg-config >/dev/null || true
fi
pkg-config --exists libdpdk 2>/dev/null || { echo "libdpdk not found (Debian package dpdk-dev)"; exit 1; }
if [ ! -x "$PIPE" ] || [ selftest/peers/dpdk-pktpipe.c -nt "$PIPE" ]; then
    mkdir -p target/peers
    # shellcheck disable=SC2046
    cc -O2 -march=native -o "$PIPE" selftest/peers/dpdk-pktpipe.c $(pkg-config --cflags --libs libdpdk)
fi

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

pairs=()
for i in $(seq "$ROUNDS"); do
    o=$($BIN bench interlink --packets "$PACKETS" --rounds 1 --cpus "$A,$B" 2>/dev/null | awk '/TSC ticks\/packet/ {print $4}')
    [ -n "$o" ] || { echo "snabb-rs bench interlink printed no figure"; exit 1; }
    out=$(printf 'ring_perf_autotest\nquit\n' | "$DPDK_TEST" --no-huge -m 512 -l "$A,$B" --no-pci \
          --log-level=lib.eal:error 2>&1 || true)
    # The first "two physical cores" section is the legacy API's.
    d=$(echo "$out" | awk '/Testing using two physical cores/ {s++} s==1 && /SP\/SC: bulk \(size: 32\)/ {print $NF; exit}')
    [ -n "$d" ] || { echo "could not read ring_perf_autotest's output:"; echo "$out" | tail -20; exit 1; }
    r=$(awk -v o="$o" -v d="$d" 'BEGIN {printf "%.2f", d/o}')
    p=$("$PIPE" --in-memory -m 512 -l "$A,$B" --no-pci --log-level=lib.eal:error -- "$PACKETS" 2>/dev/null |
        sed -n 's/^PKTPIPE .*ticks_per_packet=\([0-9.]*\).*/\1/p')
    [ -n "$p" ] || { echo "dpdk-pktpipe printed no figure"; exit 1; }
    q=$(awk -v o="$o" -v p="$p" 'BEGIN {printf "%.2f", p/o}')
    echo "pair $i: interlink $o, rte_ring $d, DPDK pipeline $p TSC ticks per packet: $r (ring), $q (pipeline)"
    pairs+=("$o $d $r $p $q")
done
col() { printf '%s\n' "${pairs[@]}" | awk -v c="$1" '{print $c}' | median; }
echo "ratio: interlink $(col 1) vs rte_ring $(col 2) TSC ticks per packet (medians of $ROUNDS pairs): $(col 3)x (median of the pairs' DPDK/ours; >= 1.0 is the goal)"
echo "pipeline: interlink $(col 1) vs DPDK's mbuf pipeline over rte_ring $(col 4) TSC ticks per packet (medians of $ROUNDS pairs): $(col 5)x (median of the pairs' DPDK/ours, like for like)"

$BIN bench basic1-workers --packets "$PACKETS" --rounds "$ROUNDS" --cpus "$A,$B" 2>/dev/null
