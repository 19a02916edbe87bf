//! SINK: drops every packet on every input, counting packets and bytes.

use snabb_core::{App, AppClass, AppContext, Io, PortSpec};

#[derive(Default)]
pub struct Sink {
    packets: u64,
    bytes: u64,
}

impl AppClass for Sink {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &[]);
    fn new(_: (), _ctx: &AppContext) -> anyhow::Result<Sink> {
        Ok(Sink::default())
    }
    fn reconfigure(&mut self, _: (), _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Sink {
    fn push(&mut self, io: &Io) {
        for l in io.input.iter() {
            let (n, bytes) = l.discard();
            self.packets += n;
            self.bytes += bytes;
        }
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("packets", self.packets);
        emit("bytes", self.bytes);
    }
    fn report(&self, out: &mut String) {
        out.push_str(&format!("{} packets, {} bytes\n", self.packets, self.bytes));
    }
}

impl Sink {
    pub fn packets(&self) -> u64 {
        self.packets
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

pub fn selftest() -> anyhow::Result<()> {
    use snabb_core::{Config, Engine, packet};
    let before = packet::stats();
    {
        let mut c = Config::new();
        c.app_args("src", "Source", snabb_core::Args::from_ron("(count: 500)")?)
            .app("sink", "Sink", &())
            .link("src.output -> sink.a");
        let mut e = Engine::new(crate::registry());
        e.configure(&c)?;
        e.run(snabb_core::Limit::Breaths(20));
        let s = e.app::<Sink>("sink").unwrap();
        anyhow::ensure!(s.packets() == 500 && s.bytes() == 500 * 60, "sink saw {} / {}", s.packets(), s.bytes());
    }
    let after = packet::stats();
    anyhow::ensure!(after.in_use == before.in_use, "packets leaked: {} in use", after.in_use - before.in_use);
    Ok(())
}
