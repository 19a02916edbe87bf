//! `snabb-rs bench decap`: Mpps through Decap and Encap on one core.
//!
//! Each case is `replay -> app -> sink`: `replay` sends copies of one frame
//! (a 64-byte inner frame, tunnelled for the strip cases), the app under
//! test strips or pushes, `sink` frees. The baseline `replay -> sink` runs
//! in the same rounds; the cost of the app is the difference in ns per
//! packet. The `fixed` cases lend the frames in buffers whose start is
//! fixed (as a guest's receive buffers are), so that stripping moves the
//! bytes with the SIMD copier instead of moving the start.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use snabb_apps_decap::encap::Builder;
use snabb_apps_decap::{DecapArgs, EncapArgs, Tunnel};
use snabb_core::ethernet::MacAddr;
use snabb_core::packet::{Allocator, BufferOwner, ForeignBuffer};
use snabb_core::{
    App, AppClass, AppContext, Args, Config, Engine, Io, Limit, PULL_NPACKETS, Packet, PortSpec, Registry,
};

/// Sends copies of `frame`, `PULL_NPACKETS` a breath: in host buffers, or
/// with `fixed_start` in lent buffers whose start is fixed.
struct Replay {
    template: Packet,
    lender: Option<Lender>,
}

struct Lender {
    owner: BufferOwner,
    bufs: Rc<RefCell<Vec<[u8; 2048]>>>,
    free: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayArgs {
    frame: Vec<u8>,
    fixed_start: bool,
}

const LENT: usize = 1024;

impl AppClass for Replay {
    type Args = ReplayArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["*"]);
    fn new(a: ReplayArgs, _: &AppContext) -> Result<Replay> {
        ensure!(a.frame.len() <= 2048 - 64, "frame too long for a lent buffer");
        let lender = a.fixed_start.then(|| {
            let bufs = Rc::new(RefCell::new(vec![[0u8; 2048]; LENT]));
            let keep: Rc<dyn std::any::Any> = bufs.clone();
            Lender { owner: BufferOwner::register("bench-replay", Some(keep)), bufs, free: (0..LENT as u64).collect() }
        });
        Ok(Replay { template: Packet::from_bytes(&a.frame), lender })
    }
}

impl App for Replay {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.first() else { return };
        let mut tx = out.transmitter();
        match &mut self.lender {
            None => {
                let mut alloc = Allocator::new(PULL_NPACKETS);
                for _ in 0..PULL_NPACKETS {
                    tx.send(alloc.clone_of(&self.template));
                }
            }
            Some(l) => {
                let free = &mut l.free;
                l.owner.drain_returns(|t| free.push(t));
                let t = self.template.data();
                let mut bufs = l.bufs.borrow_mut();
                for _ in 0..PULL_NPACKETS {
                    let Some(token) = l.free.pop() else { break };
                    let b = &mut bufs[token as usize];
                    snabb_core::copy::copy(&mut b[64..64 + t.len()], t);
                    // SAFETY: the buffer lives in `bufs`, kept alive by the
                    // owner until every buffer is back; the token is free.
                    let p = unsafe {
                        l.owner.wrap(ForeignBuffer {
                            base: NonNull::new(b.as_mut_ptr()).unwrap(),
                            cap: 2048,
                            dma: 0,
                            start: 64,
                            len: t.len() as u32,
                            token,
                            fixed_start: true,
                        })
                    };
                    tx.send(p);
                }
            }
        }
    }
}

fn registry() -> Registry {
    let mut r = crate::registry();
    r.register::<Replay>("BenchReplay", "benchmark traffic");
    r
}

const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const REMOTE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 2]);

/// A 64-byte frame: IPv4/UDP inside Ethernet.
fn inner_frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f
}

fn tunnel(text: &str) -> Tunnel {
    snabb_core::config::ron_options().from_str(text).expect("bench tunnel")
}

