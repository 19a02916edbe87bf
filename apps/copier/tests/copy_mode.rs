//! A link's copy mode (`copy: Zero` or `copy: Simd`) with traffic on it:
//! both modes deliver every packet, switching between them by live
//! reconfiguration loses nothing, and in Simd mode a foreign buffer goes
//! back to its owner the moment it is sent, while the consumer gets a host
//! copy of it.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use snabb_apps_basic::{Sink, Source};
use snabb_core::packet::{self, BufferOwner, ForeignBuffer};
use snabb_core::{
    App, AppClass, AppContext, Args, Config, CopyMode, Engine, Io, Limit, Link, LinkSettings, PortSpec, Registry,
};

/// Where a numbered Source frame keeps its sequence number.
const SEQ_AT: usize = 14;

/// Checks the sequence numbers of Source frames and passes them on.
#[derive(Default)]
struct InOrder {
    got: u64,
    next: u32,
    out_of_order: u64,
    foreign: u64,
}

impl AppClass for InOrder {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(_: (), _: &AppContext) -> anyhow::Result<InOrder> {
        Ok(InOrder::default())
    }
    fn reconfigure(&mut self, _: (), _: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for InOrder {
    fn push(&mut self, io: &Io) {
        let (Some(i), Some(o)) = (io.input.first(), io.output.first()) else { return };
        for p in i.drain() {
            let seq = u32::from_be_bytes(p.data()[SEQ_AT..SEQ_AT + 4].try_into().unwrap());
            if seq != self.next {
                self.out_of_order += 1;
            }
            self.next = seq.wrapping_add(1);
            self.got += 1;
            self.foreign += p.is_foreign() as u64;
            o.transmit(p);
        }
    }
}

/// Lends foreign buffers (a stand-in for a guest's buffers): up to `BURST`
/// a breath from a pool of `POOL`, each filled with a pattern of its
/// token and a serial number, taking them back from its return ring.
struct Lender {
    owner: BufferOwner,
    bufs: Rc<RefCell<Vec<[u8; BUF]>>>,
    free: Vec<u64>,
    lent: u64,
    returned: u64,
    /// Buffers still out right after a pull sent its burst, summed.
    out_after_send: u64,
}

const POOL: usize = 256;
const BURST: usize = 32;
const BUF: usize = 2048;

fn pattern(serial: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (serial as usize * 31 + i * 7) as u8).collect()
}

fn length_of(serial: u64) -> usize {
    60 + (serial as usize * 97) % (BUF - 64 - 60)
}

impl AppClass for Lender {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(_: (), _: &AppContext) -> anyhow::Result<Lender> {
        let bufs = Rc::new(RefCell::new(vec![[0u8; BUF]; POOL]));
        let keep: Rc<dyn std::any::Any> = bufs.clone();
        Ok(Lender {
            owner: BufferOwner::register("test-lender", Some(keep)),
            bufs,
            free: (0..POOL as u64).collect(),
            lent: 0,
            returned: 0,
            out_after_send: 0,
        })
    }
}

impl App for Lender {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let free = &mut self.free;
        let mut back = 0;
        self.owner.drain_returns(|t| {
            free.push(t);
            back += 1;
        });
        self.returned += back;
        let Some(out) = io.output.first() else { return };
        for _ in 0..BURST {
            let Some(token) = self.free.pop() else { break };
            let len = length_of(self.lent);
            let mut bufs = self.bufs.borrow_mut();
            let b = &mut bufs[token as usize];
            b[64..64 + len].copy_from_slice(&pattern(self.lent, len));
            let base = NonNull::new(b.as_mut_ptr()).unwrap();
            // SAFETY: the buffer lives in `bufs`, which the owner keeps
            // alive until every buffer is back; the token is not out.
            let p = unsafe {
                self.owner.wrap(ForeignBuffer {
                    base,
                    cap: BUF as u32,
                    dma: 0,
                    start: 64,
                    len: len as u32,
                    token,
                    fixed_start: true,
                })
            };
            out.transmit(p);
            self.lent += 1;
        }
        self.out_after_send += self.owner.outstanding();
    }
}

/// Checks the Lender's packets (content by serial number) and counts how
/// many arrive as foreign buffers.
#[derive(Default)]
struct Inspect {
    got: u64,
    foreign: u64,
    host: u64,
    corrupt: u64,
}

impl AppClass for Inspect {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["*"], &["*"]);
    fn new(_: (), _: &AppContext) -> anyhow::Result<Inspect> {
        Ok(Inspect::default())
    }
}

