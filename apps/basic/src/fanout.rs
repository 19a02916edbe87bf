//! TEE, JOIN and SPLIT: fan packets out and in.

use snabb_core::packet::Allocator;
use snabb_core::{App, AppClass, AppContext, Io, Link, PortSpec};

/// Every packet on any input goes to every output: copies to all but the
/// last output, which gets the original buffer.
#[derive(Default)]
pub struct Tee;

impl AppClass for Tee {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(_: (), _ctx: &AppContext) -> anyhow::Result<Tee> {
        Ok(Tee)
    }
    fn reconfigure(&mut self, _: (), _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Tee {
    #[inline]
    fn push(&mut self, io: &Io) {
        let n = io.output.len();
        for input in io.input.iter() {
            if n == 0 {
                input.discard();
                continue;
            }
            // Copies for all outputs but the last, one output at a time,
            // then the originals for the last: each loop keeps little state.
            for i in 0..n - 1 {
                send_copies(input, io.output.at(i));
            }
            input.transfer(io.output.at(n - 1));
        }
    }
}

/// A copy of every packet queued on `input` onto `out`.
#[inline(never)]
fn send_copies(input: &Link, out: &Link) {
    let mut tx = out.transmitter();
    let mut alloc = Allocator::new(input.nreadable());
    for p in input.queued() {
        tx.send(alloc.clone_of(p));
    }
}

/// All inputs onto the output (port `output`, or the only output there is).
#[derive(Default)]
pub struct Join;

impl AppClass for Join {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output"]);
    fn new(_: (), _ctx: &AppContext) -> anyhow::Result<Join> {
        Ok(Join)
    }
    fn reconfigure(&mut self, _: (), _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Join {
    fn push(&mut self, io: &Io) {
        let out = io.output.get("output").or_else(|| io.output.first());
        for input in io.input.iter() {
            match out {
                Some(o) => {
                    input.transfer(o);
                }
                None => {
                    input.discard();
                }
            }
        }
    }
}

/// Input packets go to the outputs in turn (round robin).
#[derive(Default)]
pub struct Split {
    next: usize,
}

impl AppClass for Split {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(_: (), _ctx: &AppContext) -> anyhow::Result<Split> {
        Ok(Split::default())
    }
    fn reconfigure(&mut self, _: (), _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Split {
    fn push(&mut self, io: &Io) {
        let n = io.output.len();
        for input in io.input.iter() {
            if n == 0 {
                input.discard();
                continue;
            }
            for p in input.drain() {
                if self.next >= n {
                    self.next = 0;
                }
                io.output.at(self.next).transmit(p);
                self.next += 1;
            }
        }
    }
}

fn run_counts(cfg: &snabb_core::Config) -> anyhow::Result<snabb_core::Engine> {
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(cfg)?;
    e.run(snabb_core::Limit::Breaths(10));
    Ok(e)
}

pub fn selftest_tee() -> anyhow::Result<()> {
    let mut c = snabb_core::Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(count: 300)")?)
        .app("tee", "Tee", &())
        .app("sink", "Sink", &())
        .link("src.output -> tee.input")
        .link("tee.a -> sink.a")
        .link("tee.b -> sink.b")
        .link("tee.c -> sink.c");
    let e = run_counts(&c)?;
    for p in ["a", "b", "c"] {
        let n = e.link_counters(&format!("tee.{p} -> sink.{p}")).unwrap().txpackets;
        anyhow::ensure!(n == 300, "tee output {p}: {n} packets");
    }
    Ok(())
}

pub fn selftest_join() -> anyhow::Result<()> {
    let mut c = snabb_core::Config::new();
    c.app_args("s1", "Source", snabb_core::Args::from_ron("(count: 100)")?)
        .app_args("s2", "Source", snabb_core::Args::from_ron("(count: 200)")?)
        .app("join", "Join", &())
        .app("sink", "Sink", &())
        .link("s1.output -> join.a")
        .link("s2.output -> join.b")
        .link("join.output -> sink.input");
    let e = run_counts(&c)?;
    let n = e.app::<crate::Sink>("sink").unwrap().packets();
    anyhow::ensure!(n == 300, "join passed {n} packets");
    Ok(())
}

pub fn selftest_split() -> anyhow::Result<()> {
    let mut c = snabb_core::Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(count: 301)")?)
        .app("split", "Split", &())
        .app("sink", "Sink", &())
        .link("src.output -> split.input")
        .link("split.a -> sink.a")
        .link("split.b -> sink.b")
        .link("split.c -> sink.c");
    let e = run_counts(&c)?;
    let counts: Vec<u64> =
        ["a", "b", "c"].iter().map(|p| e.link_counters(&format!("split.{p} -> sink.{p}")).unwrap().txpackets).collect();
    anyhow::ensure!(counts == [101, 100, 100], "split counts {counts:?}");
    Ok(())
}
