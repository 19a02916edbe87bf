//! MATCH: a comparator for tests. Packets on `rx` must equal, in order, the
//! packets on `comparator`. Mismatches are counted and the first few kept
//! as readable errors.

use serde::{Deserialize, Serialize};
use snabb_core::{App, AppClass, AppContext, Io, PortSpec};

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MatchArgs {
    /// Compare only the first `prefix` bytes (0: whole packets).
    pub prefix: usize,
}

#[derive(Default)]
pub struct Match {
    prefix: usize,
    matched: u64,
    mismatched: u64,
    errors: Vec<String>,
}

impl AppClass for Match {
    type Args = MatchArgs;
    const PORTS: PortSpec = PortSpec::new(&["rx", "comparator"], &[]);
    fn new(args: MatchArgs, _ctx: &AppContext) -> anyhow::Result<Match> {
        Ok(Match { prefix: args.prefix, ..Match::default() })
    }
}

fn cut(d: &[u8], prefix: usize) -> &[u8] {
    if prefix == 0 { d } else { &d[..d.len().min(prefix)] }
}

impl App for Match {
    fn push(&mut self, io: &Io) {
        let (Some(rx), Some(cmp)) = (io.input.get("rx"), io.input.get("comparator")) else { return };
        while !rx.is_empty() && !cmp.is_empty() {
            let (a, b) = (rx.receive().unwrap(), cmp.receive().unwrap());
            if cut(a.data(), self.prefix) == cut(b.data(), self.prefix) {
                self.matched += 1;
            } else {
                self.mismatched += 1;
                if self.errors.len() < 10 {
                    self.errors.push(format!(
                        "packet {}: got {} bytes {:02x?}..., expected {} bytes {:02x?}...",
                        self.matched + self.mismatched,
                        a.len(),
                        &a.data()[..a.len().min(16)],
                        b.len(),
                        &b.data()[..b.len().min(16)]
                    ));
                }
            }
        }
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("matched", self.matched);
        emit("mismatched", self.mismatched);
    }
}

impl Match {
    pub fn matched(&self) -> u64 {
        self.matched
    }
    pub fn mismatched(&self) -> u64 {
        self.mismatched
    }
    /// The first mismatches, described.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }
}

pub fn selftest() -> anyhow::Result<()> {
    use snabb_core::{Args, Config, Engine, Limit};
    // Same traffic on both sides: everything matches.
    let mut c = Config::new();
    c.app_args("a", "Source", Args::from_ron("(sizes: [60, 61], count: 200)")?)
        .app_args("b", "Source", Args::from_ron("(sizes: [60, 61], count: 200)")?)
        .app("m", "Match", &())
        .link("a.output -> m.rx")
        .link("b.output -> m.comparator");
    let mut e = Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(Limit::Breaths(10));
    let m = e.app::<Match>("m").unwrap();
    anyhow::ensure!(m.matched() == 200 && m.mismatched() == 0, "{} / {}", m.matched(), m.mismatched());
    // Different sizes: every packet is a mismatch, and described.
    let mut c = Config::new();
    c.app_args("a", "Source", Args::from_ron("(size: 60, count: 50)")?)
        .app_args("b", "Source", Args::from_ron("(size: 64, count: 50)")?)
        .app("m", "Match", &())
        .link("a.output -> m.rx")
        .link("b.output -> m.comparator");
    let mut e = Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(Limit::Breaths(10));
    let m = e.app::<Match>("m").unwrap();
    anyhow::ensure!(m.mismatched() == 50 && m.errors().len() == 10, "{}", m.mismatched());
    anyhow::ensure!(m.errors()[0].contains("got 60 bytes"), "{}", m.errors()[0]);
    Ok(())
}
