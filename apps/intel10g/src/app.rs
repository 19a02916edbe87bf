//! THE `Intel10g` APP
//!
//! One app instance drives one queue pair of an 82599 port: the port's
//! single queue, one RSS queue, or one VMDq pool. Frames received on the
//! queue leave on port `output`; packets arriving on port `input` are sent.
//! Empty buffers arriving on port `supply` (a guest's receive buffers, lent
//! by a vhost-user port) are posted on the receive ring instead of host
//! buffers while `output` is a `copy: Zero` link: the chip then writes
//! frames straight into them (see `ring.rs`, Lend mode).
//! Several instances share a port (one per pool, say): the first opens and
//! initialises it, the others find it open; settings that belong to the
//! whole port (mode, MTU, VM-to-VM switching) must agree.
//!
//! ```ron
//! "vm1": (class: "Intel10g", args: (
//!     pci: "0000:01:00.0",           // or "model:0" for the software 82599
//!     mode: Vmdq(pools: 64),
//!     pool: 1,                        // default: the first free pool
//!     macs: ["52:54:00:00:00:01"],
//!     vlans: [10],                    // tags stripped on receive, added on send
//! )),
//! ```
//!
//! Everything in the arguments is checked before the device is touched.
//!
//! An instance that replaces another (new arguments it cannot take in
//! place) waits for it to let go of its pool and starts the rings anew. One
//! that the app's move to another worker made takes the running rings over
//! instead (`snabb_core::handoff`): the buffers posted, the frames the chip
//! wrote meanwhile and the packets still being sent go on with it, and the
//! pool is never stopped.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde::{Deserialize, Serialize};
use snabb_core::packet::PAYLOAD_SIZE;
use snabb_core::{App, AppClass, AppContext, Io, MacAddr, Packet, PortSpec, handoff};
use snabb_model_82599::{Model82599, WireSpec, registry};

use crate::bar::{Mmio, ModelBar, Registers};
use crate::device::{
    Claimed, Device, DeviceSettings, Filters, HwStats, LinkSetup, Mode, QueueSettings, SHARED_STAT_SET,
};
use crate::dma::{DmaMapper, DmaPath};
use crate::pci::PciDevice;
use crate::ring::{MAX_RING, MIN_RING, RxMode, RxQueue, TxQueue, valid_ring_size};
use crate::vfio::Vfio;

/// How often the chip's counters are read (each read is a PCIe round trip).
const STATS_EVERY: Duration = Duration::from_millis(50);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Intel10gArgs {
    /// PCI address (`0000:01:00.0`), or `model:NAME` for a model port.
    pub pci: String,
    pub mode: Mode,
    /// VMDq: the pool (default: the first free one).
    pub pool: Option<u8>,
    /// RSS: the queue (default 0).
    pub queue: Option<u8>,
    /// Unicast (or multicast) addresses the queue receives. Without VMDq,
    /// none means promiscuous.
    pub macs: Vec<MacAddr>,
    /// VLANs the queue receives.
    pub vlans: Vec<u16>,
    /// Receive untagged frames (default: when no VLAN is given).
    pub accept_untagged: Option<bool>,
    pub accept_broadcast: bool,
    pub accept_multicast: bool,
    /// Strip the 802.1Q tag on receive (default: with exactly one VLAN;
    /// then the tag is also added on send).
    pub strip_vlan: Option<bool>,
    /// VMDq: switch frames between local pools inside the chip.
    pub vm_to_vm: bool,
    pub rx_ring: u32,
    pub tx_ring: u32,
    /// Receive buffer size in bytes: a multiple of 1024 (SRRCTL counts KiB).
    pub buffer_size: u32,
    /// Largest frame in bytes, without FCS.
    pub mtu: u32,
    /// Seconds to wait for the link when the port is opened (0: do not wait).
    pub link_wait: f64,
    /// Model ports only: what the port is cabled to.
    pub wire: Option<WireSpec>,
}

impl Default for Intel10gArgs {
    fn default() -> Self {
        Intel10gArgs {
            pci: String::new(),
            mode: Mode::Single,
            pool: None,
            queue: None,
            macs: Vec::new(),
            vlans: Vec::new(),
            accept_untagged: None,
            accept_broadcast: true,
            accept_multicast: true,
            strip_vlan: None,
            vm_to_vm: true,
            rx_ring: 1024,
            tx_ring: 1024,
            buffer_size: PAYLOAD_SIZE as u32,
            mtu: 9014,
            link_wait: 0.0,
            wire: None,
        }
    }
}

