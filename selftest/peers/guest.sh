#!/bin/bash
# Run a Linux test guest (QEMU) on a vhost-user socket, and watch it.
#
#   guest.sh start NAME --sock PATH [options]   launch in the background
#   guest.sh wait NAME MARKER [--timeout S] [--nth K]
#                                               wait for a marker on its console
#   guest.sh stop NAME [--timeout S]            SIGTERM (QEMU quits cleanly), then KILL
#   guest.sh status NAME                        running or not
#   guest.sh monitor NAME HMP-COMMAND...        e.g. system_reset, info network
#   guest.sh accel                              kvm or tcg, as start would choose
#
# Every subcommand takes --dir DIR: where NAME.log (the serial console),
# NAME.pid, NAME.qemu.log (QEMU's own output), NAME.mon (monitor socket) and
# NAME.state (reboot-loop's disk) live. Default: $SNABB_RS_PEERS_DIR or
# /tmp/snabb-rs-peers.
#
# start options:
#   --sock PATH          vhost-user socket (required)
#   --server             QEMU listens on PATH and the backend connects (client mode is the default:
#                        QEMU connects to a backend that listens)
#   --reconnect N        client mode: reconnect every N s when the backend goes away
#   --mode MODE          probe|ping|ping-watch|iperf-server|iperf-client|iperf-daemon|idle|reboot-loop (default idle)
#   --ip LIST            eth0 addresses, comma-separated: 169.254.0.1/16,fe80::1/64
#   --peer ADDR          address to ping / connect iperf3 to
#   --mac MAC            default: 52:54:00 + 3 bytes derived from NAME
#   --count N --wait S --secs S --streams N --reboots N --after poweroff|idle --hold S --mtu N --vlan ID
#   --gw ADDR --tests N --peer2 ADDR
#                        passed to the guest (see guest-init.sh)
#   --mem MB             guest memory, shared memfd (default 512)
#   --hugepages          back guest memory with 2 MiB huge pages (memfd hugetlb)
#   --queues N           queue pairs (default 1; N>1 sets mq=on and enables them in the guest)
#   --smp N              vCPUs (default 1)
#   --packed             packed virtqueues (packed=on)
#   --device-opts STR    more virtio-net-pci properties, e.g. mrg_rxbuf=off,csum=off
#   --append STR         more kernel command line
#   --accel auto|kvm|tcg default $SNABB_RS_GUEST_ACCEL or auto (probe KVM once, cached)
#   --boot pvh|bzimage   pvh (default) boots the uncompressed vmlinux directly
#   --cpus LIST          pin QEMU with taskset
#   --log FILE           serial console log (default DIR/NAME.log)
#   --pidfile FILE       QEMU's pid (default DIR/NAME.pid); wait/stop/status find both through DIR/NAME.where
#   --cache DIR          guest kit cache (see guest-kit.sh)
#   --dry-run            print the QEMU command line and exit
#
# Output lines (stdout), for scripts:
#   GUEST_STARTED name=N pid=P accel=A log=F monitor=S sock=S mode=M
#   <the marker line>                          (wait: exit 0)
#   GUEST_WAIT_TIMEOUT name=N marker=M         (wait: exit 1)
#   GUEST_WAIT_EXITED name=N marker=M          (wait: QEMU is gone, exit 2)
#   GUEST_STOPPED name=N how=gone|signal|kill
#   GUEST_STATUS name=N running=yes|no pid=P
#   ACCEL name=kvm|tcg reason=...
# shellcheck disable=SC2054 # commas inside QEMU arguments are QEMU's
set -uo pipefail
source "$(dirname "$0")/lib.sh"

DIR=${SNABB_RS_PEERS_DIR:-/tmp/snabb-rs-peers}
CACHE=${SNABB_RS_GUEST_CACHE:-/var/cache/snabb-rs/guest}
QEMU=${QEMU:-qemu-system-x86_64}

usage() { usage_of "$0" "${1:-0}"; }

