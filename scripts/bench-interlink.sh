#!/bin/bash
# The cross-worker link against DPDK's rte_ring, in the same run:
#   ours:  snabb-rs bench interlink (60-byte packets, Source on CPU A, Sink on
#          CPU B, batch 32): TSC ticks per packet, median of ROUNDS runs.
#   DPDK:  dpdk-test ring_perf_autotest, "Testing using two physical cores",
#          legacy APIs SP/SC bulk (size: 32): TSC ticks per element (the
#          test pins its two lcores to A and B), median of ROUNDS runs.
# Then basic1 on two workers against basic1 on one engine.
# The ratio line is DPDK/ours: above 1.0 means our link costs less per packet.
# Ours moves packets (alloc, fill, cross, free, return home); DPDK's moves
# bare pointers: the comparison favours DPDK.
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

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

ours=$($BIN bench interlink --packets "$PACKETS" --rounds "$ROUNDS" --cpus "$A,$B" 2>/dev/null \
       | tee /dev/stderr | awk '/TSC ticks\/packet/ {print $4}')

dpdk_runs=()
for _ in $(seq "$ROUNDS"); do
    out=$(printf 'ring_perf_autotest\nquit\n' | "$DPDK_TEST" --no-huge -m 512 -l "$A,$B" --no-pci \
          --log-level=lib.eal:error 2>&1 || true)
    # The first "two physical cores" section is the legacy API's.
    v=$(echo "$out" | awk '/Testing using two physical cores/ {s++} s==1 && /SP\/SC: bulk \(size: 32\)/ {print $NF; exit}')
    [ -n "$v" ] || { echo "could not read ring_perf_autotest's output:"; echo "$out" | tail -20; exit 1; }
    dpdk_runs+=("$v")
done
dpdk=$(printf '%s\n' "${dpdk_runs[@]}" | median)
echo "rte_ring SP/SC bulk 32, two cores: $dpdk TSC ticks/element (median of $ROUNDS: ${dpdk_runs[*]})"
awk -v o="$ours" -v d="$dpdk" 'BEGIN {printf "ratio: interlink %.1f vs rte_ring %.1f TSC ticks per packet: %.2fx (DPDK/ours, >= 1.0 is the goal)\n", o, d, d/o}'

$BIN bench basic1-workers --packets "$PACKETS" --rounds "$ROUNDS" --cpus "$A,$B" 2>/dev/null