/// [`Intel10gArgs`] that passed [`Intel10gArgs::validate`]: the app's
/// `Args`, so that `snabb-rs config check` refuses what the app would.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(try_from = "Intel10gArgs", into = "Intel10gArgs")]
pub struct Intel10gConfig(pub Intel10gArgs);

impl TryFrom<Intel10gArgs> for Intel10gConfig {
    type Error = String;
    fn try_from(a: Intel10gArgs) -> Result<Intel10gConfig, String> {
        a.validate().map_err(|e| format!("{e:#}"))?;
        Ok(Intel10gConfig(a))
    }
}

impl From<Intel10gConfig> for Intel10gArgs {
    fn from(c: Intel10gConfig) -> Intel10gArgs {
        c.0
    }
}

impl Intel10gArgs {
    pub fn is_model(&self) -> bool {
        self.pci.starts_with(registry::PREFIX)
    }

    /// Everything that can be wrong without looking at the device.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.pci.is_empty(), "pci: give the port's PCI address, or `model:NAME` for a model port");
        if !self.is_model() {
            crate::pci::canonical_address(&self.pci)?;
            ensure!(self.wire.is_none(), "wire: only a model port (`model:NAME`) has a wire to set");
        }
        self.mode.validate()?;
        let b = self.buffer_size;
        ensure!(b.is_multiple_of(1024), "buffer_size {b}: must be a multiple of 1024 (SRRCTL.BSIZEPACKET counts KiB)");
        ensure!((1024..=16 * 1024).contains(&b), "buffer_size {b}: the 82599 takes 1 to 16 KiB");
        ensure!(b as usize <= PAYLOAD_SIZE, "buffer_size {b}: larger than a packet ({PAYLOAD_SIZE} bytes)");
        ensure!(
            (64..=PAYLOAD_SIZE as u32 - 8).contains(&self.mtu),
            "mtu {}: must be from 64 to {} (a packet's {PAYLOAD_SIZE} bytes less a VLAN tag and the FCS)",
            self.mtu,
            PAYLOAD_SIZE - 8
        );
        ensure!(
            self.mtu + 4 <= b,
            "mtu {}: a frame (and a VLAN tag) would not fit a {b}-byte receive buffer",
            self.mtu
        );
        for (what, n) in [("rx_ring", self.rx_ring), ("tx_ring", self.tx_ring)] {
            ensure!(
                valid_ring_size(n),
                "{what} {n}: the 82599 takes rings of a multiple of 8 descriptors (128 bytes) up to {MAX_RING}; \
                 snabb-rs needs a power of two from {MIN_RING}"
            );
        }
        match self.mode {
            Mode::Vmdq { pools } => {
                if let Some(p) = self.pool {
                    ensure!(p < pools, "pool {p}: {:?} has pools 0 to {}", self.mode, pools - 1);
                }
                ensure!(self.queue.is_none(), "queue: in VMDq mode choose a `pool`");
                ensure!(!self.macs.is_empty(), "macs: a VMDq pool needs at least one MAC address");
            }
            Mode::Rss { queues } => {
                ensure!(self.pool.is_none(), "pool: only in Vmdq mode");
                if let Some(q) = self.queue {
                    ensure!(q < queues, "queue {q}: {:?} has queues 0 to {}", self.mode, queues - 1);
                }
            }
            Mode::Single => {
                ensure!(self.pool.is_none(), "pool: only in Vmdq mode");
                ensure!(self.queue.is_none_or(|q| q == 0), "queue: Single mode has queue 0 only");
            }
        }
        if !self.mode.vmdq() {
            ensure!(
                self.accept_untagged != Some(false),
                "accept_untagged: false needs Vmdq mode (the port-wide VLAN filter passes untagged frames)"
            );
        }
        ensure!(self.macs.len() <= 127, "macs: the 82599 has 127 address filters");
        for (i, m) in self.macs.iter().enumerate() {
            ensure!(!m.is_broadcast(), "macs: {m} is the broadcast address (use accept_broadcast)");
            ensure!(!self.macs[..i].contains(m), "macs: {m} is listed twice");
        }
        ensure!(self.vlans.len() <= 64, "vlans: the 82599 has 64 VLAN pool filters");
        for (i, &v) in self.vlans.iter().enumerate() {
            ensure!((1..4095).contains(&v), "vlans: {v} is not a VLAN id (1 to 4094)");
            ensure!(!self.vlans[..i].contains(&v), "vlans: {v} is listed twice");
        }
        ensure!(
            self.accept_untagged.unwrap_or(true) || !self.vlans.is_empty() || !self.mode.vmdq(),
            "accept_untagged is false and no VLAN is given: the pool would receive nothing"
        );
        ensure!((0.0..=600.0).contains(&self.link_wait), "link_wait {}: seconds, from 0 to 600", self.link_wait);
        Ok(())
    }

    fn filters(&self) -> Filters {
        Filters {
            macs: self.macs.clone(),
            vlans: self.vlans.clone(),
            accept_untagged: self.accept_untagged.unwrap_or(self.vlans.is_empty()),
            accept_broadcast: self.accept_broadcast,
            accept_multicast: self.accept_multicast,
            strip_vlan: self.strip_vlan.unwrap_or(self.vlans.len() == 1),
        }
    }

    fn device_settings(&self) -> DeviceSettings {
        DeviceSettings {
            mode: self.mode,
            mtu: self.mtu,
            vm_to_vm: self.vm_to_vm,
            port_filters: (!self.mode.vmdq()).then(|| self.filters()),
        }
    }

    fn queue_settings(&self) -> QueueSettings {
        QueueSettings { rx_ring: self.rx_ring, tx_ring: self.tx_ring, buffer_size: self.buffer_size }
    }

    /// Only filters differ (they change in place).
    fn same_but_filters(&self, other: &Intel10gArgs) -> bool {
        let strip = |a: &Intel10gArgs| Intel10gArgs {
            macs: vec![],
            vlans: vec![],
            accept_untagged: None,
            accept_broadcast: true,
            accept_multicast: true,
            strip_vlan: None,
            ..a.clone()
        };
        strip(self) == strip(other)
    }
}

