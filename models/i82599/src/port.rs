//! ONE PORT OF THE MODEL
//!
//! A `Model82599` is one port (PCI function) of an 82599: a register file
//! with the datasheet's semantics and an engine thread that moves frames
//! between the wire and host memory through the descriptor rings.
//!
//! Registers. Plain registers hold what was written. The others behave as
//! the datasheet says: CTRL.RST/LRST start a reset that clears itself and
//! puts every register back to its reset value; EEC.Auto_RD and
//! RDRXCTL.DMAIDONE come up some time after a reset; LINKS.Link_Up comes
//! up some time after AUTOC.Restart_AN when there is carrier; statistics
//! clear when read (a 64-bit counter's high half is latched when its low
//! half is read); RXDCTL/TXDCTL.ENABLE reads back set only once the queue
//! has started, and clear once it has stopped. Writes are checked: see
//! `Violation`.
//!
//! Concurrency. Register words are atomics. The ring tails (RDT, TDT) are
//! written without a lock, as on the hot path of a real driver; everything
//! else that has side effects takes the state lock, which the engine also
//! holds while it works a step. Descriptor memory is shared with the
//! driver and touched only through `dma::Window` (atomic descriptor words,
//! ordered data copies).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::dma::{Dma, DmaFault, Iommu};
use crate::filter::{self, Layout, RegView};
use crate::regs::{self, Access, BAR_SIZE, Reg, TABLE, bits::*};
use crate::wire::{Wire, WireSpec};

/// Timing and identity of a model port.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// The burned-in MAC address (`RAL[0]`/`RAH[0]` after reset).
    pub mac: [u8; 6],
    /// STATUS.LAN_ID: which port of the dual-port chip this is.
    pub lan_id: u8,
    /// How long a reset takes before CTRL.RST clears.
    pub reset_delay: Duration,
    /// From the end of a reset to EEC.Auto_RD.
    pub eeprom_delay: Duration,
    /// From the end of a reset to RDRXCTL.DMAIDONE.
    pub dma_init_delay: Duration,
    /// From AUTOC.Restart_AN to LINKS.Link_Up (when there is carrier).
    pub link_delay: Duration,
    /// From RXDCTL/TXDCTL.ENABLE written to reading back set.
    pub enable_delay: Duration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            mac: [0x02, 0x82, 0x59, 0x90, 0, 0],
            lan_id: 0,
            reset_delay: Duration::from_micros(200),
            eeprom_delay: Duration::from_micros(300),
            dma_init_delay: Duration::from_micros(400),
            link_delay: Duration::from_millis(2),
            enable_delay: Duration::from_micros(20),
        }
    }
}

/// Something the driver did that the datasheet does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// Counters of the model itself (not registers): what happened on the
/// wire side, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Frames put on the wire.
    pub wire_tx: u64,
    /// Frames that arrived from the wire (before any filter).
    pub wire_rx: u64,
    /// Frames sent while the link was down (lost, as on a real port).
    pub tx_link_down: u64,
    /// Frames that arrived while the receiver was off (RXCTRL.RXEN clear).
    pub rx_disabled: u64,
    /// Frames the receive filters dropped (no pool or queue wanted them).
    pub rx_filtered: u64,
    /// Frames switched between local pools without reaching the wire.
    pub looped: u64,
}

#[derive(Default)]
struct StatsCell {
    wire_tx: AtomicU64,
    wire_rx: AtomicU64,
    tx_link_down: AtomicU64,
    rx_disabled: AtomicU64,
    rx_filtered: AtomicU64,
    looped: AtomicU64,
}

/// Bytes of frames waiting in the ingress queue (between the wire and the
/// engine thread) at most; a frame arriving beyond that is missed (MPC), as
/// it would be by a chip whose packet buffer cannot drain fast enough.
const INGRESS_MAX_BYTES: usize = 4 << 20;
const NQUEUES: usize = 128;

/// One port of an 82599. Dropping the last handle stops its engine.
pub struct Model82599 {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    spec: Mutex<WireSpec>,
    /// A cable peer this port brought into being, kept alive with it.
    peer: Mutex<Option<Arc<Model82599>>>,
}

impl Model82599 {
    /// A port with nothing plugged in, fresh from power-on.
    pub fn new(name: &str, cfg: ModelConfig) -> Arc<Model82599> {
        let stat_base = {
            let mut next = 0u32;
            TABLE
                .iter()
                .map(|d| {
                    if d.access == Access::Rc {
                        let b = next;
                        next += d.count();
                        b
                    } else {
                        u32::MAX
                    }
                })
                .collect::<Vec<_>>()
        };
        let nstats: u32 = TABLE.iter().filter(|d| d.access == Access::Rc).map(|d| d.count()).sum();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            cfg,
            words: (0..BAR_SIZE / 4).map(|_| AtomicU32::new(0)).collect(),
            stats: (0..nstats).map(|_| AtomicU64::new(0)).collect(),
            latch: (0..nstats).map(|_| AtomicU32::new(0)).collect(),
            stat_base: stat_base.into_boxed_slice(),
            rx_len: (0..NQUEUES).map(|_| AtomicU32::new(0)).collect(),
            tx_len: (0..NQUEUES).map(|_| AtomicU32::new(0)).collect(),
            due: AtomicBool::new(false),
            in_reset: AtomicBool::new(false),
            phy: AtomicBool::new(false),
            state: Mutex::new(State::new()),
            ingress: Mutex::new((VecDeque::new(), 0)),
            iommu: Iommu::default(),
            faults: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            accesses: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            manual: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            thread: OnceLock::new(),
            counts: StatsCell::default(),
            macs: Mutex::new((u64::MAX, Vec::new())),
            mac_generation: AtomicU64::new(0),
        });
        {
            let mut st = shared.state.lock().unwrap();
            shared.apply_reset(&mut st);
            // Power-on: the EEPROM has been read and DMA is ready.
            shared.or_reg(Reg::EEC, 0, EEC_AUTO_RD);
            shared.or_reg(Reg::RDRXCTL, 0, RDRXCTL_DMAIDONE);
        }
        let s = shared.clone();
        let handle =
            thread::Builder::new().name(format!("82599-{name}")).spawn(move || s.run()).expect("spawn model thread");
        let _ = shared.thread.set(handle.thread().clone());
        Arc::new(Model82599 {
            shared,
            thread: Mutex::new(Some(handle)),
            spec: Mutex::new(WireSpec::Unplugged),
            peer: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn config(&self) -> &ModelConfig {
        &self.shared.cfg
    }

    /// Read a register, as a driver's MMIO load would.
    pub fn read(&self, offset: u32) -> u32 {
        self.shared.read(offset)
    }
    /// Write a register, as a driver's MMIO store would.
    pub fn write(&self, offset: u32, value: u32) {
        self.shared.write(offset, value)
    }

    /// The translation table the driver maps its DMA memory into.
    pub fn iommu(&self) -> &Iommu {
        &self.shared.iommu
    }

    /// DMA faults so far.
    pub fn faults(&self) -> Vec<DmaFault> {
        self.shared.faults.lock().unwrap().clone()
    }
    /// How many DMA faults and violations so far (cheap: for counters).
    pub fn fault_count(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }
    pub fn violation_count(&self) -> usize {
        self.shared.violations.lock().unwrap().len()
    }
    /// Datasheet violations so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.shared.violations.lock().unwrap().clone()
    }
    /// Take the violations recorded so far (to check a step on its own).
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.shared.violations.lock().unwrap())
    }
    /// Register accesses the driver made (reads and writes).
    pub fn accesses(&self) -> u64 {
        self.shared.accesses.load(Ordering::Relaxed)
    }
    pub fn stats(&self) -> ModelStats {
        let c = &self.shared.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ModelStats {
            wire_tx: l(&c.wire_tx),
            wire_rx: l(&c.wire_rx),
            tx_link_down: l(&c.tx_link_down),
            rx_disabled: l(&c.rx_disabled),
            rx_filtered: l(&c.rx_filtered),
            looped: l(&c.looped),
        }
    }

    /// What the port is cabled to.
    pub fn wire_spec(&self) -> WireSpec {
        self.spec.lock().unwrap().clone()
    }

    /// Plug in a wire other than a cable (a pcap file, an interface, or
    /// nothing). Cables are made with [`Model82599::cable`].
    pub fn attach(&self, spec: &WireSpec) -> std::io::Result<()> {
        if let WireSpec::Cable(_) = spec {
            return Err(std::io::Error::other("cables are made with Model82599::cable"));
        }
        let wire = Wire::open(spec)?;
        self.shared.state.lock().unwrap().wire = wire;
        *self.spec.lock().unwrap() = spec.clone();
        self.shared.kick();
        Ok(())
    }

    /// Cable two ports back to back. `a` keeps `b` alive when `keep` is set
    /// (the registry does this for a peer it made on `a`'s behalf).
    pub fn cable(a: &Arc<Model82599>, b: &Arc<Model82599>, keep: bool) {
        a.shared.state.lock().unwrap().wire = Wire::Cable(Arc::downgrade(&b.shared));
        b.shared.state.lock().unwrap().wire = Wire::Cable(Arc::downgrade(&a.shared));
        *a.spec.lock().unwrap() = WireSpec::Cable(b.name().to_string());
        *b.spec.lock().unwrap() = WireSpec::Cable(a.name().to_string());
        if keep {
            *a.peer.lock().unwrap() = Some(b.clone());
        }
        a.shared.kick();
        b.shared.kick();
    }

    /// A frame arrives from the wire (as if the far end had sent it).
    pub fn inject(&self, frame: Vec<u8>) {
        self.shared.deliver(frame)
    }

    /// Stop the engine thread from running on its own: the caller drives
    /// the model with [`Model82599::step`] (benchmarks do this, to keep the
    /// model's work out of the driver's timing).
    pub fn set_manual(&self, manual: bool) {
        self.shared.manual.store(manual, Ordering::SeqCst);
        self.shared.kick();
    }

    /// Run the engine once: transmit what the rings hold, take frames from
    /// the wire, deliver them to the rings. Returns whether it did any work.
    pub fn step(&self) -> bool {
        self.shared.step(usize::MAX)
    }

    /// Log violations and DMA faults at debug level rather than as
    /// warnings and errors (for tests that provoke them on purpose).
    pub fn set_quiet(&self, quiet: bool) {
        self.shared.quiet.store(quiet, Ordering::Relaxed);
    }

    /// Whether LINKS.Link_Up would read set now.
    pub fn link_up(&self) -> bool {
        self.shared.links() & LINKS_LINK_UP != 0
    }
}

