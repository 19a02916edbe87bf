#!/bin/bash
# Install what the peer harness needs from Debian's packages, only what is
# missing (apt-get update first when something is), and check the huge pages.
#
#   install.sh [--check]     --check: install nothing, exit 1 when something is missing
#
# Packages (keep in step with PKGS in scripts/test.sh):
#   qemu-system-x86   the guests            busybox-static  the guests' userland
#   dpdk, dpdk-dev    dpdk-testpmd          iperf3, ethtool the guests' tools
#   python3           kernel extraction, idle check, QEMU monitor
#   util-linux        taskset, flock, setsid
#   openvswitch-switch-dpdk   OVS 3.1 with DPDK (ovs.sh; never started as the system's service)
# The guest kernel is not installed: guest-kit.sh downloads and unpacks it.
#
# Huge pages are reserved by scripts/test.sh, not here; this only reports
# them (testpmd.sh falls back to ordinary memory when too few are free).
# Prints: PEERS_PACKAGES installed=... missing=...   and   PEERS_HUGEPAGES total=N free=N size_kb=K mount=DIR
set -uo pipefail

PKGS=(qemu-system-x86 busybox-static dpdk dpdk-dev iperf3 ethtool python3 util-linux openvswitch-switch-dpdk)
CHECK=0
[ "${1:-}" = --check ] && CHECK=1

missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
status=0
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$CHECK" = 1 ]; then
        status=1
    elif [ "$(id -u)" != 0 ]; then
        echo "peers: not root, cannot install ${missing[*]}" >&2
        status=1
    else
        echo "peers: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            missing=()
        else
            echo "peers: apt-get failed for ${missing[*]}" >&2
            status=1
        fi
    fi
fi
echo "PEERS_PACKAGES wanted=$(IFS=,; echo "${PKGS[*]}") missing=$(IFS=,; echo "${missing[*]:-}")"

mount=$(awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts)
read -r total free size < <(awk '/^HugePages_Total:/ { t = $2 } /^HugePages_Free:/ { f = $2 } /^Hugepagesize:/ { s = $2 }
    END { print t + 0, f + 0, s + 0 }' /proc/meminfo)
echo "PEERS_HUGEPAGES total=$total free=$free size_kb=$size mount=${mount:-none}"
if [ -z "$mount" ] || [ "$free" -lt 512 ]; then
    # Two testpmd processes of -m 512 need 512 free 2 MiB pages.
    echo "peers: fewer than 512 free huge pages (or no hugetlbfs mount): scripts/test.sh reserves them;" \
        "testpmd.sh will use ordinary memory (--no-huge) meanwhile" >&2
fi
exit $status
