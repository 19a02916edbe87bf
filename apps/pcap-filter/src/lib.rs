//! PCAP FILTER: packets matched against a pcap-filter expression.
//!
//! | class        | ports                                                    | does                          |
//! |--------------|----------------------------------------------------------|-------------------------------|
//! | `PcapFilter` | in: any; out: `output`, `reject` (optional)              | passes the packets that match |
//!
//! ```ron
//! "filter": (class: "PcapFilter", args: (filter: "ip and not tcp port 22")),
//! ```
//!
//! The expression is in tcpdump's language (pcap-filter(7)), compiled by
//! libpcap itself (`pcap_compile`, for Ethernet frames, optimised) into a
//! classic BPF program, which libpcap's interpreter runs on every packet
//! (`pcap_offline_filter`): the same answers as tcpdump, with no parser of
//! our own. The frames are matched as the graph carries them: a VLAN tag
//! still on a frame is seen (`vlan 10 and ...`), one already stripped is
//! not. An expression libpcap refuses is an error in the config, found
//! while it is parsed (`snabb-rs config check` reports it with its line).
//!
//! Packets that match go to `output`; the others go to `reject` when it is
//! linked, and are dropped otherwise; both are counted. New expressions
//! are taken in place (the counters carry on).
//!
//! Counters: `rxpackets`, `accepted`, `rejected` (did not match), `dropped`
//! (rejected with no `reject` link, or accepted with no `output` link).

use pcap::{BpfProgram, Capture, Linktype};
use serde::{Deserialize, Serialize};
use snabb_core::{App, AppClass, AppContext, Io, PortSpec, Registry};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PcapFilterArgs {
    /// A pcap-filter(7) expression; packets that match pass.
    pub filter: String,
}

/// Compile `expr` for Ethernet frames.
pub fn compile(expr: &str) -> Result<BpfProgram, String> {
    let dead = Capture::dead(Linktype::ETHERNET).map_err(|e| format!("libpcap: {e}"))?;
    dead.compile(expr, true).map_err(|e| format!("filter `{expr}`: {}", e.to_string().trim_end()))
}

/// The arguments, with the expression compiled while the config is parsed.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(try_from = "PcapFilterArgs", into = "PcapFilterArgs")]
pub struct Checked(pub PcapFilterArgs);

impl TryFrom<PcapFilterArgs> for Checked {
    type Error = String;
    fn try_from(a: PcapFilterArgs) -> Result<Checked, String> {
        compile(&a.filter)?;
        Ok(Checked(a))
    }
}

impl From<Checked> for PcapFilterArgs {
    fn from(c: Checked) -> PcapFilterArgs {
        c.0
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    rxpackets: u64,
    accepted: u64,
    rejected: u64,
    dropped: u64,
}

pub struct PcapFilter {
    expr: String,
    program: BpfProgram,
    c: Counters,
}

impl AppClass for PcapFilter {
    type Args = Checked;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output", "reject"]);

    fn new(Checked(args): Checked, _ctx: &AppContext) -> anyhow::Result<PcapFilter> {
        let program = compile(&args.filter).map_err(anyhow::Error::msg)?;
        Ok(PcapFilter { expr: args.filter, program, c: Counters::default() })
    }

    fn reconfigure(&mut self, Checked(args): Checked, _ctx: &AppContext) -> anyhow::Result<bool> {
        self.program = compile(&args.filter).map_err(anyhow::Error::msg)?;
        self.expr = args.filter;
        Ok(true)
    }
}

impl PcapFilter {
    pub fn expression(&self) -> &str {
        &self.expr
    }
    /// Whether `frame` matches the expression.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.program.filter(frame)
    }
    pub fn accepted(&self) -> u64 {
        self.c.accepted
    }
    pub fn rejected(&self) -> u64 {
        self.c.rejected
    }
}

impl App for PcapFilter {
    fn push(&mut self, io: &Io) {
        let output = io.output.get("output");
        let reject = io.output.get("reject");
        for input in io.input.iter() {
            for p in input.drain() {
                self.c.rxpackets += 1;
                let (to, count) = if self.program.filter(p.data()) {
                    (output, &mut self.c.accepted)
                } else {
                    (reject, &mut self.c.rejected)
                };
                *count += 1;
                match to {
                    Some(l) => l.transmit(p),
                    None => self.c.dropped += 1,
                }
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let c = &self.c;
        emit("rxpackets", c.rxpackets);
        emit("accepted", c.accepted);
        emit("rejected", c.rejected);
        emit("dropped", c.dropped);
    }

    fn report(&self, out: &mut String) {
        out.push_str(&format!("`{}`: {} packets accepted, {} rejected\n", self.expr, self.c.accepted, self.c.rejected));
    }
}

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<PcapFilter>("PcapFilter", "passes the packets that match a pcap-filter (tcpdump) expression");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("PcapFilter", selftest)]
}