impl Drop for Model82599 {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.phy.store(false, Ordering::SeqCst);
        self.shared.kick();
        if let Some(h) = self.thread.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

impl fmt::Debug for Model82599 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model82599({})", self.shared.name)
    }
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    ResetDone,
    EepromDone,
    DmaInitDone,
    PhyUp,
    RxStarted(u16),
    RxStopped(u16),
    TxStarted(u16),
    TxStopped(u16),
}

#[derive(Clone, Copy, Default)]
struct RxQ {
    active: bool,
    /// An enable or disable is on its way.
    changing: bool,
    base: u64,
    ndesc: u32,
    bsize: u32,
    faulted: bool,
    dca_checked: bool,
}

#[derive(Clone, Copy, Default)]
struct TxQ {
    active: bool,
    changing: bool,
    base: u64,
    ndesc: u32,
    faulted: bool,
    pool_warned: bool,
}

/// A frame in the receive packet buffer, bound for one queue.
struct Pending {
    frame: Arc<Vec<u8>>,
    queue: u16,
    looped: bool,
    /// RNBC already counted for it.
    waited: bool,
}

pub(crate) struct State {
    generation: u64,
    events: Vec<(Instant, u64, Event)>,
    rx: [RxQ; NQUEUES],
    tx: [TxQ; NQUEUES],
    fifo: VecDeque<Pending>,
    fifo_bytes: usize,
    /// PFQDE.QDE per queue.
    qde: u128,
    wire: Wire,
    scratch: Vec<u16>,
}

impl State {
    fn new() -> State {
        State {
            generation: 0,
            events: Vec::new(),
            rx: [RxQ::default(); NQUEUES],
            tx: [TxQ::default(); NQUEUES],
            fifo: VecDeque::new(),
            fifo_bytes: 0,
            qde: 0,
            wire: Wire::Unplugged,
            scratch: Vec::new(),
        }
    }
}

pub(crate) struct Shared {
    name: String,
    cfg: ModelConfig,
    words: Box<[AtomicU32]>,
    stats: Box<[AtomicU64]>,
    latch: Box<[AtomicU32]>,
    /// First statistics slot of each table entry (u32::MAX: not a statistic).
    stat_base: Box<[u32]>,
    /// Descriptors in each active ring (0 when stopped), for lock-free tail checks.
    rx_len: Box<[AtomicU32]>,
    tx_len: Box<[AtomicU32]>,
    /// An event is scheduled: accesses take the lock to run it when due.
    due: AtomicBool,
    in_reset: AtomicBool,
    /// The PHY is up (after AUTOC.Restart_AN): a cable partner sees carrier.
    phy: AtomicBool,
    state: Mutex<State>,
    /// Frames from the wire not yet taken by the engine, and their bytes.
    ingress: Mutex<(VecDeque<Vec<u8>>, usize)>,
    iommu: Iommu,
    faults: Mutex<Vec<DmaFault>>,
    violations: Mutex<Vec<Violation>>,
    accesses: AtomicU64,
    stop: AtomicBool,
    manual: AtomicBool,
    /// Log violations and faults at debug level (tests that provoke them).
    quiet: AtomicBool,
    thread: OnceLock<Thread>,
    counts: StatsCell,
    /// The valid RAL/RAH entries (MAC, index), rebuilt when
    /// `mac_generation` moves (any RAL/RAH write, a reset).
    macs: Mutex<MacTable>,
    mac_generation: AtomicU64,
}

impl RegView for Shared {
    fn reg(&self, r: Reg, i: u32) -> u32 {
        self.get(r, i)
    }

    fn exact_matches(&self, dst: &[u8; 6], f: &mut dyn FnMut(u32)) {
        let mut c = self.macs.lock().unwrap();
        let generation = self.mac_generation.load(Ordering::Acquire);
        if c.0 != generation {
            c.1.clear();
            for i in 0..128 {
                let rah = self.get(Reg::RAH, i);
                if rah & RAH_AV != 0 {
                    let lo = self.get(Reg::RAL, i).to_le_bytes();
                    let hi = (rah as u16).to_le_bytes();
                    c.1.push(([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]], i));
                }
            }
            c.0 = generation;
        }
        for &(mac, i) in &c.1 {
            if mac == *dst {
                f(i);
            }
        }
    }
}

fn off(r: Reg, i: u32) -> u32 {
    regs::def(r).offset(i).expect("register element in range")
}

impl Shared {
    // -- register words ----------------------------------------------------

    fn word(&self, offset: u32) -> &AtomicU32 {
        &self.words[(offset / 4) as usize]
    }
    fn get(&self, r: Reg, i: u32) -> u32 {
        self.word(off(r, i)).load(Ordering::Acquire)
    }
    fn put(&self, r: Reg, i: u32, v: u32) {
        self.word(off(r, i)).store(v, Ordering::Release)
    }
    fn or_reg(&self, r: Reg, i: u32, bits: u32) {
        self.word(off(r, i)).fetch_or(bits, Ordering::AcqRel);
    }
    fn and_reg(&self, r: Reg, i: u32, mask: u32) {
        self.word(off(r, i)).fetch_and(mask, Ordering::AcqRel);
    }