// ---------------------------------------------------------------------------
// Ports open in this process, by address: apps on one port share it.

type Shared = Weak<dyn Any + Send + Sync>;
static DEVICES: Mutex<Option<HashMap<String, Shared>>> = Mutex::new(None);

fn shared_device<R: Registers>(
    key: &str,
    settings: &DeviceSettings,
    open: impl FnOnce() -> Result<Device<R>>,
) -> Result<Arc<Device<R>>> {
    let mut reg = DEVICES.lock().unwrap();
    let map = reg.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(any) = map.get(key).and_then(Weak::upgrade) {
        let dev = any.downcast::<Device<R>>().map_err(|_| anyhow!("{key} is open another way"))?;
        ensure!(
            dev.settings == *settings,
            "{key} is already open with {:?}; every app on one port must agree on mode, mtu, vm_to_vm \
             (and, without VMDq, on the filters)",
            dev.settings
        );
        return Ok(dev);
    }
    let dev = Arc::new(open()?);
    let any: Arc<dyn Any + Send + Sync> = dev.clone();
    map.insert(key.to_string(), Arc::downgrade(&any));
    Ok(dev)
}

/// The model port for `args` (made and cabled as its `wire` says).
fn model_device(args: &Intel10gArgs) -> Result<Arc<Device<ModelBar>>> {
    let model = registry::open(&args.pci, args.wire.as_ref()).map_err(anyhow::Error::msg)?;
    let key = format!("{}{}", registry::PREFIX, model.name());
    shared_device(&key, &args.device_settings(), || {
        let dma = DmaMapper::new(DmaPath::Model(model.clone()), &key)?;
        // The model is an SFP+ port.
        Device::open(&key, ModelBar(model.clone()), dma, args.device_settings(), LinkSetup::Sfi, link_wait(args))
    })
}