/// Three kinds of frames through a filter that takes one of them: counts on
/// `output` and `reject`, a new expression in place, and bad expressions
/// refused with libpcap's reason.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    use snabb_core::{Args, Config, Engine, Limit, packet};

    let before = packet::stats().in_use;
    {
        let registry = || {
            let mut r = Registry::new();
            snabb_apps_basic::register(&mut r);
            register(&mut r);
            r
        };
        let graph = |filter: &str| -> anyhow::Result<Config> {
            let mut c = Config::new();
            c.app_args("arp", "Source", Args::from_ron("(size: 60, count: 300, ethertype: 0x0806)")?)
                .app_args("ip", "Source", Args::from_ron("(size: 100, count: 200, ethertype: 0x0800)")?)
                .app_args("tagged", "Source", Args::from_ron("(size: 64, count: 100, vlan: 10, ethertype: 0x0800)")?)
                .app("filter", "PcapFilter", &PcapFilterArgs { filter: filter.into() })
                .app("pass", "Sink", &())
                .app("rej", "Sink", &())
                .link("arp.output -> filter.a")
                .link("ip.output -> filter.b")
                .link("tagged.output -> filter.c")
                .link("filter.output -> pass.input")
                .link("filter.reject -> rej.input");
            Ok(c)
        };
        let mut e = Engine::new(registry());
        e.configure(&graph("arp")?)?;
        e.run(Limit::Breaths(10));
        let n = e.app_counters("filter");
        ensure!(n["rxpackets"] == 600 && n["accepted"] == 300 && n["rejected"] == 300, "arp: {n:?}");
        ensure!(e.app_counters("pass")["packets"] == 300 && e.app_counters("pass")["bytes"] == 300 * 60, "arp");
        ensure!(e.app_counters("rej")["packets"] == 300, "arp");
        // In place: the counters carry on. `vlan 10` matches only the tagged frames.
        let mut c = graph("vlan 10 or greater 90")?;
        // New sources, so that they send again.
        for (name, args) in [
            ("arp", "(size: 60, count: 300, ethertype: 0x0806, src: \"02:00:00:00:00:05\")"),
            ("ip", "(size: 100, count: 200, ethertype: 0x0800, src: \"02:00:00:00:00:05\")"),
            ("tagged", "(size: 64, count: 100, vlan: 10, ethertype: 0x0800, src: \"02:00:00:00:00:05\")"),
        ] {
            c = replace_app(&c, name, "Source", args)?;
        }
        e.configure(&c)?;
        e.run(Limit::Breaths(10));
        let n = e.app_counters("filter");
        ensure!(n["rxpackets"] == 1200, "second round: {n:?}");
        ensure!(n["accepted"] == 300 + 300 && n["rejected"] == 300 + 300, "second round: {n:?}");
        ensure!(n["dropped"] == 0, "{n:?}");
        for (bad, why) in [("tcp prot 80", "syntax error"), ("ether host 01:02", "")] {
            let mut c = Config::new();
            c.app("f", "PcapFilter", &PcapFilterArgs { filter: bad.into() });
            let err = registry().check(&c).unwrap_err().to_string();
            ensure!(err.contains(&format!("filter `{bad}`")) && err.contains(why), "{bad}: {err}");
        }
    }
    ensure!(packet::stats().in_use == before, "packets leaked");
    Ok(())
}

/// `c` with app `name` given other arguments.
fn replace_app(c: &snabb_core::Config, name: &str, class: &str, args: &str) -> anyhow::Result<snabb_core::Config> {
    let mut out = snabb_core::Config::new();
    for (n, spec) in c.apps() {
        if n == name {
            out.app_args(n, class, snabb_core::Args::from_ron(args)?);
        } else {
            out.app_args(n, &spec.class, spec.args.clone());
        }
    }
    for (l, settings) in c.links() {
        out.link_with(&l.to_string(), settings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selftest_passes() {
        for (name, t) in selftests() {
            t().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn matches_as_tcpdump_would() {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        let arp = compile("arp").unwrap();
        assert!(arp.filter(&f));
        assert!(compile("ether dst 02:00:00:00:00:01").unwrap().filter(&f));
        assert!(!compile("ether dst 02:00:00:00:00:02").unwrap().filter(&f));
        assert!(!compile("ip").unwrap().filter(&f));
        // A runt does not crash the interpreter: it does not match.
        assert!(!compile("ip and tcp port 80").unwrap().filter(&f[..10]));
    }
}
