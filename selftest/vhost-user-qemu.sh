#!/bin/bash
# VhostUser against QEMU: two Linux guests (selftest/peers/guest.sh, TCG
# unless its KVM probe boots; virtio-net with vectors=0 under TCG) on two
# VhostUser ports of one snabb-rs graph, cabled to each other.
#
#   1. server mode (snabb-rs listens, QEMU connects): guest 2 pings guest 1
#      and runs iperf3 to it (TCP, 5 s);
#   2. guest 2's QEMU is started again on the same socket (a new process),
#      and the guest reboots itself (the device is reset and negotiated
#      again): it pings after each boot; snabb-rs keeps running;
#   3. guest 1's QEMU is restarted (SIGTERM, new process) and pings guest 2:
#      the other way;
#   4. guest 2's QEMU is killed (SIGKILL: no clean stop of the rings) and a
#      new one pings guest 1;
#   5. client mode (QEMU listens with server=on, snabb-rs connects): guest 2
#      pings guest 1 once a second; snabb-rs is stopped and started again
#      while both guests keep running, and the pings come back;
#   6. live migration of guest 1 between two QEMUs, each on its own
#      VhostUser port (the dirty log path): guest 2 keeps pinging through it.
#      Skipped with the reason when QEMU refuses to migrate (no VHOST_F_LOG_ALL);
#   7. the same while guest 1 receives an iperf3 stream from guest 2 (the
#      switch writes guest memory during the migration: dirty log under load);
#      the stream must finish, its server side now on the target;
#   8. two queue pairs per guest (mq=on; the app with queues: 2), guest 2
#      with mrg_rxbuf=off: ping and iperf3 with 4 streams.
# Each step prints PASS/FAIL with the marker lines as evidence. Every wait
# is bounded; the suite too ($VHOST_QEMU_LIMIT, default 720 s). Every process
# is stopped on exit, pass or fail.
#
# Environment: SNABB_RS (the binary; default $CARGO_TARGET_DIR/release/snabb-rs),
# VHOST_SWITCH=testpmd (testpmd net_vhost, io forwarding, plays the switch:
# proves the harness; no migration step then), VHOST_QEMU_STEPS (e.g. "1 2 5").
# Exit 0 pass, 43 skip (a SKIP line), 1 fail.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
P=$ROOT/selftest/peers
source "$P/lib.sh"
G=$P/guest.sh T=$P/testpmd.sh

LIMIT=${VHOST_QEMU_LIMIT:-720}
SWITCH=${VHOST_SWITCH:-snabb-rs}
STEPS=${VHOST_QEMU_STEPS:-1 2 3 4 5 6 7 8}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
PASSED=0 FAILED=0 SKIPPED=()
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }
step() { [[ " $STEPS " == *" $1 "* ]]; }

[ "$(id -u)" = 0 ] || skip "needs root (QEMU with shared memory, dpdk-testpmd)"
for prog in qemu-system-x86_64 busybox iperf3 "$PYTHON"; do
    command -v "$prog" >/dev/null || skip "$prog is missing (selftest/peers/install.sh installs it)"
done
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
if [ "$SWITCH" = snabb-rs ]; then
    if [ ! -x "$B" ]; then
        echo "--- building snabb-rs"
        timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
    fi
    "$B" apps 2>/dev/null | grep -w VhostUser >/dev/null || skip "this snabb-rs ($B) has no VhostUser app class"
else
    command -v dpdk-testpmd >/dev/null || skip "dpdk-testpmd is missing"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/vhost-qemu.XXXXXX")
