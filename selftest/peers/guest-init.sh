#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test guest's initramfs (copied in by guest-kit.sh).
#
# Everything the guest does comes from the kernel command line, as
# `guest.KEY=VALUE` words (dotted, so the kernel keeps them out of init's
# environment and argv):
#   guest.mode     probe | ping | ping-watch | iperf-server | iperf-client | iperf-daemon | idle | reboot-loop
#   guest.ip       address(es) for eth0, comma-separated: 169.254.0.1/16,fe80::1/64
#   guest.peer     the address to ping / to run iperf3 against
#   guest.peer2    iperf-client: a second iperf3 test, against this address, after the first
#   guest.gw       a default route through this address (for a peer on another subnet)
#   guest.tests    iperf-server: tests to serve, one after the other (default 1)
#   guest.mac      MAC for eth0 (QEMU's device mac= normally already set it)
#   guest.mtu      MTU for eth0
#   guest.vlan     802.1Q VLAN id: the addresses go on eth0.ID, and traffic is tagged
#   guest.queues   queue pairs to enable (ethtool -L combined N)
#   guest.count    pings after the first answer (ping, reboot-loop); 0 = forever (ping-watch)
#   guest.wait     seconds to wait for the first answer (default 120)
#   guest.secs     iperf3 test length (default 5)
#   guest.streams  iperf3 parallel streams (default 1)
#   guest.reboots  rounds of reboot-loop (default 2)
#   guest.after    poweroff | idle: what to do once the mode is done (default poweroff)
#   guest.hold     seconds to wait before poweroff (default 1)
#
# It prints one marker per event on the console (ttyS0), each on its own
# line, words after the marker as key=value, for scripts to grep:
#   GUEST_BOOT GUEST_READY FIRST_PING_OK FIRST_PING_FAIL PING_RESULT PING_OK PING_LOST
#   IPERF_SERVER_LISTENING IPERF_SERVER_DONE IPERF_RESULT IPERF_FAIL REBOOT_ROUND
#   GUEST_NETDEV GUEST_DONE GUEST_ERROR
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp

up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "$*"; }

# Defaults, then the command line.
G_mode=idle G_ip='' G_peer='' G_peer2='' G_gw='' G_tests=1 G_mac='' G_mtu='' G_vlan='' G_queues=1 G_count=5 G_wait=120 G_secs=5 G_streams=1
G_reboots=2 G_after=poweroff G_hold=1
for a in $(cat /proc/cmdline); do
    case $a in
    guest.*=*)
        k=${a%%=*}; k=${k#guest.}
        case $k in *[!a-z0-9_]*) mark "GUEST_ERROR bad_param=$k"; continue;; esac
        eval "G_$k=\${a#*=}";;
    esac
done
mark "GUEST_BOOT uptime=$(up) mode=$G_mode"

finish() { # the mode is over: report counters, then power off or stay up
    if [ -d /sys/class/net/eth0 ]; then
        s=/sys/class/net/eth0/statistics
        mark "GUEST_NETDEV rx_packets=$(cat $s/rx_packets) tx_packets=$(cat $s/tx_packets)" \
            "rx_dropped=$(cat $s/rx_dropped) tx_dropped=$(cat $s/tx_dropped) rx_errors=$(cat $s/rx_errors)"
    fi
    mark "GUEST_DONE uptime=$(up) mode=$G_mode status=$1"
    if [ "$G_after" = idle ]; then
        while :; do sleep 3600; done
    fi
    sleep "$G_hold"
    poweroff -f
}
fail() { mark "GUEST_ERROR $*"; finish error; }

if [ "$G_mode" = probe ]; then # only proves the kernel reached userspace (accelerator probe)
    mark "GUEST_READY uptime=$(up)"
    poweroff -f
fi

# virtio modules, dependencies first (busybox insmod does not resolve them).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         failover net_failover virtio_net virtio_blk llc stp garp mrp 8021q; do
    [ -e /lib/modules/$m.ko ] || continue
    insmod /lib/modules/$m.ko 2>/tmp/insmod.err || mark "GUEST_ERROR insmod=$m $(cat /tmp/insmod.err)"
done

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 200 ] && fail "no_eth0"
    sleep 0.05
done

# IPv6 DAD would hold link-local addresses back for a second or two.
echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set lo up
[ -n "$G_mac" ] && { ip link set eth0 address "$G_mac" || mark "GUEST_ERROR mac=$G_mac"; }
[ -n "$G_mtu" ] && { ip link set eth0 mtu "$G_mtu" || mark "GUEST_ERROR mtu=$G_mtu"; }
ip link set eth0 up
IF=eth0
if [ -n "$G_vlan" ]; then
    IF=eth0.$G_vlan
    ip link add link eth0 name "$IF" type vlan id "$G_vlan" || mark "GUEST_ERROR vlan=$G_vlan"
    echo 0 > "/proc/sys/net/ipv6/conf/$IF/accept_dad"
    ip link set "$IF" up
fi
for a in $(echo "$G_ip" | tr , ' '); do
    ip addr add "$a" dev "$IF" || mark "GUEST_ERROR ip=$a"
done
[ -n "$G_gw" ] && { ip route add default via "$G_gw" dev "$IF" || mark "GUEST_ERROR gw=$G_gw"; }
if [ "$G_queues" -gt 1 ]; then
    # Spread transmit over every queue by flow hash: with one vCPU, XPS
    # would otherwise send everything on queue 0.
    ethtool -L eth0 combined "$G_queues" || mark "GUEST_ERROR queues=$G_queues"
    for x in /sys/class/net/eth0/queues/tx-*/xps_cpus; do echo 0 > "$x" 2>/dev/null; done
