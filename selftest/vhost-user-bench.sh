#!/bin/bash
# VhostUser's packet rate against DPDK's net_vhost, in the same run:
# selftest/peers/bench-vhost.sh drives both backends with the same frontend
# (dpdk-testpmd net_virtio_user, txonly / rxonly) on the other CPU, and
# prints `ratio` lines (snabb-rs / dpdk) per direction and frame size.
#
#   vhost-user-bench.sh [--smoke] [bench-vhost.sh options...]
#     --smoke   one short run of 64-byte frames each way (what scripts/test.sh
#               runs: proves the mechanism and that packets move, no figures
#               worth quoting); without it: bench-vhost.sh's defaults (3 runs
#               of 8 s, 64 and 1500 B, both directions, ~4 min).
#     other options go to bench-vhost.sh: --runs N --secs S --sizes "64 1500"
#               --dirs "g2s s2g" --be-cpu N --fe-cpu N --keep --dir DIR ...
#
# snabb-rs's side, one graph per run, on the backend CPU (taskset), until SIGINT:
#   g2s  (guest-to-switch)  VhostUser (server) -> Sink
#   s2g  (switch-to-guest)  Source(size) -> VhostUser
# with `run --busywait` (DPDK polls too). SNABB_RS: the binary (default
# $CARGO_TARGET_DIR/release/snabb-rs). VHOST_BENCH_BUSYWAIT=0: let the engine sleep when idle.
# Exit 0 when every case moved packets, 43 skip (a SKIP line), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}

# The backend template's command: write the graph, become snabb-rs.
if [ "${1:-}" = backend ]; then # backend SOCK DIR SIZE CPU
    sock=$2 dir=$3 size=$4 cpu=$5
    ron=${SNABB_RS_PEERS_DIR:-${TMPDIR:-/tmp}}/snabb-$dir-$size.ron
    if [ "$dir" = g2s ]; then
        apps="\"vm\": (class: \"VhostUser\", args: (socket: \"$sock\", server: true)),
        \"sink\": (class: \"Sink\"),"
        links='"vm.output -> sink.input"'
    else
        apps="\"src\": (class: \"Source\", args: (size: $size)),
        \"vm\": (class: \"VhostUser\", args: (socket: \"$sock\", server: true)),"
        links='"src.output -> vm.input"'
    fi
    cat >"$ron" <<EOF
(
    apps: {
        $apps
    },
    links: [ $links ],
)
EOF
    bw=(--busywait); [ "${VHOST_BENCH_BUSYWAIT:-1}" = 0 ] && bw=()
    export SNABB_RS_SHM_ROOT=${SNABB_RS_PEERS_DIR:-${TMPDIR:-/tmp}}/shm
    exec taskset -c "$cpu" "$B" run "$ron" "${bw[@]}"
fi

ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
[ "$(id -u)" = 0 ] || skip "needs root (dpdk-testpmd)"
command -v dpdk-testpmd >/dev/null || skip "dpdk-testpmd is missing (selftest/peers/install.sh installs it)"
if [ ! -x "$B" ]; then
    echo "--- building snabb-rs"
    timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
fi
"$B" apps 2>/dev/null | grep -w VhostUser >/dev/null || skip "this snabb-rs ($B) has no VhostUser app class"

ARGS=()
if [ "${1:-}" = --smoke ]; then
    shift
    ARGS=(--runs 1 --secs 3 --skip 1 --sizes 64)
fi
out=$(mktemp "${TMPDIR:-/tmp}/vhost-bench.XXXXXX")
trap 'rm -f "$out"' EXIT
# Bounded: 2 backends x cases x runs, each at most 3*secs+30 s; the smoke run takes ~1 min.
timeout -s INT "${VHOST_BENCH_LIMIT:-1800}" "$ROOT/selftest/peers/bench-vhost.sh" --name snabb-rs "${ARGS[@]}" "$@" -- \
    "$ROOT/selftest/vhost-user-bench.sh" backend {sock} {dir} {size} {cpu} | tee "$out"
ok=1
while read -r line; do
    mpps=$(sed -n 's/.* median_mpps=\([^ ]*\).*/\1/p' <<<"$line")
    awk -v m="$mpps" 'BEGIN { exit !(m > 0) }' || { echo "FAIL no packets moved: $line"; ok=0; }
done < <(grep '^BENCH_CASE' "$out")
grep -q '^BENCH_CASE backend=snabb-rs' "$out" || { echo "FAIL no snabb-rs case measured"; ok=0; }
[ "$ok" = 1 ] && echo "PASS vhost-user-bench: $(grep -c '^ratio' "$out") ratio lines: $(grep '^ratio' "$out" | awk '{ print $2, $3, $4 }' | tr '\n' ';')"
[ "$ok" = 1 ]