chmod 755 "$W"
export SNABB_RS_PEERS_DIR=$W SNABB_RS_SHM_ROOT=$W/shm
SW_PGID="" SW_N=0 WATCHDOG=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    for g in g1 g2 g1m; do "$G" stop "$g" --timeout 3 >/dev/null 2>&1; done
    stop_switch >/dev/null 2>&1
    "$T" stop sw --timeout 3 >/dev/null 2>&1; "$T" cleanup sw >/dev/null 2>&1
    rm -f "$W"/*.sock
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then
        rm -rf "$W"
    else
        echo "logs kept in $W"
        for f in "$W"/*.log; do [ -f "$f" ] && { echo "--- $(basename "$f") (last 12 lines)"; tail -12 "$f" | tr -d '\r' | cut -c1-200; }; done
    fi
}
trap 'cleanup $?' EXIT
trap 'echo "FAIL interrupted"; FAILED=$((FAILED + 1)); exit 1' INT TERM
children_of() { # PID: the processes whose parent is PID
    local f stat fields
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }"
        [ "${fields[1]:-}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
}
# Bounded: past the limit the watchdog interrupts the suite and its current
# child (a guest.sh wait, say); the trap then stops every peer.
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
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the switch ----------------------------------------------------------------------
# start_switch server|client [migration]: ports vm1 ($W/v1.sock) and vm2 ($W/v2.sock);
# "migration" adds vm1m ($W/v1m.sock) for guest 1's migration target: what vm2
# sends goes to both vm1 and vm1m (a Tee), what they send is joined for vm2.
start_switch() {
    local role=$1 topo=${2:-pair} server=true
    [ "$role" = client ] && server=false
    SW_N=$((SW_N + 1))
    if [ "$SWITCH" = testpmd ]; then
        local c=(); [ "$role" = client ] && c=(--vhost-client)
        [ "$role" = server ] && rm -f "$W/v1.sock" "$W/v2.sock"
        "$T" start sw --vhost "$W/v1.sock" --vhost "$W/v2.sock" "${c[@]}" --cpu 0 --fwd io --queues "${SW_QUEUES:-1}" --stats-period 0 >/dev/null &&
            "$T" wait-ready sw --timeout 30 >/dev/null
        return
    fi
    local apps links
    local qa=""; [ "${SW_QUEUES:-1}" -gt 1 ] && qa=", queues: $SW_QUEUES"
    apps="\"vm1\": (class: \"VhostUser\", args: (socket: \"$W/v1.sock\", server: $server$qa)),
        \"vm2\": (class: \"VhostUser\", args: (socket: \"$W/v2.sock\", server: $server$qa)),"
    links='"vm1.output -> vm2.input", "vm2.output -> vm1.input"'
    if [ "$topo" = migration ]; then
        apps+="
        \"vm1m\": (class: \"VhostUser\", args: (socket: \"$W/v1m.sock\", server: $server)),
        \"tee\": (class: \"Tee\"),
        \"join\": (class: \"Join\"),"
        links='"vm2.output -> tee.input", "tee.a -> vm1.input", "tee.b -> vm1m.input",
        "vm1.output -> join.a", "vm1m.output -> join.b", "join.output -> vm2.input"'
    fi
    cat >"$W/switch.ron" <<EOF
(
    apps: {
        $apps
    },
    links: [ $links ],
)
EOF
    [ "$role" = server ] && rm -f "$W/v1.sock" "$W/v2.sock" "$W/v1m.sock"
    setsid taskset -c 0 "$B" run "$W/switch.ron" </dev/null >"$W/switch-$SW_N.log" 2>&1 &
    SW_PGID=$!
    if [ "$role" = server ]; then
        wait_socket "$W/v1.sock" 20 && wait_socket "$W/v2.sock" 20 && return 0
        echo "  snabb-rs did not listen on its sockets; its log:"; tail -20 "$W/switch-$SW_N.log" | sed 's/^/    /'
        return 1
    fi
    sleep 0.5
    kill -0 "$SW_PGID" 2>/dev/null || { tail -20 "$W/switch-$SW_N.log" | sed 's/^/    /'; return 1; }
}
stop_switch() { # prints how it went
    if [ "$SWITCH" = testpmd ]; then "$T" stop sw --timeout 5 | head -1; return; fi
    [ -n "$SW_PGID" ] || return 0
    local sig i how=gone
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$SW_PGID" 2>/dev/null || break
        how=$sig
        for ((i = 0; i < 50; i++)); do kill -0 -- -"$SW_PGID" 2>/dev/null || break 2; sleep 0.1; done
    done
    echo "switch stopped by SIG$how"
    SW_PGID=""
}
switch_alive() {
    if [ "$SWITCH" = testpmd ]; then pid_is "$(cat "$W/sw.pid" 2>/dev/null)" dpdk-testpmd; else kill -0 "$SW_PGID" 2>/dev/null; fi
}
switch_log() { if [ "$SWITCH" = testpmd ]; then echo "$W/sw.log"; else echo "$W/switch-$SW_N.log"; fi; }
switch_report() { # the final report of the snabb-rs just stopped
    [ "$SWITCH" = snabb-rs ] || return 0
    sed -n '/^link report/,$p' "$(switch_log)" | head -30 | sed 's/^/  /'
    if grep -q -E 'panicked|^Error' "$(switch_log)"; then
        fail "snabb-rs reported: $(grep -m1 -E 'panicked|^Error' "$(switch_log)")"
    fi
    if grep -q -E ' [1-9][0-9]* protocol errors|, [1-9][0-9]* broken queues' "$(switch_log)"; then
        fail "snabb-rs counted protocol errors or broken queues: $(grep -m1 -E ' [1-9][0-9]* protocol errors|, [1-9][0-9]* broken queues' "$(switch_log)" | tr -s ' ')"
    fi
}
# What the app APP of the last snabb-rs run delivered to its guest (from its report).
to_guest() { # APP
    sed -n "/^  $1:\$/,/connections/p" "$(switch_log)" | sed -n 's/.*to guest \([0-9]*\) packets.*/\1/p' | head -1
}

