//! `snabb-rs bench splitter`: the VmdqSplitter on one core.
//!
//! A generator sends 64-byte frames to the splitter, whose pools all go to
//! one Sink. Two mixes: unicast spread over the pools in a pseudo-random
//! order, and a broadcast-heavy one (one frame in four is broadcast, which
//! every pool takes). The same generator straight into the Sink, measured
//! in the same run, gives the cost of the splitter itself per frame.

use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use snabb_apps_vmdq_splitter::{PoolArgs, VmdqSplitterArgs};
use snabb_core::packet::Allocator;
use snabb_core::{
    App, AppClass, AppContext, Config, Engine, Io, Limit, MacAddr, PULL_NPACKETS, Packet, PortSpec, Registry,
};

/// Frames for the bench: copies of a list of templates, in turn.
struct Frames {
    templates: Vec<Packet>,
    next: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FramesArgs {
    dsts: Vec<MacAddr>,
    size: usize,
}

impl AppClass for Frames {
    type Args = FramesArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["*"]);
    fn new(a: FramesArgs, _ctx: &AppContext) -> Result<Frames> {
        anyhow::ensure!(!a.dsts.is_empty() && a.size >= 14, "bench frames: dsts and a size of 14 or more");
        let templates = a
            .dsts
            .iter()
            .map(|d| {
                let mut p = Packet::new();
                p.resize(a.size);
                let f = p.data_mut();
                f[..6].copy_from_slice(&d.0);
                f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                p
            })
            .collect();
        Ok(Frames { templates, next: 0 })
    }
}

impl App for Frames {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.first() else { return };
        let mut tx = out.transmitter();
        let mut alloc = Allocator::new(PULL_NPACKETS);
        let mut next = self.next;
        for _ in 0..PULL_NPACKETS {
            tx.send(alloc.clone_of(&self.templates[next]));
            next += 1;
            if next == self.templates.len() {
                next = 0;
            }
        }
        self.next = next;
    }
}

fn pool_mac(i: usize) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x00, (i >> 8) as u8, i as u8])
}

/// The destinations of 1024 frames: pools in a pseudo-random order, and
/// with `broadcast_every` set, one frame in that many broadcast.
fn destinations(pools: usize, broadcast_every: Option<usize>) -> Vec<MacAddr> {
    let mut x: u32 = 12345;
    (0..1024)
        .map(|n| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            match broadcast_every {
                Some(k) if n % k == 0 => MacAddr::BROADCAST,
                _ => pool_mac((x >> 16) as usize % pools),
            }
        })
        .collect()
}

fn registry() -> Registry {
    let mut r = crate::registry();
    r.register::<Frames>("BenchFrames", "bench traffic");
    r
}

/// CPU time this thread has used: on a shared machine, a rate per CPU
/// second says more about the code than one per wall-clock second.
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Rates of one run, in Mpps.
struct Rates {
    /// Frames into the splitter (or the Join) per wall-clock second.
    input: f64,
    /// The same per second of this thread's CPU time.
    input_cpu: f64,
    /// Frames out of it, per wall-clock second.
    output: f64,
}

/// Run `c` until `packets` frames left the generator.
fn measure(c: &Config, packets: u64) -> Result<Rates> {
    let mut e = Engine::new(registry());
    e.busywait = true;
    e.configure(c)?;
    e.run(Limit::Breaths(1000));
    let sent = |e: &Engine| e.link("gen.output -> dut.input").map_or(0, |l| l.txpackets());
    let out = |e: &Engine| e.links().filter(|(s, _)| s.to.app == "sink").map(|(_, l)| l.txpackets()).sum::<u64>();
    let (s0, o0) = (sent(&e), out(&e));
    let (start, cpu0) = (Instant::now(), thread_cpu_secs());
    let mut done = |e: &Engine| e.stats().breaths.is_multiple_of(100) && sent(e) >= s0 + packets;
    e.run(Limit::Until(&mut done, None));
    let (secs, cpu) = (start.elapsed().as_secs_f64(), thread_cpu_secs() - cpu0);
    let n = (sent(&e) - s0) as f64;
    Ok(Rates { input: n / secs / 1e6, input_cpu: n / cpu / 1e6, output: (out(&e) - o0) as f64 / secs / 1e6 })
}

fn graph(pools: usize, dsts: Vec<MacAddr>, splitter: bool) -> Config {
    let mut c = Config::new();
    c.app("gen", "BenchFrames", &FramesArgs { dsts, size: 64 }).app("sink", "Sink", &());
    if splitter {
        let args = VmdqSplitterArgs {
            pools: (0..pools)
                .map(|i| PoolArgs { macs: vec![pool_mac(i)], ..PoolArgs::new(&format!("p{i}")) })
                .collect(),
            ..Default::default()
        };
        c.app("dut", "VmdqSplitter", &args).link("gen.output -> dut.input");
        for i in 0..pools {
            c.link(&format!("dut.p{i} -> sink.p{i}"));
        }
    } else {
        // The same hops without the splitter: a Join passes packets on.
        c.app("dut", "Join", &()).link("gen.output -> dut.input").link("dut.output -> sink.input");
    }
    c
}

/// The traffic mixes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Unicast spread over the pools.
    Unicast,
    /// One frame in four broadcast.
    Broadcast,
}

pub fn splitter(packets: u64, pool_counts: &[usize], only: Option<Mix>) -> Result<()> {
    println!("splitter: 64-byte frames, {packets} per figure, one core, busy-wait");
    for &pools in pool_counts {
        anyhow::ensure!((1..=64).contains(&pools), "{pools} pools: 1 to 64");
        if only != Some(Mix::Broadcast) {
            let uni = destinations(pools, None);
            let base = measure(&graph(pools, uni.clone(), false), packets)?;
            let r = measure(&graph(pools, uni, true), packets)?;
            let ns = 1e3 / r.input_cpu - 1e3 / base.input_cpu;
            println!(
                "splitter: {pools:>2} pools, unicast:        {:6.2} Mpps in ({:6.2} per CPU s); Join in its place {:6.2} ({:6.2} per CPU s): splitter +{ns:.1} ns/frame",
                r.input, r.input_cpu, base.input, base.input_cpu
            );
        }
        if only != Some(Mix::Unicast) {
            let r = measure(&graph(pools, destinations(pools, Some(4)), true), packets)?;
            println!(
                "splitter: {pools:>2} pools, 1/4 broadcast:  {:6.2} Mpps in ({:6.2} per CPU s), {:6.2} Mpps out",
                r.input, r.input_cpu, r.output
            );
        }
    }
    Ok(())
}