/// A real port: VFIO when the machine has it, sysfs and physical addresses
/// otherwise.
fn hardware_device(args: &Intel10gArgs) -> Result<Arc<Device<Mmio>>> {
    let addr = crate::pci::canonical_address(&args.pci)?;
    shared_device(&addr, &args.device_settings(), || {
        let pci = PciDevice::open(&addr)?;
        let link = if crate::pci::SFP_DEVICES.contains(&pci.device) { LinkSetup::Sfi } else { LinkSetup::Eeprom };
        let vfio_bound = pci.driver().as_deref() == Some("vfio-pci");
        if Vfio::available() && vfio_bound {
            let v = Arc::new(Vfio::open(&pci)?);
            let bar = v.map_bar0()?;
            v.set_bus_master(true)?;
            let dma = DmaMapper::new(DmaPath::Vfio(v.clone()), &addr)?;
            let dev = Device::open(&addr, bar, dma, args.device_settings(), link, link_wait(args))?;
            dev.on_close(Box::new(move || {
                let _ = v.set_bus_master(false);
            }));
            Ok(dev)
        } else {
            // Physical addresses: refuse before touching the device when
            // packet memory is not in huge pages.
            let dma = DmaMapper::new(DmaPath::Physical, &addr)?;
            pci.unbind()?;
            pci.set_bus_master(true)?;
            let bar = pci.map_bar0()?;
            let dev = Device::open(&addr, bar, dma, args.device_settings(), link, link_wait(args))?;
            dev.on_close(Box::new(move || {
                let _ = pci.set_bus_master(false);
            }));
            Ok(dev)
        }
    })
}

fn link_wait(args: &Intel10gArgs) -> Duration {
    Duration::from_secs_f64(args.link_wait)
}

// ---------------------------------------------------------------------------

/// What the app does with its queue pair, whichever way the port is reached.
trait Queues: Any {
    fn pull(&mut self, io: &Io);
    fn push(&mut self, io: &Io);
    fn link(&mut self, io: &Io);
    fn tick(&mut self);
    fn stop(&mut self);
    fn prepare_move(&mut self) -> bool;
    fn move_cancelled(&mut self);
    fn refilter(&mut self, new: &Intel10gArgs) -> Result<()>;
    fn counters(&self, emit: &mut dyn FnMut(&str, u64));
    fn report(&self, out: &mut String);
    fn hw_stats(&mut self, sync: bool) -> HwStats;
    fn link_up(&mut self) -> bool;
    fn model(&self) -> Option<Arc<Model82599>>;
    fn running(&self) -> bool;
    fn unit(&self) -> u32;
    fn post(&mut self, p: Packet) -> Result<(), Packet>;
    fn rx_mode(&self) -> Option<(RxMode, u32)>;
}

struct Pair<R: Registers> {
    dev: Arc<Device<R>>,
    owner: String,
    id: Option<u64>,
    unit: u32,
    filters: Filters,
    queue_settings: QueueSettings,
    rings: Option<(RxQueue<R>, TxQueue<R>)>,
    stat_set: u32,
    output: Option<usize>,
    input: Option<usize>,
    supply: Option<usize>,
    /// Errors logged (so that a persistent one is logged once).
    warned: bool,
    model: Option<Arc<Model82599>>,
    /// Since when it waits to take over its unit, and whether it said so.
    waiting: Option<Instant>,
    said_waiting: bool,
    /// Since when the app prepares to move to another worker.
    moving: Option<Instant>,
}

/// A running queue pair on its way to the app's instance on another worker.
struct Handed<R: Registers> {
    dev: Arc<Device<R>>,
    id: u64,
    unit: u32,
    rx: RxQueue<R>,
    tx: TxQueue<R>,
    stat_set: u32,
    filters: Filters,
    queue_settings: QueueSettings,
}

// SAFETY: the rings' packets are the only part tied to a thread (`Packet`
// is !Send: a host record belongs to its thread's pool). `hand_over` marks
// every one for the trip (`prepare_to_travel`: dropped anywhere, a record
// goes home), and the thread that takes a Handed calls
// `packet::expect_visitors` before it frees any. The descriptor rings and
// registers are used by one thread at a time, as before.
unsafe impl<R: Registers> Send for Handed<R> {}

/// How long a new instance waits quietly for the one it replaces to let go
/// of its unit.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(1);

