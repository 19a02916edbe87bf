#!/bin/bash
# vhost-user backend benchmark: DPDK's net_vhost (a) against a backend you
# start with a command (b), both driven by the same traffic source and sink,
# dpdk-testpmd's net_virtio_user frontend, one CPU for each side.
#
#   bench-vhost.sh [options] [--] [BACKEND_CMD...]
#
# Cases, each for --sizes (default 64 and 1500-byte frames):
#   g2s  guest-to-switch: the frontend sends (txonly), the backend receives;
#        the rate is the frontend's Tx-pps (what the backend took off the ring).
#   s2g  switch-to-guest: the backend sends, the frontend receives (rxonly);
#        the rate is the frontend's Rx-pps.
# Measuring both backends at the same frontend keeps the comparison fair. A
# run's figure is the median of the per-second samples (warm-up and the last
# sample dropped); a case's figure the median of --runs runs, (a) and (b)
# alternating. An idle check runs before each run and watches during it; a
# case takes only the runs on an idle machine when most of every backend's
# runs were, and otherwise all runs of every backend, marked "busy".
#
# BACKEND_CMD is a template, run per run in its own process group and stopped
# with SIGINT (then TERM, KILL). It must listen on {sock} (vhost-user server)
# and, for g2s, receive and drop; for s2g, send {size}-byte frames as fast as
# it can. Placeholders, replaced in every word:
#   {sock} socket path   {size} frame bytes   {dir} g2s|s2g   {role} rx|tx (what the backend does)
#   {mode} rxonly|txonly (the same, in testpmd's words)   {cpu} the backend's CPU   {secs} run length
# It inherits SNABB_RS_PEERS_DIR (the bench's work dir). Example, testpmd as (b):
#   bench-vhost.sh --name testpmd-b -- selftest/peers/testpmd.sh run b --vhost {sock} --cpu {cpu} --fwd {mode} --txpkts {size}
# Without BACKEND_CMD only (a) is measured.
#
# options:
#   --name NAME        label of backend (b) (default custom)
#   --runs N           runs per case and backend (default 3)
#   --secs S           per-second samples measured per run, after --skip warm-up ones (default 8)
#   --sizes "64 1500"  --dirs "g2s s2g"   --burst N (32)   --packed (frontend packed ring)
#   --be-cpu N (0)     --fe-cpu N (1)
#   --skip K           warm-up samples dropped (default 2)
#   --no-dpdk          measure (b) only
#   --dir DIR          keep logs here (default: a new temp dir, removed unless --keep)
#   --keep             keep the logs
# Output lines: BENCH_ENV, IDLE (before each run), BENCH_RUN, BENCH_CASE, ratio, then a table.
#   BENCH_RUN backend=B dir=D size=S run=R pps=P samples=N idle=yes|no [backend_rx_pps=P]
#   BENCH_CASE backend=B dir=D size=S median_mpps=M runs=N clean=C busy=yes|no
#   ratio dir=D size=S value=V backend=B base=dpdk mpps=M base_mpps=M busy=yes|no
#     (mpps: the backend measured, base_mpps: DPDK's; value = mpps / base_mpps)
set -uo pipefail
source "$(dirname "$0")/lib.sh"

NAME=custom RUNS=3 SECS=8 SIZES="64 1500" DIRS="g2s s2g" BURST=32 PACKED="" BE_CPU=0 FE_CPU=1 SKIP=2
DPDK=1 WORK="" KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --name) NAME=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --sizes) SIZES=$2; shift 2;;
    --dirs) DIRS=$2; shift 2;;
    --burst) BURST=$2; shift 2;;
    --packed) PACKED=--packed; shift;;
    --be-cpu) BE_CPU=$2; shift 2;;
    --fe-cpu) FE_CPU=$2; shift 2;;
    --skip) SKIP=$2; shift 2;;
    --no-dpdk) DPDK=0; shift;;
    --dir) WORK=$2; KEEP=1; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) usage_of "$0";;
    --) shift; break;;
    -*) die "bench-vhost.sh: unknown option $1";;
    *) break;;
    esac
