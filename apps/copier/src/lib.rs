//! COPIER: every packet copied into a fresh host buffer.
//!
//! | class    | ports                                   | does                              |
//! |----------|-----------------------------------------|-----------------------------------|
//! | `Copier` | in: any; out: `output` (or the only one) | each packet, copied, to `output`  |
//!
//! The copy is made by the core's copier (`snabb_core::copy`, SIMD at the
//! best level the CPU has) into a buffer from this thread's freelist with
//! the full headroom, and the original goes back to its owner at once: a
//! guest's buffer, say, is detached from the graph at this point. A link in
//! `copy: Simd` mode does the same on any link; the app is for graphs that
//! want the copy at a place of their choosing, and counts what it copied.
//!
//! Counters: `packets`, `bytes` (copied), `dropped` (no output linked).

use snabb_core::{App, AppClass, AppContext, Io, PortSpec, Registry};

#[derive(Default)]
pub struct Copier {
    packets: u64,
    bytes: u64,
    dropped: u64,
}

impl AppClass for Copier {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output"]);
    fn new(_: (), _ctx: &AppContext) -> anyhow::Result<Copier> {
        Ok(Copier::default())
    }
    fn reconfigure(&mut self, _: (), _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Copier {
    fn push(&mut self, io: &Io) {
        let out = io.output.get("output").or_else(|| io.output.first());
        for input in io.input.iter() {
            let Some(out) = out else {
                self.dropped += input.discard().0;
                continue;
            };
            let mut tx = out.transmitter();
            for p in input.drain() {
                let c = p.copy_to_host();
                // The original goes home here, before the copy moves on.
                drop(p);
                self.packets += 1;
                self.bytes += c.len() as u64;
                tx.send(c);
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("packets", self.packets);
        emit("bytes", self.bytes);
        emit("dropped", self.dropped);
    }

    fn report(&self, out: &mut String) {
        out.push_str(&format!(
            "{} packets, {} bytes copied ({} kernels); {} dropped\n",
            self.packets,
            self.bytes,
            snabb_core::copy::level(),
            self.dropped
        ));
    }
}

impl Copier {
    /// Packets copied.
    pub fn packets(&self) -> u64 {
        self.packets
    }
    /// Bytes copied.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Packets dropped for want of an output.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<Copier>("Copier", "copies every packet into a fresh host buffer (SIMD copier)");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("Copier", selftest)]
}

/// A registry with this crate's classes and the basic apps, for tests.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    snabb_apps_basic::register(&mut r);
    register(&mut r);
    r
}

/// Numbered frames of three sizes go through a Copier and must come out
/// byte for byte as they went in, in fresh buffers, with nothing leaked.
pub fn selftest() -> anyhow::Result<()> {
    use snabb_apps_basic::Match;
    use snabb_core::{Args, Config, Engine, Limit, packet};
    let before = packet::stats();
    {
        let mut c = Config::new();
        c.app_args(
            "src",
            "Source",
            Args::from_ron("(sizes: [60, 61, 1514, 9000, 10240], count: 1000, numbered: true)")?,
        )
        .app("tee", "Tee", &())
        .app("copier", "Copier", &())
        .app("match", "Match", &())
        .link("src.output -> tee.input")
        .link("tee.a -> copier.input")
        .link("copier.output -> match.rx")
        .link("tee.b -> match.comparator");
        let mut e = Engine::new(registry());
        e.configure(&c)?;
        e.run_until(
            |e| e.app::<Match>("match").is_some_and(|m| m.matched() + m.mismatched() == 1000),
            std::time::Duration::from_secs(10),
        );
        e.run(Limit::Breaths(2));
        let m = e.app::<Match>("match").unwrap();
        anyhow::ensure!(m.mismatched() == 0, "copies differ: {:?}", m.errors());
        anyhow::ensure!(m.matched() == 1000, "{} of 1000 packets came through", m.matched());
        let cp = e.app::<Copier>("copier").unwrap();
        let bytes = 200 * (60 + 61 + 1514 + 9000 + 10240);
        anyhow::ensure!(
            cp.packets() == 1000 && cp.bytes() == bytes,
            "copier counted {} / {}",
            cp.packets(),
            cp.bytes()
        );
    }
    let after = packet::stats();
    anyhow::ensure!(after.in_use == before.in_use, "packets leaked: {} in use", after.in_use - before.in_use);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_selftest_passes() {
        for (name, t) in super::selftests() {
            t().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
