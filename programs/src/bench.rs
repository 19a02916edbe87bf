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
    let mut done = |e: &Engine| e.stats().breaths % 100 == 0 && sent(e) >= target;
    e.run(Limit::Until(&mut done, None));
    let secs = start.elapsed().as_secs_f64();
    let sent = sent(&e) - start_count;
    let mpps = sent as f64 / secs / 1e6;
    println!("basic1: {sent} packets in {secs:.3} s: {mpps:.2} Mpps");
    Ok(mpps)
}