/// `inner` as `t`'s sender would send it.
fn encapsulated(t: &Tunnel, inner: &[u8]) -> Result<Vec<u8>> {
    let mut b = Builder::new(&EncapArgs::new(t.reversed(), REMOTE_MAC, LOCAL_MAC))?;
    let mut p = Packet::from_bytes(inner);
    b.encapsulate(&mut p).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(p.data().to_vec())
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    fixed_start: bool,
    /// The app under test, or none for the baseline.
    app: Option<(&'static str, Args)>,
}

fn cases() -> Result<Vec<Case>> {
    let inner = inner_frame();
    let mut v = vec![Case { name: "baseline (replay -> sink)", frame: inner.clone(), fixed_start: false, app: None }];
    let strips = [
        ("vlan strip", "Vlan(vid: 100)"),
        ("qinq strip", "QinQ(outer: 20, inner: 100)"),
        ("vxlan4 strip", r#"Vxlan(local: "192.0.2.2", remote: "192.0.2.1", vni: 5000)"#),
        ("vxlan6 strip", r#"Vxlan(local: "2001:db8::2", remote: "2001:db8::1", vni: 5000)"#),
        ("gre4 key strip", r#"Gre(local: "192.0.2.2", remote: "192.0.2.1", key: 9)"#),
        ("l2tpv3 strip", r#"L2tpv3(local: "2001:db8::2", remote: "2001:db8::1", local_cookie: 1, remote_cookie: 2)"#),
    ];
    for (name, t) in strips {
        let t = tunnel(t);
        let args =
            Args::from_value(&DecapArgs { tunnel: t.clone(), verify_udp_checksum: false, refuse_ip_options: false })?;
        v.push(Case { name, frame: encapsulated(&t, &inner)?, fixed_start: false, app: Some(("Decap", args)) });
    }
    for (name, t) in [("vlan strip, fixed start", "Vlan(vid: 100)"), ("vxlan4 strip, fixed start", strips[2].1)] {
        let t = tunnel(t);
        let args =
            Args::from_value(&DecapArgs { tunnel: t.clone(), verify_udp_checksum: false, refuse_ip_options: false })?;
        v.push(Case { name, frame: encapsulated(&t, &inner)?, fixed_start: true, app: Some(("Decap", args)) });
    }
    for (name, t) in [
        ("vlan push", "Vlan(vid: 100)"),
        ("vxlan4 encap", r#"Vxlan(local: "192.0.2.1", remote: "192.0.2.2", vni: 5000)"#),
        ("vxlan6 encap", r#"Vxlan(local: "2001:db8::1", remote: "2001:db8::2", vni: 5000)"#),
    ] {
        let args = Args::from_value(&EncapArgs::new(tunnel(t), LOCAL_MAC, REMOTE_MAC))?;
        v.push(Case { name, frame: inner.clone(), fixed_start: false, app: Some(("Encap", args)) });
    }
    Ok(v)
}

/// Mpps of one case over `packets` packets.
fn measure(c: &Case, packets: u64) -> Result<f64> {
    let mut cfg = Config::new();
    cfg.app("replay", "BenchReplay", &ReplayArgs { frame: c.frame.clone(), fixed_start: c.fixed_start }).app(
        "sink",
        "Sink",
        &(),
    );
    let first = match &c.app {
        None => {
            cfg.link("replay.output -> sink.input");
            "replay.output -> sink.input"
        }
        Some((class, args)) => {
            cfg.app_args("app", class, args.clone())
                .link("replay.output -> app.input")
                .link("app.output -> sink.input");
            "replay.output -> app.input"
        }
    };
    let mut e = Engine::new(registry());
    e.busywait = true;
    e.configure(&cfg)?;
    e.run(Limit::Breaths(1000));
    if let Some(_app) = &c.app {
        // Every packet must make it through: a benchmark of drops is no benchmark.
        let sunk = e.app::<snabb_apps_basic::Sink>("sink").unwrap().packets();
        ensure!(sunk > 0, "{}: nothing reached the sink", c.name);
        let counters = e.app_counters("app");
        ensure!(counters.get("rejected").copied().unwrap_or(0) == 0, "{}: packets rejected: {counters:?}", c.name);
    }
    let sent = |e: &Engine| e.link(first).map_or(0, |l| l.txpackets());
    let start_count = sent(&e);
    let target = start_count + packets;
    let t = Instant::now();
    let mut done = |e: &Engine| e.stats().breaths.is_multiple_of(100) && sent(e) >= target;
    e.run(Limit::Until(&mut done, None));
    let secs = t.elapsed().as_secs_f64();
    Ok((sent(&e) - start_count) as f64 / secs / 1e6)
}

pub fn run(packets: u64, rounds: usize, only: Option<&str>) -> Result<()> {
    ensure!(rounds > 0 && packets > 0, "rounds and packets must be positive");
    let mut cases = cases()?;
    if let Some(only) = only {
        // Keep the baseline (first) and the case named `only`, or else
        // those whose name contains it.
        let exact = cases.iter().any(|c| c.name == only);
        let mut first = true;
        cases.retain(|c| std::mem::take(&mut first) || if exact { c.name == only } else { c.name.contains(only) });
        ensure!(cases.len() > 1, "no case matches `{only}`");
    }
    println!(
        "decap: 64-byte inner frames, {packets} packets a run, median of {rounds} rounds; ns/pkt = time added to the baseline"
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            samples[i].push(measure(&cases[i], packets)?);
        }
    }
    let med: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.total_cmp(b));
            s[s.len() / 2]
        })
        .collect();
    println!("{:<28} {:>7} {:>9} {:>8}", "case", "bytes", "Mpps", "ns/pkt");
    for (i, c) in cases.iter().enumerate() {
        let added = if i == 0 { String::new() } else { format!("{:8.2}", 1e3 / med[i] - 1e3 / med[0]) };
        println!("{:<28} {:>7} {:>9.2} {added}", c.name, c.frame.len(), med[i]);
    }
    Ok(())
}
