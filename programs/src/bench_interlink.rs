//! `snabb-rs bench interlink`: the cost of a packet crossing from one worker
//! to another, Source on one CPU and Sink on the other, 60-byte packets:
//! the Source allocates and fills packets onto a local link and moves them
//! onto the interlink; the Sink moves them onto its local link and drops
//! them, and they go home through the return ring. ns and TSC ticks per
//! packet, median of `rounds` runs, and `scripts/bench-interlink.sh` sets it
//! beside DPDK's `rte_ring` (ring_perf_autotest, bulk 32, two cores, TSC
//! ticks per element) measured in the same run.
//!
//! `snabb-rs bench basic1-workers`: basic1 with Source and Tee on one worker
//! and Sink on another, against basic1 on one engine, and the ratio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::tsc::{median, tsc};
use anyhow::{Context, Result};
use snabb_core::interlink::Interlink;
use snabb_core::{Args, Config, Engine, Link, Packet, packet, worker};

/// One run: (ns, TSC ticks) per packet.
fn once(packets: u64, cpus: (usize, usize), batch: usize, size: usize) -> Result<(f64, f64)> {
    let il = Interlink::new(size);
    let start = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let (il2, start2, stop2) = (il.clone(), start.clone(), stop.clone());
    let sink = std::thread::spawn(move || -> Result<(Duration, u64)> {
        let pinned = worker::pin_current_thread(cpus.1).with_context(|| format!("Sink on CPU {}", cpus.1));
        if pinned.is_err() {
            stop2.store(true, Ordering::Relaxed);
            start2.wait();
            pinned?;
        }
        assert!(il2.attach(false));
        packet::expect_visitors();
        let local = Link::new(size);
        let mut got = 0u64;
        start2.wait();
        let (t0, c0) = (Instant::now(), tsc());
        while got < packets && !stop2.load(Ordering::Relaxed) {
            il2.pull_into(&local);
            got += local.discard().0;
            packet::flush_returns();
        }
        let r = (t0.elapsed(), tsc() - c0);
        il2.detach(false);
        packet::flush_returns();
        Ok(r)
    });
    if let Err(e) = worker::pin_current_thread(cpus.0).with_context(|| format!("Source on CPU {}", cpus.0)) {
        stop.store(true, Ordering::Relaxed);
        start.wait();
        let _ = sink.join();
        return Err(e);
    }
    assert!(il.attach(true));
    let local = Link::new(size);
    let payload = [0u8; 60];
    // Warm the pool: the first packets grow it.
    start.wait();
    let mut sent = 0u64;
    while sent < packets && !stop.load(Ordering::Relaxed) {
        let n = (batch as u64).min(packets - sent).min(local.nwritable() as u64);
        for _ in 0..n {
            local.transmit(Packet::from_bytes(&payload));
        }
        sent += n;
        il.push_from(&local);
        packet::collect_returns();
    }
    while !local.is_empty() && !stop.load(Ordering::Relaxed) {
        il.push_from(&local);
        packet::collect_returns();
    }
    let (t, ticks) = sink.join().map_err(|_| anyhow::anyhow!("the Sink thread panicked"))??;
    il.detach(true);
    Ok((t.as_nanos() as f64 / packets as f64, ticks as f64 / packets as f64))
}

pub fn interlink(packets: u64, rounds: usize, cpus: (usize, usize), batch: usize, size: usize) -> Result<()> {
    println!(
        "interlink: 60-byte packets, Source on CPU {} and Sink on CPU {}, batch {batch}, ring {size}, {packets} packets x {rounds} runs",
        cpus.0, cpus.1
    );
    let _ = once(packets.min(1_000_000), cpus, batch, size)?;
    let mut ns = Vec::new();
    let mut ticks = Vec::new();
    for _ in 0..rounds.max(1) {
        let (n, t) = once(packets, cpus, batch, size)?;
        ns.push(n);
        ticks.push(t);
    }
    println!("interlink: {:.2} ns/packet, {:.1} TSC ticks/packet (median)", median(ns), median(ticks));
    Ok(())
}

/// basic1 split over two workers (Source and Tee on `cpus.0`, Sink on
/// `cpus.1`): Mpps of Source packets delivered to the Sink.
fn basic1_workers(packets: u64, cpus: (usize, usize)) -> Result<f64> {
    let mut c = Config::new();
    c.app_args("source", "Source", Args::from_ron("(size: 60)")?)
        .app("tee", "Tee", &())
        .app("sink", "Sink", &())
        .link("source.tx -> tee.rx")
        .link("tee.tx1 -> sink.rx1")
        .link("tee.tx2 -> sink.rx2")
        .worker("w1", snabb_core::config::WorkerSpec { cpu: Some(cpus.0) })
        .worker("w2", snabb_core::config::WorkerSpec { cpu: Some(cpus.1) })
        .place("source", Some("w1"))
        .place("tee", Some("w1"))
        .place("sink", Some("w2"));
    let mut e = Engine::new(crate::registry());
    // Workers spin; the main engine (no apps) sleeps.
    e.busywait = true;
    e.configure(&c)?;
    e.busywait = false;
    let delivered = || {
        snabb_core::interlink::all_counters()
            .into_iter()
            .find(|(n, _)| n == "tee.tx1 -> sink.rx1")
            .map_or(0, |(_, c)| c.rxpackets)
    };
    std::thread::sleep(Duration::from_millis(300));
    let (n0, t0) = (delivered(), Instant::now());
    while delivered() < n0 + packets {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (n, secs) = (delivered() - n0, t0.elapsed().as_secs_f64());
    e.stop();
    let mpps = n as f64 / secs / 1e6;
    println!("basic1 on two workers: {n} packets in {secs:.3} s: {mpps:.2} Mpps (delivered to the Sink)");
    Ok(mpps)
}

pub fn basic1_two(packets: u64, rounds: usize, cpus: (usize, usize)) -> Result<()> {
    let mut one = Vec::new();
    let mut two = Vec::new();
    for _ in 0..rounds.max(1) {
        one.push(crate::bench::basic1(packets)?);
        two.push(basic1_workers(packets, cpus)?);
    }
    let (a, b) = (median(one), median(two));
    println!("basic1: one engine {a:.2} Mpps, two workers {b:.2} Mpps (median of {rounds}): ratio {:.2}", b / a);
    Ok(())
}
