//! VMDQ SPLITTER: one input, one output per pool, pools chosen as the
//! 82599 chooses them (see `filters`).
//!
//! Per packet: one 8-byte load for the destination MAC, a look at the
//! ethertype for an 802.1Q tag, one table lookup, one transmit. A frame for
//! one pool moves on in its own buffer; a frame for several is copied for
//! all but the last of them. (Batch senders, one per pool, cost more than
//! they save here: with many pools each gets only a frame or two a breath,
//! and a table of 64 of them must be set up every breath.)

use snabb_core::{App, AppClass, AppContext, Io, Link, Packet, PortSpec};

use crate::args::{Checked, MAX_POOLS, VmdqSplitterArgs};
use crate::filters::{Filters, Reason, Verdict};
use crate::table::{MAC_BITS, Route};

pub struct VmdqSplitter {
    filters: Filters,
    /// Output port index of each pool, when it is linked.
    ports: Vec<Option<usize>>,
    /// Pools whose output is linked.
    linked: u64,
    /// Ports must be looked up again (new ports, or new pools).
    stale: bool,
    c: Counters,
    /// Counter names, made once: `pool/<name>/packets` and `.../bytes`.
    names: Vec<(String, String)>,
}

#[derive(Clone, Copy, Default)]
struct PoolCount {
    packets: u64,
    bytes: u64,
}

#[derive(Clone)]
struct Counters {
    rxpackets: u64,
    rxbytes: u64,
    /// By pool number; 64 of them, so that an index masked to 6 bits needs
    /// no bounds check.
    pools: Box<[PoolCount; MAX_POOLS]>,
    /// Frames for pools whose output is not linked.
    unlinked: Vec<u64>,
    drops: [u64; Reason::ALL.len()],
    to_default: u64,
    replicas: u64,
}

impl AppClass for VmdqSplitter {
    type Args = Checked;
    /// Outputs: one per pool, named after it (see `ports`).
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);

    fn ports(args: &Checked) -> PortSpec {
        PortSpec::owned(vec!["*".into()], args.0.pools.iter().map(|p| p.name.clone()).collect())
    }

    fn new(args: Checked, _ctx: &AppContext) -> anyhow::Result<VmdqSplitter> {
        let filters = compile(&args.0)?;
        let n = filters.len();
        let mut s = VmdqSplitter {
            filters,
            ports: vec![None; n],
            linked: 0,
            stale: true,
            c: Counters::new(n),
            names: Vec::new(),
        };
        s.name_counters();
        Ok(s)
    }

    /// New pools take effect between two breaths; counters of pools that
    /// keep their name carry on.
    fn reconfigure(&mut self, args: Checked, _ctx: &AppContext) -> anyhow::Result<bool> {
        let filters = compile(&args.0)?;
        let n = filters.len();
        let old = self.c.clone();
        let mut c = Counters { pools: Counters::new(n).pools, unlinked: vec![0; n], ..old.clone() };
        for (i, name) in filters.names.iter().enumerate() {
            if let Some(j) = self.filters.names.iter().position(|o| o == name) {
                c.pools[i] = old.pools[j];
                c.unlinked[i] = old.unlinked[j];
            }
        }
        self.c = c;
        self.filters = filters;
        self.ports = vec![None; n];
        self.linked = 0;
        self.stale = true;
        self.name_counters();
        Ok(true)
    }
}

impl Counters {
    fn new(pools: usize) -> Counters {
        Counters {
            rxpackets: 0,
            rxbytes: 0,
            pools: Box::new([PoolCount::default(); MAX_POOLS]),
            unlinked: vec![0; pools],
            drops: [0; Reason::ALL.len()],
            to_default: 0,
            replicas: 0,
        }
    }
}

fn compile(a: &VmdqSplitterArgs) -> anyhow::Result<Filters> {
    let f = Filters::build(a).map_err(anyhow::Error::msg)?;
    for w in &f.warnings {
        log::warn!("VmdqSplitter: {w}; fine in software, but an 82599 could not take this config");
    }
    Ok(f)
}

impl VmdqSplitter {
    fn name_counters(&mut self) {
        self.names =
            self.filters.names.iter().map(|n| (format!("pool/{n}/packets"), format!("pool/{n}/bytes"))).collect();
    }

    fn resolve(&mut self, io: &Io) {
        self.linked = 0;
        for (i, name) in self.filters.names.iter().enumerate() {
            self.ports[i] = io.output.index_of(name);
            if self.ports[i].is_some() {
                self.linked |= 1 << i;
            }
        }
        for (port, _) in io.output.named() {
            if !self.filters.names.iter().any(|n| n == port) {
                log::warn!("VmdqSplitter: output `{port}` is not a pool: nothing will be sent on it");
            }
        }
        self.stale = false;
    }

    /// Packets delivered to pool `name` (replicas and default-pool frames
    /// included).
    pub fn pool_packets(&self, name: &str) -> Option<u64> {
        self.filters.names.iter().position(|n| n == name).map(|i| self.c.pools[i].packets)
    }