# --- KVM or TCG -----------------------------------------------------------------
# /dev/kvm is not proof: on some nested hypervisors (kvm_pvm) a stock kernel
# hangs or stops with an internal error. So boot the guest kernel once under
# KVM in probe mode; if it does not reach /init quickly, use TCG. The answer
# is cached per host boot.
choose_accel() { # prints "kvm|tcg reason"
    local want=${SNABB_RS_GUEST_ACCEL:-auto}
    [ -n "${ACCEL_ARG:-}" ] && want=$ACCEL_ARG
    case $want in
    kvm|tcg) echo "$want requested"; return;;
    auto) ;;
    *) die "accel must be auto, kvm or tcg, not $want";;
    esac
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then echo "tcg no_/dev/kvm"; return; fi
    local boot cached probe log kit kernel initrd
    boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
    cached=$CACHE/accel-$boot
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.accel.lock"
    flock -w 120 8 || true
    if [ -f "$cached" ]; then cat "$cached"; exec 8>&-; return; fi
    kit=$("$PEERS_DIR/guest-kit.sh" --cache "$CACHE") || die "guest kit failed"
    kernel=$(kit_field "$kit" vmlinux); [ "$kernel" = none ] && kernel=$(kit_field "$kit" bzimage)
    initrd=$(kit_field "$kit" initrd)
    log=$(mktemp "${TMPDIR:-/tmp}/kvm-probe.XXXXXX")
    say "probing KVM (a guest must reach /init within 15 s)"
    timeout -s KILL 15 "$QEMU" -nodefaults -accel kvm -cpu host -m 256 -display none -serial stdio \
        -no-reboot -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=1 guest.mode=probe" </dev/null >"$log" 2>&1
    if grep -q GUEST_READY "$log"; then probe="kvm probe_booted"; else probe="tcg kvm_probe_failed"; fi
    rm -f "$log"
    echo "$probe" > "$cached"
    exec 8>&-
    echo "$probe"
}

# Where NAME's console log and pid file are (start may have been told other places).
where() { # NAME: sets LOG and PIDF
    LOG=$DIR/$1.log PIDF=$DIR/$1.pid
    if [ -f "$DIR/$1.where" ]; then
        LOG=$(sed -n 's/^log=//p' "$DIR/$1.where")
        PIDF=$(sed -n 's/^pid=//p' "$DIR/$1.where")
    fi
}

kit_field() { # KIT-LINE KEY
    tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"
}

