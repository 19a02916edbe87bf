#!/bin/bash
# The main job on a machine with no NIC: build, then run the default graph
# with generated traffic for DURATION seconds (default 10), printing a
# per-link report every two seconds. Counters are in /var/run/snabb-rs/<pid>
# meanwhile: `target/release/snabb-rs top` shows them live.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
cargo build --release -q
exec target/release/snabb-rs run configs/basic1.ron --duration "$DURATION" --report 2
