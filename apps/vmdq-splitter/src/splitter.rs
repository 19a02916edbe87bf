//! VMDQ SPLITTER: one input, one output per pool, pools chosen as the
//! 82599 chooses them (see `filters`).
//!
//! With a `wire` output the pools also send: an input named after a pool
//! is that pool's transmit queue. What it sends gets the pool's tag if the
//! pool strips it (PFVMVIR), goes to the other local pools that take it
//! (PFDTXGSWC.LBE, `vm_to_vm`), as a frame from the wire would but never
//! back to its sender and never to the default pool, and out on `wire`
//! unless it is unicast to a local pool's address (7.10.3.4).
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
    /// The wire's output port, when linked.
    wire: Option<usize>,
    /// By input port: the pool that sends on it (when the pools send).
    sources: Vec<Option<usize>>,
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
    /// By pool number: frames the pool sent.
    sent: Box<[PoolCount; MAX_POOLS]>,
    /// Frames out on the wire, and those for it with no wire linked.
    wire: PoolCount,
    wire_unlinked: u64,
    /// Frames a pool sent that reached another local pool.
    looped: u64,
}

impl AppClass for VmdqSplitter {
    type Args = Checked;
    /// Outputs: one per pool, named after it, and `wire` when set (see `ports`).
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);

    fn ports(args: &Checked) -> PortSpec {
        let outputs = args.0.pools.iter().map(|p| p.name.clone()).chain(args.0.wire.clone()).collect();
        PortSpec::owned(vec!["*".into()], outputs)
    }

    fn new(args: Checked, _ctx: &AppContext) -> anyhow::Result<VmdqSplitter> {
        let filters = compile(&args.0)?;
        let n = filters.len();
        let mut s = VmdqSplitter {
            filters,
            ports: vec![None; n],
            linked: 0,
            stale: true,
            wire: None,
            sources: Vec::new(),
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
        let fresh = Counters::new(n);
        let mut c = Counters { pools: fresh.pools, sent: fresh.sent, unlinked: vec![0; n], ..old.clone() };
        for (i, name) in filters.names.iter().enumerate() {
            if let Some(j) = self.filters.names.iter().position(|o| o == name) {
                c.pools[i] = old.pools[j];
                c.sent[i] = old.sent[j];
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
            sent: Box::new([PoolCount::default(); MAX_POOLS]),
            wire: PoolCount::default(),
            wire_unlinked: 0,
            looped: 0,
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
        let wire = self.filters.wire.as_deref();
        for (port, _) in io.output.named() {
            if !self.filters.names.iter().any(|n| n == port) && Some(port) != wire {
                log::warn!("VmdqSplitter: output `{port}` is not a pool: nothing will be sent on it");
            }
        }
        self.wire = wire.and_then(|w| io.output.index_of(w));
        self.sources = io
            .input
            .named()
            .map(|(port, _)| wire.and_then(|_| self.filters.names.iter().position(|n| n == port)))
            .collect();
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
            let d = headers(&p);
            let len = p.len();
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

impl VmdqSplitter {
    /// Frames pool `s` sent (the input named after it): to the other local
    /// pools that take them and to the wire, as the 82599's internal switch
    /// sends them (see the module comment).
    fn send(&mut self, s: usize, input: &Link, links: &[Option<&Link>; MAX_POOLS], wire: Option<&Link>) {
        let mut out = Outputs { links };
        let c = &mut self.c;
        let f = &self.filters;
        let linked = self.linked;
        let me = 1u64 << s;
        let tag = if f.strip & me != 0 { f.pool_vlans[s] } else { 0 };
        for mut p in input.drain() {
            let sent = &mut c.sent[s & (MAX_POOLS - 1)];
            sent.packets += 1;
            sent.bytes += p.len() as u64;
            if p.len() < 14 {
                c.drops[Reason::Runt as usize] += 1;
                continue;
            }
            if tag != 0 {
                insert_tag(&mut p, tag);
            }
            let d = headers(&p);
            let mac = u64::from_le_bytes(d[..8].try_into().unwrap()) & MAC_BITS;
            let tagged = d[12] == 0x81 && d[13] == 0x00;
            if tagged && p.len() < 18 {
                c.drops[Reason::Runt as usize] += 1;
                continue;
            }
            let vid = if tagged { u16::from_be_bytes([d[14], d[15]]) & 0x0fff } else { 0 };
            // Local pools that take it; `exact`: by an address a pool names.
            let (pools, strip, exact) = if !f.vm_to_vm {
                (0, 0, false)
            } else {
                match f.table.get(mac | (vid as u64) << 48) {
                    Some(r) => (r.pools, r.strip, true),
                    None => match f.miss(mac, vid) {
                        Verdict::Deliver(r) => (r.pools, r.strip, false),
                        // Unknown unicast, a VLAN no pool has: the wire's.
                        Verdict::Default(_) | Verdict::Drop(_) => (0, 0, false),
                    },
                }
            };
            let pools = pools & !me;
            let to_wire = !(mac & 1 == 0 && exact && pools != 0);
            if pools != 0 {
                c.looped += 1;
            }
            if pools & !linked != 0 {
                count_unlinked(c, pools & !linked);
            }
            // A copy for each local pool; the frame itself to the wire, or
            // to the last pool when it stays inside.
            let mut rest = pools & linked;
            let mut frame = Some(p);
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let q = if rest == 0 && !to_wire {
                    frame.take().unwrap()
                } else {
                    c.replicas += 1;
                    frame.as_ref().unwrap().clone()
                };
                deliver(c, &mut out, i, q, strip);
            }
            if let Some(p) = frame.filter(|_| to_wire) {
                match wire {
                    Some(w) => {
                        c.wire.packets += 1;
                        c.wire.bytes += p.len() as u64;
                        w.transmit(p);
                    }
                    None => c.wire_unlinked += 1,
                }
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

/// The bytes the rules read (the Ethernet header and a VLAN tag) without
/// flattening a split packet: its head (a lent guest frame's first
/// `SNAPSHOT` bytes, copied into host memory) holds them, and its tail
/// stays lent, to be copied once, where it goes. Reading `data()` would
/// copy the tail into the head first: a second copy of every lent frame.
#[inline(always)]
fn headers(p: &Packet) -> &[u8] {
    let h = p.head();
    if h.len() >= HEADERS || h.len() == p.len() { h } else { p.data() }
}

/// Bytes of a frame the rules read and the tag edits touch: addresses,
/// one 802.1Q tag, the type after it.
const HEADERS: usize = 18;

/// Add an 802.1Q tag (priority 0): the start moves back 4 bytes and the
/// addresses move down over the room made (in the head: a split packet
/// stays split).
#[inline]
fn insert_tag(p: &mut Packet, vid: u16) {
    p.shift_right(4);
    let d = head_mut(p);
    d.copy_within(4..16, 0);
    d[12..14].copy_from_slice(&[0x81, 0x00]);
    d[14..16].copy_from_slice(&vid.to_be_bytes());
}

/// The first HEADERS bytes writable, in the head when it holds them (see
/// `headers`).
#[inline(always)]
fn head_mut(p: &mut Packet) -> &mut [u8] {
    if p.head().len() >= HEADERS || !p.is_split() { p.head_mut() } else { p.data_mut() }
}

/// Remove the 802.1Q tag: the addresses move up over it and the start moves
/// past them (the payload stays where it is).
#[inline]
fn strip_tag(p: &mut Packet) {
    head_mut(p).copy_within(0..12, 4);
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
        let wire = self.wire.map(|k| io.output.at(k));
        for (k, input) in io.input.iter().enumerate() {
            if input.is_empty() {
                continue;
            }
            match self.sources.get(k).copied().flatten() {
                Some(pool) => self.send(pool, input, &links, wire),
                None => self.split(input, &links),
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
        emit("drop/unlinked", c.unlinked.iter().sum::<u64>() + c.wire_unlinked);
        emit("default", c.to_default);
        emit("replicas", c.replicas);
        if self.filters.wire.is_some() {
            for (i, n) in self.filters.names.iter().enumerate() {
                emit(&format!("pool/{n}/sent_packets"), c.sent[i].packets);
                emit(&format!("pool/{n}/sent_bytes"), c.sent[i].bytes);
            }
            emit("wire/packets", c.wire.packets);
            emit("wire/bytes", c.wire.bytes);
            emit("looped", c.looped);
        }
    }

    fn report(&self, out: &mut String) {
        let c = &self.c;
        out.push_str(&format!(
            "{} frames in, {} replicas, {} to the default pool\n",
            c.rxpackets, c.replicas, c.to_default
        ));
        for (i, n) in self.filters.names.iter().enumerate() {
            let unlinked = if c.unlinked[i] > 0 { format!(" ({} unlinked)", c.unlinked[i]) } else { String::new() };
            let sent =
                if self.filters.wire.is_some() { format!("; sent {}", c.sent[i].packets) } else { String::new() };
            out.push_str(&format!(
                "pool {n}: {} packets, {} bytes{unlinked}{sent}\n",
                c.pools[i].packets, c.pools[i].bytes
            ));
        }
        if let Some(w) = &self.filters.wire {
            out.push_str(&format!(
                "to the wire (`{w}`): {} packets, {} bytes; {} switched between pools\n",
                c.wire.packets, c.wire.bytes, c.looped
            ));
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
