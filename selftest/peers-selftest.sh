#!/bin/bash
# The peer harness (selftest/peers/) proven end to end, with dpdk-testpmd
# as the switch (the part snabb-rs's vhost-user port will play):
#   1. two QEMU guests on two net_vhost ports of one testpmd (io forwarding)
#      ping each other and run iperf3;
#   2. one guest's QEMU restarts on the same socket, then the guest reboots
#      itself twice, and it pings (IPv4 link-local) after each boot;
#   3. testpmd net_virtio_user (frontend) <-> testpmd net_vhost (backend)
#      pass packets both ways, with the counts equal on both sides.
# Bounded in time ($PEERS_SELFTEST_TIMEOUT, default 420 s); every process,
# socket and huge page file it made is removed, also on failure.
#
# PEERS_SWITCH_CMD runs parts 1 and 2 through another switch instead: a
# shell command with {sock0} {sock1} (the sockets it must listen on, one
# per guest, forwarding between them) and {dir} (the suite's work dir)
# replaced, started in its own process group and stopped with SIGINT; e.g.
#   PEERS_SWITCH_CMD='my-switch --listen {sock0} --listen {sock1}' selftest/peers-selftest.sh
# Exit 0 pass, 43 skip (line "SKIP reason"), 1 fail.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
P=$PWD/selftest/peers
source "$P/lib.sh"

LIMIT=${PEERS_SELFTEST_TIMEOUT:-420}
PASSED=0 FAILED=0
ok() { echo "ok   $*"; PASSED=$((PASSED + 1)); }
bad() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
check() { # DESCRIPTION COMMAND...: ok when COMMAND succeeds
    local d=$1; shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}
field() { # LINE KEY: the value of KEY=value in LINE
    tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1
}

missing=""
for prog in qemu-system-x86_64 dpdk-testpmd busybox iperf3 ethtool "$PYTHON"; do
    command -v "$prog" >/dev/null || missing+=" $prog"
done
if [ -n "$missing" ]; then
    if [ "${SNABB_RS_CI:-0}" = 1 ]; then echo "FAIL missing:$missing (selftest/peers/install.sh installs them)"; exit 1; fi
    echo "SKIP missing:$missing (run selftest/peers/install.sh)"
    exit 43
fi
if [ "$(id -u)" != 0 ]; then
    [ "${SNABB_RS_CI:-0}" = 1 ] && { echo "FAIL not root"; exit 1; }
    echo "SKIP not root (dpdk-testpmd needs root)"
    exit 43
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/peers-selftest.XXXXXX")
export SNABB_RS_PEERS_DIR=$W
G=$P/guest.sh T=$P/testpmd.sh

