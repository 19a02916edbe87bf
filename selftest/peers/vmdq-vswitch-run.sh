#!/bin/bash
# vmdq-vswitch as the switch of bench-vswitch.sh (its SWITCH_CMD): two VM
# ports and no uplink, VM to VM through the software splitter, the engine
# busy-waiting on one CPU.
#
#   vmdq-vswitch-run.sh SOCK0 SOCK1 DIR CPU
#
# Port vm1 listens on SOCK0 and takes frames for 02:00:00:00:00:01, port vm2
# on SOCK1 for ..:02 (the bench's VMs). The config is written to
# DIR/vmdq-vswitch.ron, the counters go under DIR/shm-sw. Runs in the
# foreground until SIGINT/SIGTERM.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# = 4 ] || usage_of "$0" 1
sock0=$1 sock1=$2 dir=$3 cpu=$4
ROOT=$(cd "$PEERS_DIR/../.." && pwd)
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
cat >"$dir/vmdq-vswitch.ron" <<EOC
// bench-vswitch.sh's switch: two VM ports, VM to VM in software.
(
    uplink: None,
    ports: [
        (name: "vm1", socket: "$sock0", macs: ["02:00:00:00:00:01"]),
        (name: "vm2", socket: "$sock1", macs: ["02:00:00:00:00:02"]),
    ],
)
EOC
SNABB_RS_SHM_ROOT=$dir/shm-sw exec taskset -c "$cpu" "$B" vmdq-vswitch "$dir/vmdq-vswitch.ron" --busywait --report 0