# --- start ------------------------------------------------------------------------
cmd_start() {
    local name=$1; shift
    local sock="" server=0 reconnect="" mode=idle ip="" peer="" mac="" mem=512 huge=0 queues=1 smp=1
    local packed=0 devopts="" append="" boot=pvh cpus="" dry=0 gargs="" log="" pidf=""
    ACCEL_ARG=""
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --cache) CACHE=$2; shift 2;;
        --sock) sock=$2; shift 2;;
        --server) server=1; shift;;
        --reconnect) reconnect=$2; shift 2;;
        --mode) mode=$2; shift 2;;
        --ip) ip=$2; shift 2;;
        --peer) peer=$2; shift 2;;
        --mac) mac=$2; shift 2;;
        --count|--wait|--secs|--streams|--reboots|--after|--hold|--mtu|--vlan|--gw|--tests|--peer2)
            gargs+=" guest.${1#--}=$2"; shift 2;;
        --mem) mem=$2; shift 2;;
        --hugepages) huge=1; shift;;
        --queues) queues=$2; shift 2;;
        --smp) smp=$2; shift 2;;
        --packed) packed=1; shift;;
        --device-opts) devopts=$2; shift 2;;
        --append) append=$2; shift 2;;
        --accel) ACCEL_ARG=$2; shift 2;;
        --boot) boot=$2; shift 2;;
        --cpus) cpus=$2; shift 2;;
        --log) log=$2; shift 2;;
        --pidfile) pidf=$2; shift 2;;
        --dry-run) dry=1; shift;;
        *) die "guest.sh start: unknown option $1";;
        esac
    done
    [ -n "$sock" ] || die "guest.sh start: --sock is required"
    case $mode in probe|ping|ping-watch|iperf-server|iperf-client|iperf-daemon|idle|reboot-loop) ;; *) die "unknown mode $mode";; esac
    [[ $queues =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive number"
    mkdir -p "$DIR"
    local mon=$DIR/$name.mon qlog=$DIR/$name.qemu.log
    [ -n "$log" ] || log=$DIR/$name.log
    [ -n "$pidf" ] || pidf=$DIR/$name.pid
    if [ "$dry" = 0 ] && [ -f "$pidf" ] && pid_is "$(cat "$pidf")" qemu; then
        die "guest $name is already running (pid $(cat "$pidf")); stop it first"
    fi
    [ -n "$mac" ] || mac=$(cksum <<<"$name" | awk '{ n = $1; printf "52:54:00:%02x:%02x:%02x", n % 256, int(n / 256) % 256, int(n / 65536) % 256 }')

    local kit kernel initrd accel reason
    kit=$("$PEERS_DIR/guest-kit.sh" --cache "$CACHE") || die "guest kit failed"
    initrd=$(kit_field "$kit" initrd)
    kernel=$(kit_field "$kit" vmlinux)
    [ "$boot" = bzimage ] || [ "$kernel" = none ] && kernel=$(kit_field "$kit" bzimage)
    read -r accel reason <<<"$(choose_accel)"

    # QEMU 7.2 under TCG segfaults when a vhost-user virtio-net uses MSI-X
    # (vhost_net_start -> msix_set_vector_notifiers): legacy INTx there.
    local vectors=0 cpu=max
    if [ "$accel" = kvm ]; then vectors=$((2 * queues + 2)); cpu=host; fi

    local memobj="memory-backend-memfd,id=mem,size=${mem}M,share=on"
    [ "$huge" = 1 ] && memobj+=",hugetlb=on,hugetlbsize=2M"
    local chardev="socket,id=vhu0,path=$sock"
    [ "$server" = 1 ] && chardev+=",server=on,wait=off" # QEMU still waits for the backend, after creating the monitor
    [ -n "$reconnect" ] && chardev+=",reconnect=$reconnect"
    local dev="virtio-net-pci,netdev=net0,mac=$mac,romfile=,vectors=$vectors"
    [ "$queues" -gt 1 ] && dev+=",mq=on"
    [ "$packed" = 1 ] && dev+=",packed=on"
    [ -n "$devopts" ] && dev+=",$devopts"

    local args=("$QEMU" -name "$name" -nodefaults -display none -accel "$accel" -cpu "$cpu" -smp "$smp" -m "${mem}M"
        -object "$memobj" -numa node,memdev=mem
        -chardev "$chardev" -netdev "vhost-user,id=net0,chardev=vhu0,queues=$queues" -device "$dev"
        -chardev "file,id=con0,path=$log" -serial chardev:con0
        -monitor "unix:$mon,server=on,wait=off"
        -kernel "$kernel" -initrd "$initrd")
    # No -no-reboot: a reboot (the guest's, or `monitor NAME system_reset`)
    # resets the device and boots the guest again in the same QEMU, the way
    # a VM restarts in production; power-off ends QEMU.
    if [ "$mode" = reboot-loop ]; then
        # The guest counts its rounds on this disk.
        [ "$dry" = 1 ] || { rm -f "$DIR/$name.state"; truncate -s 4096 "$DIR/$name.state"; }
        args+=(-drive "file=$DIR/$name.state,format=raw,if=none,id=state" -device virtio-blk-pci,drive=state,romfile=)
    fi
    local ipq=""; [ -n "$ip" ] && ipq=" guest.ip=$ip"
    local peerq=""; [ -n "$peer" ] && peerq=" guest.peer=$peer"
    args+=(-append "console=ttyS0 quiet loglevel=3 panic=1 guest.mode=$mode guest.mac=$mac guest.queues=$queues$ipq$peerq$gargs${append:+ $append}")
    [ -n "$cpus" ] && args=(taskset -c "$cpus" "${args[@]}")
    if [ "$dry" = 1 ]; then
        printf '%q ' "${args[@]}"; echo
        return 0
    fi

    printf 'log=%s\npid=%s\n' "$log" "$pidf" > "$DIR/$name.where"
    [ -f "$log" ] && mv -f "$log" "$log.prev"
    : > "$log"
    rm -f "$mon"
    # setsid: the guest outlives this script and is not hit by the caller's ^C;
    # `guest.sh stop` (or the caller's trap) ends it.
    setsid "${args[@]}" </dev/null >"$qlog" 2>&1 &
    local pid=$!
    echo "$pid" > "$pidf"
    sleep 0.2
    if ! kill -0 "$pid" 2>/dev/null; then
        sed 's/^/  qemu: /' "$qlog" >&2
        die "QEMU for $name exited at once"
    fi
    echo "GUEST_STARTED name=$name pid=$pid accel=$accel accel_reason=$reason log=$log monitor=$mon sock=$sock mode=$mode mac=$mac"
}

# --- wait ---------------------------------------------------------------------------
cmd_wait() {
    local name=$1 marker=$2; shift 2
    local timeout=120 nth=1
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        --nth) nth=$2; shift 2;;
        *) die "guest.sh wait: unknown option $1";;
        esac
    done
    local LOG PIDF pid line deadline alive
    where "$name"
    local log=$LOG
    pid=$(cat "$PIDF" 2>/dev/null || true)
    deadline=$(( $(date +%s) + timeout ))
    while :; do
        alive=0; pid_is "$pid" qemu && alive=1
        # The marker may follow kernel output on the same line: match it anywhere.
        line=$(tr -d '\r' <"$log" 2>/dev/null | grep -a -o -E "(^|[^A-Z_])$marker( .*|$)" | sed -n "${nth}p" |
            sed -E "s/^[^A-Z_]?($marker)/\1/")
        if [ -n "$line" ]; then echo "$line"; return 0; fi
        if [ "$alive" = 0 ]; then
            echo "GUEST_WAIT_EXITED name=$name marker=$marker"
            [ -s "$DIR/$name.qemu.log" ] && sed 's/^/  qemu: /' "$DIR/$name.qemu.log" | tail -5 >&2
            return 2
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then echo "GUEST_WAIT_TIMEOUT name=$name marker=$marker"; return 1; fi
        sleep 0.2
    done
}

