//! REPEATER: records what arrives on `input`, then replays it on `output`
//! forever, `PULL_NPACKETS` per breath, in the order it arrived.

use serde::{Deserialize, Serialize};
use snabb_core::{App, AppClass, AppContext, Io, PULL_NPACKETS, Packet, PortSpec};

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct RepeaterArgs {
    /// Packets recorded at most; later ones are dropped and counted.
    pub max_packets: usize,
}

impl Default for RepeaterArgs {
    fn default() -> Self {
        RepeaterArgs { max_packets: 100_000 }
    }
}

pub struct Repeater {
    recorded: Vec<Packet>,
    max: usize,
    next: usize,
    overflow: u64,
}

impl AppClass for Repeater {
    type Args = RepeaterArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &["output"]);
    fn new(args: RepeaterArgs, _ctx: &AppContext) -> anyhow::Result<Repeater> {
        Ok(Repeater { recorded: Vec::new(), max: args.max_packets, next: 0, overflow: 0 })
    }
}

impl App for Repeater {
    fn has_pull(&self) -> bool {
        true
    }
    fn push(&mut self, io: &Io) {
        for input in io.input.iter() {
            while let Some(p) = input.receive() {
                if self.recorded.len() < self.max {
                    self.recorded.push(p);
                } else {
                    self.overflow += 1;
                }
            }
        }
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.get("output").or_else(|| io.output.first()) else { return };
        if self.recorded.is_empty() {
            return;
        }
        for _ in 0..PULL_NPACKETS {
            if self.next >= self.recorded.len() {
                self.next = 0;
            }
            out.transmit(self.recorded[self.next].clone());
            self.next += 1;
        }
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("recorded", self.recorded.len() as u64);
        emit("overflow", self.overflow);
    }
}

pub fn selftest() -> anyhow::Result<()> {
    let mut c = snabb_core::Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(sizes: [60, 70, 80], count: 3)")?)
        .app("rep", "Repeater", &RepeaterArgs::default())
        .app("sink", "Sink", &())
        .link("src.output -> rep.input")
        .link("rep.output -> sink.input");
    let mut e = snabb_core::Engine::new(crate::registry());
    e.configure(&c)?;
    e.run(snabb_core::Limit::Breaths(50));
    let s = e.app::<crate::Sink>("sink").unwrap();
    anyhow::ensure!(s.packets() > 1000, "repeater sent {}", s.packets());
    // Sizes come round in the order they were recorded.
    let expected: u64 = (0..s.packets()).map(|i| [60, 70, 80][(i % 3) as usize]).sum();
    anyhow::ensure!(s.bytes() == expected, "bytes {} for {} packets, expected {expected}", s.bytes(), s.packets());
    Ok(())
}
