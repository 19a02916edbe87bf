//! THE PER-PORT REPORT: frames, Mpps, Gbit/s and drops by reason, for the
//! uplink and each port, in each direction.
//!
//!   let mut r = Reporter::default();
//!   print!("{}", r.report(&mut engine, &graph));   // every few seconds
//!   print!("{}", legend());                         // what each drop means
//!
//! Every figure comes from a counter the apps keep anyway (the same that
//! `snabb-rs top` shows); rates are over the time since the last report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use snabb_apps_intel10g::Intel10g;
use snabb_core::Engine;
use snabb_core::engine::group;

use super::graph::{Graph, PortApps};

/// Why frames were dropped: a short name for the report, and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    NoPort,
    Missed,
    BadFrame,
    KernelRing,
    Oversize,
    NoUplink,
    UplinkDown,
    NoGuest,
    NotTaken,
    TooBig,
    Tunnel,
    Filter,
    Rate,
    Malformed,
    QueueFull,
    NicQueue,
    NicRefused,
}

impl Why {
    pub const ALL: [Why; 17] = [
        Why::NoPort,
        Why::Missed,
        Why::BadFrame,
        Why::KernelRing,
        Why::Oversize,
        Why::NoUplink,
        Why::UplinkDown,
        Why::NoGuest,
        Why::NotTaken,
        Why::TooBig,
        Why::Tunnel,
        Why::Filter,
        Why::Rate,
        Why::Malformed,
        Why::QueueFull,
        Why::NicQueue,
        Why::NicRefused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Why::NoPort => "no port",
            Why::Missed => "missed",
            Why::BadFrame => "bad frame",
            Why::KernelRing => "kernel ring",
            Why::Oversize => "oversize",
            Why::NoUplink => "no uplink",
            Why::UplinkDown => "uplink down",
            Why::NoGuest => "no guest",
            Why::NotTaken => "not taken",
            Why::TooBig => "too big",
            Why::Tunnel => "tunnel",
            Why::Filter => "filter",
            Why::Rate => "rate limit",
            Why::Malformed => "malformed",
            Why::QueueFull => "queue full",
            Why::NicQueue => "nic queue",
            Why::NicRefused => "nic refused",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Why::NoPort => {
                "from the wire, for no port: unicast to an address no port has on that VLAN, a VLAN no port is \
                 on, or broadcast/multicast no port takes (the NIC's or the splitter's filters)"
            }
            Why::Missed => {
                "the 82599's receive packet buffer was full (MPC): frames came faster than it could store them"
            }
            Why::BadFrame => "bad frames on the wire: CRC, length, undersize or oversize errors",
            Why::KernelRing => {
                "the kernel's receive ring was full (RawSocket; AF_XDP: its RX ring was full, or it had no free \
                 frame to receive into): the switch did not read the interface fast enough"
            }
            Why::Oversize => {
                "longer than a packet buffer (10240 bytes): GRO/LRO merged them (`ethtool -K IF gro off lro off`)"
            }
            Why::NoUplink => "for the wire, but the switch has no uplink",
            Why::UplinkDown => "for the wire while the interface was down, or refused by it",
            Why::NoGuest => "no guest was connected to the port, or its receive queue was not running",
            Why::NotTaken => {
                "the guest had posted no receive buffers for them (it stopped receiving, or cannot keep up): half a \
                 link's worth waits for it, the rest is dropped here so that it holds back no other port"
            }
            Why::TooBig => "larger than any receive buffer the guest offers",
            Why::Tunnel => {
                "not the port's tunnel (not encapsulated, another address, id or cookie, a bad header), or could \
                 not be encapsulated (too short, or too long with the tunnel's headers)"
            }
            Why::Filter => "did not match the port's filter for that direction",
            Why::Rate => "over the port's rate limit for that direction",
            Why::Malformed => "the guest offered bad descriptors or frames (out of its memory, too short or too long)",
            Why::QueueFull => "a link inside the switch was full: the app after it did not keep up",
            Why::NicQueue => {
                "the port's 82599 pool had no free receive descriptor: the switch did not take frames as fast as \
                 they came"
            }
            Why::NicRefused => "the 82599 driver refused to send them (too short or too long)",
        }
    }
}