# --- stop / status / monitor ----------------------------------------------------------
cmd_stop() {
    local name=$1; shift
    local timeout=5
    while [ $# -gt 0 ]; do
        case $1 in
        --dir) DIR=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        *) die "guest.sh stop: unknown option $1";;
        esac
    done
    local LOG PIDF pid how=gone
    where "$name"
    pid=$(cat "$PIDF" 2>/dev/null || true)
    if pid_is "$pid" qemu; then how=$(stop_pid "$pid" TERM "$timeout"); fi
    rm -f "$PIDF" "$DIR/$name.mon" "$DIR/$name.state"
    echo "GUEST_STOPPED name=$name how=$how"
}

cmd_status() {
    local name=$1; shift
    [ "${1:-}" = --dir ] && DIR=$2
    local LOG PIDF pid
    where "$name"
    pid=$(cat "$PIDF" 2>/dev/null || true)
    if pid_is "$pid" qemu; then echo "GUEST_STATUS name=$name running=yes pid=$pid"
    else echo "GUEST_STATUS name=$name running=no pid=${pid:-none}"; return 1; fi
}

cmd_monitor() {
    local name=$1; shift
    if [ "${1:-}" = --dir ]; then DIR=$2; shift 2; fi
    [ $# -gt 0 ] || die "guest.sh monitor: which command?"
    "$PYTHON" - "$DIR/$name.mon" "$*" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    sys.exit(f"GUEST_MONITOR_ERROR monitor={sys.argv[1]} error={e.strerror.replace(' ', '_')}")
s.settimeout(5)
def until_prompt():
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
try:
    until_prompt()
    s.sendall(sys.argv[2].encode() + b"\n")
    out = until_prompt()
except TimeoutError:
    # In server mode QEMU answers only once the backend has connected.
    sys.exit(f"GUEST_MONITOR_ERROR monitor={sys.argv[1]} error=no_answer")
# The monitor echoes the command (with terminal escapes) before the answer.
lines = [l for l in out.replace("\r", "").split("\n")[1:] if l != "(qemu) "]
print("\n".join(lines).rstrip())
EOF
}

case ${1:-} in
start) shift; [ $# -ge 1 ] || usage 1; cmd_start "$@";;
wait) shift; [ $# -ge 2 ] || usage 1; cmd_wait "$@";;
stop) shift; [ $# -ge 1 ] || usage 1; cmd_stop "$@";;
status) shift; [ $# -ge 1 ] || usage 1; cmd_status "$@";;
monitor) shift; [ $# -ge 2 ] || usage 1; cmd_monitor "$@";;
accel) shift
    while [ $# -gt 0 ]; do case $1 in --cache) CACHE=$2; shift 2;; --accel) ACCEL_ARG=$2; shift 2;; *) die "unknown option $1";; esac; done
    read -r a r <<<"$(choose_accel)"; echo "ACCEL name=$a reason=$r";;
-h|--help|"") usage 0;;
*) die "unknown subcommand $1 (start|wait|stop|status|monitor|accel)";;
esac
