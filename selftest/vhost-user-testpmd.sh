#!/bin/bash
# VhostUser against DPDK's virtio-user frontend (dpdk-testpmd net_virtio_user).
#
# snabb-rs runs one graph with two VhostUser ports cabled to each other
# (vm1.output -> vm2.input, vm2.output -> vm1.input); two testpmds are the
# "guests", one on each port:
#   1. fe1 txonly -> fe2 rxonly, 64 B, then 1500 B the other way;
#   2. both ways at once, with io forwarding, then mac forwarding (packets
#      injected with `start tx_first` keep circulating);
#   3. one way with the receiver not polling for its first 2 s (its ring
#      full: what the switch cannot deliver is held or counted as dropped);
#      one way with mrg_rxbuf=0 on the frontends;
#   4. one way with 2 queue pairs (queues=2 on testpmd's vdev and the app),
#      skipped with a reason when the app takes no `queues` argument.
# Each run ends by draining: the senders stop, the receivers read what is
# still in flight, so the counts on both sides must agree exactly:
#   what a sender's port transmitted = what snabb-rs took from that guest,
#   what snabb-rs took from one guest = what the other guest's port received
#   + the drops snabb-rs counted (link drops, the app's own drop counters).
# Both testpmds are interactive (`testpmd.sh cmd`); their counts come from
# `show port stats all` (cumulative, unlike the per-session "Forward statistics").
#
# Environment: SNABB_RS (the binary; default $CARGO_TARGET_DIR/release/snabb-rs),
# VHOST_SWITCH=testpmd (testpmd's net_vhost with io forwarding plays the
# switch instead: proves the harness), VHOST_TESTPMD_LIMIT (seconds, default 300),
# VHOST_TESTPMD_CASES (default "oneway back io mac stall mrg mq"),
# VHOST_TESTPMD_WORKERS=2 (vm1 on worker w1 on CPU 0, vm2 on worker w2 on
# CPU 1: both directions cross an interlink; the counts stay exact, the
# interlink's and both local links' drops and leftovers counted on the way).
# Exit 0 pass, 43 skip (a SKIP line), 1 fail. Every process, socket and huge
# page file made here is removed on exit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
P=$ROOT/selftest/peers
source "$P/lib.sh"
T=$P/testpmd.sh

LIMIT=${VHOST_TESTPMD_LIMIT:-300}
SWITCH=${VHOST_SWITCH:-snabb-rs}
CASES=${VHOST_TESTPMD_CASES:-oneway back io mac stall mrg mq}
WORKERS=${VHOST_TESTPMD_WORKERS:-1}
ci() { [ -n "${SNABB_RS_CI:-}" ] && [ "${SNABB_RS_CI}" != 0 ]; }
skip() { if ci; then echo "FAIL (under CI, not a skip): $*"; exit 1; fi; echo "SKIP $*"; exit 43; }
PASSED=0 FAILED=0 SKIPPED=()
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }

[ "$(id -u)" = 0 ] || skip "needs root (dpdk-testpmd)"
command -v dpdk-testpmd >/dev/null || skip "dpdk-testpmd is missing (selftest/peers/install.sh installs it)"
B=${SNABB_RS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snabb-rs}
if [ "$SWITCH" = snabb-rs ]; then
    if [ ! -x "$B" ]; then
        echo "--- building snabb-rs"
        timeout 1800 cargo build --release -p snabb-rs >/dev/null 2>&1 || { echo "FAIL cargo build"; exit 1; }
    fi
    "$B" apps 2>/dev/null | grep -w VhostUser >/dev/null || skip "this snabb-rs ($B) has no VhostUser app class"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/vhost-testpmd.XXXXXX")