gstart() { # NAME ARGS...: guest.sh start, one line of evidence
    local out
    out=$("$G" start "$@" 2>&1) || { echo "$out" | sed 's/^/  /'; return 1; }
    echo "  $(grep GUEST_STARTED <<<"$out" | cut -d' ' -f1-5,8-)"
}
gwait() { "$G" wait "$@"; }
# is LINE (gwait's answer) the marker line? guest.sh's timeout and exit lines name
# the marker too, so a plain grep would pass on them.
has() { [[ $2 != GUEST_WAIT_* ]] && grep -q -E -- "$1" <<<"$2"; }

echo "--- switch: $SWITCH$([ "$SWITCH" = snabb-rs ] && echo " ($B)")    $("$G" accel)"
V4_1=169.254.0.1 V4_2=169.254.0.2

# --- 1-4: server mode ----------------------------------------------------------------------
if step 1 || step 2 || step 3 || step 4; then
    echo "--- 1. server mode: ping and iperf3 between two guests"
    if ! start_switch server; then
        fail "the switch starts and listens on both sockets"
    else
        SW_PID=$SW_PGID
        [ "$SWITCH" = testpmd ] && SW_PID=$(cat "$W/sw.pid")
        t0=$(date +%s.%N)
        gstart g1 --sock "$W/v1.sock" --mode iperf-server --ip fe80::1/64,$V4_1/16 --after idle --wait 150
        gstart g2 --sock "$W/v2.sock" --mode iperf-client --ip fe80::2/64,$V4_2/16 --peer fe80::1 --secs 5 --count 5
        line=$(gwait g2 FIRST_PING_OK --timeout 150)
        check "1. guest 2 reaches guest 1 through the switch, $(since "$t0") s after start: $line" has FIRST_PING_OK "$line"
        line=$(gwait g2 PING_RESULT --timeout 30)
        check "1. ping guest 2 -> guest 1: $line" test "$(field "$line" received)" = "$(field "$line" sent)" -a "$(field "$line" sent)0" -gt 0
        line=$(gwait g2 IPERF_RESULT --timeout 90)
        check "1. iperf3 guest 2 -> guest 1: $line" test "$(field "$line" bits_per_second)0" -gt 10000000
        line=$(gwait g1 IPERF_SERVER_DONE --timeout 20)
        check "1. iperf3 server saw the test: $line" has IPERF_SERVER_DONE "$line"
        line=$(gwait g2 GUEST_DONE --timeout 30)
        check "1. guest 2 done: $line" has 'status=ok' "$line"
        gwait g2 GUEST_NETDEV --timeout 5 | sed 's/^/  guest 2: /'
        check "1. the switch is still running" switch_alive

        if step 2; then
            echo "--- 2. guest 2: a new QEMU process on the same socket, then a guest reboot"
            for _ in $(seq 50); do "$G" status g2 >/dev/null || break; sleep 0.1; done
            "$G" stop g2 >/dev/null
            gstart g2 --sock "$W/v2.sock" --mode reboot-loop --reboots 2 --count 3 --ip $V4_2/16 --peer $V4_1
            for r in 1 2; do
                what="new QEMU process"; [ "$r" = 2 ] && what="after the guest rebooted"
                line=$(gwait g2 REBOOT_ROUND --nth "$r" --timeout 150)
                check "2. boot $r ($what): $line" has "round=$r " "$line"
                line=$(gwait g2 PING_RESULT --nth "$r" --timeout 10)
                check "2. boot $r ($what) pings guest 1: $line" test "$(field "$line" received)" = 3
            done
            line=$(gwait g2 GUEST_DONE --timeout 30)
            check "2. rebooting guest done: $line" has 'status=ok' "$line"
            check "2. the switch was not restarted (pid $SW_PID still running)" switch_alive
        fi
        if step 3; then
            echo "--- 3. guest 1: QEMU stopped (SIGTERM) and started again; it pings guest 2"
            for _ in $(seq 50); do "$G" status g2 >/dev/null || break; sleep 0.1; done
            "$G" stop g2 >/dev/null
            gstart g2 --sock "$W/v2.sock" --mode idle --ip $V4_2/16
            echo "  $("$G" stop g1)"
            gstart g1 --sock "$W/v1.sock" --mode ping --ip $V4_1/16 --peer $V4_2 --count 5 --after idle
            line=$(gwait g1 FIRST_PING_OK --timeout 150)
            check "3. guest 1 (new QEMU) reaches guest 2: $line" has FIRST_PING_OK "$line"
            line=$(gwait g1 PING_RESULT --timeout 30)
            check "3. ping guest 1 -> guest 2: $line" test "$(field "$line" received)" = 5
            check "3. the switch was not restarted" switch_alive
        fi
        if step 4; then
            echo "--- 4. guest 2: QEMU killed (SIGKILL), a new one pings guest 1"
            if ! "$G" status g1 >/dev/null; then
                gstart g1 --sock "$W/v1.sock" --mode idle --ip $V4_1/16
            fi
            if "$G" status g2 >/dev/null; then
                gwait g2 GUEST_READY --timeout 150 >/dev/null
                pid=$(cat "$W/g2.pid"); kill -KILL "$pid"
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                echo "  killed QEMU pid $pid"
            fi
            "$G" stop g2 >/dev/null
            gstart g2 --sock "$W/v2.sock" --mode ping --ip $V4_2/16 --peer $V4_1 --count 5
            line=$(gwait g2 FIRST_PING_OK --timeout 150)
            check "4. guest 2 (after a killed QEMU) reaches guest 1: $line" has FIRST_PING_OK "$line"
            line=$(gwait g2 PING_RESULT --timeout 30)
            check "4. ping guest 2 -> guest 1: $line" test "$(field "$line" received)" = 5
            check "4. the switch was not restarted" switch_alive
        fi
        for g in g1 g2; do "$G" stop "$g" >/dev/null; done
        echo "  $(stop_switch)"
        switch_report
    fi