cleanup() {
    trap - EXIT INT TERM
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
    for g in g1 g2; do "$G" stop "$g" >/dev/null 2>&1; done
    stop_switch >/dev/null 2>&1
    for t in sw be fe; do "$T" stop "$t" >/dev/null 2>&1; "$T" cleanup "$t" >/dev/null 2>&1; done
    rm -f "$W"/*.sock
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then
        rm -rf "$W"
    else
        echo "logs kept in $W"
        for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $(basename "$f") (last 15 lines)"; tail -15 "$f" | tr -d '\r' | cut -c1-200; }; done
    fi
}
trap 'cleanup $?' EXIT
trap 'echo "interrupted"; FAILED=$((FAILED + 1)); exit 1' INT TERM
children_of() { # PID: the processes whose parent is PID
    local f stat fields
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }" # after the command name: state ppid ...
        [ "${fields[1]:-}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
}
# The whole suite is bounded: past the limit, the watchdog interrupts it.
# Bash runs the trap only when the current command is over, so the
# watchdog also ends the suite's children (a guest.sh wait, say); the trap
# then stops every peer. Its sleep must not hold our stdout open (a caller
# reading it would wait for the sleep).
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL the suite ran past ${LIMIT} s"
    kill -TERM $$
    for pid in $(children_of $$); do [ "$pid" != "$BASHPID" ] && kill -TERM "$pid" 2>/dev/null; done
) &
WATCHDOG=$!
START=$(date +%s)

"$P/install.sh" --check | sed 's/^/  /'
echo "  $("$G" accel)"

# --- 1. two guests through the switch (testpmd io forwarding) -----------------------------------
SWITCH_CMD=${PEERS_SWITCH_CMD:-} SWITCH_PGID=""
start_switch() {
    if [ -z "$SWITCH_CMD" ]; then
        "$T" start sw --vhost "$W/v0.sock" --vhost "$W/v1.sock" --cpu 0 --fwd io --stats-period 2 >>"$W/started" &&
            "$T" wait-ready sw --timeout 30
        return
    fi
    local cmd=${SWITCH_CMD//\{sock0\}/$W/v0.sock}
    cmd=${cmd//\{sock1\}/$W/v1.sock}; cmd=${cmd//\{dir\}/$W}
    echo "  switch: $cmd"
    setsid bash -c "$cmd" </dev/null >"$W/switch.log" 2>&1 &
    SWITCH_PGID=$!
    wait_socket "$W/v0.sock" 30 && wait_socket "$W/v1.sock" 30
}
stop_switch() { # prints testpmd's port counters, or nothing
    if [ -z "$SWITCH_CMD" ]; then "$T" stop sw; return; fi
    [ -n "$SWITCH_PGID" ] || return 0
    local sig i
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$SWITCH_PGID" 2>/dev/null || break
        for ((i = 0; i < 50; i++)); do kill -0 -- -"$SWITCH_PGID" 2>/dev/null || break 2; sleep 0.1; done
    done
    SWITCH_PGID=""
}
start_switch || { bad "the switch starts and listens on both sockets"; exit 1; }
t0=$(date +%s.%N)
"$G" start g1 --sock "$W/v0.sock" --mode iperf-server --ip fe80::1/64,169.254.0.1/16 --after idle --wait 150 | sed 's/^/  /'
"$G" start g2 --sock "$W/v1.sock" --mode iperf-client --ip fe80::2/64,169.254.0.2/16 --peer fe80::1 --secs 5 | sed 's/^/  /'
line=$("$G" wait g2 FIRST_PING_OK --timeout 120)
check "guest 2 reaches guest 1 through the switch ($line, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after start)" \
    grep -q "^FIRST_PING_OK" <<<"$line"
line=$("$G" wait g2 PING_RESULT --timeout 30)
check "pings answered: $line" test "$(field "$line" received)" = "$(field "$line" sent)" -a "$(field "$line" sent)" -gt 0
line=$("$G" wait g2 IPERF_RESULT --timeout 60)
bps=$(field "$line" bits_per_second)
check "iperf3 guest 2 -> guest 1: $line" test "${bps:-0}" -gt 1000000
line=$("$G" wait g1 IPERF_SERVER_DONE --timeout 20)
check "iperf3 server saw the test: $line" grep -q "^IPERF_SERVER_DONE" <<<"$line"
line=$("$G" wait g2 GUEST_DONE --timeout 20)
check "guest 2 done: $line" grep -q 'status=ok' <<<"$line"
if [ -z "$SWITCH_CMD" ]; then
    n=$(grep -c 'negotiated Virtio features' "$W/sw.log")
    check "both guests negotiated features with testpmd ($(grep -m1 -o 'negotiated Virtio features: 0x[0-9a-f]*' "$W/sw.log"))" \
        test "$n" -ge 2
fi

# --- 2. QEMU restart on the same socket, then guest reboots ---------------------------------
# Guest 2 powered off (its QEMU exited); start a new QEMU on the same socket.
for _ in $(seq 50); do "$G" status g2 >/dev/null || break; sleep 0.1; done
"$G" stop g2 >/dev/null
"$G" start g2 --sock "$W/v1.sock" --mode reboot-loop --reboots 2 --count 3 --ip 169.254.0.2/16 --peer 169.254.0.1 | sed 's/^/  /'
for r in 1 2; do
    line=$("$G" wait g2 REBOOT_ROUND --nth "$r" --timeout 120)
    check "boot $r of the restarted guest: $line" grep -q "round=$r " <<<"$line"
    line=$("$G" wait g2 PING_RESULT --nth "$r" --timeout 5)
    check "boot $r pings answered: $line" test "$(field "$line" received)" = 3
done
line=$("$G" wait g2 GUEST_DONE --timeout 30)
check "rebooting guest done: $line" grep -q 'status=ok' <<<"$line"
"$G" stop g1 >/dev/null; "$G" stop g2 >/dev/null
out=$(stop_switch)
if [ -z "$SWITCH_CMD" ]; then
    echo "$out" | sed 's/^/  /'
    p0=$(grep 'port=0 ' <<<"$out"); p1=$(grep 'port=1 ' <<<"$out")
    check "the switch forwarded both ways" test "$(field "$p0" rx_packets)" -gt 0 -a "$(field "$p1" rx_packets)" -gt 0
fi

# --- 3. testpmd frontend <-> testpmd backend, counts on both sides --------------------------
pair() { # SENDER(be|fe) LEN: run ~3 s, print "sent received"
    # The sender waits at its prompt until the receiver forwards: a virtio
    # port flushes its rx ring when it starts, which would lose packets sent
    # before; at the end it stops forwarding but stays connected, so the
    # receiver drains the ring before both quit and print their counts.
    local be_fwd=rxonly fe_fwd=txonly be_i=() fe_i=(--interactive --paused) receiver=be
    if [ "$1" = be ]; then be_fwd=txonly fe_fwd=rxonly be_i=(--interactive --paused) fe_i=() receiver=fe; fi
    "$T" start be --vhost "$W/pair.sock" --cpu 0 --fwd "$be_fwd" --txpkts "$2" "${be_i[@]}" >>"$W/started"
    "$T" wait-ready be --timeout 30 >/dev/null || { echo "0 -1"; return; }
    "$T" start fe --virtio-user "$W/pair.sock" --cpu 1 --fwd "$fe_fwd" --txpkts "$2" "${fe_i[@]}" >>"$W/started"
    "$T" wait-ready fe --timeout 30 >/dev/null || { echo "0 -1"; return; }
    sleep 1
    "$T" cmd "$1" start >/dev/null
    sleep 3
    "$T" cmd "$1" stop >/dev/null
    sleep 1
    local out
    out=$("$T" stop "$receiver"; "$T" stop "$1")
    sed 's/^/  /' <<<"$out" >&2
    echo "$(field "$(grep "name=$1 port=0" <<<"$out")" tx_packets) $(field "$(grep "name=$receiver port=0" <<<"$out")" rx_packets)"
}
read -r sent recv < <(pair fe 64)
check "frontend txonly -> backend rxonly, 64 B: sent $sent, received $recv" test "${sent:-0}" -gt 0 -a "${sent:-0}" = "${recv:-x}"
read -r sent recv < <(pair be 1500)
check "backend txonly -> frontend rxonly, 1500 B: sent $sent, received $recv" test "${sent:-0}" -gt 0 -a "${sent:-0}" = "${recv:-x}"

left=0
for prefix in $(grep -o 'prefix=[^ ]*' "$W/started" | cut -d= -f2); do
    for f in "$(hugepage_dir)/${prefix}"map_*; do [ -e "$f" ] && left=$((left + 1)); done
done
check "no huge page files left by our testpmds" test "$left" = 0

echo "peers-selftest: $PASSED checks passed, $FAILED failed in $(( $(date +%s) - START )) s"
[ "$FAILED" = 0 ]
