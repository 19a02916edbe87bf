#!/bin/bash
# The whole test suite. Installs the Debian packages it needs when they are
# missing, reserves huge pages, then runs:
#   0. hygiene: cargo fmt --check, cargo clippy (warnings denied) and
#      cargo doc (warnings denied),
#   1. the unit and integration tests of every crate (cargo test),
#   2. every app's selftest through the snabb-rs command,
#   3. the suites in selftest/*.sh (real peers: tcpdump, QEMU, DPDK...).
# Fuzzing and soak runs are bounded in time. At the end it says what ran,
# what was skipped and why. Exit status: non-zero if anything failed.
# Builds go to $CARGO_TARGET_DIR when it is set; logs to a directory of this
# run's own (said at the start), so that two runs do not overwrite each other.
set -uo pipefail
cd "$(dirname "$0")/.."
export SNABB_RS_CI=1            # tests that need a peer fail, not skip, when it is missing
export CARGO_TERM_COLOR=never
BIN=${CARGO_TARGET_DIR:-target}/release/snabb-rs
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/snabb-rs-test.XXXXXX")
echo "=== logs in $LOGS" 
START=$(date +%s)
RESULTS=()
FAILED=0

say() { echo "=== $*"; }
record() { RESULTS+=("$1"); case "$1" in FAIL*) FAILED=1;; esac; }

# --- packages ---------------------------------------------------------------
PKGS=(tcpdump iproute2 iputils-ping procps util-linux
      libpcap-dev                                                     # PcapFilter: libpcap compiles the expressions
      clang libbpf-dev                                                # selftest/vmdq-vswitch.sh: VLAN ports in tc BPF
      python3-scapy                                                   # Decap/Encap: apps/decap/tests/scapy.rs
      iperf3 ethtool                                                  # RawSocket: selftest/rawsocket.sh
      clang libbpf-dev linux-libc-dev                                 # AfXdp: its XDP program is built by clang (build.rs)
      qemu-system-x86 busybox-static dpdk dpdk-dev python3           # vhost-user peers: selftest/peers/install.sh
      openvswitch-switch-dpdk)                                        # OVS-DPDK: selftest/peers/ovs.sh
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || echo "apt-get failed: the suites that need ${missing[*]} will fail"
    else
        echo "not root: cannot install ${missing[*]}"
    fi
fi

# --- huge pages -------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
    want=1024
    have=$(cat /proc/sys/vm/nr_hugepages)
    [ "$have" -ge "$want" ] || echo "$want" > /proc/sys/vm/nr_hugepages
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs none /dev/hugepages
    say "huge pages: $(awk '/HugePages_Total/{t=$2}/HugePages_Free/{f=$2}END{print f" free of "t}' /proc/meminfo) (2 MiB)"
else
    say "huge pages: not root, packet memory will use ordinary pages"
fi

# --- 0. hygiene -------------------------------------------------------------
# Each one fails the run on any finding; its output is in the run's logs.
hygiene() {
    local name=$1; shift
    say "$name"
    if "$@" >"$LOGS/$name.log" 2>&1; then
        record "pass $name"
    else
        tail -30 "$LOGS/$name.log"
        record "FAIL $name (see $LOGS/$name.log)"
    fi
}
hygiene fmt cargo fmt --all --check
hygiene clippy cargo clippy --release --workspace --all-targets -- -D warnings
hygiene doc env RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps

# --- 1. cargo tests ---------------------------------------------------------
say "cargo test (release) for the whole workspace"
TESTLOG=$LOGS/cargo-test.log
if cargo test --release --workspace --no-fail-fast 2>&1 | tee "$TESTLOG" | grep -E '^(test result|running|failures:|---- )|FAILED|panicked'; then :; fi
if grep -q 'test result: FAILED\|error\[\|error: could not compile\|error: test failed' "$TESTLOG"; then
    record "FAIL cargo test (see $TESTLOG)"
else
    record "pass cargo test: $(grep -c '^test .* ok$' "$TESTLOG") tests"
fi

# --- 2. app selftests through the command ------------------------------------
say "snabb-rs selftest"
if "$BIN" selftest; then record "pass snabb-rs selftest"; else record "FAIL snabb-rs selftest"; fi

# --- 3. suites against real peers -------------------------------------------
for s in selftest/*.sh; do
    [ -e "$s" ] || continue
    args=()
    # The benchmarks once, short: prove they run and packets move
    # (figures from a busy machine; run them by hand for numbers).
    case $s in selftest/vhost-user-bench.sh|selftest/vswitch-bench.sh|selftest/afxdp-bench.sh) args=(--smoke);; esac
    say "$s ${args[*]}"
    out=$(bash "$s" "${args[@]}" 2>&1); rc=$?
    echo "$out" | tail -40
    # Parts of a suite skipped inside it (e.g. vhost-user's 2 queue pairs), and the bench's ratios.
    inner=$(echo "$out" | grep -E '^SKIP |^PASS vhost-user-bench|^PASS vswitch-bench|^ratio dir=|^ceiling dir=|^gen_cpu dir=' | cut -c1-200 | tr '
' ';')
    case $rc in
        0) record "pass $s${inner:+ ($inner)}";;
        43) record "skip $s: $(echo "$out" | grep -m1 '^SKIP' | cut -c6-)";;
        # The failed checks go into the summary: the tail of a long log may not show them.
        *) record "FAIL $s (exit $rc)$(echo "$out" | awk '/^FAIL / {printf "\n      %s", substr($0, 1, 300)}')";;
    esac
done

# --- 4. two workers ------------------------------------------------------------
# (basic1 over two workers with exact counts, a panicking worker, an app moved
# under traffic: cargo tests above, core/tests/workers.rs and
# programs/tests/cli.rs.) The vhost-user suite with each port on a worker of
# its own, so both directions cross an interlink: exact counts as above.
s=selftest/vhost-user-testpmd.sh
say "$s with two workers"
out=$(VHOST_TESTPMD_WORKERS=2 bash "$s" 2>&1); rc=$?
echo "$out" | tail -20
case $rc in
    0) record "pass $s, two workers";;
    43) record "skip $s, two workers: $(echo "$out" | grep -m1 '^SKIP' | cut -c6-)";;
    *) record "FAIL $s, two workers (exit $rc)$(echo "$out" | awk '/^FAIL / {printf "\n      %s", substr($0, 1, 300)}')";;
esac

# vmdq-vswitch with its ports spread over two workers: the same checks.
s=selftest/vmdq-vswitch.sh
say "$s with two workers"
out=$(VSWITCH_WORKERS=2 bash "$s" 2>&1); rc=$?
echo "$out" | tail -20
case $rc in
    0) record "pass $s, two workers";;
    43) record "skip $s, two workers: $(echo "$out" | grep -m1 '^SKIP' | cut -c6-)";;
    *) record "FAIL $s, two workers (exit $rc)$(echo "$out" | awk '/^FAIL / {printf "\n      %s", substr($0, 1, 300)}')";;
esac

say "summary ($(( $(date +%s) - START )) s)"
for r in "${RESULTS[@]}"; do echo "  $r"; done
exit $FAILED
