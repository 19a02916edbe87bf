#!/bin/bash
# VM to VM through a switch: `snabb-rs vmdq-vswitch` (two VM ports, no
# uplink: selftest/peers/vmdq-vswitch-run.sh) against OVS-DPDK, with the
# same frontends (two VirtioUser VMs) on the other CPU, as ratios measured
# in the same run: selftest/peers/bench-vswitch.sh.
#
#   vswitch-bench.sh [--smoke] [bench-vswitch.sh options...] [-- SWITCH_CMD...]
#     (without a SWITCH_CMD: vmdq-vswitch)
#     --smoke   one 3-second run of 64-byte frames through each switch (what
#               scripts/test.sh runs: proves the harness and that frames
#               move; no figures worth quoting, the machine is busy then);
#               without it: bench-vswitch.sh's defaults (5 runs of 8 s,
#               64 and 1500 B, ~4 min).
# Exit 0 when frames moved through both switches, 43 skip (a SKIP line), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
[ "$(id -u)" = 0 ] || skip "needs root (OVS-DPDK, huge pages)"
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi
"$B" apps 2>/dev/null | grep -w VirtioUser >/dev/null || skip "this snabb-rs ($B) has no VirtioUser app class"
out=$(mktemp "${TMPDIR:-/tmp}/vswitch-bench.XXXXXX")
trap 'rm -f "$out"' EXIT
# Bounded: 2 switches x sizes x runs, each at most ~(secs + 40) s.
args=("$@")
if [[ " $* " != *" -- "* ]]; then
    args=(--name vmdq-vswitch "$@" -- "$ROOT/selftest/peers/vmdq-vswitch-run.sh" {sock0} {sock1} {dir} {cpu})
fi
timeout -s INT "${VSWITCH_BENCH_LIMIT:-1800}" "$ROOT/selftest/peers/bench-vswitch.sh" "${args[@]}" | tee "$out"
rc=${PIPESTATUS[0]}
ok=1
while read -r line; do
    mpps=$(sed -n 's/.* median_mpps=\([^ ]*\).*/\1/p' <<<"$line")
    awk -v m="$mpps" 'BEGIN { exit !(m > 0) }' || { echo "FAIL no frames moved: $line"; ok=0; }
done < <(grep '^BENCH_CASE' "$out")
[ "$(grep -c '^BENCH_CASE' "$out")" -ge 2 ] || { echo "FAIL not every switch measured (exit $rc)"; ok=0; }
[ "$ok" = 1 ] && echo "PASS vswitch-bench: $(grep -E '^(ratio|pairs|cost)' "$out" | awk '$1 == "ratio" { print $1, $2, $3, $6, $7 } $1 == "pairs" || $1 == "cost" { print $1, $2, $3, $4 }' | tr '\n' ';')"
[ "$ok" = 1 ]
