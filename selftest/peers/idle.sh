#!/bin/bash
# Say whether the machine is idle enough for a benchmark, with the evidence.
#
#   idle.sh [--seconds S] [--passive] [--ignore PID,PID] [--ignore-pgid PGID,PGID] [--max-proc-pct P]
#           [--min-share F] [--min-rate F] [--max-steal-pct P]
#
# Before a run: idle.sh (watches processes for 2 s, then spins on each CPU).
# During a run: idle.sh --passive --seconds S --ignore-pgid <the process groups of the run>.
# Prints IDLE_PROC / IDLE_CPU lines and one verdict line:
#   IDLE verdict=idle|busy window_s=S loadavg1=L reasons=none|proc:rustc:98%,cpu0:share=0.52,...
# Exit 0 when idle, 1 when busy. Details: idle.py --help.
source "$(dirname "$0")/lib.sh"
exec "$PYTHON" "$PEERS_DIR/idle.py" "$@"
