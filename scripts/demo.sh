#!/bin/bash
# The main job on a machine with no NIC and no VM: build, then run
# `snabb-rs vmdq-vswitch` on its built-in config (configs/vmdq-vswitch.ron):
# the 82599 model as the uplink, generated traffic paced on its wire for
# three VM ports on two VLANs, a per-port report every two seconds, until
# Ctrl-C (or for DURATION seconds when set). `target/release/snabb-rs top`
# watches it from another terminal. CONFIG=... runs another vswitch config.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
args=()
[ -n "${DURATION:-}" ] && args+=(--duration "$DURATION")
exec target/release/snabb-rs vmdq-vswitch ${CONFIG:+"$CONFIG"} "${args[@]}"