chmod 755 "$W"
export SNABB_RS_PEERS_DIR=$W SNABB_RS_SHM_ROOT=$W/shm
SW_PGID="" WATCHDOG=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    for t in fe1 fe2 sw; do "$T" stop "$t" --timeout 3 >/dev/null 2>&1; "$T" cleanup "$t" >/dev/null 2>&1; done
    stop_switch >/dev/null 2>&1
    rm -f "$W"/*.sock
    if [ "$FAILED" = 0 ] && [ "${1:-0}" = 0 ]; then
        rm -rf "$W"
    else
        echo "logs kept in $W"
    fi
}
trap 'cleanup $?' EXIT
trap 'echo "FAIL interrupted"; FAILED=$((FAILED + 1)); exit 1' INT TERM
# Bounded: past the limit the watchdog ends the suite (the trap cleans up).
(
    sleep "$LIMIT" >/dev/null 2>&1 &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    echo "FAIL the suite ran past ${LIMIT} s"
    kill -TERM $$
) &
WATCHDOG=$!
START=$(date +%s)

# --- the switch --------------------------------------------------------------------
# start_switch QUEUES: snabb-rs (or testpmd) listening on $W/v1.sock and $W/v2.sock.
start_switch() {
    local q=$1
    rm -f "$W/v1.sock" "$W/v2.sock"
    if [ "$SWITCH" = testpmd ]; then
        "$T" start sw --vhost "$W/v1.sock" --vhost "$W/v2.sock" --cpu 0 --fwd io --queues "$q" --stats-period 0 >/dev/null &&
            "$T" wait-ready sw --timeout 30 >/dev/null
        return
    fi
    local qa=""
    [ "$q" -gt 1 ] && qa=", queues: $q"
    local w1="" w2="" workers="" pin=(taskset -c 0)
    if [ "$WORKERS" = 2 ]; then
        w1=', worker: "w1"' w2=', worker: "w2"' workers='workers: { "w1": (cpu: 0), "w2": (cpu: 1) },' pin=()
    fi
    cat >"$W/switch.ron" <<EOF
// Two VhostUser ports cabled to each other.
(
    apps: {
        "vm1": (class: "VhostUser", args: (socket: "$W/v1.sock", server: true$qa)$w1),
        "vm2": (class: "VhostUser", args: (socket: "$W/v2.sock", server: true$qa)$w2),
    },
    links: [ "vm1.output -> vm2.input", "vm2.output -> vm1.input" ],
    $workers
)
EOF
    rm -rf "$SNABB_RS_SHM_ROOT"
    setsid "${pin[@]}" "$B" run "$W/switch.ron" </dev/null >"$W/switch.log" 2>&1 &
    SW_PGID=$!
    wait_socket "$W/v1.sock" 20 && wait_socket "$W/v2.sock" 20 && return 0
    echo "  snabb-rs did not listen on both sockets; its log:"; tail -20 "$W/switch.log" | sed 's/^/    /'
    return 1
}
stop_switch() {
    if [ "$SWITCH" = testpmd ]; then "$T" stop sw --timeout 5 >/dev/null; return; fi
    [ -n "$SW_PGID" ] || return 0
    local sig i
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$SW_PGID" 2>/dev/null || break
        for ((i = 0; i < 50; i++)); do kill -0 -- -"$SW_PGID" 2>/dev/null || break 2; sleep 0.1; done
    done
    SW_PGID=""
}
shm_dir() { ls -d "$SNABB_RS_SHM_ROOT"/[0-9]* 2>/dev/null | head -1; }
ctr() { # FILE: a u64 counter, 0 when absent
    [ -f "$1" ] && od -An -t u8 "$1" | tr -d ' \n' || echo 0
}
# An app's counters are under apps/, or under workers/<w>/apps/ when it
# runs on a worker.
app_dir() { local d; d=$(ls -d "$(shm_dir)/apps/$1" "$(shm_dir)"/workers/*/apps/"$1" 2>/dev/null | head -1); echo "${d:-$(shm_dir)/apps/$1}"; }
app_ctr() { ctr "$(app_dir "$1")/$2.counter"; } # APP NAME
app_counters() { # APP: name=value ... (nonzero ones)
    local d f v out=""
    d=$(app_dir "$1")
    for f in "$d"/*.counter; do
        [ -e "$f" ] || continue
        v=$(ctr "$f"); [ "$v" = 0 ] || out+=" $(basename "$f" .counter)=$v"
    done
    echo "${out# }"
}
# switch_path FROM TO: what the switch took from guest FROM (1|2), what it
# delivered to guest TO, and what it dropped or still holds on the way:
# "took delivered dropped".
# snabb-rs, from its shm counters: took = vmFROM's rx_packets + its guest-side
# drops (rx_bad_descriptor, rx_too_short, rx_too_long, rx_bad_csum) + rx_no_output;
# delivered = vmTO's tx_packets; on the way: the link's drops (full) and what is
# left on it, vmTO's tx_no_guest, tx_no_room, tx_bad_descriptor, tx_backlog_drops.
# testpmd: port FROM-1 rx, port TO-1 tx, and its tx drops.
switch_path() {
    local from=$1 to=$2
    if [ "$SWITCH" = testpmd ]; then
        local out; out=$("$T" counters sw)
        local a b; a=$(grep "port=$((from - 1)) " <<<"$out"); b=$(grep "port=$((to - 1)) " <<<"$out")
        echo "$(( $(field "$a" rx_packets) + $(field "$a" rx_dropped) )) $(field "$b" tx_packets) $(field "$b" tx_dropped)"
        return
    fi
    local l tx txdrop rx f=vm$from t=vm$to c guest_drops=0 way_drops=0
    l="$(shm_dir)/links/$f.output -> $t.input"
    tx=$(ctr "$l/txpackets.counter") txdrop=$(ctr "$l/txdrop.counter") rx=$(ctr "$l/rxpackets.counter")
    if [ "$WORKERS" = 2 ]; then
        # Three hops: vmFROM's local link to the interlink's producer end,
        # the interlink, the consumer end's local link to vmTO. What went
        # in is the first's txpackets; what came out the last's rxpackets;
        # drops are the three's.
        local il=il_$f-output__$t-input a b
        a="$(shm_dir)/workers/w$from/links/$f.output -> ${il}_tx.input"
        b="$(shm_dir)/workers/w$to/links/${il}_rx.output -> $t.input"
        txdrop=$(( $(ctr "$a/txdrop.counter") + txdrop + $(ctr "$b/txdrop.counter") ))
        tx=$(ctr "$a/txpackets.counter") rx=$(ctr "$b/rxpackets.counter")
    fi
    for c in rx_bad_descriptor rx_too_short rx_too_long rx_bad_csum rx_no_output; do guest_drops=$((guest_drops + $(app_ctr $f $c))); done
    for c in tx_no_guest tx_no_room tx_bad_descriptor tx_backlog_drops; do way_drops=$((way_drops + $(app_ctr $t $c))); done
    echo "$(( $(app_ctr $f rx_packets) + guest_drops )) $(app_ctr $t tx_packets) $((guest_drops + txdrop + (tx - rx) + way_drops))"
    echo "  link $f.output -> $t.input: txpackets=$tx txdrop=$txdrop rxpackets=$rx left=$((tx - rx))" >&2
}

# --- the frontends -------------------------------------------------------------------
# show port stats all, for port 0 of an interactive testpmd: "rx tx rx_missed tx_errors"
port_stats() { # NAME
    "$T" cmd "$1" "show port stats all" | awk '
        /RX-packets:/ { rx = $2; miss = $4 } /TX-packets:/ { tx = $2; err = $4; exit }
        END { print rx + 0, tx + 0, miss + 0, err + 0 }'
}
start_fe() { # NAME SOCK CPU FWD LEN EXTRA...
    local name=$1 sock=$2 cpu=$3 fwd=$4 len=$5; shift 5
    "$T" start "$name" --virtio-user "$sock" --cpu "$cpu" --fwd "$fwd" --txpkts "$len" --interactive --paused \
        --stats-period 0 "$@" >>"$W/started" || return 1
    local r; r=$("$T" wait-ready "$name" --timeout 30) || { echo "  $name: $r"; tail -5 "$W/$name.log" | sed 's/^/    /'; return 1; }
}
# Does a frontend's link come up with the switch? testpmd prints the port's link state.
fe_link_up() { # NAME
    "$T" cmd "$1" "show port info 0" | grep 'Link status: up' >/dev/null
}

# One run. MODE: oneway (fe1 txonly -> fe2 rxonly) | back (fe2 -> fe1) | io | mac (both ways).
run_case() { # TITLE MODE LEN QUEUES FE_EXTRA...
    local title=$1 mode=$2 len=$3 q=$4; shift 4
    echo "--- $title"
    start_switch "$q" || { fail "$title: the switch did not start"; return; }
    local f1=txonly f2=rxonly
    case $mode in back) f1=rxonly f2=txonly;; io|mac) f1=$mode f2=$mode;; esac
    if ! start_fe fe1 "$W/v1.sock" 1 "$f1" "$len" --queues "$q" "$@" ||
       ! start_fe fe2 "$W/v2.sock" 1 "$f2" "$len" --queues "$q" "$@"; then
        fail "$title: a frontend did not start"
        "$T" stop fe1 >/dev/null 2>&1; "$T" stop fe2 >/dev/null 2>&1; stop_switch; return
    fi
    sleep 1
    case $mode in
    oneway) "$T" cmd fe2 start >/dev/null; "$T" cmd fe1 start >/dev/null;;
    stall) # the receiver polls nothing for 2 s: its ring fills, the switch must hold or count what it cannot deliver
        "$T" cmd fe1 start >/dev/null; sleep 2; "$T" cmd fe2 start >/dev/null;;
    back) "$T" cmd fe1 start >/dev/null; "$T" cmd fe2 start >/dev/null;;
    *) "$T" cmd fe2 "start tx_first 4" >/dev/null; "$T" cmd fe1 "start tx_first 4" >/dev/null;;
    esac
    sleep 3
    # Drain: the sender(s) stop; what is in flight reaches the receiver.
    case $mode in
    oneway|stall) "$T" cmd fe1 stop >/dev/null; sleep 1; "$T" cmd fe2 stop >/dev/null;;
    back) "$T" cmd fe2 stop >/dev/null; sleep 1; "$T" cmd fe1 stop >/dev/null;;
    *)  # fe1 stops; fe2 receives the rest for 1 s and sends it back; then
        # fe2 stops and fe1, now rxonly, takes what fe2 sent.
        "$T" cmd fe1 stop >/dev/null; sleep 1; "$T" cmd fe2 stop >/dev/null
        "$T" cmd fe1 "set fwd rxonly" >/dev/null; "$T" cmd fe1 start >/dev/null; sleep 1; "$T" cmd fe1 stop >/dev/null;;
    esac
    sleep 0.5 # the engine publishes its counters every 100 breaths
    local s1 s2 p12 p21
    read -r rx1 tx1 miss1 err1 <<<"$(port_stats fe1)"
    read -r rx2 tx2 miss2 err2 <<<"$(port_stats fe2)"
    if [ "$SWITCH" = testpmd ]; then "$T" stop sw >/dev/null; fi
    p12=$(switch_path 1 2 2>>"$W/paths") p21=$(switch_path 2 1 2>>"$W/paths")
    echo "  fe1 port: rx=$rx1 tx=$tx1 rx_missed=$miss1 tx_errors=$err1    fe2 port: rx=$rx2 tx=$tx2 rx_missed=$miss2 tx_errors=$err2"
    echo "  switch 1->2: took=$(cut -d' ' -f1 <<<"$p12") delivered=$(cut -d' ' -f2 <<<"$p12") dropped=$(cut -d' ' -f3 <<<"$p12")" \
        "  2->1: took=$(cut -d' ' -f1 <<<"$p21") delivered=$(cut -d' ' -f2 <<<"$p21") dropped=$(cut -d' ' -f3 <<<"$p21")"
    if [ "$SWITCH" = snabb-rs ]; then
        cat "$W/paths"; rm -f "$W/paths"
        echo "  vm1 counters: $(app_counters vm1)"
        echo "  vm2 counters: $(app_counters vm2)"
    fi
    local ok=1 why="" t d x moved=0
    check_dir() { # SENT_BY_FE RECEIVED_BY_FE "took delivered drops" LABEL
        read -r t d x <<<"$3"
        [ "$1" = "$t" ] || { ok=0; why+=" $4: sent $1 but the switch took $t;"; }
        [ "$2" = "$d" ] || { ok=0; why+=" $4: the switch delivered $d but the port received $2;"; }
        [ $(( d + x )) = "$t" ] || { ok=0; why+=" $4: took $t != delivered $d + dropped $x;"; }
        moved=$((moved + $2))
    }
    case $mode in
    oneway|stall) check_dir "$tx1" "$rx2" "$p12" "1->2"
            [ "$tx2" = 0 ] && [ "$rx1" = 0 ] || { ok=0; why+=" traffic the other way (fe2 tx $tx2, fe1 rx $rx1);"; };;
    back) check_dir "$tx2" "$rx1" "$p21" "2->1"
            [ "$tx1" = 0 ] && [ "$rx2" = 0 ] || { ok=0; why+=" traffic the other way (fe1 tx $tx1, fe2 rx $rx2);"; };;
    *) check_dir "$tx1" "$rx2" "$p12" "1->2"; check_dir "$tx2" "$rx1" "$p21" "2->1"
       [ "$rx1" -gt 0 ] && [ "$rx2" -gt 0 ] || { ok=0; why+=" not both ways;"; };;
    esac
    [ "$moved" -gt 0 ] || { ok=0; why+=" nothing received;"; }
    if [ "$q" -gt 1 ]; then
        # Every queue carried traffic: the receiver's per-stream statistics (printed at stop).
        local rxq qi recv=fe2; [ "$mode" = back ] && recv=fe1
        for ((qi = 0; qi < q; qi++)); do
            rxq=$(tr -d '\r' <"$W/$recv.log" | awk -v q="$qi" '
                /Forward Stats for RX Port=/ { on = ($0 ~ ("Queue= *" q " ")) }
                on && /RX-packets:/ { s += $2; on = 0 } END { print s + 0 }')
            echo "  $recv rx queue $qi: $rxq packets"
            [ "$rxq" -gt 0 ] || { ok=0; why+=" $recv's rx queue $qi received nothing;"; }
        done
    fi
    "$T" stop fe1 >/dev/null; "$T" stop fe2 >/dev/null
    stop_switch
    if [ "$SWITCH" = snabb-rs ]; then
        grep -q -E 'panicked|^Error' "$W/switch.log" && { ok=0; why+=" snabb-rs: $(grep -m1 -E 'panicked|^Error' "$W/switch.log");"; }
        sed -n '/^link report/,$p' "$W/switch.log" | sed 's/^/  /' | head -12
        cp "$W/switch.log" "$W/switch-${mode}-${len}-q$q.log"
    fi
    for n in fe1 fe2; do cp "$W/$n.log" "$W/$n-${mode}-${len}-q$q.log" 2>/dev/null; done
    if [ "$ok" = 1 ]; then pass "$title: counts agree (received $moved)"; else fail "$title:$why"; fi
}

echo "--- switch: $SWITCH$([ "$SWITCH" = snabb-rs ] && echo " ($B)")"
want() { [[ " $CASES " == *" $1 "* ]]; }
want oneway && run_case "fe1 txonly -> fe2 rxonly, 64 B" oneway 64 1
want back && run_case "fe2 txonly -> fe1 rxonly, 1500 B" back 1500 1
want io && run_case "both ways, io forwarding (tx_first), 64 B" io 64 1
want mac && run_case "both ways, mac forwarding (tx_first), 1500 B" mac 1500 1
want stall && run_case "fe1 txonly -> fe2 rxonly, fe2 not polling for its first 2 s, 64 B" stall 64 1
want mrg && run_case "mrg_rxbuf=0: fe1 txonly -> fe2 rxonly, 1500 B" oneway 1500 1 --mrg-rxbuf 0
mq=yes
want mq || mq=skip
if [ "$SWITCH" = snabb-rs ] && [ "$mq" = yes ]; then
    # Does the app take `queues`? `config check` says without running anything.
    cat >"$W/mq.ron" <<EOF
( apps: { "vm1": (class: "VhostUser", args: (socket: "$W/mq.sock", server: true, queues: 2)) }, links: [] )
EOF
    if ! out=$("$B" config check "$W/mq.ron" 2>&1); then
        mq=no
        SKIPPED+=("2 queue pairs: the VhostUser app does not take queues: 2 ($(tail -1 <<<"$out" | cut -c1-160))")
        echo "SKIP 2 queue pairs: VhostUser does not accept queues: 2: $(tail -1 <<<"$out" | cut -c1-160)"
    fi
fi
[ "$mq" = yes ] && run_case "2 queue pairs: fe1 txonly -> fe2 rxonly, 64 B" oneway 64 2

left=0
for prefix in $(grep -o 'prefix=[^ ]*' "$W/started" 2>/dev/null | cut -d= -f2); do
    for f in "$(hugepage_dir)/${prefix}"map_*; do [ -e "$f" ] && left=$((left + 1)); done
done
[ "$left" = 0 ] && pass "no huge page files left by our testpmds" || fail "$left huge page files left"
echo "vhost-user-testpmd ($SWITCH): $PASSED passed, $FAILED failed, ${#SKIPPED[@]} skipped in $(( $(date +%s) - START )) s"
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
[ "$FAILED" = 0 ]