    /// Frames dropped for `reason`.
    pub fn drops(&self, reason: Reason) -> u64 {
        self.c.drops[reason as usize]
    }

    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    fn split(&mut self, input: &Link, links: &[Option<&Link>; MAX_POOLS]) {
        let mut out = Outputs { links };
        let c = &mut self.c;
        let filters = &self.filters;
        let linked = self.linked;
        let batch = input.drain();
        c.rxpackets += batch.len() as u64;
        for p in batch {
            let d = p.data();
            let len = d.len();
            c.rxbytes += len as u64;
            if len < 14 {
                c.drops[Reason::Runt as usize] += 1;
                continue;
            }
            let mac = u64::from_le_bytes(d[..8].try_into().unwrap()) & MAC_BITS;
            let tagged = d[12] == 0x81 && d[13] == 0x00;
            let vid = if tagged {
                if len < 18 {
                    c.drops[Reason::Runt as usize] += 1;
                    continue;
                }
                u16::from_be_bytes([d[14], d[15]]) & 0x0fff
            } else {
                0
            };
            let route = match filters.table.get(mac | (vid as u64) << 48) {
                Some(r) => r,
                None => match filters.miss(mac, vid) {
                    Verdict::Deliver(r) => r,
                    Verdict::Default(r) => {
                        c.to_default += 1;
                        r
                    }
                    Verdict::Drop(why) => {
                        c.drops[why as usize] += 1;
                        continue;
                    }
                },
            };
            let pools = route.pools & linked;
            if pools != route.pools {
                count_unlinked(c, route.pools & !linked);
            }
            if pools & pools.wrapping_sub(1) == 0 {
                // One pool (or none): the common case.
                if pools == 0 {
                    if route.pools == 0 {
                        c.drops[Reason::NoPool as usize] += 1;
                    }
                    continue;
                }
                deliver(c, &mut out, pools.trailing_zeros() as usize, p, route.strip);
            } else {
                replicate(c, &mut out, p, Route { pools, strip: route.strip });
            }
        }
    }
}

/// The pool links, by pool number (None: not linked).
struct Outputs<'a> {
    links: &'a [Option<&'a Link>; MAX_POOLS],
}

impl Outputs<'_> {
    #[inline(always)]
    fn send(&mut self, i: usize, p: Packet) {
        if let Some(l) = self.links[i & (MAX_POOLS - 1)] {
            l.transmit(p);
        }
    }
}

/// A frame for several pools: a copy for each but the last, which gets the
/// frame itself.
#[inline(never)]
fn replicate(c: &mut Counters, out: &mut Outputs, p: Packet, route: Route) {
    let mut rest = route.pools;
    loop {
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        if rest == 0 {
            deliver(c, out, i, p, route.strip);
            return;
        }
        c.replicas += 1;
        deliver(c, out, i, p.clone(), route.strip);
    }
}

#[inline(always)]
fn deliver(c: &mut Counters, out: &mut Outputs, i: usize, mut p: Packet, strip: u64) {
    if strip & 1 << i != 0 {
        strip_tag(&mut p);
    }
    let pc = &mut c.pools[i & (MAX_POOLS - 1)];
    pc.packets += 1;
    pc.bytes += p.len() as u64;
    out.send(i, p);
}

#[cold]
fn count_unlinked(c: &mut Counters, mut pools: u64) {
    while pools != 0 {
        c.unlinked[pools.trailing_zeros() as usize] += 1;
        pools &= pools - 1;
    }
}

/// Remove the 802.1Q tag: the addresses move up over it and the start moves
/// past them (the payload stays where it is).
#[inline]
fn strip_tag(p: &mut Packet) {
    p.data_mut().copy_within(0..12, 4);
    p.shift_left(4);
}

impl App for VmdqSplitter {
    fn link(&mut self, _io: &Io) {
        self.stale = true;
    }

    fn push(&mut self, io: &Io) {
        if self.stale {
            self.resolve(io);
        }
        let mut links: [Option<&Link>; MAX_POOLS] = [None; MAX_POOLS];
        for (i, port) in self.ports.iter().enumerate() {
            links[i] = port.map(|k| io.output.at(k));
        }
        for input in io.input.iter() {
            if !input.is_empty() {
                self.split(input, &links);
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let c = &self.c;
        emit("rxpackets", c.rxpackets);
        emit("rxbytes", c.rxbytes);
        for (i, (p, b)) in self.names.iter().enumerate() {
            emit(p, c.pools[i].packets);
            emit(b, c.pools[i].bytes);
        }
        for r in Reason::ALL {
            emit(r.counter(), c.drops[r as usize]);
        }
        emit("drop/unlinked", c.unlinked.iter().sum());
        emit("default", c.to_default);
        emit("replicas", c.replicas);
    }

    fn report(&self, out: &mut String) {
        let c = &self.c;
        out.push_str(&format!(
            "{} frames in, {} replicas, {} to the default pool\n",
            c.rxpackets, c.replicas, c.to_default
        ));
        for (i, n) in self.filters.names.iter().enumerate() {
            let unlinked = if c.unlinked[i] > 0 { format!(" ({} unlinked)", c.unlinked[i]) } else { String::new() };
            out.push_str(&format!("pool {n}: {} packets, {} bytes{unlinked}\n", c.pools[i].packets, c.pools[i].bytes));
        }
        let drops: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| c.drops[**r as usize] > 0)
            .map(|r| format!("{} {}", c.drops[*r as usize], r.name()))
            .collect();
        if !drops.is_empty() {
            out.push_str(&format!("dropped: {}\n", drops.join(", ")));
        }
    }
}