    /// Add to a statistics register element.
    fn count(&self, r: Reg, i: u32, n: u64) {
        let b = self.stat_base[r as usize];
        debug_assert_ne!(b, u32::MAX, "{r:?} is not a statistic");
        self.stats[(b + i) as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn violation(&self, what: String) {
        if self.quiet.load(Ordering::Relaxed) {
            log::debug!("82599 model {}: {what}", self.name);
        } else {
            log::warn!("82599 model {}: {what}", self.name);
        }
        self.violations.lock().unwrap().push(Violation { what });
    }

    pub(crate) fn phy_ready(&self) -> bool {
        self.phy.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire)
    }

    fn kick(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// A frame from the wire: into the ingress queue for the engine.
    pub(crate) fn deliver(&self, frame: Vec<u8>) {
        let mut q = self.ingress.lock().unwrap();
        if q.1 + frame.len() > INGRESS_MAX_BYTES {
            drop(q);
            self.count(Reg::MPC, 0, 1);
        } else {
            q.1 += frame.len();
            q.0.push_back(frame);
            drop(q);
            if !self.manual.load(Ordering::Relaxed) {
                self.kick();
            }
        }
    }

    // -- register access from the driver -----------------------------------

    fn read(&self, offset: u32) -> u32 {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let Some((reg, i)) = regs::decode(offset) else {
            self.violation(format!("read of {offset:#07x}, where the 82599 model has no register"));
            return 0;
        };
        if self.due.load(Ordering::Acquire) {
            let mut st = self.state.lock().unwrap();
            self.run_events(&mut st);
        }
        if self.in_reset.load(Ordering::Acquire) && !matches!(reg, Reg::CTRL | Reg::STATUS) {
            self.violation(format!("read of {reg:?}[{i}] while a reset is in progress (CTRL.RST set)"));
        }
        let d = regs::def(reg);
        match d.access {
            Access::Wo => 0,
            Access::Rc => self.read_stat(reg, i),
            _ => match reg {
                Reg::LINKS => self.links(),
                Reg::STATUS => {
                    let up = if self.links() & LINKS_LINK_UP != 0 { STATUS_LINK_UP } else { 0 };
                    // No request is ever pending: mastering stops at once.
                    let master = if self.get(Reg::CTRL, 0) & CTRL_GIO_MASTER_DISABLE == 0 {
                        STATUS_GIO_MASTER_ENABLE
                    } else {
                        0
                    };
                    (self.cfg.lan_id as u32 & 3) << STATUS_LAN_ID_SHIFT | up | master
                }
                _ => self.word(offset).load(Ordering::Acquire),
            },
        }
    }

    fn read_stat(&self, reg: Reg, i: u32) -> u32 {
        let slot = |r: Reg, i: u32| (self.stat_base[r as usize] + i) as usize;
        let high_of = |r: Reg| match r {
            Reg::GORCL => Some(Reg::GORCH),
            Reg::GOTCL => Some(Reg::GOTCH),
            Reg::TORL => Some(Reg::TORH),
            Reg::QBRC_L => Some(Reg::QBRC_H),
            Reg::QBTC_L => Some(Reg::QBTC_H),
            _ => None,
        };
        match reg {
            Reg::GORCH | Reg::GOTCH | Reg::TORH | Reg::QBRC_H | Reg::QBTC_H => {
                self.latch[slot(reg, i)].swap(0, Ordering::AcqRel)
            }
            _ => {
                let v = self.stats[slot(reg, i)].swap(0, Ordering::AcqRel);
                match high_of(reg) {
                    Some(h) => {
                        self.latch[slot(h, i)].store((v >> 32) as u32, Ordering::Release);
                        v as u32
                    }
                    None => v.min(u32::MAX as u64) as u32,
                }
            }
        }
    }

    fn links(&self) -> u32 {
        let st = self.state.lock().unwrap();
        if self.phy.load(Ordering::Acquire) && st.wire.carrier() { LINKS_LINK_UP | LINKS_SPEED_10G } else { 0 }
    }

    fn write(&self, offset: u32, v: u32) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let Some((reg, i)) = regs::decode(offset) else {
            self.violation(format!("write of {v:#x} to {offset:#07x}, where the 82599 model has no register"));
            return;
        };
        // The tails: no lock, as on a real driver's hot path.
        if matches!(reg, Reg::RDT | Reg::TDT)
            && !self.due.load(Ordering::Acquire)
            && !self.in_reset.load(Ordering::Acquire)
        {
            let len = if reg == Reg::RDT { &self.rx_len[i as usize] } else { &self.tx_len[i as usize] };
            let n = len.load(Ordering::Acquire);
            if n != 0 && v < n {
                self.word(offset).store(v, Ordering::Release);
                if !self.manual.load(Ordering::Relaxed) {
                    self.kick();
                }
                return;
            }
        }
        let mut st = self.state.lock().unwrap();
        self.run_events(&mut st);
        if self.in_reset.load(Ordering::Acquire) && reg != Reg::CTRL {
            self.violation(format!("write of {v:#x} to {reg:?}[{i}] while a reset is in progress (CTRL.RST set)"));
            return;
        }
        match regs::def(reg).access {
            Access::Ro => {
                self.violation(format!("write of {v:#x} to read-only register {reg:?}[{i}]"));
                return;
            }
            Access::Rc => {
                self.violation(format!("write of {v:#x} to statistics register {reg:?}[{i}] (read-to-clear)"));
                return;
            }
            _ => {}
        }
        self.write_locked(&mut st, reg, i, v);
        drop(st);
        self.kick();
    }

    fn write_locked(&self, st: &mut State, reg: Reg, i: u32, v: u32) {
        if matches!(reg, Reg::RAL | Reg::RAH) {
            self.mac_generation.fetch_add(1, Ordering::AcqRel);
        }
        let q = i as usize;
        let old = self.get(reg, i);
        match reg {
            Reg::CTRL => {
                if v & (CTRL_RST | CTRL_LRST) != 0 {
                    self.put(reg, i, v);
                    self.begin_reset(st);
                } else {
                    self.put(reg, i, v);
                }
            }
            // Read-only bits keep their value.
            Reg::EEC => self.put(reg, i, (v & 0x77) | (old & !0x77)),
            Reg::RDRXCTL => self.put(reg, i, (v & !RDRXCTL_DMAIDONE) | (old & RDRXCTL_DMAIDONE)),
            Reg::AUTOC => {
                self.put(reg, i, v & !AUTOC_RESTART_AN);
                if v & AUTOC_RESTART_AN != 0 {
                    self.restart_an(st, v);
                }
            }
            Reg::RXCTRL => {
                if v & RXCTRL_RXEN != 0 && old & RXCTRL_RXEN == 0 {
                    self.check_rx_enable();
                }
                self.put(reg, i, v);
            }
            Reg::MTQC => {
                if self.get(Reg::RTTDCS, 0) & RTTDCS_ARBDIS == 0 {
                    self.violation(format!(
                        "MTQC written ({v:#x}) while RTTDCS.ARBDIS is clear: the arbiter must be disabled first (7.2.1.2.1)"
                    ));
                }
                self.put(reg, i, v);
            }
            Reg::RDBAL | Reg::RDBAH | Reg::RDLEN | Reg::SRRCTL | Reg::RDH => {
                if st.rx[q].active || st.rx[q].changing {
                    self.violation(format!("{reg:?}[{i}] written ({v:#x}) while receive queue {i} is enabled"));
                }
                match reg {
                    Reg::RDBAL if v & 0x7f != 0 => self.violation(format!(
                        "RDBAL[{i}] = {v:#x}: the receive ring must be 128-byte aligned (bits 6:0 are ignored)"
                    )),
                    Reg::RDLEN if !v.is_multiple_of(128) || v == 0 => {
                        self.violation(format!("RDLEN[{i}] = {v}: must be a non-zero multiple of 128 bytes"))
                    }
                    _ => {}
                }
                // RDBAL's low bits read as zero.
                self.put(reg, i, if reg == Reg::RDBAL { v & !0x7f } else { v });
            }
            Reg::TDBAL | Reg::TDBAH | Reg::TDLEN | Reg::TDH => {
                if st.tx[q].active || st.tx[q].changing {
                    self.violation(format!("{reg:?}[{i}] written ({v:#x}) while transmit queue {i} is enabled"));
                }
                match reg {
                    Reg::TDBAL if v & 0x7f != 0 => self.violation(format!(
                        "TDBAL[{i}] = {v:#x}: the transmit ring must be 128-byte aligned (bits 6:0 are ignored)"
                    )),
                    Reg::TDLEN if !v.is_multiple_of(128) || v == 0 => {
                        self.violation(format!("TDLEN[{i}] = {v}: must be a non-zero multiple of 128 bytes"))
                    }
                    _ => {}
                }
                self.put(reg, i, if reg == Reg::TDBAL { v & !0x7f } else { v });
            }
            Reg::RDT | Reg::TDT => {
                let (n, what) = if reg == Reg::RDT {
                    (self.rx_len[q].load(Ordering::Acquire), "receive")
                } else {
                    (self.tx_len[q].load(Ordering::Acquire), "transmit")
                };
                if n == 0 && v != 0 {
                    self.violation(format!("{reg:?}[{i}] = {v} while {what} queue {i} is not enabled"));
                } else if n != 0 && v >= n {
                    self.violation(format!("{reg:?}[{i}] = {v}: beyond the ring of {n} descriptors"));
                    return;
                }
                self.put(reg, i, v);
            }
            Reg::RXDCTL => self.write_rxdctl(st, q, old, v),
            Reg::TXDCTL => self.write_txdctl(st, q, old, v),
            Reg::PFQDE => {
                let queue = (v & PFQDE_QUEUE_MASK) >> PFQDE_QUEUE_SHIFT;
                if v & PFQDE_WRITE != 0 {
                    if v & PFQDE_QDE != 0 {
                        st.qde |= 1 << queue;
                    } else {
                        st.qde &= !(1 << queue);
                    }
                }
                let bit = if st.qde & (1 << queue) != 0 { PFQDE_QDE } else { 0 };
                self.put(reg, i, (v & PFQDE_QUEUE_MASK) | bit);
            }
            _ => self.put(reg, i, v),
        }
    }

    fn write_rxdctl(&self, st: &mut State, q: usize, old: u32, v: u32) {
        let was = old & RXDCTL_ENABLE != 0 || st.rx[q].changing;
        let want = v & RXDCTL_ENABLE != 0;
        // ENABLE shows what the queue does, not what was asked.
        let shown = (v & !RXDCTL_ENABLE) | (old & RXDCTL_ENABLE);
        self.put(Reg::RXDCTL, q as u32, shown);
        if want && !was {
            if let Some((base, ndesc, bsize)) = self.check_rx_ring(q) {
                st.rx[q] =
                    RxQ { active: false, changing: true, base, ndesc, bsize, faulted: false, dca_checked: false };
                self.schedule(st, self.cfg.enable_delay, Event::RxStarted(q as u16));
            }
        } else if !want && old & RXDCTL_ENABLE != 0 && !st.rx[q].changing {
            st.rx[q].changing = true;
            self.schedule(st, self.cfg.enable_delay, Event::RxStopped(q as u16));
        }
    }

    fn write_txdctl(&self, st: &mut State, q: usize, old: u32, v: u32) {
        let was = old & TXDCTL_ENABLE != 0 || st.tx[q].changing;
        let want = v & TXDCTL_ENABLE != 0;
        let shown = (v & !TXDCTL_ENABLE) | (old & TXDCTL_ENABLE);
        self.put(Reg::TXDCTL, q as u32, shown);
        if want && !was {
            if let Some((base, ndesc)) = self.check_tx_ring(q) {
                st.tx[q] = TxQ { active: false, changing: true, base, ndesc, faulted: false, pool_warned: false };
                self.schedule(st, self.cfg.enable_delay, Event::TxStarted(q as u16));
            }
        } else if !want && old & TXDCTL_ENABLE != 0 && !st.tx[q].changing {
            st.tx[q].changing = true;
            self.schedule(st, self.cfg.enable_delay, Event::TxStopped(q as u16));
        }
    }

    fn init_done(&self) -> bool {
        self.get(Reg::EEC, 0) & EEC_AUTO_RD != 0 && self.get(Reg::RDRXCTL, 0) & RDRXCTL_DMAIDONE != 0
    }

    /// The ring a receive queue is about to use, or violations and `None`.
    fn check_rx_ring(&self, q: usize) -> Option<(u64, u32, u32)> {
        let i = q as u32;
        let mut ok = true;
        let mut bad = |what: String| {
            self.violation(format!("receive queue {q} enabled with {what}"));
            ok = false;
        };
        if !self.init_done() {
            bad("EEPROM auto-read or DMA init not done (EEC.Auto_RD, RDRXCTL.DMAIDONE)".into());
        }
        let len = self.get(Reg::RDLEN, i);
        if len == 0 || !len.is_multiple_of(128) || len > 0x10_0000 - 128 {
            bad(format!("RDLEN = {len} (a non-zero multiple of 128 bytes is required)"));
        }
        let srrctl = self.get(Reg::SRRCTL, i);
        let bsize = srrctl & SRRCTL_BSIZEPACKET_MASK;
        if bsize == 0 || bsize > 16 {
            bad(format!("SRRCTL.BSIZEPACKET = {bsize} KiB (1 to 16 KiB)"));
        }
        let desctype = (srrctl & SRRCTL_DESCTYPE_MASK) >> SRRCTL_DESCTYPE_SHIFT;
        if desctype != SRRCTL_DESCTYPE_ADV_ONEBUF {
            bad(format!("SRRCTL.DESCTYPE = {desctype:03b} (the model knows advanced one-buffer descriptors, 001b)"));
        }
        let base = (self.get(Reg::RDBAH, i) as u64) << 32 | self.get(Reg::RDBAL, i) as u64;
        if base == 0 {
            bad("no ring (RDBAL/RDBAH are zero)".into());
        }
        let rdh = self.get(Reg::RDH, i);
        if ok && rdh >= len / 16 {
            self.violation(format!("receive queue {q} enabled with RDH = {rdh} beyond its ring"));
            ok = false;
        }
        ok.then_some((base, len / 16, bsize * 1024))
    }

    fn check_tx_ring(&self, q: usize) -> Option<(u64, u32)> {
        let i = q as u32;
        let mut ok = true;
        let mut bad = |what: String| {
            self.violation(format!("transmit queue {q} enabled with {what}"));
            ok = false;
        };
        if !self.init_done() {
            bad("EEPROM auto-read or DMA init not done (EEC.Auto_RD, RDRXCTL.DMAIDONE)".into());
        }
        let len = self.get(Reg::TDLEN, i);
        if len == 0 || !len.is_multiple_of(128) || len > 0x10_0000 - 128 {
            bad(format!("TDLEN = {len} (a non-zero multiple of 128 bytes is required)"));
        }
        let base = (self.get(Reg::TDBAH, i) as u64) << 32 | self.get(Reg::TDBAL, i) as u64;
        if base == 0 {
            bad("no ring (TDBAL/TDBAH are zero)".into());
        }
        if self.get(Reg::DMATXCTL, 0) & DMATXCTL_TE == 0 {
            bad("transmit DMA off (DMATXCTL.TE clear)".into());
        }
        let tdh = self.get(Reg::TDH, i);
        if ok && tdh >= len / 16 {
            self.violation(format!("transmit queue {q} enabled with TDH = {tdh} beyond its ring"));
            ok = false;
        }
        ok.then_some((base, len / 16))
    }

    /// Checks when the receiver is switched on (RXCTRL.RXEN).
    fn check_rx_enable(&self) {
        let strip = self.get(Reg::HLREG0, 0) & HLREG0_RXCRCSTRP != 0;
        let rdstrip = self.get(Reg::RDRXCTL, 0) & RDRXCTL_CRCSTRIP != 0;
        if strip != rdstrip {
            self.violation(format!(
                "receiver enabled with HLREG0.RXCRCSTRP = {} but RDRXCTL.CRCStrip = {}: they must agree (8.2.3.8.8)",
                strip as u8, rdstrip as u8
            ));
        }
        if !self.init_done() {
            self.violation("receiver enabled before EEPROM auto-read and DMA init are done".into());
        }
        let vt = self.get(Reg::PFVTCTL, 0) & PFVTCTL_VT_ENA != 0;
        let mrqe = self.get(Reg::MRQC, 0) & MRQC_MRQE_MASK;
        let vmdq_mrqe = matches!(mrqe, MRQE_VMDQ | MRQE_VMDQ_RSS_32 | MRQE_VMDQ_RSS_64);
        if vt != vmdq_mrqe {
            self.violation(format!(
                "receiver enabled with PFVTCTL.VT_Ena = {} but MRQC.MRQE = {mrqe:04b}: virtualisation needs a VMDq mode and only then",
                vt as u8
            ));
        }
        if !matches!(mrqe, MRQE_NONE | MRQE_RSS | MRQE_VMDQ | MRQE_VMDQ_RSS_32 | MRQE_VMDQ_RSS_64) {
            self.violation(format!("MRQC.MRQE = {mrqe:04b} is a DCB mode the model does not implement"));
        }
        let mtqc = self.get(Reg::MTQC, 0);
        if (mtqc & MTQC_VT_ENA != 0) != vt {
            self.violation(format!("MTQC.VT_Ena ({mtqc:#x}) disagrees with PFVTCTL.VT_Ena"));
        }
    }

    fn restart_an(&self, st: &mut State, autoc: u32) {
        let lms = (autoc & AUTOC_LMS_MASK) >> AUTOC_LMS_SHIFT;
        let pma = (self.get(Reg::AUTOC2, 0) & AUTOC2_10G_PMA_PMD_SERIAL_MASK) >> AUTOC2_10G_PMA_PMD_SERIAL_SHIFT;
        self.phy.store(false, Ordering::Release);
        if lms != AUTOC_LMS_10G_SERIAL || pma != AUTOC2_10G_SFI {
            self.violation(format!(
                "AUTOC.Restart_AN with LMS = {lms:03b} and AUTOC2 10G PMA/PMD = {pma:02b}: this port is SFP+ \
                 (10G serial, SFI); the link will not come up"
            ));
            return;
        }
        self.schedule(st, self.cfg.link_delay, Event::PhyUp);
    }

    // -- reset and events ---------------------------------------------------

    fn begin_reset(&self, st: &mut State) {
        st.generation += 1;
        st.events.clear();
        self.in_reset.store(true, Ordering::Release);
        self.phy.store(false, Ordering::Release);
        for q in 0..NQUEUES {
            self.rx_len[q].store(0, Ordering::Release);
            self.tx_len[q].store(0, Ordering::Release);
        }
        st.rx = [RxQ::default(); NQUEUES];
        st.tx = [TxQ::default(); NQUEUES];
        self.schedule(st, self.cfg.reset_delay, Event::ResetDone);
    }

    /// Every register back to its reset value; queues stopped; the packet
    /// buffer emptied.
    fn apply_reset(&self, st: &mut State) {
        for d in TABLE {
            for i in 0..d.count() {
                let o = d.offset(i).unwrap();
                self.word(o).store(d.reset, Ordering::Release);
            }
            if d.access == Access::Rc {
                let b = self.stat_base[d.reg as usize];
                for i in 0..d.count() {
                    self.stats[(b + i) as usize].store(0, Ordering::Release);
                    self.latch[(b + i) as usize].store(0, Ordering::Release);
                }
            }
        }
        // Values loaded from the EEPROM and the power-on defaults of
        // packet buffer 0.
        let m = self.cfg.mac;
        self.put(Reg::RAL, 0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        self.put(Reg::RAH, 0, u16::from_le_bytes([m[4], m[5]]) as u32 | RAH_AV);
        self.mac_generation.fetch_add(1, Ordering::AcqRel);
        self.put(Reg::RXPBSIZE, 0, 0x200 << 10);
        self.put(Reg::TXPBSIZE, 0, 0xA0 << 10);
        for q in 0..NQUEUES {
            self.rx_len[q].store(0, Ordering::Release);
            self.tx_len[q].store(0, Ordering::Release);
        }
        st.rx = [RxQ::default(); NQUEUES];
        st.tx = [TxQ::default(); NQUEUES];
        st.fifo.clear();
        st.fifo_bytes = 0;
        st.qde = 0;
        self.phy.store(false, Ordering::Release);
    }

    fn schedule(&self, st: &mut State, after: Duration, e: Event) {
        st.events.push((Instant::now() + after, st.generation, e));
        self.due.store(true, Ordering::Release);
    }

    fn run_events(&self, st: &mut State) {
        if !self.due.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        while let Some(k) = st.events.iter().position(|(t, _, _)| *t <= now) {
            let (_, generation, e) = st.events.remove(k);
            if generation == st.generation {
                self.apply_event(st, e);
            }
        }
        self.due.store(!st.events.is_empty(), Ordering::Release);
    }

    fn apply_event(&self, st: &mut State, e: Event) {
        match e {
            Event::ResetDone => {
                self.apply_reset(st);
                self.in_reset.store(false, Ordering::Release);
                self.and_reg(Reg::EEC, 0, !EEC_AUTO_RD);
                self.and_reg(Reg::RDRXCTL, 0, !RDRXCTL_DMAIDONE);
                self.schedule(st, self.cfg.eeprom_delay, Event::EepromDone);
                self.schedule(st, self.cfg.dma_init_delay, Event::DmaInitDone);
            }
            Event::EepromDone => self.or_reg(Reg::EEC, 0, EEC_AUTO_RD),
            Event::DmaInitDone => self.or_reg(Reg::RDRXCTL, 0, RDRXCTL_DMAIDONE),
            Event::PhyUp => self.phy.store(true, Ordering::Release),
            Event::RxStarted(q) => {
                let r = &mut st.rx[q as usize];
                r.active = true;
                r.changing = false;
                self.rx_len[q as usize].store(r.ndesc, Ordering::Release);
                self.or_reg(Reg::RXDCTL, q as u32, RXDCTL_ENABLE);
            }
            Event::RxStopped(q) => {
                st.rx[q as usize].active = false;
                st.rx[q as usize].changing = false;
                self.rx_len[q as usize].store(0, Ordering::Release);
                self.and_reg(Reg::RXDCTL, q as u32, !RXDCTL_ENABLE);
            }
            Event::TxStarted(q) => {
                let t = &mut st.tx[q as usize];
                t.active = true;
                t.changing = false;
                self.tx_len[q as usize].store(t.ndesc, Ordering::Release);
                self.or_reg(Reg::TXDCTL, q as u32, TXDCTL_ENABLE);
            }
            Event::TxStopped(q) => {
                st.tx[q as usize].active = false;
                st.tx[q as usize].changing = false;
                self.tx_len[q as usize].store(0, Ordering::Release);
                self.and_reg(Reg::TXDCTL, q as u32, !TXDCTL_ENABLE);
            }
        }
    }

    // -- the engine -----------------------------------------------------------

    fn run(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            if self.manual.load(Ordering::Acquire) {
                thread::park_timeout(Duration::from_millis(5));
                continue;
            }
            if !self.step(4096) {
                thread::park_timeout(Duration::from_micros(200));
            }
        }
    }

    /// One round of work: due events, transmit, receive.
    fn step(&self, budget: usize) -> bool {
        let mut st = self.state.lock().unwrap();
        self.run_events(&mut st);
        if self.in_reset.load(Ordering::Acquire) {
            return false;
        }
        let mut work = 0;
        for q in 0..NQUEUES {
            if st.tx[q].active && !st.tx[q].faulted {
                work += self.transmit_queue(&mut st, q, budget.min(1024));
            }
        }
        st.wire.end_of_batch();
        work += self.receive_intake(&mut st, budget.min(4096));
        work += self.receive_deliver(&mut st, budget.min(4096));
        work > 0
    }

    fn dma(&self) -> Dma<'_> {
        Dma { iommu: &self.iommu, faults: &self.faults, quiet: self.quiet.load(Ordering::Relaxed) }
    }