impl<R: Registers> Pair<R> {
    fn open(dev: Arc<Device<R>>, args: &Intel10gArgs, owner: &str, model: Option<Arc<Model82599>>) -> Result<Pair<R>> {
        let unit = match args.mode {
            Mode::Vmdq { .. } => match args.pool {
                Some(p) => p as u32,
                None => dev.unit_for(owner).with_context(|| format!("{}: every pool is in use", dev.name))?,
            },
            Mode::Rss { .. } => args.queue.unwrap_or(0) as u32,
            Mode::Single => 0,
        };
        let mut pair = Pair {
            dev: dev.clone(),
            owner: owner.to_string(),
            id: None,
            unit,
            filters: args.filters(),
            queue_settings: args.queue_settings(),
            rings: None,
            stat_set: SHARED_STAT_SET,
            output: None,
            input: None,
            supply: None,
            warned: false,
            model,
            waiting: None,
            said_waiting: false,
            moving: None,
        };
        match dev.claim(unit, owner)? {
            Claimed::Now(id) => {
                pair.id = Some(id);
                pair.start()?;
            }
            // The instance this one replaces lets go before `link`.
            Claimed::Later => {}
        }
        Ok(pair)
    }

    fn start(&mut self) -> Result<()> {
        let id = self.id.expect("claimed");
        match self.dev.start(id, self.unit, &self.filters, &self.queue_settings) {
            Ok((rx, tx, set)) => {
                self.rings = Some((rx, tx));
                self.stat_set = set;
                Ok(())
            }
            Err(e) => {
                self.id = None;
                self.dev.release(id, self.unit);
                Err(e)
            }
        }
    }

    /// What running rings are parked under: the app and its unit.
    fn handoff_key(&self) -> String {
        handoff::key(&["Intel10g", &self.owner, &self.dev.name, &self.unit.to_string()])
    }

    /// Leave the running rings for the app's instance on the worker it
    /// moves to. False: nothing to leave.
    fn hand_over(&mut self) -> bool {
        let (Some(id), Some((rx, tx))) = (self.id.take(), self.rings.take()) else { return false };
        rx.prepare_to_travel();
        tx.prepare_to_travel();
        let h = Handed {
            dev: self.dev.clone(),
            id,
            unit: self.unit,
            rx,
            tx,
            stat_set: self.stat_set,
            filters: self.filters.clone(),
            queue_settings: self.queue_settings.clone(),
        };
        let owner = self.owner.clone();
        handoff::park(self.handoff_key(), h, move |h: Handed<R>| {
            log::warn!(
                "intel10g {} (app `{owner}`): no instance on another worker took the rings over; stopping them",
                h.dev.name
            );
            snabb_core::packet::expect_visitors();
            h.dev.stop(h.id, h.unit, &h.filters, h.rx, h.tx);
        });
        true
    }

    /// Take over the rings the app's instance on the worker it moved from
    /// left running. True when this instance runs them now.
    fn adopt(&mut self) -> bool {
        if !handoff::waiting() {
            return false;
        }
        let Some(h) = handoff::take::<Handed<R>>(&self.handoff_key()) else { return false };
        snabb_core::packet::expect_visitors();
        if h.queue_settings != self.queue_settings {
            // Other rings: these stop, and the unit starts anew (below).
            h.dev.stop(h.id, h.unit, &h.filters, h.rx, h.tx);
            return false;
        }
        let q = h.rx.queue;
        self.id = Some(h.id);
        self.stat_set = h.stat_set;
        self.rings = Some((h.rx, h.tx));
        if h.filters != self.filters
            && let Err(e) = self.dev.refilter(self.unit, &h.filters, &self.filters, q)
        {
            self.fail(e);
        }
        log::info!("intel10g {} (app `{}`): took the running rings over", self.dev.name, self.owner);
        true
    }

