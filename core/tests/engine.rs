//! The engine: breathe order, live reconfiguration with packet
//! conservation, errors from bad configs, foreign buffers going home when
//! the engine stops.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snabb_core::packet::{self, BufferOwner, ForeignBuffer};
use snabb_core::{App, AppClass, AppContext, Config, Engine, Io, Limit, Packet, PortSpec, Registry};

/// Sends `burst` numbered packets per breath until `count` are sent.
struct Gen {
    burst: u64,
    count: u64,
    sent: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct GenArgs {
    burst: u64,
    count: u64,
}

impl AppClass for Gen {
    type Args = GenArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["*"]);
    fn new(a: GenArgs, _: &AppContext) -> anyhow::Result<Gen> {
        anyhow::ensure!(a.burst > 0, "burst must be positive");
        Ok(Gen { burst: a.burst, count: a.count, sent: 0 })
    }
}

impl App for Gen {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.first() else { return };
        for _ in 0..self.burst.min(self.count - self.sent) {
            out.transmit(Packet::from_bytes(&self.sent.to_be_bytes()));
            self.sent += 1;
        }
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("sent", self.sent);
    }
}

/// Forwards input to output, optionally only `per_breath` packets a breath
/// (so packets pile up on its input link).
struct Fwd {
    per_breath: usize,
    generation: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct FwdArgs {
    per_breath: usize,
    generation: u32,
}

impl AppClass for Fwd {
    type Args = FwdArgs;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(a: FwdArgs, _: &AppContext) -> anyhow::Result<Fwd> {
        Ok(Fwd { per_breath: a.per_breath, generation: a.generation })
    }
    fn reconfigure(&mut self, a: FwdArgs, _: &AppContext) -> anyhow::Result<bool> {
        // Only the rate can change in place; a new generation means restart.
        if a.generation != self.generation {
            return Ok(false);
        }
        self.per_breath = a.per_breath;
        Ok(true)
    }
}

impl App for Fwd {
    fn push(&mut self, io: &Io) {
        let (Some(i), Some(o)) = (io.input.first(), io.output.first()) else { return };
        for p in i.drain().take(self.per_breath) {
            o.transmit(p);
        }
    }
}

/// Counts what arrives, checking numbers come in order.
#[derive(Default)]
struct Count {
    got: u64,
    next: u64,
    out_of_order: u64,
}

impl AppClass for Count {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &[]);
    fn new(_: (), _: &AppContext) -> anyhow::Result<Count> {
        Ok(Count::default())
    }
    fn reconfigure(&mut self, _: (), _: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Count {
    fn push(&mut self, io: &Io) {
        for l in io.input.iter() {
            for p in l.drain() {
                let n = u64::from_be_bytes(p.data()[..8].try_into().unwrap());
                if n != self.next {
                    self.out_of_order += 1;
                }
                self.next = n + 1;
                self.got += 1;
            }
        }
    }
}

/// Records the order in which apps push.
struct Trace {
    name: String,
    log: Rc<RefCell<Vec<String>>>,
    pulls: bool,
}

thread_local! {
    static TRACE: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
}

#[derive(Serialize, Deserialize)]
struct TraceArgs {
    pulls: bool,
}

impl AppClass for Trace {
    type Args = TraceArgs;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(a: TraceArgs, ctx: &AppContext) -> anyhow::Result<Trace> {
        Ok(Trace { name: ctx.name.to_string(), log: TRACE.with(Rc::clone), pulls: a.pulls })
    }
}

impl App for Trace {
    fn has_pull(&self) -> bool {
        self.pulls
    }
    fn pull(&mut self, _: &Io) {
        self.log.borrow_mut().push(format!("pull {}", self.name));
    }
    fn push(&mut self, _: &Io) {
        self.log.borrow_mut().push(format!("push {}", self.name));
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Gen>("Gen", "test generator")
        .register::<Fwd>("Fwd", "test forwarder")
        .register::<Count>("Count", "test counter")
        .register::<Trace>("Trace", "test tracer");
    r
}

fn chain(rate: usize, generation: u32) -> Config {
    let mut c = Config::new();
    c.app("gen", "Gen", &GenArgs { burst: 100, count: 100_000 })
        .app("fwd", "Fwd", &FwdArgs { per_breath: rate, generation })
        .app("count", "Count", &())
        .link("gen.output -> fwd.input")
        .link("fwd.output -> count.input");
    c
}

#[test]
fn packets_cross_a_chain_in_order() {
    let mut e = Engine::new(registry());
    e.configure(&chain(1000, 0)).unwrap();
    assert!(e.run_until(|e| e.app::<Count>("count").unwrap().got == 100_000, Duration::from_secs(20)));
    let c = e.app::<Count>("count").unwrap();
    assert_eq!(c.out_of_order, 0);
    let l = e.link_counters("gen.output -> fwd.input").unwrap();
    assert_eq!((l.txpackets, l.rxpackets, l.txdrop), (100_000, 100_000, 0));
    assert_eq!(l.txbytes, 800_000);
}

#[test]
fn busy_ticks_count_only_breaths_that_moved_packets() {
    let mut e = Engine::new(registry());
    let mut idle = Config::new();
    idle.app("count", "Count", &());
    e.configure(&idle).unwrap();
    e.run(Limit::Breaths(10_000));
    assert_eq!(e.stats().busy_ticks, 0, "nothing moved");
    assert_eq!(e.stats().idle_breaths, 10_000);
    e.configure(&chain(1000, 0)).unwrap();
    let t0 = snabb_core::engine::ticks();
    assert!(e.run_until(|e| e.app::<Count>("count").unwrap().got == 100_000, Duration::from_secs(20)));
    let t1 = snabb_core::engine::ticks();
    let busy = e.stats().busy_ticks;
    assert!(busy > 0 && busy <= t1 - t0, "busy {busy} of {} ticks", t1 - t0);
}

#[test]
fn reconfiguration_keeps_running_apps_and_queued_packets() {
    let before = packet::stats();
    let mut e = Engine::new(registry());
    // A slow forwarder (10 a push, at most 4 pushes a breath, for 100
    // arriving): packets queue up on gen -> fwd.
    e.configure(&chain(10, 0)).unwrap();
    e.run(Limit::Breaths(10));
    let queued = e.link("gen.output -> fwd.input").unwrap().nreadable();
    assert!(queued > 0, "packets are waiting on the link");

    // 1. Same config again: nothing changes, nothing is lost.
    e.configure(&chain(10, 0)).unwrap();
    assert_eq!(e.link("gen.output -> fwd.input").unwrap().nreadable(), queued);

    // 2. New rate: the forwarder takes it in place; the queue survives.
    e.configure(&chain(500, 0)).unwrap();
    assert_eq!(e.link("gen.output -> fwd.input").unwrap().nreadable(), queued);

    // 3. New generation: the forwarder restarts; links on both sides
    //    survive with their packets.
    e.run(Limit::Breaths(3));
    e.configure(&chain(20, 1)).unwrap();
    e.run(Limit::Breaths(5));
    e.configure(&chain(1000, 1)).unwrap();

    // 4. Change a link's settings (ring size and copy mode) while packets
    //    are on it: they move to the new ring.
    let mut c = chain(1000, 1);
    c = {
        let mut n = Config::new();
        n.app("gen", "Gen", &GenArgs { burst: 100, count: 100_000 })
            .app("fwd", "Fwd", &FwdArgs { per_breath: 1000, generation: 1 })
            .app("count", "Count", &())
            .link_with(
                "gen.output -> fwd.input",
                snabb_core::LinkSettings { copy: snabb_core::CopyMode::Simd, size: 2048 },
            )
            .link("fwd.output -> count.input");
        let _ = c;
        n
    };
    e.configure(&c).unwrap();

    assert!(e.run_until(|e| e.app::<Count>("count").unwrap().got == 100_000, Duration::from_secs(20)));
    let count = e.app::<Count>("count").unwrap();
    assert_eq!(count.out_of_order, 0, "no packet was lost or reordered across reconfigurations");
    assert_eq!(e.app::<Gen>("gen").unwrap().sent, 100_000, "the generator was never restarted");
    assert_eq!(e.stats().reconfig_drops, 0);
    let l = e.link_counters("gen.output -> fwd.input").unwrap();
    assert_eq!((l.txpackets, l.rxpackets, l.txdrop), (100_000, 100_000, 0), "counters carried across the resize");
    assert_eq!(l.copybytes, 0, "host packets pass a link in Simd mode as they are");
    drop(e);
    assert_eq!(packet::stats().in_use, before.in_use, "every packet went home");
}

#[test]
fn removing_a_link_drops_and_counts_its_packets() {
    let before = packet::stats();
    let mut e = Engine::new(registry());
    e.configure(&chain(10, 0)).unwrap();
    e.run(Limit::Breaths(5));
    let queued = e.link("gen.output -> fwd.input").unwrap().nreadable() as u64;
    assert!(queued > 0);
    let mut c = Config::new();
    c.app("gen", "Gen", &GenArgs { burst: 100, count: 100_000 })
        .app("fwd", "Fwd", &FwdArgs { per_breath: 10, generation: 0 })
        .app("count", "Count", &())
        .link("fwd.output -> count.input");
    e.configure(&c).unwrap();
    assert_eq!(e.stats().reconfig_drops, queued);
    assert!(e.link("gen.output -> fwd.input").is_none());
    // The generator now has no output and sends into nothing.
    e.run(Limit::Breaths(5));
    drop(e);
    assert_eq!(packet::stats().in_use, before.in_use);
}

#[test]
fn a_failing_config_changes_nothing() {
    let mut e = Engine::new(registry());
    e.configure(&chain(1000, 0)).unwrap();
    e.run(Limit::Breaths(3));
    let mut bad = chain(1000, 0);
    bad.app("broken", "Gen", &GenArgs { burst: 0, count: 1 });
    let err = e.configure(&bad).unwrap_err().to_string();
    assert!(err.contains("app `broken` (class `Gen`): burst must be positive"), "{err}");
    let mut unknown = chain(1000, 0);
    unknown.app("x", "NoSuchClass", &());
    let err = e.configure(&unknown).unwrap_err().to_string();
    assert!(err.contains("no app class `NoSuchClass`") && err.contains("known: Count, Fwd, Gen, Trace"), "{err}");
    assert_eq!(e.config(), &chain(1000, 0));
    assert_eq!(e.stats().configs, 1);
    e.run(Limit::Breaths(3));
    assert!(e.app::<Gen>("gen").unwrap().sent > 0);
}

#[test]
fn pushes_follow_the_links_and_pullers_break_cycles() {
    TRACE.with(|t| t.borrow_mut().clear());
    let mut c = Config::new();
    // nic pulls; a -> b -> nic (cycle through the puller); c alone.
    c.app("nic", "Trace", &TraceArgs { pulls: true })
        .app("a", "Trace", &TraceArgs { pulls: false })
        .app("b", "Trace", &TraceArgs { pulls: false })
        .app("c", "Trace", &TraceArgs { pulls: false })
        .link("nic.rx -> b.input")
        .link("b.output -> a.input")
        .link("a.output -> nic.tx");
    let mut e = Engine::new(registry());
    e.configure(&c).unwrap();
    assert_eq!(e.pull_order(), ["nic"]);
    assert_eq!(e.push_order(), ["c", "b", "a", "nic"]);
    e.breathe();
    let log = TRACE.with(|t| t.borrow().clone());
    assert_eq!(log, ["pull nic", "push c", "push b", "push a", "push nic"]);
}

#[test]
fn foreign_buffers_go_home_when_the_engine_stops() {
    /// Lends its buffers into the graph and counts what comes back.
    struct Lender {
        owner: BufferOwner,
        bufs: Rc<RefCell<Vec<[u8; 256]>>>,
        lent: u64,
        back: Rc<RefCell<BTreeMap<u64, u32>>>,
    }
    impl AppClass for Lender {
        type Args = ();
        const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
        fn new(_: (), _: &AppContext) -> anyhow::Result<Lender> {
            let bufs = Rc::new(RefCell::new(vec![[7u8; 256]; 64]));
            let keep: Rc<dyn std::any::Any> = bufs.clone();
            Ok(Lender { owner: BufferOwner::register("lender", Some(keep)), bufs, lent: 0, back: Default::default() })
        }
    }
    impl App for Lender {
        fn has_pull(&self) -> bool {
            true
        }
        fn pull(&mut self, io: &Io) {
            self.owner.drain_returns(|t| *self.back.borrow_mut().entry(t).or_default() += 1);
            let out = io.output.first().unwrap();
            if self.lent < 64 {
                let base = std::ptr::NonNull::new(self.bufs.borrow_mut()[self.lent as usize].as_mut_ptr()).unwrap();
                // SAFETY: the buffers live in `bufs`, kept alive by the owner.
                let p = unsafe {
                    self.owner.wrap(ForeignBuffer {
                        base,
                        cap: 256,
                        dma: 0,
                        start: 0,
                        len: 64,
                        token: self.lent,
                        fixed_start: true,
                    })
                };
                out.transmit(p);
                self.lent += 1;
            }
        }
    }
    let mut r = registry();
    r.register::<Lender>("Lender", "lends buffers");
    let mut c = Config::new();
    c.app("lender", "Lender", &())
        .app("fwd", "Fwd", &FwdArgs { per_breath: 0, generation: 0 })
        .app("count", "Count", &())
        .link("lender.output -> fwd.input")
        .link("fwd.output -> count.input");
    let mut e = Engine::new(r);
    e.configure(&c).unwrap();
    e.run(Limit::Breaths(10));
    // Ten buffers are out, queued on the link in front of `fwd`.
    assert_eq!(e.app::<Lender>("lender").unwrap().owner.outstanding(), 10);
    let before = packet::stats();
    e.stop();
    let after = packet::stats();
    assert_eq!(after.frees, before.frees, "foreign buffers never reach the host freelist");
    assert_eq!(after.foreign_returned - before.foreign_returned, 10);
}