/// The drop reasons explained, for the start of a run.
pub fn legend() -> String {
    let mut s = String::from("Drops are counted where they happen, each for one reason:\n");
    for w in Why::ALL {
        let _ = writeln!(s, "  {:<12} {}", w.name(), w.meaning());
    }
    s
}

/// One direction of one port (or of the uplink), as counted now.
#[derive(Clone, Debug, Default)]
struct Row {
    frames: u64,
    bytes: u64,
    drops: BTreeMap<Why, u64>,
}

impl Row {
    fn drop(&mut self, why: Why, n: u64) {
        if n > 0 {
            *self.drops.entry(why).or_default() += n;
        }
    }
}

/// Counters of one app by name (0 when absent).
struct Counts(BTreeMap<String, u64>);

impl Counts {
    fn of(e: &Engine, app: Option<&String>) -> Counts {
        Counts(app.map(|a| e.app_counters(a)).unwrap_or_default())
    }
    /// The counters of several apps, added up.
    fn sum(e: &Engine, apps: &[String]) -> Counts {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for a in apps {
            for (k, v) in e.app_counters(a) {
                *m.entry(k).or_default() += v;
            }
        }
        Counts(m)
    }
    fn get(&self, k: &str) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }
}

/// An AF_XDP uplink's state and the kernel's own counts that are not
/// drops of a frame (events), on one line.
fn afxdp_line(e: &Engine, g: &Graph) -> Option<String> {
    let u = &g.uplink;
    if u.class != Some("AfXdp") {
        return None;
    }
    let n = Counts::sum(e, &u.nics);
    let per = |k: &str| u.nics.iter().filter(|a| Counts::of(e, Some(a)).get(k) == 1).count();
    let queues = u.nics.len();
    let (zc, native) = (per("zerocopy"), per("xdp_native"));
    let mode = |k: usize, yes: &str, no: &str| match k {
        0 => no.to_string(),
        k if k == queues => yes.to_string(),
        k => format!("{yes} on {k} of {queues} queues"),
    };
    Some(format!(
        "uplink AF_XDP: {queues} queue{} ({}, XDP {}); fill ring found empty {} times, TX ring full {} times \
         (frames waited), invalid descriptors {} rx / {} tx, kernel drops {} (no fill frame) + {} (RX ring full)\n",
        if queues == 1 { "" } else { "s" },
        mode(zc, "zero copy", "copy mode"),
        mode(native, "native", "generic"),
        group(n.get("xdp_rx_fill_ring_empty_descs")),
        group(n.get("tx_ring_full")),
        group(n.get("xdp_rx_invalid_descs") + n.get("rx_invalid")),
        group(n.get("xdp_tx_invalid_descs")),
        group(n.get("xdp_rx_dropped")),
        group(n.get("xdp_rx_ring_full")),
    ))
}

fn link_drops(e: &Engine, links: &[String]) -> u64 {
    links.iter().filter_map(|l| e.link_counters(l)).map(|c| c.txdrop).sum()
}