impl App for Inspect {
    fn push(&mut self, io: &Io) {
        for l in io.input.iter() {
            for p in l.drain() {
                if p.data() != pattern(self.got, length_of(self.got)) {
                    self.corrupt += 1;
                }
                if p.is_foreign() {
                    self.foreign += 1;
                } else {
                    self.host += 1;
                }
                self.got += 1;
            }
        }
    }
}

fn registry() -> Registry {
    let mut r = snabb_apps_copier::registry();
    r.register::<InOrder>("InOrder", "checks sequence numbers")
        .register::<Lender>("Lender", "lends foreign buffers")
        .register::<Inspect>("Inspect", "checks lent packets");
    r
}

fn with_copy(copy: CopyMode) -> LinkSettings {
    LinkSettings { copy, ..LinkSettings::default() }
}

#[test]
fn both_modes_deliver_every_packet() {
    for mode in [CopyMode::Zero, CopyMode::Simd] {
        let before = packet::stats();
        {
            let mut c = Config::new();
            c.app_args(
                "src",
                "Source",
                Args::from_ron("(sizes: [60, 1514, 9000], count: 30000, numbered: true)").unwrap(),
            )
            .app("check", "InOrder", &())
            .app("sink", "Sink", &())
            .link_with("src.output -> check.input", with_copy(mode))
            .link("check.output -> sink.input");
            let mut e = Engine::new(registry());
            e.configure(&c).unwrap();
            assert!(e.run_until(|e| e.app::<Sink>("sink").unwrap().packets() == 30000, Duration::from_secs(30)));
            let l = e.link_counters("src.output -> check.input").unwrap();
            assert_eq!((l.txpackets, l.rxpackets, l.txdrop), (30000, 30000, 0), "{mode:?}");
            let bytes = 10000 * (60 + 1514 + 9000);
            assert_eq!(l.txbytes, bytes);
            // Host packets are never copied by a link: they are detached
            // already (foreign ones are: see the lender tests below).
            assert_eq!(l.copybytes, 0, "{mode:?}");
            assert_eq!(e.app::<InOrder>("check").unwrap().out_of_order, 0);
            assert_eq!(e.app::<Sink>("sink").unwrap().bytes(), bytes);
        }
        assert_eq!(packet::stats().in_use, before.in_use, "{mode:?}: every packet went home");
    }
}

/// Source -> InOrder -> Sink, with the first link's copy mode flipped every
/// few breaths by reconfiguring the running engine.
#[test]
fn switching_modes_live_conserves_packets() {
    let before = packet::stats();
    let graph = |mode: CopyMode| {
        let mut c = Config::new();
        c.app_args("src", "Source", Args::from_ron("(sizes: [60, 300, 1514], count: 200000, numbered: true)").unwrap())
            .app("check", "InOrder", &())
            .app("sink", "Sink", &())
            .link_with("src.output -> check.input", with_copy(mode))
            .link("check.output -> sink.input");
        c
    };
    let first = "src.output -> check.input";
    {
        let mut e = Engine::new(registry());
        e.configure(&graph(CopyMode::Zero)).unwrap();
        let mut mode = CopyMode::Zero;
        let mut switches = 0;
        let (mut copied_in_zero, mut copied_in_simd) = (0, 0);
        while e.app::<Source>("src").unwrap().sent() < 200_000 {
            let c0 = e.link_counters(first).unwrap().copybytes;
            e.run(Limit::Breaths(17));
            let c1 = e.link_counters(first).unwrap().copybytes;
            match mode {
                CopyMode::Zero => copied_in_zero += c1 - c0,
                CopyMode::Simd => copied_in_simd += c1 - c0,
            }
            mode = if mode == CopyMode::Zero { CopyMode::Simd } else { CopyMode::Zero };
            e.configure(&graph(mode)).unwrap();
            assert_eq!(e.link(first).unwrap().copy_mode(), mode);
            switches += 1;
        }
        e.run(Limit::Breaths(3));
        assert!(switches > 10, "only {switches} switches");
        assert_eq!(copied_in_zero, 0, "nothing is copied in Zero mode");
        assert_eq!(copied_in_simd, 0, "host packets are not copied in Simd mode either");

        // Conservation: what the source sent is what the sink got, plus
        // counted drops (none expected here), with no packet reordered.
        let sent = e.app::<Source>("src").unwrap().sent();
        let l = e.link_counters(first).unwrap();
        let l2 = e.link_counters("check.output -> sink.input").unwrap();
        let sink = e.app::<Sink>("sink").unwrap().packets();
        assert_eq!(sent, 200_000);
        assert_eq!(sent, l.txpackets + l.txdrop);
        assert_eq!(l.txpackets, e.app::<InOrder>("check").unwrap().got);
        assert_eq!(sink + l.txdrop + l2.txdrop + e.stats().reconfig_drops, sent);
        assert_eq!(sink, sent, "no drops at all");
        assert_eq!(e.app::<InOrder>("check").unwrap().out_of_order, 0);
        assert_eq!(e.stats().reconfig_drops, 0, "a link whose mode changes keeps its packets");
    }
    assert_eq!(packet::stats().in_use, before.in_use, "every packet went home");
}