fi

# --- 5: client mode, the switch restarted under running guests ---------------------------
if step 5; then
    echo "--- 5. client mode: QEMU listens (server=on), snabb-rs connects; snabb-rs restarted"
    rm -f "$W/v1.sock" "$W/v2.sock"
    gstart g1 --sock "$W/v1.sock" --server --mode idle --ip $V4_1/16
    gstart g2 --sock "$W/v2.sock" --server --mode ping-watch --count 0 --ip $V4_2/16 --peer $V4_1
    wait_socket "$W/v1.sock" 10 && wait_socket "$W/v2.sock" 10 || fail "5. QEMU listens on its sockets"
    t0=$(date +%s.%N)
    if ! start_switch client; then
        fail "5. the switch starts in client mode"
    else
        line=$(gwait g2 PING_OK --timeout 150)
        check "5. guests boot once the switch connected, guest 2 pings guest 1, $(since "$t0") s: $line" has PING_OK "$line"
        line=$(gwait g2 PING_OK --nth 3 --timeout 20)
        check "5. pings keep coming: $line" has PING_OK "$line"
        nl=$(tr -d '\r' <"$W/g2.log" | grep -a -c 'PING_LOST')
        echo "  $(stop_switch)"
        switch_report
        line=$(gwait g2 PING_LOST --nth $((nl + 1)) --timeout 20)
        check "5. with the switch stopped, pings are lost: $line" has PING_LOST "$line"
        lost_seq=$(field "$line" seq)
        check "5. both guests keep running" "$G" status g1 >/dev/null
        "$G" status g2 >/dev/null || fail "5. guest 2 keeps running"
        sleep 2
        t0=$(date +%s.%N)
        if ! start_switch client; then
            fail "5. the switch starts again"
        else
            # The first PING_OK after the loss.
            n=$(tr -d '\r' <"$W/g2.log" | grep -a -c 'PING_OK')
            line=$(gwait g2 PING_OK --nth $((n + 1)) --timeout 90)
            seq=$(field "$line" seq)
            check "5. after the restart guest 2 pings again, $(since "$t0") s: $line (lost from seq $lost_seq)" \
                test "${seq:-0}" -gt "${lost_seq:-0}"
            line=$(gwait g2 PING_OK --nth $((n + 3)) --timeout 20)
            check "5. and keeps pinging: $line" has PING_OK "$line"
            if [ "$SWITCH" = snabb-rs ]; then
                grep -a -i -E 'connect|reconnect' "$(switch_log)" | head -4 | sed 's/^/  switch: /'
            fi
            echo "  $(stop_switch)"
            switch_report
        fi
    fi
    for g in g1 g2; do "$G" stop "$g" >/dev/null; done