fn port_rows(e: &Engine, g: &Graph, p: &PortApps) -> (Row, Row) {
    let v = Counts::of(e, Some(&p.vhost));
    let pool = Counts::of(e, p.pool.as_ref());
    let mut to = Row { frames: v.get("tx_packets"), bytes: v.get("tx_bytes"), ..Row::default() };
    to.drop(Why::NoGuest, v.get("tx_no_guest"));
    to.drop(Why::NotTaken, v.get("tx_backlog_drops"));
    to.drop(Why::TooBig, v.get("tx_no_room"));
    to.drop(Why::Tunnel, Counts::of(e, p.decap.as_ref()).get("rejected"));
    let f = Counts::of(e, p.to_guest_filter.as_ref());
    to.drop(Why::Filter, f.get("rejected"));
    to.drop(Why::Rate, Counts::of(e, p.to_guest_limit.as_ref()).get("dropped"));
    to.drop(Why::QueueFull, link_drops(e, &p.to_guest_links));
    to.drop(Why::NicQueue, pool.get("rxdrop"));

    let mut from = Row { frames: v.get("rx_packets"), bytes: v.get("rx_bytes"), ..Row::default() };
    let bad = ["rx_bad_descriptor", "rx_too_short", "rx_too_long", "rx_bad_csum", "rx_no_output"];
    from.drop(Why::Malformed, bad.iter().map(|k| v.get(k)).sum());
    from.drop(Why::Rate, Counts::of(e, p.from_guest_limit.as_ref()).get("dropped"));
    from.drop(Why::Filter, Counts::of(e, p.from_guest_filter.as_ref()).get("rejected"));
    let enc = Counts::of(e, p.encap.as_ref());
    from.drop(Why::Tunnel, enc.get("truncated") + enc.get("too_long") + enc.get("dropped"));
    from.drop(Why::QueueFull, link_drops(e, &p.from_guest_links));
    from.drop(Why::NicRefused, pool.get("txdrop"));
    let _ = g;
    (to, from)
}

/// The uplink: (from the wire, to the wire, frames that arrived in all).
fn uplink_rows(e: &mut Engine, g: &Graph) -> Option<(Row, Row, u64)> {
    let u = &g.uplink;
    let (mut rx, mut tx) = (Row::default(), Row::default());
    if let Some(pool) = g.ports.iter().find_map(|p| p.pool.clone()) {
        // An 82599: the port's own counters, from its driver, on the worker
        // the pool runs on.
        let (hw, model) = e.with_app(&pool, |app: &mut Intel10g| (app.hw_stats(), app.model().map(|m| m.stats())))?;
        // Frames the filters accepted, and those they did not.
        rx.frames = hw.rx_packets;
        rx.bytes = hw.rx_bytes;
        let errors = hw.rx_errors;
        rx.drop(Why::NoPort, hw.rx_total.saturating_sub(hw.rx_packets + hw.rx_missed + errors));
        rx.drop(Why::Missed, hw.rx_missed);
        rx.drop(Why::BadFrame, errors);
        // What the pools sent: to the wire, or to another pool inside.
        tx.frames = hw.tx_packets;
        tx.bytes = hw.tx_bytes;
        if let Some(m) = model {
            tx.drop(Why::UplinkDown, m.tx_link_down);
        }
        return Some((rx, tx, hw.rx_total));
    }
    let sw = Counts::of(e, u.switch.as_ref());
    let out = u.out_link.as_slice();
    rx.drop(Why::NoPort, sw.get("drop/unknown_unicast") + sw.get("drop/vlan") + sw.get("drop/no_pool"));
    rx.drop(Why::BadFrame, sw.get("drop/runt"));
    rx.drop(Why::QueueFull, link_drops(e, &u.links));
    tx.drop(Why::QueueFull, link_drops(e, out));
    if !u.nics.is_empty() {
        // Every queue's app together.
        let n = Counts::sum(e, &u.nics);
        let afxdp = u.class == Some("AfXdp");
        // Dropped after the app counted them: bad descriptors, too long.
        rx.drop(Why::Oversize, n.get("rx_oversize"));
        rx.drop(Why::BadFrame, n.get("rx_invalid"));
        rx.drop(Why::NoPort, n.get("rx_no_link"));
        // Frames passed on to the ports (the rest are counted as drops).
        let dropped: u64 = rx.drops.values().sum();
        rx.frames = n.get("rx_packets").saturating_sub(dropped);
        rx.bytes = n.get("rx_bytes");
        // Dropped by the kernel before the app saw them: RawSocket's ring
        // was full; AF_XDP's RX ring was full, or it had no fill frame
        // (the kernel's XDP_STATISTICS).
        let kernel = if afxdp { n.get("xdp_rx_ring_full") + n.get("xdp_rx_dropped") } else { n.get("rx_kernel_drops") };
        rx.drop(Why::KernelRing, kernel);
        tx.frames = n.get("tx_packets");
        tx.bytes = n.get("tx_bytes");
        tx.drop(
            Why::UplinkDown,
            n.get("tx_down_drops")
                + n.get("tx_errors")
                + n.get("tx_oversize")
                + n.get("tx_runt")
                + n.get("xdp_tx_invalid_descs"),
        );
    } else if u.switch.is_some() {
        tx.drop(Why::NoUplink, sw.get("drop/unlinked"));
    } else {
        return None;
    }
    let arrived = rx.frames + rx.drops.values().sum::<u64>();
    Some((rx, tx, arrived))
}