    fn link_is_up(&self, st: &State) -> bool {
        self.phy.load(Ordering::Acquire) && st.wire.carrier()
    }

    // -- transmit -------------------------------------------------------------

    /// Send the complete frames between TDH and TDT. Returns descriptors done.
    fn transmit_queue(&self, st: &mut State, q: usize, budget: usize) -> usize {
        let t = st.tx[q];
        let qi = q as u32;
        let tdt = self.get(Reg::TDT, qi);
        let mut tdh = self.get(Reg::TDH, qi);
        let layout = filter::layout(self);
        let pool = filter::pool_of(&layout, qi);
        if layout.vt && self.get(Reg::PFVFTE, pool / 32) & (1 << (pool % 32)) == 0 {
            if !st.tx[q].pool_warned && tdh != tdt {
                st.tx[q].pool_warned = true;
                self.violation(format!(
                    "transmit queue {q} has work but its pool {pool} is not enabled for transmit (PFVFTE)"
                ));
            }
            return 0;
        }
        let dma = self.dma();
        let mut done = 0;
        let mut parts: Vec<(u64, u32, bool, u32)> = Vec::new();
        while tdh != tdt && done < budget {
            // Gather one frame: descriptors up to and including EOP.
            parts.clear();
            let mut i = tdh;
            let mut paylen = 0;
            let complete = loop {
                if i == tdt {
                    break false;
                }
                let Ok(d) = dma.window(t.base + 16 * i as u64, 16, false, "TX descriptor", Some(q as u16)) else {
                    st.tx[q].faulted = true;
                    return done;
                };
                let addr = d.load64(0);
                let cmd = d.load32(8);
                let olinfo = d.load32(12);
                i = (i + 1) % t.ndesc;
                let dtyp = (cmd & TXD_DTYP_MASK) >> TXD_DTYP_SHIFT;
                if cmd & TXD_DCMD_DEXT == 0 {
                    self.violation(format!(
                        "transmit queue {q}: legacy descriptor (DEXT clear); the model knows advanced ones"
                    ));
                    st.tx[q].faulted = true;
                    return done;
                }
                if dtyp == TXD_DTYP_CONTEXT {
                    continue;
                }
                if dtyp != TXD_DTYP_DATA {
                    self.violation(format!(
                        "transmit queue {q}: descriptor type {dtyp:04b} is neither data nor context"
                    ));
                    st.tx[q].faulted = true;
                    return done;
                }
                if cmd & (TXD_DCMD_VLE | TXD_DCMD_TSE) != 0 {
                    self.violation(format!("transmit queue {q}: VLE/TSE offloads are not modelled (cmd {cmd:#x})"));
                }
                if parts.is_empty() {
                    paylen = olinfo >> TXD_PAYLEN_SHIFT;
                }
                // At most 40 - WTHRESH data descriptors per packet, TSO or
                // not (as DPDK's ixgbe_prep_pkts enforces it).
                let wthresh = (self.get(Reg::TXDCTL, qi) & TXDCTL_WTHRESH_MASK) >> TXDCTL_WTHRESH_SHIFT;
                if parts.len() as u32 == 40u32.saturating_sub(wthresh) {
                    self.violation(format!(
                        "transmit queue {q}: a packet of more than {} data descriptors (40 - WTHRESH)",
                        40u32.saturating_sub(wthresh)
                    ));
                }
                let len = cmd & TXD_DTALEN_MASK;
                if len == 0 {
                    self.violation(format!("transmit queue {q}: data descriptor with DTALEN 0"));
                }
                parts.push((addr, len, cmd & TXD_DCMD_RS != 0, (i + t.ndesc - 1) % t.ndesc));
                if cmd & TXD_DCMD_EOP != 0 {
                    break true;
                }
            };
            if !complete {
                break;
            }
            let total: u32 = parts.iter().map(|p| p.1).sum();
            if paylen != total {
                self.violation(format!("transmit queue {q}: PAYLEN {paylen} but the buffers hold {total} bytes"));
            }
            let mut frame = Vec::with_capacity(total as usize + 4);
            for &(addr, len, _, _) in &parts {
                let Ok(w) = dma.window(addr, len as usize, false, "TX buffer", Some(q as u16)) else {
                    st.tx[q].faulted = true;
                    return done;
                };
                let at = frame.len();
                frame.resize(at + len as usize, 0);
                w.read(0, &mut frame[at..]);
            }
            if frame.len() > 15 * 1024 + 512 {
                self.violation(format!("transmit queue {q}: {}-byte frame beyond the 15.5 KiB limit", frame.len()));
            } else {
                self.send_frame(st, &layout, qi, pool, frame);
            }
            // Report status where asked (RS), then move the head past the frame.
            for &(_, _, rs, at) in &parts {
                if rs {
                    match dma.window(t.base + 16 * at as u64, 16, true, "TX descriptor write-back", Some(q as u16)) {
                        Ok(d) => d.store32(12, TXD_STAT_DD),
                        Err(()) => {
                            st.tx[q].faulted = true;
                            return done;
                        }
                    }
                }
            }
            done += (i + t.ndesc - tdh) as usize % t.ndesc as usize;
            tdh = i;
            self.put(Reg::TDH, qi, tdh);
            let wbal = self.get(Reg::TDWBAL, qi);
            if wbal & TDWBAL_HEAD_WB_EN != 0 {
                let a = (self.get(Reg::TDWBAH, qi) as u64) << 32 | (wbal & !3) as u64;
                match dma.window(a, 4, true, "TX head write-back", Some(q as u16)) {
                    Ok(w) => w.store32(0, tdh),
                    Err(()) => st.tx[q].faulted = true,
                }
            }
        }
        done
    }

