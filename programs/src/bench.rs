//! `snabb-rs bench`: benchmarks whose figures go into BENCHMARKS.md.

use std::time::Instant;

use anyhow::Result;
use snabb_core::{Args, Config, Engine, Limit};

/// Snabb's `snabbmark basic1`: Source -> Tee -> (two links) -> Sink with
/// 60-byte packets. The figure counts Source packets; each costs two
/// packet copies, three link hops and two frees.
pub fn basic1(packets: u64) -> Result<f64> {
    let mut c = Config::new();
    c.app_args("source", "Source", Args::from_ron("(size: 60)")?)
        .app("tee", "Tee", &())
        .app("sink", "Sink", &())
        .link("source.tx -> tee.rx")
        .link("tee.tx1 -> sink.rx1")
        .link("tee.tx2 -> sink.rx2");
    let mut e = Engine::new(crate::registry());
    e.busywait = true;
    e.configure(&c)?;
    // Warm up: grow the freelist and the caches.
    e.run(Limit::Breaths(1000));
    let spec = "source.tx -> tee.rx";
    let sent = |e: &Engine| e.link(spec).map_or(0, |l| l.txpackets());
    let start_count = sent(&e);
    let start = Instant::now();
    let target = start_count + packets;
    // Checked every 100 breaths: a check costs a lookup by name.
    let mut done = |e: &Engine| e.stats().breaths.is_multiple_of(100) && sent(e) >= target;
    e.run(Limit::Until(&mut done, None));
    let secs = start.elapsed().as_secs_f64();
    let sent = sent(&e) - start_count;
    let mpps = sent as f64 / secs / 1e6;
    println!("basic1: {sent} packets in {secs:.3} s: {mpps:.2} Mpps");
    // The figure stands only if every packet really went all the way: both
    // sink links carried every Source packet (what is still queued aside)
    // and nothing was dropped.
    let counters = |spec: &str| e.link(spec).map(|l| l.counters()).unwrap_or_default();
    let (a, b, s) = (counters("tee.tx1 -> sink.rx1"), counters("tee.tx2 -> sink.rx2"), counters(spec));
    let lost = a.txdrop + b.txdrop + s.txdrop;
    let short =
        |c: &snabb_core::LinkCounters| s.txpackets.saturating_sub(c.txpackets) > 2 * snabb_core::PULL_NPACKETS as u64;
    anyhow::ensure!(lost == 0 && !short(&a) && !short(&b), "basic1: packets went missing: {s:?} {a:?} {b:?}");
    Ok(mpps)
}

/// The 82599 driver alone, on the model: TSC ticks per packet for receive
/// and transmit at each batch size (see `snabb_apps_intel10g::bench`).
pub fn intel10g(packets: u64, batches: &[usize]) -> Result<()> {
    println!("intel10g driver on a model port, 60-byte frames, {packets} packets per direction and batch size");
    println!("TSC ticks per packet: median over batches (mean in brackets)");
    println!("{:>6} {:>18} {:>18} {:>10} {:>10} {:>10}", "batch", "rx", "tx", "rx+tx", "rx ns", "tx ns");
    for &b in batches {
        let f = snabb_apps_intel10g::bench::run(b, packets)?;
        println!(
            "{:>6} {:>8.1} ({:>7.1}) {:>8.1} ({:>7.1}) {:>10.1} {:>10.1} {:>10.1}",
            f.batch,
            f.rx_ticks,
            f.rx_mean,
            f.tx_ticks,
            f.tx_mean,
            f.rx_ticks + f.tx_ticks,
            f.rx_ticks / f.ticks_per_ns,
            f.tx_ticks / f.ticks_per_ns
        );
        println!(
            "        ({} calls of driver_rx and of driver_tx, {} packets each, warm-up included)",
            f.calls,
            f.calls * b as u64
        );
    }
    Ok(())
}
