#!/usr/bin/env python3
"""Is this machine idle enough to benchmark on? (run through idle.sh)

Two kinds of evidence:
  * processes: CPU each process used over a window, from /proc/PID/stat;
    any other process above --max-proc-pct makes the machine busy.
  * a spin loop pinned to each CPU (skipped with --passive): the share of
    the wall-clock time it got (another runnable task, or the hypervisor
    stealing the vCPU, lowers it) and its loop rate per CPU-second against
    the best rate seen on this machine (a slower CPU lowers that).
It prints one line per finding and a verdict; exit 0 idle, 1 busy.
"""

import argparse
import os
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_times():
    """pid -> (comm, ticks of user + system time, process group) for every process."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        # comm is in parentheses and may hold spaces or parentheses itself.
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        out[int(pid)] = (comm, int(rest[11]) + int(rest[12]), int(rest[2]))
    return out


def cpu_steal():
    """cpu index -> (steal ticks, total ticks) from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(v) for v in parts[1:9]]
                out[int(parts[0][3:])] = (vals[7], sum(vals))
    return out


def own_pids():
    """This process and its ancestors up to the caller (idle.sh, the benchmark)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
            pid = int(raw[raw.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            break
    return pids


def spin(cpu, seconds):
    """Child pinned to CPU: (share of wall time it ran, loop rate per CPU-second)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.sched_setaffinity(0, {cpu})
        loops = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            for _ in range(2000):
                pass
            loops += 1
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        os.write(w, f"{used / wall} {loops / max(used, 1e-6)}".encode())
        os._exit(0)
    os.close(w)
    return child, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="window for the process check (default 2)")
    ap.add_argument("--max-proc-pct", type=float, default=5.0, help="busiest other process allowed, %% of one CPU")
    ap.add_argument("--min-share", type=float, default=0.85, help="least share of wall time a spin loop must get")
    ap.add_argument("--min-rate", type=float, default=0.80, help="least spin rate against the best seen")
    ap.add_argument("--max-steal-pct", type=float, default=5.0)
    ap.add_argument("--ignore", default="", help="comma-separated pids to leave out (e.g. the benchmark's own)")
    ap.add_argument("--ignore-pgid", default="", help="comma-separated process groups to leave out")
    ap.add_argument("--passive", action="store_true", help="only watch processes: no spin loop (use during a run)")
    ap.add_argument("--spin-seconds", type=float, default=0.5)
    ap.add_argument("--cache", default=os.environ.get("SNABB_RS_IDLE_CACHE", "/var/cache/snabb-rs/idle-spin-rate"))
    args = ap.parse_args()

    ignore = own_pids() | {int(p) for p in args.ignore.split(",") if p.strip()}
    ignore_groups = {int(p) for p in args.ignore_pgid.split(",") if p.strip()}
    reasons = []

    p0, s0, t0 = proc_times(), cpu_steal(), time.monotonic()
    time.sleep(args.seconds)
    p1, s1, t1 = proc_times(), cpu_steal(), time.monotonic()
    window = t1 - t0
    busy = []
    for pid, (comm, ticks, pgid) in p1.items():
        if pid in ignore or pgid in ignore_groups or pid not in p0:
            continue
        pct = 100.0 * (ticks - p0[pid][1]) / CLK_TCK / window
        if pct > args.max_proc_pct:
            busy.append((pct, pid, comm))
    for pct, pid, comm in sorted(busy, reverse=True):
        print(f"IDLE_PROC pid={pid} comm={comm.replace(' ', '_')} cpu_pct={pct:.1f}")
        reasons.append(f"proc:{comm.replace(' ', '_')}:{pct:.0f}%")
    steal = {}
    for cpu, (st, tot) in s1.items():
        dt = tot - s0.get(cpu, (0, 0))[1]
        steal[cpu] = 100.0 * (st - s0.get(cpu, (0, 0))[0]) / dt if dt > 0 else 0.0

    cpus = sorted(os.sched_getaffinity(0))
    spun = {}
    if not args.passive:
        kids = {cpu: spin(cpu, args.spin_seconds) for cpu in cpus}
        for cpu, (child, r) in kids.items():
            data = os.read(r, 100).decode().split()
            os.close(r)
            os.waitpid(child, 0)
            spun[cpu] = (float(data[0]), float(data[1]))
    best = 0.0
    try:
        with open(args.cache) as f:
            best = float(f.read().strip() or 0)
    except (OSError, ValueError):
        pass
    top = max([r for _, r in spun.values()] + [0.0])
    if top > best:
        best = top
        try:
            os.makedirs(os.path.dirname(args.cache), exist_ok=True)
            with open(args.cache, "w") as f:
                f.write(f"{best:.0f}\n")
        except OSError:
            pass
    for cpu in cpus:
        line = f"IDLE_CPU cpu={cpu} steal_pct={steal.get(cpu, 0.0):.1f}"
        if steal.get(cpu, 0.0) > args.max_steal_pct:
            reasons.append(f"cpu{cpu}:steal={steal[cpu]:.0f}%")
        if cpu in spun:
            share, rate = spun[cpu]
            ratio = rate / best if best else 1.0
            line += f" spin_share={share:.2f} spin_rate={rate:.0f} best_rate={best:.0f} rate_ratio={ratio:.2f}"
            if share < args.min_share:
                reasons.append(f"cpu{cpu}:share={share:.2f}")
            if ratio < args.min_rate:
                reasons.append(f"cpu{cpu}:rate={ratio:.2f}")
        print(line)
    load = open("/proc/loadavg").read().split()[0]
    verdict = "busy" if reasons else "idle"
    print(f"IDLE verdict={verdict} window_s={window:.1f} loadavg1={load} reasons={','.join(reasons) or 'none'}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