    /// A frame leaves a transmit queue: tag, pad, count, switch.
    fn send_frame(&self, st: &mut State, layout: &Layout, q: u32, pool: u32, mut frame: Vec<u8>) {
        if layout.vt {
            let vir = self.get(Reg::PFVMVIR, pool);
            if vir >> PFVMVIR_VLANA_SHIFT == PFVMVIR_VLANA_DEFAULT && frame.len() >= 12 {
                let vet = (self.get(Reg::DMATXCTL, 0) >> 16) as u16;
                let mut tag = vet.to_be_bytes().to_vec();
                tag.extend_from_slice(&(vir as u16).to_be_bytes());
                frame.splice(12..12, tag);
            }
        }
        if frame.len() < 60 && self.get(Reg::HLREG0, 0) & HLREG0_TXPADEN != 0 {
            frame.resize(60, 0);
        }
        let bytes = frame.len() as u64 + 4;
        self.count(Reg::GPTC, 0, 1);
        self.count(Reg::GOTCL, 0, bytes);
        self.count(Reg::TPT, 0, 1);
        if frame.len() >= 6 && frame[0] & 1 == 1 {
            if frame[..6] == [0xff; 6] {
                self.count(Reg::BPTC, 0, 1);
            } else {
                self.count(Reg::MPTC, 0, 1);
            }
        }
        let slot = (self.get(Reg::TQSM, q / 4) >> (8 * (q % 4))) & 0xf;
        self.count(Reg::QPTC, slot, 1);
        self.count(Reg::QBTC_L, slot, bytes);

        if self.get(Reg::HLREG0, 0) & HLREG0_LPBK != 0 {
            // MAC loopback: straight back into our own receiver.
            self.receive_frame(st, frame, false);
            return;
        }
        let mut to_wire = true;
        if layout.vt && self.get(Reg::PFDTXGSWC, 0) & PFDTXGSWC_LBE != 0 {
            let (pools, wire) = filter::loopback_pools(self, layout, &frame, pool);
            to_wire = wire;
            if pools != 0 {
                self.counts.looped.fetch_add(1, Ordering::Relaxed);
                let frame = Arc::new(frame.clone());
                for p in 0..64 {
                    if pools & (1 << p) != 0 {
                        let queue = filter::pool_queue(self, layout, p, 0) as u16;
                        self.enqueue(st, Pending { frame: frame.clone(), queue, looped: true, waited: false });
                    }
                }
            }
        }
        if to_wire {
            if self.link_is_up(st) {
                self.counts.wire_tx.fetch_add(1, Ordering::Relaxed);
                st.wire.transmit(&frame);
            } else {
                self.counts.tx_link_down.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    // -- receive ---------------------------------------------------------------

    /// Frames from the wire into the packet buffer (or missed).
    fn receive_intake(&self, st: &mut State, budget: usize) -> usize {
        let mut n = 0;
        // Wires the engine polls are read only while the buffer has room, so
        // a pcap file plays at the speed the driver takes it.
        if st.fifo_bytes < self.pb_size() / 2 && self.link_is_up(st) && self.rx_on() {
            let mut got = Vec::new();
            st.wire.poll(256.min(budget), |f| got.push(f));
            for f in got {
                self.receive_frame(st, f, true);
                n += 1;
            }
        }
        let frames: Vec<Vec<u8>> = {
            let mut q = self.ingress.lock().unwrap();
            let k = q.0.len().min(budget);
            let frames: Vec<Vec<u8>> = q.0.drain(..k).collect();
            q.1 -= frames.iter().map(Vec::len).sum::<usize>();
            frames
        };
        for f in frames {
            n += 1;
            self.receive_frame(st, f, true);
        }
        n
    }

    fn rx_on(&self) -> bool {
        self.get(Reg::RXCTRL, 0) & RXCTRL_RXEN != 0
    }

    fn pb_size(&self) -> usize {
        (self.get(Reg::RXPBSIZE, 0) & (0x3ff << 10)) as usize
    }

    /// One frame arrives at the receive MAC (from the wire, or looped back
    /// by the MAC): count it, filter it, store it for its queues.
    fn receive_frame(&self, st: &mut State, frame: Vec<u8>, from_wire: bool) {
        if from_wire {
            self.counts.wire_rx.fetch_add(1, Ordering::Relaxed);
            if !self.link_is_up(st) {
                return;
            }
        }
        let bytes = frame.len() as u64 + 4;
        self.count(Reg::TPR, 0, 1);
        self.count(Reg::TORL, 0, bytes);
        if !self.rx_on() {
            self.counts.rx_disabled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let vet = (self.get(Reg::VLNCTRL, 0) & VLNCTRL_VET_MASK) as u16;
        let tagged = filter::Header::parse(&frame, vet).is_some_and(|h| h.tci.is_some());
        let max = if self.get(Reg::HLREG0, 0) & HLREG0_JUMBOEN != 0 {
            (self.get(Reg::MAXFRS, 0) >> 16) as usize
        } else {
            1518
        } + if tagged { 4 } else { 0 };
        if frame.len() + 4 < 64 {
            self.count(Reg::RUC, 0, 1);
            return;
        }
        if frame.len() + 4 > max {
            self.count(Reg::ROC, 0, 1);
            return;
        }
        let mut queues = std::mem::take(&mut st.scratch);
        let h = filter::rx_queues(self, &frame, &mut queues);
        if queues.is_empty() {
            self.counts.rx_filtered.fetch_add(1, Ordering::Relaxed);
            st.scratch = queues;
            return;
        }
        if let Some(h) = h {
            if h.broadcast() {
                self.count(Reg::BPRC, 0, 1);
            } else if h.multicast() {
                self.count(Reg::MPRC, 0, 1);
            }
        }
        // The packet buffer drains to host memory while frames arrive: make
        // room first, then take the frame whole or miss it.
        if st.fifo_bytes + frame.len() > self.pb_size() {
            st.scratch = queues;
            self.receive_deliver(st, usize::MAX);
            queues = std::mem::take(&mut st.scratch);
        }
        if st.fifo_bytes + frame.len() > self.pb_size() {
            self.count(Reg::MPC, 0, 1);
            st.scratch = queues;
            return;
        }
        self.count(Reg::GPRC, 0, 1);
        self.count(Reg::GORCL, 0, bytes);
        let frame = Arc::new(frame);
        for &queue in &queues {
            self.enqueue(st, Pending { frame: frame.clone(), queue, looped: false, waited: false });
        }
        st.scratch = queues;
    }

    fn enqueue(&self, st: &mut State, p: Pending) {
        st.fifo_bytes += p.frame.len();
        st.fifo.push_back(p);
    }

    fn drop_enabled(&self, st: &State, q: u16) -> bool {
        self.get(Reg::SRRCTL, q as u32) & SRRCTL_DROP_EN != 0 || st.qde & (1 << q) != 0
    }

    fn rx_stat_slot(&self, q: u32) -> u32 {
        (self.get(Reg::RQSMR, q / 4) >> (8 * (q % 4))) & 0xf
    }

    /// The packet buffer to the rings, in arrival order. A frame whose
    /// queue has no descriptor is dropped (QPRDC) when the queue drops, or
    /// waits at the head of the buffer (RNBC) when it does not.
    fn receive_deliver(&self, st: &mut State, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(p) = st.fifo.front() else { break };
            let q = p.queue;
            let frame = p.frame.clone();
            let looped = p.looped;
            match self.rx_dma(st, q, &frame, looped) {
                Delivery::Done | Delivery::Dropped => {}
                Delivery::NoDescriptor => {
                    if self.drop_enabled(st, q) {
                        self.count(Reg::QPRDC, self.rx_stat_slot(q as u32), 1);
                    } else {
                        let p = st.fifo.front_mut().unwrap();
                        if !p.waited {
                            p.waited = true;
                            self.count(Reg::RNBC, 0, 1);
                        }
                        break;
                    }
                }
            }
            let p = st.fifo.pop_front().unwrap();
            st.fifo_bytes -= p.frame.len();
            n += 1;
        }
        n
    }

    fn rx_dma(&self, st: &mut State, q: u16, frame: &[u8], looped: bool) -> Delivery {
        let qi = q as u32;
        let r = st.rx[q as usize];
        if !r.active || r.faulted {
            self.count(Reg::QPRDC, self.rx_stat_slot(qi), 1);
            return Delivery::Dropped;
        }
        if !r.dca_checked {
            st.rx[q as usize].dca_checked = true;
            if self.get(Reg::DCA_RXCTRL, qi) & DCA_RXCTRL_BIT12 != 0 {
                self.violation(format!(
                    "receive queue {q} in use with DCA_RXCTRL[{q}] bit 12 set: software must clear it (4.6.7)"
                ));
            }
        }
        // What the host sees: the tag taken out when stripping, the FCS left
        // in when not stripping CRCs.
        let vet = (self.get(Reg::VLNCTRL, 0) & VLNCTRL_VET_MASK) as u16;
        let tci = filter::Header::parse(frame, vet).and_then(|h| h.tci);
        let strip = tci.is_some() && self.get(Reg::RXDCTL, qi) & RXDCTL_VME != 0;
        let mut data: Vec<u8>;
        let bytes: &[u8] = if strip || self.get(Reg::HLREG0, 0) & HLREG0_RXCRCSTRP == 0 {
            data = frame.to_vec();
            if strip {
                data.drain(12..16);
            }
            if self.get(Reg::HLREG0, 0) & HLREG0_RXCRCSTRP == 0 {
                let fcs = crc32(frame);
                data.extend_from_slice(&fcs.to_le_bytes());
            }
            &data
        } else {
            frame
        };
        let rdt = self.get(Reg::RDT, qi);
        let rdh = self.get(Reg::RDH, qi);
        let avail = (rdt + r.ndesc - rdh) % r.ndesc;
        let need = (bytes.len() as u32).div_ceil(r.bsize).max(1);
        if avail < need {
            return Delivery::NoDescriptor;
        }
        let dma = self.dma();
        let mut status = RXD_STAT_DD;
        if tci.is_some() {
            status |= RXD_STAT_VP;
        }
        if looped {
            status |= RXD_STAT_LB;
        }
        // Checksums are checked on the frame as it arrived (7.1.11); the
        // verdicts, like the packet type, go in the EOP descriptor only
        // (7.1.6.2: earlier descriptors of a frame carry DD and a length).
        let csum = crate::csum::rx_checksum(frame, vet);
        let vlan = tci.unwrap_or(0) as u32;
        let mut at = rdh;
        for k in 0..need {
            let Ok(d) = dma.window(r.base + 16 * at as u64, 16, false, "RX descriptor", Some(q)) else {
                st.rx[q as usize].faulted = true;
                return Delivery::Dropped;
            };
            let buf = d.load64(0);
            let from = (k * r.bsize) as usize;
            let chunk = &bytes[from..bytes.len().min(from + r.bsize as usize)];
            let Ok(w) = dma.window(buf, chunk.len(), true, "RX buffer", Some(q)) else {
                st.rx[q as usize].faulted = true;
                return Delivery::Dropped;
            };
            w.write(0, chunk);
            let last = k + 1 == need;
            // Write-back: everything but the status word first; DD last.
            d.store32(0, if last { csum.pkt_type } else { 0 });
            d.store32(4, 0);
            d.store32(12, chunk.len() as u32 | vlan << 16);
            let end = if last { RXD_STAT_EOP | csum.status | csum.errors } else { 0 };
            d.store32(8, status | end);
            at = (at + 1) % r.ndesc;
        }
        self.put(Reg::RDH, qi, at);
        let slot = self.rx_stat_slot(qi);
        self.count(Reg::QPRC, slot, 1);
        self.count(Reg::QBRC_L, slot, bytes.len() as u64);
        Delivery::Done
    }
}

/// The valid RAL/RAH entries as of a `mac_generation`: (MAC, index).
type MacTable = (u64, Vec<([u8; 6], u32)>);

enum Delivery {
    Done,
    Dropped,
    NoDescriptor,
}

/// The Ethernet FCS (CRC-32, reflected, as it goes on the wire).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_string() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn off(r: Reg, i: u32) -> u32 {
        regs::def(r).offset(i).unwrap()
    }

    fn wait(m: &Model82599, r: Reg, mask: u32, want: u32) {
        let t = Instant::now();
        while m.read(off(r, 0)) & mask != want {
            assert!(t.elapsed() < Duration::from_secs(2), "{r:?} & {mask:#x} never became {want:#x}");
            thread::sleep(Duration::from_micros(50));
        }
    }

    #[test]
    fn reset_clears_itself_and_brings_init_bits_back() {
        // Slow enough that the read right after the write sees the reset
        // still running, however the threads are scheduled.
        let m = Model82599::new(
            "t-reset",
            ModelConfig { reset_delay: Duration::from_millis(200), ..ModelConfig::default() },
        );
        assert_ne!(m.read(off(Reg::EEC, 0)) & EEC_AUTO_RD, 0, "power-on: EEPROM read");
        m.write(off(Reg::FCTRL, 0), FCTRL_BAM);
        m.write(off(Reg::CTRL, 0), CTRL_RST);
        assert_ne!(m.read(off(Reg::CTRL, 0)) & CTRL_RST, 0, "RST reads set while the reset runs");
        wait(&m, Reg::CTRL, CTRL_RST, 0);
        assert_eq!(m.read(off(Reg::FCTRL, 0)), 0, "registers back to their reset values");
        assert_eq!(m.read(off(Reg::VLNCTRL, 0)), 0x8100);
        wait(&m, Reg::EEC, EEC_AUTO_RD, EEC_AUTO_RD);
        wait(&m, Reg::RDRXCTL, RDRXCTL_DMAIDONE, RDRXCTL_DMAIDONE);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
    }

    #[test]
    fn statistics_clear_when_read_and_latch_high_halves() {
        let m = Model82599::new("t-stats", ModelConfig::default());
        m.shared.count(Reg::GPRC, 0, 5);
        m.shared.count(Reg::GORCL, 0, (3u64 << 32) | 7);
        assert_eq!(m.read(off(Reg::GPRC, 0)), 5);
        assert_eq!(m.read(off(Reg::GPRC, 0)), 0, "read to clear");
        assert_eq!(m.read(off(Reg::GORCL, 0)), 7);
        assert_eq!(m.read(off(Reg::GORCH, 0)), 3, "the high half latched by the low read");
        assert_eq!(m.read(off(Reg::GORCH, 0)), 0);
        m.write(off(Reg::GPRC, 0), 1);
        assert!(m.take_violations().iter().any(|v| v.what.contains("read-to-clear")));
    }

    #[test]
    fn link_needs_autoneg_and_carrier() {
        let m = Model82599::new("t-link", ModelConfig::default());
        let restart = |m: &Model82599| {
            m.write(off(Reg::AUTOC2, 0), AUTOC2_10G_SFI << AUTOC2_10G_PMA_PMD_SERIAL_SHIFT);
            m.write(off(Reg::AUTOC, 0), AUTOC_LMS_10G_SERIAL << AUTOC_LMS_SHIFT | AUTOC_RESTART_AN);
        };
        restart(&m);
        assert_eq!(m.read(off(Reg::AUTOC, 0)) & AUTOC_RESTART_AN, 0, "Restart_AN clears itself");
        thread::sleep(Duration::from_millis(10));
        assert!(!m.link_up(), "no carrier, no link");
        m.attach(&WireSpec::Pcap { input: None, output: None, repeat: false }).unwrap();
        assert!(m.link_up(), "carrier once plugged in");
        m.write(off(Reg::CTRL, 0), CTRL_LRST);
        assert!(!m.link_up(), "a reset takes the link down");
        wait(&m, Reg::CTRL, CTRL_LRST, 0);
        restart(&m);
        wait(&m, Reg::LINKS, LINKS_LINK_UP, LINKS_LINK_UP);
        assert_eq!(m.read(off(Reg::LINKS, 0)) & LINKS_SPEED_10G, LINKS_SPEED_10G);
    }

    #[test]
    fn queue_enable_reads_back_once_started() {
        let m = Model82599::new(
            "t-enable",
            ModelConfig { enable_delay: Duration::from_millis(300), ..ModelConfig::default() },
        );
        m.write(off(Reg::RDBAL, 0), 0x10_0000);
        m.write(off(Reg::RDLEN, 0), 4096);
        m.write(off(Reg::SRRCTL, 0), 2 | SRRCTL_DESCTYPE_ADV_ONEBUF << SRRCTL_DESCTYPE_SHIFT);
        m.write(off(Reg::RXDCTL, 0), RXDCTL_ENABLE);
        assert_eq!(m.read(off(Reg::RXDCTL, 0)) & RXDCTL_ENABLE, 0, "not yet");
        wait(&m, Reg::RXDCTL, RXDCTL_ENABLE, RXDCTL_ENABLE);
        m.write(off(Reg::RXDCTL, 0), 0);
        assert_ne!(m.read(off(Reg::RXDCTL, 0)) & RXDCTL_ENABLE, 0, "still running");
        wait(&m, Reg::RXDCTL, RXDCTL_ENABLE, 0);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
    }

    /// Host memory for a test ring: 8 descriptors and 8 buffers of 2 KiB,
    /// mapped at device address 0x100000.
    struct TestMem {
        mem: Vec<u64>,
    }
    impl TestMem {
        const IOVA: u64 = 0x10_0000;
        fn new(m: &Model82599) -> TestMem {
            let mut t = TestMem { mem: vec![0u64; (128 + 8 * 2048) / 8] };
            // SAFETY: the vector outlives the model in these tests (the
            // model is dropped first, joining its thread).
            unsafe { m.iommu().map(Self::IOVA, t.mem.as_mut_ptr() as *mut u8, t.mem.len() * 8) }.unwrap();
            for i in 0..8 {
                t.mem[2 * i] = Self::IOVA + 128 + 2048 * i as u64;
            }
            t
        }
        /// Bytes of buffer `i`.
        fn buffer(&self, i: usize) -> Vec<u8> {
            self.mem[(128 + 2048 * i) / 8..(128 + 2048 * (i + 1)) / 8].iter().flat_map(|w| w.to_le_bytes()).collect()
        }
        fn status(&self, i: usize) -> u32 {
            // SAFETY: reading a descriptor word the model writes atomically.
            unsafe { AtomicU32::from_ptr((self.mem.as_ptr() as *mut u32).add(4 * i + 2)).load(Ordering::Acquire) }
        }
        fn word(&self, i: usize) -> u32 {
            // SAFETY: reading a descriptor word the model writes atomically.
            unsafe { AtomicU32::from_ptr((self.mem.as_ptr() as *mut u32).add(i)).load(Ordering::Acquire) }
        }
    }

    /// A port with queue 0 on TestMem's ring, `bsize` KiB buffers, running
    /// in manual mode with its link up.
    fn test_port(name: &str, bsize: u32) -> (Arc<Model82599>, TestMem) {
        let m = Model82599::new(name, ModelConfig::default());
        let mem = TestMem::new(&m);
        m.attach(&WireSpec::Pcap { input: None, output: None, repeat: false }).unwrap();
        m.write(off(Reg::AUTOC, 0), AUTOC_LMS_10G_SERIAL << AUTOC_LMS_SHIFT | AUTOC_RESTART_AN);
        m.write(off(Reg::RDBAL, 0), TestMem::IOVA as u32);
        m.write(off(Reg::RDLEN, 0), 128);
        m.write(off(Reg::SRRCTL, 0), bsize | SRRCTL_DESCTYPE_ADV_ONEBUF << SRRCTL_DESCTYPE_SHIFT);
        m.write(off(Reg::DCA_RXCTRL, 0), 0);
        m.write(off(Reg::RDRXCTL, 0), RDRXCTL_CRCSTRIP);
        m.write(off(Reg::FCTRL, 0), FCTRL_UPE | FCTRL_BAM);
        m.write(off(Reg::HLREG0, 0), HLREG0_RXCRCSTRP | HLREG0_JUMBOEN);
        m.write(off(Reg::MAXFRS, 0), 9018 << 16);
        m.write(off(Reg::RXDCTL, 0), RXDCTL_ENABLE);
        wait(&m, Reg::RXDCTL, RXDCTL_ENABLE, RXDCTL_ENABLE);
        m.write(off(Reg::RDT, 0), 7);
        m.write(off(Reg::RXCTRL, 0), RXCTRL_RXEN);
        wait(&m, Reg::LINKS, LINKS_LINK_UP, LINKS_LINK_UP);
        m.set_manual(true);
        (m, mem)
    }

    #[test]
    fn checksum_verdicts_and_packet_type_go_in_the_eop_descriptor() {
        let (m, mem) = test_port("t-csum", 1);
        let mut bad = crate::csum::tests::ipv4_frame(17, 2000, false);
        bad[14 + 28 + 1500] ^= 1;
        m.inject(crate::csum::tests::ipv4_frame(6, 100, true));
        m.inject(bad);
        m.step();
        // Descriptor 0: the TCP frame; 1 and 2: the UDP frame over two buffers.
        let status = |i: usize| mem.word(4 * i + 2);
        let ip_l4 = RXD_STAT_IPCS | RXD_STAT_L4CS;
        assert_eq!(status(0), RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_VP | ip_l4);
        assert_eq!(mem.word(0), RXD_PKTTYPE_IPV4 | RXD_PKTTYPE_TCP);
        assert_eq!(status(1), RXD_STAT_DD, "only DD before the EOP descriptor");
        assert_eq!(mem.word(4), 0);
        assert_eq!(status(2), RXD_STAT_DD | RXD_STAT_EOP | ip_l4 | RXD_STAT_UDPCS | RXD_ERR_L4E);
        assert_eq!(mem.word(8), RXD_PKTTYPE_IPV4 | RXD_PKTTYPE_UDP);
        assert_eq!(mem.word(4 + 3) & 0xffff, 1024);
        assert_eq!(mem.word(4 * 2 + 3) & 0xffff, 2042 - 1024);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        drop(m);
    }

    #[test]
    fn full_ring_waits_then_misses_without_drop_enable() {
        let m = Model82599::new("t-full", ModelConfig::default());
        let mem = TestMem::new(&m);
        m.attach(&WireSpec::Pcap { input: None, output: None, repeat: false }).unwrap();
        m.write(off(Reg::AUTOC, 0), AUTOC_LMS_10G_SERIAL << AUTOC_LMS_SHIFT | AUTOC_RESTART_AN);
        m.write(off(Reg::RDBAL, 0), TestMem::IOVA as u32);
        m.write(off(Reg::RDLEN, 0), 128);
        m.write(off(Reg::SRRCTL, 0), 2 | SRRCTL_DESCTYPE_ADV_ONEBUF << SRRCTL_DESCTYPE_SHIFT);
        m.write(off(Reg::DCA_RXCTRL, 0), 0);
        m.write(off(Reg::RDRXCTL, 0), RDRXCTL_CRCSTRIP);
        m.write(off(Reg::FCTRL, 0), FCTRL_UPE | FCTRL_BAM);
        m.write(off(Reg::RXDCTL, 0), RXDCTL_ENABLE);
        wait(&m, Reg::RXDCTL, RXDCTL_ENABLE, RXDCTL_ENABLE);
        m.write(off(Reg::RDT, 0), 7);
        m.write(off(Reg::RXCTRL, 0), RXCTRL_RXEN);
        wait(&m, Reg::LINKS, LINKS_LINK_UP, LINKS_LINK_UP);
        m.set_manual(true);
        // 400 full-size frames: 7 find a buffer, the 8th waits at the head
        // of the 512 KiB packet buffer and the frames behind it queue up
        // until it is full; the rest are missed.
        for k in 0..400u32 {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
            f.extend_from_slice(&k.to_be_bytes());
            f.resize(1514, 0);
            m.inject(f);
        }
        m.step();
        assert!((0..7).all(|i| mem.status(i) & RXD_STAT_DD != 0), "7 delivered");
        assert_eq!(m.read(off(Reg::RDH, 0)), 7);
        let fit = (0x200 << 10) / 1514;
        assert_eq!(m.read(off(Reg::RNBC, 0)), 1, "one frame found no buffer and waits");
        assert_eq!(m.read(off(Reg::MPC, 0)), 400 - 7 - fit as u32, "the rest missed");
        assert_eq!(m.read(off(Reg::QPRDC, 0)), 0, "nothing dropped: Drop_En is clear");
        assert_eq!(m.read(off(Reg::GPRC, 0)), 7 + fit as u32);
        assert_eq!(m.read(off(Reg::QPRC, 0)), 7);
        // Buffers come back: the waiting frames go on, in order.
        let mut mem = mem;
        for i in 0..7 {
            mem.mem[2 * i] = TestMem::IOVA + 128 + 2048 * i as u64;
            mem.mem[2 * i + 1] = 0;
        }
        m.write(off(Reg::RDT, 0), 6);
        m.step();
        assert_eq!(m.read(off(Reg::QPRC, 0)), 7, "7 more (descriptors 7, 0..5)");
        let seq = |i: usize| u32::from_be_bytes(mem.buffer(i)[14..18].try_into().unwrap());
        assert_eq!(seq(7), 7, "the frame that waited comes first");
        assert_eq!(seq(0), 8, "then the ones behind it");
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        assert!(m.faults().is_empty(), "{:?}", m.faults());
        drop(m);
    }
}