fi
nq=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)
feat=$(cat /sys/class/net/eth0/device/features 2>/dev/null)
mark "GUEST_READY uptime=$(up) mac=$(cat /sys/class/net/eth0/address) if=$IF ip=$G_ip queues=$nq features=$feat"

# ping6 for IPv6 peers; a link-local one needs the interface.
pingp() {
    case $G_peer in
    *:*) ping6 -I "$IF" "$@" "$G_peer";;
    *) ping "$@" "$G_peer";;
    esac
}
peer_for_iperf() { case $G_peer in fe80:*) echo "$G_peer%$IF";; *) echo "$G_peer";; esac; }

first_ping() {
    [ -n "$G_peer" ] || fail "no_peer"
    n=0 t0=$(date +%s)
    until pingp -c1 -W1 >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $(($(date +%s) - t0)) -ge "$G_wait" ]; then
            mark "FIRST_PING_FAIL tries=$n peer=$G_peer"
            return 1
        fi
    done
    mark "FIRST_PING_OK uptime=$(up) tries=$n peer=$G_peer"
}

ping_count() { # N pings, one line with what came back
    pingp -c "$G_count" -i 0.2 -W 2 > /tmp/ping.out 2>&1
    sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping.out)
    recv=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)
    rtt=$(sed -n 's#.*min/avg/max = \([^ ]*\) ms.*#\1#p' /tmp/ping.out)
    mark "PING_RESULT sent=${sent:-0} received=${recv:-0} rtt_min_avg_max=${rtt:-none} peer=$G_peer"
}

json_num() { # FILE SECTION KEY: first KEY number after the line naming SECTION
    awk -v sec="\"$2\"" -v key="\"$3\"" '
        index($0, sec) { on = 1 }
        on && index($0, key) { sub(/.*:[ \t]*/, ""); sub(/[ \t]*,.*/, ""); print; exit }' "$1"
}

case $G_mode in
ping)
    first_ping || finish fail
    ping_count
    finish ok;;
ping-watch) # one ping a second, forever or guest.count times: shows when traffic stops and resumes
    s=0
    while [ "$G_count" -eq 0 ] || [ $s -lt "$G_count" ]; do
        s=$((s + 1))
        if pingp -c1 -W1 >/dev/null 2>&1; then
            mark "PING_OK seq=$s uptime=$(up)"
            sleep 1
        else
            mark "PING_LOST seq=$s uptime=$(up)" # the lost ping already took its second
        fi
    done
    finish ok;;
iperf-server)
    t=0
    while [ $t -lt "$G_tests" ]; do
        t=$((t + 1))
        mark "IPERF_SERVER_LISTENING uptime=$(up) test=$t"
        # One test; bounded so a client that never comes does not keep QEMU forever.
        timeout $((G_wait + G_secs + 60)) iperf3 -s -1 -J > /tmp/iperf.json 2>&1
        bps=$(json_num /tmp/iperf.json sum_received bits_per_second)
        mark "IPERF_SERVER_DONE bits_per_second=${bps:-0} test=$t"
    done
    finish ok;;
iperf-client)
    first_ping || finish fail
    ping_count
    for target in $G_peer $G_peer2; do
        G_peer=$target
        tries=0
        # The server may still be starting, or busy: retry while the connection is refused.
        until iperf3 -c "$(peer_for_iperf)" -t "$G_secs" -P "$G_streams" -J > /tmp/iperf.json 2>&1; do
            tries=$((tries + 1))
            if [ $tries -ge 15 ]; then
                mark "IPERF_FAIL peer=$target $(grep -m1 '"error"' /tmp/iperf.json | tr -d '\t')"
                finish fail
            fi
            sleep 1
        done
        rx=$(json_num /tmp/iperf.json sum_received bits_per_second)
        tx=$(json_num /tmp/iperf.json sum_sent bits_per_second)
        re=$(json_num /tmp/iperf.json sum_sent retransmits)
        mark "IPERF_RESULT bits_per_second=${rx%.*} sender_bits_per_second=${tx%.*} retransmits=${re:-0} seconds=$G_secs streams=$G_streams peer=$target"
    done
    finish ok;;
idle)
    G_after=idle
    finish ok;;
iperf-daemon) # an iperf3 server for any number of tests (either way, -R), then idle
    iperf3 -s -D || fail "iperf3_daemon"
    mark "IPERF_DAEMON uptime=$(up)"
    G_after=idle
    finish ok;;
reboot-loop)
    # The round number survives the reboot on a small state disk (/dev/vda).
    [ -b /dev/vda ] || fail "no_state_disk"
    r=$(dd if=/dev/vda bs=16 count=1 2>/dev/null | tr -dc 0-9)
    r=$((${r:-0} + 1))
    printf '%-15s\n' "$r" | dd of=/dev/vda bs=16 count=1 conv=notrunc,fsync 2>/dev/null
    first_ping || finish fail
    ping_count
    mark "REBOOT_ROUND round=$r of=$G_reboots uptime=$(up)"
    if [ "$r" -lt "$G_reboots" ]; then
        reboot -f
    fi
    finish ok;;
*)
    fail "unknown_mode=$G_mode";;
esac
