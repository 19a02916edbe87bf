#!/bin/bash
# The main job on a machine with no NIC: build, then run VMDq on the
# software 82599 (configs/intel10g-vmdq-model.ron): generated traffic goes
# out of one model port, and the other port splits it into pools by MAC and
# VLAN, one Intel10g app per pool, for DURATION seconds (default 10), with a
# per-link report every two seconds. Counters are in /var/run/snabb-rs/<pid>
# meanwhile: `snabb-rs top` shows them live. CONFIG=... runs another graph
# (e.g. configs/basic1.ron). The binary is built in $CARGO_TARGET_DIR when
# that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-target}/release/snabb-rs
[ -x "$BIN" ] || { echo "demo.sh: no $BIN after the build (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2; exit 1; }
exec "$BIN" run "${CONFIG:-configs/intel10g-vmdq-model.ron}" --duration "$DURATION" --report 2