fi

# --- 6: live migration ---------------------------------------------------------------------
monitor_until() { # NAME PATTERN TIMEOUT HMP: poll an HMP command until its answer matches
    local i out
    for ((i = 0; i < $3 * 2; i++)); do
        out=$("$G" monitor "$1" "$4" 2>&1)
        grep -q -E "$2" <<<"$out" && { echo "$out"; return 0; }
        grep -q -E 'Migration status: (failed|cancelled)' <<<"$out" && { echo "$out"; return 1; }
        sleep 0.5
    done
    echo "$out"; return 1
}
# migrate_g1 STEP TARGET_ARGS...: start guest 1's target QEMU (g1m, on vm1m's socket,
# the same machine as g1: TARGET_ARGS repeat g1's guest.sh options) waiting for
# the state, migrate g1 to it, wait until done. 0 = completed and running,
# 1 = failed, 2 = QEMU refused to migrate (recorded as skipped).
migrate_g1() {
    local st=$1; shift
    local cmd out m t0
    cmd=$("$G" start g1m --sock "$W/v1m.sock" "$@" --dry-run)
    eval "args=($cmd)"
    : >"$W/g1m.log"
    printf 'log=%s\npid=%s\n' "$W/g1m.log" "$W/g1m.pid" >"$W/g1m.where"
    rm -f "$W/mig.sock"
    setsid "${args[@]}" -incoming "unix:$W/mig.sock" </dev/null >"$W/g1m.qemu.log" 2>&1 &
    echo $! >"$W/g1m.pid"
    wait_socket "$W/mig.sock" 20 || { fail "$st. the target QEMU listens for the migration"; return 1; }
    sleep 1
    out=$("$G" monitor g1 "migrate -d unix:$W/mig.sock" 2>&1)
    if grep -q -i -E 'vhost.*log|migration.*disabled|blocked|not supported' <<<"$out"; then
        SKIPPED+=("$st. migration: QEMU refused: $(tr '\n' ' ' <<<"$out" | cut -c1-200)")
        echo "SKIP $st. QEMU refuses to migrate: $out"
        return 2
    fi
    t0=$(date +%s.%N)
    if ! out=$(monitor_until g1 'Migration status: completed' 120 "info migrate"); then
        fail "$st. migration: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
        return 1
    fi
    pass "$st. migration completed in $(since "$t0") s: $(grep -E 'total time|transferred ram|dirty sync count|dirty pages rate' <<<"$out" | tr -s ' \n' ' ')"
    sleep 1
    m=$("$G" monitor g1m "info status" 2>&1)
    check "$st. the target runs: $m" grep -q 'running' <<<"$m"
    grep -q running <<<"$m"
}
for st in 6 7; do
    step $st || continue
    MIG=""
    if [ $st = 6 ]; then
        echo "--- 6. live migration of guest 1 between two QEMUs (vm1 -> vm1m), guest 2 pinging it"
    else
        echo "--- 7. live migration of guest 1 while it receives an iperf3 stream (the dirty log under load)"
    fi
    if [ "$SWITCH" != snabb-rs ]; then
        SKIPPED+=("$st. migration: only with snabb-rs as the switch (needs a third port and a Tee)")
        echo "SKIP $st. migration needs snabb-rs as the switch"
        continue
    fi
    if ! start_switch server migration; then
        fail "$st. the switch with a migration target port starts"
        continue
    fi
    if [ $st = 6 ]; then
        g1args=(--mode idle --ip $V4_1/16 --mac 52:54:00:00:00:01)
        gstart g1 --sock "$W/v1.sock" "${g1args[@]}"
        gstart g2 --sock "$W/v2.sock" --mode ping-watch --count 0 --ip $V4_2/16 --peer $V4_1
        line=$(gwait g2 PING_OK --timeout 150)
        check "6. guest 2 pings guest 1 before the migration: $line" has PING_OK "$line"
        n=$(tr -d '\r' <"$W/g2.log" | grep -a -c 'PING_OK')
        if migrate_g1 6 "${g1args[@]}"; then
            MIG=done
            line=$(gwait g2 PING_OK --nth $((n + 5)) --timeout 60)
            check "6. guest 2 keeps pinging guest 1 (now on vm1m): $line" has PING_OK "$line"
            echo "  pings lost over the whole step: $(tr -d '\r' <"$W/g2.log" | grep -a -c PING_LOST)"
        fi
    else
        g1args=(--mode iperf-server --after idle --wait 150 --ip $V4_1/16 --mac 52:54:00:00:00:01)
        gstart g1 --sock "$W/v1.sock" "${g1args[@]}"
        gstart g2 --sock "$W/v2.sock" --mode iperf-client --secs 30 --count 3 --ip $V4_2/16 --peer $V4_1
        line=$(gwait g2 PING_RESULT --timeout 150)
        check "7. guest 2 pings guest 1 before the migration: $line" test "$(field "$line" received)" = 3
        sleep 4 # iperf3 is under way
        if migrate_g1 7 "${g1args[@]}"; then
            MIG=done
            line=$(gwait g2 IPERF_RESULT --timeout 90)
            check "7. the iperf3 stream survives the migration: $line" test "$(field "$line" bits_per_second)0" -gt 10000000
            line=$(gwait g1m IPERF_SERVER_DONE --timeout 30)
            check "7. the server, now on the target, finished the test: $line" has IPERF_SERVER_DONE "$line"
        fi
    fi
    for g in g1 g1m g2; do "$G" stop "$g" >/dev/null; done
    echo "  $(stop_switch)"
    switch_report
    if [ "$MIG" = done ]; then
        n=$(to_guest vm1m)
        # Under iperf3 the stream goes on past the migration: the target takes
        # thousands of frames, not a stray one.
        least=0; [ "$st" = 7 ] && least=1000
        check "$st. after the migration the switch delivered to guest 1 through vm1m ($n packets)" test "${n:-0}" -gt $least
    fi
