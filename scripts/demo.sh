#!/bin/bash
# The main job on a machine with no NIC and no VM: build, then run
# `snabb-rs vmdq-vswitch` on its built-in config (configs/vmdq-vswitch.ron):
# the 82599 model as the uplink, generated traffic paced on its wire for
# three VM ports on two VLANs, a per-port report every two seconds, until
# Ctrl-C (or for DURATION seconds when set). `snabb-rs top` watches it from
# another terminal. CONFIG=... runs another vswitch config. The binary is
# built in $CARGO_TARGET_DIR when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-target}/release/snabb-rs
[ -x "$BIN" ] || { echo "demo.sh: no $BIN after the build (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2; exit 1; }
args=()
[ -n "${DURATION:-}" ] && args+=(--duration "$DURATION")
exec "$BIN" vmdq-vswitch ${CONFIG:+"$CONFIG"} "${args[@]}"