    /// Take over a unit from the instance this one replaced.
    fn take_over(&mut self) {
        if self.id.is_some() || self.adopt() {
            return;
        }
        let r = match self.dev.claim(self.unit, &self.owner) {
            Ok(Claimed::Now(id)) => {
                if let Some(since) = self.waiting.take()
                    && std::mem::take(&mut self.said_waiting)
                {
                    log::info!(
                        "intel10g {} (app `{}`): the instance replaced let go after {:.1?}; starting",
                        self.dev.name,
                        self.owner,
                        since.elapsed()
                    );
                }
                self.id = Some(id);
                self.start()
            }
            // The instance replaced lets go when its engine applies the
            // config: at once on this worker, a little later on another
            // (later still on a busy machine: this keeps waiting, and says
            // so once).
            Ok(Claimed::Later) => {
                let since = *self.waiting.get_or_insert_with(Instant::now);
                if since.elapsed() >= TAKE_OVER_WAIT && !self.said_waiting {
                    self.said_waiting = true;
                    log::warn!(
                        "intel10g {} (app `{}`): still held by the instance being replaced after {TAKE_OVER_WAIT:?}; \
                         waiting for it to let go",
                        self.dev.name,
                        self.owner
                    );
                }
                return;
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r
            && !self.warned
        {
            self.warned = true;
            log::error!("intel10g {} (app `{}`): {e:#}", self.dev.name, self.owner);
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        if !self.warned {
            self.warned = true;
            log::error!("intel10g {} (app `{}`): {e:#}", self.dev.name, self.owner);
        }
    }
}

impl<R: Registers> Queues for Pair<R> {
    #[inline]
    fn pull(&mut self, io: &Io) {
        let Some((rx, tx)) = &mut self.rings else {
            return;
        };
        let out = self.output.map(|i| io.output.at(i));
        let supply = self.supply.map(|i| io.input.at(i));
        let r = rx.pull(out, supply);
        // Finished transmit buffers are freed every breath, in push; here
        // too when nothing feeds the queue (its push has nothing to do).
        if self.input.is_none() {
            tx.reclaim();
        }
        if let Err(e) = r {
            self.fail(e);
        }
    }

    #[inline]
    fn push(&mut self, io: &Io) {
        let Some((rx, tx)) = &mut self.rings else {
            return;
        };
        let r = match self.input {
            Some(i) => tx.transmit(io.input.at(i)).map(drop),
            None => {
                tx.reclaim();
                Ok(())
            }
        };
        let s = match self.supply {
            Some(i) => rx.push(self.output.map(|o| io.output.at(o)), io.input.at(i)),
            None => Ok(()),
        };
        if let Err(e) = r.and(s) {
            self.fail(e);
        }
    }

    fn link(&mut self, io: &Io) {
        self.take_over();
        self.output = io.output.index_of("output");
        self.input = io.input.index_of("input");
        self.supply = io.input.index_of("supply");
        for (name, _) in io.output.named().chain(io.input.named()) {
            if !["output", "input", "supply"].contains(&name) {
                log::warn!("intel10g app `{}`: port `{name}` is not used (ports: input, supply, output)", self.owner);
            }
        }
    }

    fn tick(&mut self) {
        self.take_over();
        self.dev.sync_stats(STATS_EVERY);
    }

    fn stop(&mut self) {
        if self.moving.is_some_and(|t| t.elapsed() < handoff::MOVE_ABANDONED) && self.hand_over() {
            return;
        }
        if let (Some(id), Some((rx, tx))) = (self.id.take(), self.rings.take()) {
            self.dev.stop(id, self.unit, &self.filters, rx, tx);
        }
    }

    fn prepare_move(&mut self) -> bool {
        self.moving = Some(Instant::now());
        true
    }

    fn move_cancelled(&mut self) {
        self.moving = None;
    }

    fn refilter(&mut self, new: &Intel10gArgs) -> Result<()> {
        let filters = new.filters();
        if let Some((rx, _)) = &self.rings {
            self.dev.refilter(self.unit, &self.filters, &filters, rx.queue)?;
        }
        self.filters = filters;
        Ok(())
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        if let Some((rx, tx)) = &self.rings {
            emit("rxpackets", rx.counters.packets);
            emit("rxbytes", rx.counters.bytes);
            emit("rxerrors", rx.counters.errors);
            emit("txpackets", tx.counters.packets);
            emit("txbytes", tx.counters.bytes);
            emit("txdrop", tx.counters.dropped);
            emit("txcopied", tx.counters.copied);
            emit("txsplit", tx.counters.split);
            emit("txforeign", tx.counters.foreign);
            let c = &rx.counters;
            emit("rx_lend", (rx.mode() == RxMode::Lend) as u64);
            emit("rx_bsize", rx.buffer_size() as u64);
            emit("rx_lent", c.lent);
            emit("rx_supply_refused", c.supply_refused);
            emit("rx_restarts", c.restarts);
            emit("rx_restart_drop", c.restart_drops);
            emit("rx_revoked", c.revoked);
            emit("rx_gathered", c.gathered);
            emit("rx_gathered_bytes", c.gathered_bytes);
            emit("rx_copied_long", c.copied_long);
            emit("rx_copied_long_bytes", c.copied_long_bytes);
            emit("rx_chained", c.chained);
            emit("rx_chained_buffers", c.chained_buffers);
            emit("rx_csum_verified", c.csum_verified);
            emit("rx_csum_bad", c.csum_bad);
        }
        let hw = self.dev.stats();
        if self.stat_set != SHARED_STAT_SET {
            emit("rxdrop", hw.queues[self.stat_set as usize].rx_drop);
        }
        emit("link_up", self.dev.link_up() as u64);
        if self.id.is_some_and(|id| self.dev.is_reporter(id)) {
            emit("dev_rxtotal", hw.rx_total);
            emit("dev_rxpackets", hw.rx_packets);
            emit("dev_rxbytes", hw.rx_bytes);
            emit("dev_txpackets", hw.tx_packets);
            emit("dev_txbytes", hw.tx_bytes);
            emit("dev_rxbcast", hw.rx_broadcast);
            emit("dev_rxmcast", hw.rx_multicast);
            emit("dev_txbcast", hw.tx_broadcast);
            emit("dev_txmcast", hw.tx_multicast);
            emit("dev_rxmissed", hw.rx_missed);
            emit("dev_rxnobuf", hw.rx_no_buffer);
            emit("dev_rxdrop", hw.rx_drop());
            emit("dev_rxerrors", hw.rx_errors);
            emit("dev_link_speed", self.dev.link_speed());
            if let Some(m) = &self.model {
                // What the model caught the driver doing: DMA outside what
                // was mapped, and datasheet violations (both 0, always).
                emit("model_dma_faults", m.fault_count() as u64);
                emit("model_violations", m.violation_count() as u64);
            }
        }
    }

    fn report(&self, out: &mut String) {
        use std::fmt::Write;
        let g = snabb_core::engine::group;
        let what = if self.dev.settings.mode.vmdq() { "pool" } else { "queue" };
        let _ = write!(
            out,
            "{} {what} {}: link {}",
            self.dev.name,
            self.unit,
            if self.dev.link_up() { "up" } else { "down" }
        );
        let hw = self.dev.stats();
        match &self.rings {
            Some((rx, tx)) => {
                let mode = match rx.mode() {
                    RxMode::Host => "host",
                    RxMode::Lend => "lend",
                };
                let _ = write!(
                    out,
                    "; rx {mode} {} KiB; received {}, sent {}",
                    rx.buffer_size() / 1024,
                    g(rx.counters.packets),
                    g(tx.counters.packets)
                );
                if self.stat_set != SHARED_STAT_SET {
                    let _ =
                        write!(out, ", dropped for want of buffers {}", g(hw.queues[self.stat_set as usize].rx_drop));
                }
            }
            None => {
                let _ = write!(out, ", not running");
            }
        }
        if self.id.is_some_and(|id| self.dev.is_reporter(id)) {
            let _ = write!(
                out,
                "\n    port: received {} ({} bytes), sent {} ({} bytes), missed {}, no buffer {}, dropped {}, errors {}",
                g(hw.rx_packets),
                g(hw.rx_bytes),
                g(hw.tx_packets),
                g(hw.tx_bytes),
                g(hw.rx_missed),
                g(hw.rx_no_buffer),
                g(hw.rx_drop()),
                g(hw.rx_errors)
            );
        }
        if let Some(m) = &self.model
            && self.id.is_some_and(|id| self.dev.is_reporter(id))
        {
            let s = m.stats();
            let _ = write!(
                out,
                "\n    model: wire in {}, wire out {}, lost with the link down {}, filtered out {}, switched inside {}",
                g(s.wire_rx),
                g(s.wire_tx),
                g(s.tx_link_down),
                g(s.rx_filtered),
                g(s.looped)
            );
        }
    }

    fn hw_stats(&mut self, sync: bool) -> HwStats {
        if sync {
            self.dev.sync_stats(Duration::ZERO);
        }
        self.dev.stats()
    }

    fn link_up(&mut self) -> bool {
        self.dev.sync_stats(Duration::ZERO);
        self.dev.link_up()
    }

    fn model(&self) -> Option<Arc<Model82599>> {
        self.model.clone()
    }
    fn running(&self) -> bool {
        self.rings.is_some()
    }
    fn unit(&self) -> u32 {
        self.unit
    }
    fn post(&mut self, p: Packet) -> Result<(), Packet> {
        match &mut self.rings {
            Some((rx, _)) => {
                rx.post(p)?;
                // Post errors are reported on the next pull's flush.
                let _ = rx.flush();
                Ok(())
            }
            None => Err(p),
        }
    }
    fn rx_mode(&self) -> Option<(RxMode, u32)> {
        self.rings.as_ref().map(|(rx, _)| (rx.mode(), rx.buffer_size()))
    }
}

impl<R: Registers> Drop for Pair<R> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Drives one queue pair of an 82599 port. See the module documentation.
pub struct Intel10g {
    args: Intel10gArgs,
    q: Box<dyn Queues>,
}

impl AppClass for Intel10g {
    type Args = Intel10gConfig;
    const PORTS: PortSpec = PortSpec::new(&["input", "supply"], &["output"]);

    fn new(Intel10gConfig(args): Intel10gConfig, ctx: &AppContext) -> Result<Intel10g> {
        let q: Box<dyn Queues> = if args.is_model() {
            let dev = model_device(&args)?;
            let model = registry::get(&args.pci);
            Box::new(Pair::open(dev, &args, ctx.name, model)?)
        } else {
            let dev = hardware_device(&args)?;
            Box::new(Pair::open(dev, &args, ctx.name, None)?)
        };
        Ok(Intel10g { args, q })
    }

    fn reconfigure(&mut self, Intel10gConfig(args): Intel10gConfig, _ctx: &AppContext) -> Result<bool> {
        if !args.mode.vmdq() || !args.same_but_filters(&self.args) {
            return Ok(false);
        }
        self.q.refilter(&args)?;
        self.args = args;
        Ok(true)
    }
}

impl App for Intel10g {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        self.q.pull(io)
    }
    fn push(&mut self, io: &Io) {
        self.q.push(io)
    }
    fn link(&mut self, io: &Io) {
        self.q.link(io)
    }
    fn tick(&mut self, _io: &Io) {
        self.q.tick()
    }
    fn stop(&mut self) {
        self.q.stop()
    }
    fn prepare_move(&mut self) -> bool {
        self.q.prepare_move()
    }
    fn move_cancelled(&mut self) {
        self.q.move_cancelled()
    }
    fn report(&self, out: &mut String) {
        self.q.report(out)
    }
    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        self.q.counters(emit)
    }
}

impl Intel10g {
    pub fn args(&self) -> &Intel10gArgs {
        &self.args
    }
    /// The pool (VMDq) or queue this instance drives.
    pub fn unit(&self) -> u32 {
        self.q.unit()
    }
    /// Whether its rings run (false while it waits to take over its pool
    /// from the instance it replaces).
    pub fn running(&self) -> bool {
        self.q.running()
    }
    /// The port's hardware statistics, read from the chip now.
    pub fn hw_stats(&mut self) -> HwStats {
        self.q.hw_stats(true)
    }
    /// LINKS.Link_Up, read from the chip now.
    pub fn link_up(&mut self) -> bool {
        self.q.link_up()
    }
    /// The model behind a `model:` port.
    pub fn model(&self) -> Option<Arc<Model82599>> {
        self.q.model()
    }
    /// Post a receive buffer the caller owns (host or foreign) on this
    /// queue: it comes back through `output` holding a received frame.
    pub fn post_buffer(&mut self, p: Packet) -> Result<(), Packet> {
        self.q.post(p)
    }
    /// The receive queue's mode and buffer size (None while not running).
    pub fn rx_mode(&self) -> Option<(RxMode, u32)> {
        self.q.rx_mode()
    }
}