/// In Simd mode a lent buffer is back on its owner's return ring as soon
/// as it is sent, and the consumer sees a host packet with the same bytes;
/// in Zero mode the consumer gets the lent buffer itself. Switched live.
#[test]
fn simd_mode_sends_foreign_buffers_home_at_once() {
    let host_before = packet::stats().in_use;
    let graph = |mode: CopyMode| {
        let mut c = Config::new();
        c.app("lender", "Lender", &())
            .app("inspect", "Inspect", &())
            .link_with("lender.output -> inspect.input", with_copy(mode));
        c
    };
    let mut e = Engine::new(registry());
    let mut expect_got = 0;
    for (round, mode) in
        [CopyMode::Simd, CopyMode::Zero, CopyMode::Simd, CopyMode::Zero, CopyMode::Simd].into_iter().enumerate()
    {
        e.configure(&graph(mode)).unwrap();
        let (lent0, out0) = {
            let l = e.app::<Lender>("lender").unwrap();
            (l.lent, l.out_after_send)
        };
        let (f0, h0) = {
            let i = e.app::<Inspect>("inspect").unwrap();
            (i.foreign, i.host)
        };
        e.run(Limit::Breaths(40));
        let l = e.app::<Lender>("lender").unwrap();
        let i = e.app::<Inspect>("inspect").unwrap();
        let lent = l.lent - lent0;
        assert_eq!(lent, 40 * BURST as u64, "round {round}: the pool never ran dry");
        expect_got += lent;
        match mode {
            CopyMode::Simd => {
                assert_eq!(l.out_after_send - out0, 0, "round {round}: every buffer home right after the send");
                assert_eq!((i.foreign - f0, i.host - h0), (0, lent), "round {round}: the consumer got host copies");
            }
            CopyMode::Zero => {
                assert_eq!(l.out_after_send - out0, 40 * BURST as u64, "round {round}: buffers out until consumed");
                assert_eq!(
                    (i.foreign - f0, i.host - h0),
                    (lent, 0),
                    "round {round}: the consumer got the lent buffers"
                );
            }
        }
        assert_eq!(i.corrupt, 0, "round {round}: contents intact");
        assert_eq!(i.got, expect_got);
    }
    let l = e.app::<Lender>("lender").unwrap();
    assert_eq!(l.lent - l.returned, l.owner.outstanding() + l.owner.returns_pending() as u64);
    let lc = e.link_counters("lender.output -> inspect.input").unwrap();
    assert!(lc.copybytes > 0);
    e.stop();
    drop(e);
    assert_eq!(packet::stats().in_use, host_before, "every host copy was freed");
}

/// The same at the level of one link, without an engine.
#[test]
fn one_link_detaches_a_foreign_buffer() {
    let owner = BufferOwner::register("one-link", None);
    let mut buf = [0u8; 256];
    buf[10..20].copy_from_slice(b"0123456789");
    let mut lend = |token| {
        // SAFETY: `buf` outlives every packet made here (all are dropped
        // or reclaimed before the end of the test).
        unsafe {
            owner.wrap(ForeignBuffer {
                base: NonNull::new(buf.as_mut_ptr()).unwrap(),
                cap: 256,
                dma: 0,
                start: 10,
                len: 10,
                token,
                fixed_start: false,
            })
        }
    };
    let l = Link::new(8);
    l.set_copy_mode(CopyMode::Simd);
    l.transmit(lend(1));
    assert_eq!(owner.outstanding(), 0, "home before anyone received it");
    assert_eq!(owner.returns_pending(), 1);
    let p = l.receive().unwrap();
    assert!(!p.is_foreign());
    assert_eq!(p.data(), b"0123456789");
    assert_eq!(p.headroom(), packet::HEADROOM, "a fresh buffer with the full headroom");
    assert_eq!(l.counters().copybytes, 10);

    l.set_copy_mode(CopyMode::Zero);
    l.transmit(lend(2));
    assert_eq!(owner.outstanding(), 1, "in Zero mode the buffer itself travels");
    let q = l.receive().unwrap();
    assert!(q.is_foreign());
    assert_eq!(owner.reclaim(q).unwrap().token, 2);
    let mut tokens = vec![];
    owner.drain_returns(|t| tokens.push(t));
    assert_eq!(tokens, [1]);
    assert_eq!(l.counters().copybytes, 10, "nothing copied in Zero mode");
}