/// Reports, with rates since the previous one.
/// A sample's time and its (packets, bytes) by port.
type Sample = (Instant, BTreeMap<String, (u64, u64)>);

pub struct Reporter {
    last: Option<Sample>,
    start: Instant,
}

impl Reporter {
    /// Times count from now.
    pub fn new() -> Reporter {
        Reporter { last: None, start: Instant::now() }
    }

    pub fn report(&mut self, e: &mut Engine, g: &Graph) -> String {
        let now = Instant::now();
        let start = self.start;
        let mut rows: Vec<(String, &'static str, Row)> = Vec::new();
        let mut arrived = 0;
        if let Some((rx, tx, n)) = uplink_rows(e, g) {
            arrived = n;
            let hw = g.ports.iter().any(|p| p.pool.is_some());
            rows.push(("uplink".into(), "from the wire", rx));
            rows.push((String::new(), if hw { "sent by ports" } else { "to the wire" }, tx));
        }
        for p in &g.ports {
            let (to, from) = port_rows(e, g, p);
            rows.push((p.name.clone(), "to the guest", to));
            rows.push((String::new(), "from the guest", from));
        }
        let mut s = format!(
            "--- {:.1} s -------------------------------------------------------------------------\n",
            (now - start).as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<12} {:<15} {:>15} {:>9} {:>9}  dropped (why: see the legend above)",
            "port", "direction", "frames", "Mpps", "Gbit/s"
        );
        let mut seen = BTreeMap::new();
        let mut port = String::new();
        for (name, dir, r) in &rows {
            if !name.is_empty() {
                port = name.clone();
            }
            let key = format!("{port}/{dir}");
            let (mpps, gbps) = match self.last.as_ref().and_then(|(t, m)| m.get(&key).map(|v| (*t, *v))) {
                Some((t, (f0, b0))) => {
                    let secs = (now - t).as_secs_f64().max(1e-6);
                    (
                        r.frames.saturating_sub(f0) as f64 / secs / 1e6,
                        r.bytes.saturating_sub(b0) as f64 * 8.0 / secs / 1e9,
                    )
                }
                None => (0.0, 0.0),
            };
            seen.insert(key, (r.frames, r.bytes));
            let drops: Vec<String> = r.drops.iter().map(|(w, n)| format!("{} {}", w.name(), group(*n))).collect();
            let drops = if drops.is_empty() { "-".to_string() } else { drops.join(", ") };
            let _ = writeln!(s, "{name:<12} {dir:<15} {:>15} {mpps:>9.3} {gbps:>9.3}  {drops}", group(r.frames));
        }
        if let Some(line) = afxdp_line(e, g) {
            s += &line;
        }
        if !g.uplink.flows.is_empty() {
            let sent: u64 = g.uplink.flows.iter().map(|(a, _)| Counts::of(e, Some(a)).get("sent")).sum();
            let back = Counts::of(e, g.uplink.far_sink.as_ref()).get("packets");
            let far =
                g.uplink.far.as_ref().and_then(|f| e.with_app(f, |a: &mut Intel10g| a.model().map(|m| m.stats())));
            let lost = far.flatten().map_or(0, |m| m.tx_link_down);
            let _ = writeln!(
                s,
                "generator: {} frames offered on the wire: {} arrived at the uplink, {} lost before the link was up, \
                 {} on their way (in the models' queues); {} came back out of the uplink",
                group(sent),
                group(arrived),
                group(lost),
                group(sent.saturating_sub(arrived + lost)),
                group(back)
            );
        }
        self.last = Some((now, seen));
        s
    }
}