done

# --- 8: two queue pairs, and mergeable rx buffers off -------------------------------------
if step 8; then
    echo "--- 8. two queue pairs per guest (mq=on, queues: 2), guest 2 with mrg_rxbuf=off: ping, iperf3 to guest 2 with 4 streams"
    if ! SW_QUEUES=2 start_switch server; then
        fail "8. the switch with queues: 2 starts"
    else
        # Guest 2 receives the stream, into buffers without MRG_RXBUF.
        gstart g2 --sock "$W/v2.sock" --queues 2 --device-opts mrg_rxbuf=off --mode iperf-server --ip $V4_2/16 --after idle --wait 150
        gstart g1 --sock "$W/v1.sock" --queues 2 --mode iperf-client --ip $V4_1/16 --peer $V4_2 \
            --secs 5 --streams 4 --count 5 --after idle
        for g in g1 g2; do
            line=$(gwait $g GUEST_READY --timeout 150)
            check "8. guest ${g#g} has 2 queue pairs: $(cut -d' ' -f1-7 <<<"$line")" test "$(field "$line" queues)" = 2
        done
        line=$(gwait g1 PING_RESULT --timeout 150)
        check "8. ping guest 1 -> guest 2: $line" test "$(field "$line" received)" = 5
        line=$(gwait g1 IPERF_RESULT --timeout 90)
        check "8. iperf3 guest 1 -> guest 2 (mrg_rxbuf=off), 4 streams: $line" test "$(field "$line" bits_per_second)0" -gt 10000000
        # Stop the switch first: its report then shows the guests' queues still running.
        echo "  $(stop_switch)"
        switch_report
        if [ "$SWITCH" = snabb-rs ]; then
            n=$(grep -c '2 RX + 2 TX queues running' "$(switch_log)")
            check "8. both ports ran 2 RX + 2 TX queues ($n of 2 in the report)" test "$n" = 2
        fi
        for g in g1 g2; do "$G" stop "$g" >/dev/null; done
    fi
fi

echo "vhost-user-qemu ($SWITCH): $PASSED passed, $FAILED failed, ${#SKIPPED[@]} skipped in $(( $(date +%s) - START )) s"
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
[ "$FAILED" = 0 ]