done
TEMPLATE=("$@")
[ ${#TEMPLATE[@]} -eq 0 ] && [ "$DPDK" = 0 ] && die "nothing to measure: give BACKEND_CMD or drop --no-dpdk"
[ "$SECS" -ge 1 ] || die "--secs must be at least 1"
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd is missing (selftest/peers/install.sh)"

[ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-vhost.XXXXXX")
mkdir -p "$WORK"
export SNABB_RS_PEERS_DIR=$WORK
T=$PEERS_DIR/testpmd.sh
BACKENDS=()
[ "$DPDK" = 1 ] && BACKENDS+=(dpdk)
[ ${#TEMPLATE[@]} -gt 0 ] && BACKENDS+=("$NAME")

BPGID=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$BPGID" ] && stop_group "$BPGID"
    "$T" stop fe >/dev/null 2>&1; "$T" stop be >/dev/null 2>&1
    "$T" cleanup fe >/dev/null 2>&1; "$T" cleanup be >/dev/null 2>&1
    rm -f "$WORK"/*.sock
    if [ "$KEEP" = 1 ]; then say "logs in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_group() { # PGID: SIGINT the backend's process group, then TERM, then KILL
    local g=$1 sig i
    for sig in INT TERM KILL; do
        kill -"$sig" -- -"$g" 2>/dev/null || return 0
        for ((i = 0; i < 100; i++)); do kill -0 -- -"$g" 2>/dev/null || return 0; sleep 0.1; done
    done
}

# One measurement: start the backend, then the frontend; SECS later read the rate.
measure() { # BACKEND DIR SIZE RUN -> sets PPS SAMPLES IDLE_OK BE_PPS
    local backend=$1 dir=$2 size=$3 run=$4 sock=$WORK/bench.sock tag=$1-$2-$3-$4
    local be_mode fe_mode fe_key
    if [ "$dir" = g2s ]; then be_mode=rxonly fe_mode=txonly fe_key=--tx; else be_mode=txonly fe_mode=rxonly fe_key=--rx; fi
    rm -f "$sock"
    PPS=0 SAMPLES=0 BE_PPS="" IDLE_OK=yes
    local before
    before=$("$PEERS_DIR/idle.sh" --seconds 1 --spin-seconds 0.3)
    grep '^IDLE ' <<<"$before"
    grep -q 'verdict=idle' <<<"$before" || IDLE_OK=no

    if [ "$backend" = dpdk ]; then
        "$T" start be --vhost "$sock" --cpu "$BE_CPU" --fwd "$be_mode" --txpkts "$size" --burst "$BURST" >/dev/null
        BPGID=$(cat "$WORK/be.pid")
    else
        local words=() w role=rx
        [ "$dir" = s2g ] && role=tx
        for w in "${TEMPLATE[@]}"; do
            w=${w//\{sock\}/$sock}; w=${w//\{size\}/$size}; w=${w//\{dir\}/$dir}; w=${w//\{role\}/$role}
            w=${w//\{mode\}/$be_mode}; w=${w//\{cpu\}/$BE_CPU}; w=${w//\{secs\}/$SECS}
            words+=("$w")
        done
        setsid "${words[@]}" </dev/null >"$WORK/b-$tag.log" 2>&1 &
        BPGID=$!
    fi
    if ! wait_socket "$sock" 30; then
        say "backend $backend did not create $sock within 30 s (log: $([ "$backend" = dpdk ] && echo "$WORK/be.log" || echo "$WORK/b-$tag.log"))"
        stop_group "$BPGID"; BPGID=""
        IDLE_OK=no
        return 1
    fi
    "$T" start fe --virtio-user "$sock" --cpu "$FE_CPU" --fwd "$fe_mode" --txpkts "$size" --burst "$BURST" $PACKED >/dev/null
    local fepid watch
    fepid=$(cat "$WORK/fe.pid")
    # Watch the machine during the run, leaving out the run's own processes.
    "$PEERS_DIR/idle.sh" --passive --seconds "$SECS" --ignore-pgid "$BPGID,$fepid" >"$WORK/idle-$tag.txt" &
    watch=$!
    # A run lasts until SKIP + SECS + 1 per-second samples from the first
    # packets are in (warm-up, measured, the last one cut short): start-up,
    # and the statistics lcore (which shares its CPU with the forwarding
    # one), are slow on a busy machine. At most 3 * SECS + 30 s.
    local key i n
    key=$([ "$fe_key" = --tx ] && echo Tx-pps: || echo Rx-pps:)
    for ((i = 0; i < (3 * SECS + 30) * 5; i++)); do
        n=$(tr -d '\r' <"$WORK/fe.log" | awk -v key="$key" '$1 == key && $2 > 0 { on = 1 } on && $1 == key { n++ } END { print n + 0 }')
        [ "$n" -ge $((SKIP + SECS + 1)) ] && break
        sleep 0.2
    done
    "$T" stop fe >/dev/null
    if [ "$backend" = dpdk ]; then "$T" stop be >/dev/null; else stop_group "$BPGID"; fi
    BPGID=""
    wait "$watch"
    grep -q 'verdict=idle' "$WORK/idle-$tag.txt" || IDLE_OK=no
    grep -q 'verdict=busy' "$WORK/idle-$tag.txt" && sed -n 's/^IDLE verdict=busy/  during the run: busy/p' "$WORK/idle-$tag.txt"
    local line
    line=$("$T" pps fe $fe_key --skip "$SKIP")
    PPS=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<<"$line"); SAMPLES=$(sed -n 's/.* samples=\([^ ]*\).*/\1/p' <<<"$line")
    cp "$WORK/fe.log" "$WORK/fe-$tag.log"
    if [ "$backend" = dpdk ]; then
        cp "$WORK/be.log" "$WORK/be-$tag.log"
        [ "$dir" = g2s ] && BE_PPS=$("$T" pps be --rx --skip "$SKIP" | sed -n 's/.* median=\([^ ]*\).*/\1/p')
    fi
    [ "${SAMPLES:-0}" -gt 0 ] && [ "${PPS%.*}" -gt 0 ] || { say "no traffic in $tag (see $WORK/fe-$tag.log)"; return 1; }
}

echo "BENCH_ENV date=$(date -u +%FT%TZ) host_kernel=$(uname -r) cpus=$(nproc) dpdk=$(dpkg-query -W -f '${Version}' dpdk 2>/dev/null)" \
    "be_cpu=$BE_CPU fe_cpu=$FE_CPU runs=$RUNS secs=$SECS burst=$BURST frontend=net_virtio_user${PACKED:+,packed} backends=$(IFS=,; echo "${BACKENDS[*]}")"

declare -A RES CLEAN ALL
for size in $SIZES; do
    for dir in $DIRS; do
        for run in $(seq "$RUNS"); do
            for backend in "${BACKENDS[@]}"; do
                extra=""
                if measure "$backend" "$dir" "$size" "$run"; then :; else PPS=0; fi
                [ -n "$BE_PPS" ] && extra=" backend_rx_pps=$BE_PPS"
                echo "BENCH_RUN backend=$backend dir=$dir size=$size run=$run pps=$PPS samples=$SAMPLES idle=$IDLE_OK$extra"
                k="$backend $dir $size"
                ALL[$k]+="$PPS "
                [ "$IDLE_OK" = yes ] && [ "${PPS%.*}" -gt 0 ] && CLEAN[$k]+="$PPS "
            done
        done
    done
done

mpps() { awk -v p="$1" 'BEGIN { printf "%.2f", p / 1e6 }'; }
summary=()
for size in $SIZES; do
    for dir in $DIRS; do
        # Clean runs when most of every backend's runs were clean; all runs
        # otherwise, for every backend alike (marked busy): one backend's
        # lucky clean run against the other's busy ones, or a "median" of a
        # single run, would be no comparison.
        everyclean=yes
        for backend in "${BACKENDS[@]}"; do
            [ $((2 * $(wc -w <<<"${CLEAN[$backend $dir $size]:-}"))) -gt "$RUNS" ] || everyclean=no
        done
        for backend in "${BACKENDS[@]}"; do
            k="$backend $dir $size"
            clean=$(wc -w <<<"${CLEAN[$k]:-}")
            if [ "$everyclean" = yes ]; then set -- ${CLEAN[$k]}; busy=no; else set -- ${ALL[$k]}; busy=yes; fi
            med=$(printf '%s\n' "$@" | median)
            RES[$k]=$med
            RES[$k busy]=$busy
            echo "BENCH_CASE backend=$backend dir=$dir size=$size median_mpps=$(mpps "$med") runs=$RUNS clean=$clean busy=$busy"
        done
        row="$(printf '%-15s %5s' "$([ "$dir" = g2s ] && echo guest-to-switch || echo switch-to-guest)" "$size")"
        for backend in "${BACKENDS[@]}"; do
            mark=""; [ "${RES[$backend $dir $size busy]}" = yes ] && mark="*"
            row+="$(printf ' %14s' "$(mpps "${RES[$backend $dir $size]}")$mark")"
        done
        if [ "$DPDK" = 1 ] && [ ${#TEMPLATE[@]} -gt 0 ]; then
            a=${RES[dpdk $dir $size]} b=${RES[$NAME $dir $size]}
            busy=no; [ "${RES[dpdk $dir $size busy]}" = yes ] || [ "${RES[$NAME $dir $size busy]}" = yes ] && busy=yes
            value=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "nan" }')
            echo "ratio dir=$dir size=$size value=$value backend=$NAME base=dpdk mpps=$(mpps "$b") base_mpps=$(mpps "$a") busy=$busy"
            row+="$(printf ' %8s' "$value")"
        fi
        summary+=("$row")
    done
done

echo
header="$(printf '%-15s %5s' direction bytes)"
for backend in "${BACKENDS[@]}"; do header+="$(printf ' %14s' "$backend Mpps")"; done
[ "$DPDK" = 1 ] && [ ${#TEMPLATE[@]} -gt 0 ] && header+="$(printf ' %8s' "$NAME/dpdk")"
echo "$header"
printf '%s\n' "${summary[@]}"
echo "(each cell: median of $RUNS runs, each the median of $SECS one-second samples; * = no run of that cell had an idle machine)"
