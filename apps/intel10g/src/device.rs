//! ONE 82599 PORT, SHARED BY THE APPS THAT USE ITS QUEUES
//!
//! A `Device` is opened once per port and shared (`Arc`) by every app
//! instance that drives one of its queue pairs: one per VMDq pool, or per
//! RSS queue, or the single queue. Opening runs the datasheet's
//! initialisation sequence (4.6.3) once; each instance then claims its pool
//! or queue, programs its filters and starts its rings, and gives them back
//! when it stops. Control operations take a lock; the rings' hot paths
//! touch only their own queue's registers and need none, so instances may
//! live on different engine threads.
//!
//! Every wait on the chip has a timeout and says what it waited for.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use snabb_core::MacAddr;

use snabb_core::memory::{self, DmaDomain};

use crate::bar::Registers;
use crate::dma::DmaMapper;
use crate::regs::*;
use crate::ring::{DescRing, RxQueue, TxQueue};

/// How the port's queues are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub enum Mode {
    /// One queue pair (queue 0), all traffic.
    #[default]
    Single,
    /// Receive side scaling over `queues` queues (1 to 16), one app per queue.
    Rss { queues: u8 },
    /// VMDq: `pools` pools (64 with 2 queues each, or 32 with 4), one app
    /// per pool, each with its MAC addresses and VLANs.
    Vmdq { pools: u8 },
}

impl Mode {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Mode::Single => Ok(()),
            Mode::Rss { queues } => {
                ensure!((1..=16).contains(&queues), "Rss(queues: {queues}): the 82599 spreads over 1 to 16 queues");
                Ok(())
            }
            Mode::Vmdq { pools } => {
                ensure!(
                    pools == 64 || pools == 32,
                    "Vmdq(pools: {pools}): the 82599 has 64 pools of 2 queues or 32 pools of 4"
                );
                Ok(())
            }
        }
    }
    pub fn vmdq(&self) -> bool {
        matches!(self, Mode::Vmdq { .. })
    }
    /// Pools, RSS queues, or 1: the units apps claim.
    pub fn units(&self) -> u32 {
        match *self {
            Mode::Single => 1,
            Mode::Rss { queues } => queues as u32,
            Mode::Vmdq { pools } => pools as u32,
        }
    }
    /// The receive and transmit queue of a unit (a pool's first queue).
    pub fn queue_of(&self, unit: u32) -> u32 {
        match *self {
            Mode::Vmdq { pools: 32 } => unit * 4,
            Mode::Vmdq { .. } => unit * 2,
            _ => unit,
        }
    }
}

/// What every app on one port must agree on.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSettings {
    pub mode: Mode,
    /// Largest frame without FCS (the 82599's MAXFRS.MFS is this plus 4).
    pub mtu: u32,
    /// VMDq: frames between local pools are switched inside the chip
    /// (PFDTXGSWC.LBE).
    pub vm_to_vm: bool,
    /// Filters of the whole port when not in VMDq mode (then they are per pool).
    pub port_filters: Option<Filters>,
}

/// Receive filters of a pool (VMDq) or of the port.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Filters {
    pub macs: Vec<MacAddr>,
    pub vlans: Vec<u16>,
    pub accept_untagged: bool,
    pub accept_broadcast: bool,
    pub accept_multicast: bool,
    pub strip_vlan: bool,
}

/// One app's rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub buffer_size: u32,
}

/// Hardware statistics of one queue counter set (RQSMR/TQSM map queues to
/// 16 such sets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueHwStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames dropped for want of a descriptor (QPRDC).
    pub rx_drop: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// The port's hardware statistics, accumulated from the clear-on-read
/// registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_broadcast: u64,
    pub rx_multicast: u64,
    pub tx_broadcast: u64,
    pub tx_multicast: u64,
    /// Frames missed because the packet buffer was full (MPC).
    pub rx_missed: u64,
    /// Frames that found no descriptor (RNBC): they waited, or were dropped.
    pub rx_no_buffer: u64,
    /// Bad frames: CRC, symbol, length, undersize, oversize, fragments, jabber.
    pub rx_errors: u64,
    pub rx_total: u64,
    pub tx_total: u64,
    pub queues: [QueueHwStats; 16],
}

impl HwStats {
    /// Frames dropped for want of descriptors, all queues.
    pub fn rx_drop(&self) -> u64 {
        self.queues.iter().map(|q| q.rx_drop).sum()
    }
}

/// Queue counter sets given to apps; the last one is shared by the rest.
const STAT_SETS: usize = 15;
pub const SHARED_STAT_SET: u32 = 15;

struct MacEntry {
    mac: MacAddr,
    pools: u64,
}
struct VlanEntry {
    vid: u16,
    pools: u64,
}

struct Claim {
    owner: String,
    id: u64,
}

struct Control {
    claims: Vec<Option<Claim>>,
    /// RAL/RAH entries 1..127 (0 is the burned-in address).
    macs: Vec<Option<MacEntry>>,
    /// PFVLVF entries.
    vlans: Vec<Option<VlanEntry>>,
    stat_sets: [Option<u64>; STAT_SETS],
    next_id: u64,
    rx_on: bool,
    /// The app that publishes the port's counters.
    reporter: Option<u64>,
}

struct StatsState {
    stats: HwStats,
    last: Option<Instant>,
}

pub struct Device<R: Registers> {
    pub name: String,
    pub(crate) regs: R,
    pub(crate) dma: Arc<DmaMapper>,
    pub settings: DeviceSettings,
    ctl: Mutex<Control>,
    stats: Mutex<StatsState>,
    links: AtomicU32,
    /// Called when the device goes away (bus mastering off, say).
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// How the link is set up when the port is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSetup {
    /// SFP+ ports: 10 Gb/s serial with the SFI PMA/PMD (AUTOC.LMS, AUTOC2).
    Sfi,
    /// Backplane, CX4, XAUI, copper: the link mode the EEPROM loaded.
    Eeprom,
}

/// How a claim went.
pub enum Claimed {
    /// The unit is ours; our id.
    Now(u64),
    /// Another instance of the same app (being replaced) still holds it.
    Later,
}

const RESET_TIMEOUT: Duration = Duration::from_secs(1);
const INIT_TIMEOUT: Duration = Duration::from_secs(1);
const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);

impl<R: Registers> Device<R> {
    /// Initialise the chip behind `regs` (datasheet 4.6.3 to 4.6.11) for
    /// `settings`. Nothing is running on it afterwards: apps start queues.
    pub fn open(
        name: &str,
        regs: R,
        dma: DmaMapper,
        settings: DeviceSettings,
        link: LinkSetup,
        link_wait: Duration,
    ) -> Result<Device<R>> {
        let units = settings.mode.units() as usize;
        let dev = Device {
            name: name.to_string(),
            regs,
            dma: Arc::new(dma),
            settings,
            ctl: Mutex::new(Control {
                claims: (0..units).map(|_| None).collect(),
                macs: (0..128).map(|_| None).collect(),
                vlans: (0..64).map(|_| None).collect(),
                stat_sets: [None; STAT_SETS],
                next_id: 1,
                rx_on: false,
                reporter: None,
            }),
            stats: Mutex::new(StatsState { stats: HwStats::default(), last: None }),
            links: AtomicU32::new(0),
            on_close: Mutex::new(None),
        };
        dev.init(link, link_wait).with_context(|| format!("initialising {name}"))?;
        // From now on every lender's memory is mapped for this device too
        // (the registry keeps a weak reference: it forgets the device when
        // it goes).
        let domain: Arc<dyn DmaDomain> = dev.dma.clone();
        memory::add_domain(&domain);
        Ok(dev)
    }

    pub(crate) fn on_close(&self, f: Box<dyn FnOnce() + Send>) {
        *self.on_close.lock().unwrap() = Some(f);
    }

    fn init(&self, link: LinkSetup, link_wait: Duration) -> Result<()> {
        let r = &self.regs;
        // 4.6.3.1: interrupts off (this driver polls).
        r.write(EIMC, EIMC_ALL);
        // 5.2.5.3.2: stop the chip mastering the bus before the reset, so
        // that no DMA is cut in half. If requests stay pending, the
        // specification update says to reset twice.
        r.set(CTRL, CTRL_GIO_MASTER_DISABLE);
        if let Err(e) =
            r.wait(STATUS, STATUS_GIO_MASTER_ENABLE, 0, QUEUE_TIMEOUT, "PCIe master disable (STATUS.GIO Master Enable)")
        {
            log::warn!("intel10g {}: {e:#}; resetting twice", self.name);
            r.write(CTRL, CTRL_RST);
            std::thread::sleep(Duration::from_millis(1));
            r.wait(CTRL, CTRL_RST, 0, RESET_TIMEOUT, "first of two resets (CTRL.RST)")?;
        }
        // 4.6.3.2: global reset; the bits clear themselves.
        r.write(CTRL, CTRL_RST | CTRL_LRST);
        std::thread::sleep(Duration::from_millis(1));
        r.wait(CTRL, CTRL_RST | CTRL_LRST, 0, RESET_TIMEOUT, "global reset (CTRL.RST)")?;
        std::thread::sleep(Duration::from_millis(10));
        r.write(EIMC, EIMC_ALL);
        // 4.6.3: EEPROM auto-read, then DMA initialisation.
        r.wait(EEC, EEC_AUTO_RD, EEC_AUTO_RD, INIT_TIMEOUT, "EEPROM auto-read (EEC.Auto_RD)")?;
        r.wait(RDRXCTL, RDRXCTL_DMAIDONE, RDRXCTL_DMAIDONE, INIT_TIMEOUT, "DMA initialisation (RDRXCTL.DMAIDONE)")?;
        // 4.6.4: link mode (SFP+ ports: 10 Gb/s serial, SFI; others as
        // their EEPROM set them), then restart auto-negotiation.
        if link == LinkSetup::Sfi {
            r.write(AUTOC2, (r.read(AUTOC2) & !AUTOC2_10G_PMA_PMD_SERIAL_MASK) | AUTOC2_10G_SFI);
            r.write(AUTOC, (r.read(AUTOC) & !AUTOC_LMS_MASK) | AUTOC_LMS_10G_SERIAL);
        }
        r.set(AUTOC, AUTOC_RESTART_AN);
        // 4.6.5: statistics start from zero (they clear when read).
        self.read_stats(&mut HwStats::default());
        self.init_receive();
        self.init_transmit();
        if self.settings.mode.vmdq() {
            self.init_vmdq();
        }
        if !link_wait.is_zero()
            && let Err(e) = r.wait(LINKS, LINKS_LINK_UP, LINKS_LINK_UP, link_wait, "link up (LINKS.Link_Up)")
        {
            log::warn!("intel10g {}: {e:#}; carrying on, the link may come up later", self.name);
        }
        self.links.store(r.read(LINKS), Ordering::Relaxed);
        Ok(())
    }

    /// 4.6.7: the receive side, everything but the queues.
    fn init_receive(&self) {
        let r = &self.regs;
        r.write(RXCTRL, 0);
        // One packet buffer for everything (no DCB).
        r.write(rxpbsize(0), 0x200 << 10);
        for i in 1..8 {
            r.write(rxpbsize(i), 0);
        }
        // Strip the FCS (both places must agree), take jumbo frames.
        r.set(HLREG0, HLREG0_RXCRCSTRP | HLREG0_JUMBOEN | HLREG0_TXCRCEN | HLREG0_TXPADEN);
        r.write(MAXFRS, (self.settings.mtu + 4) << MAXFRS_MFS_SHIFT);
        let rdrxctl = r.read(RDRXCTL) & !RDRXCTL_RSCFRSTSIZE_MASK;
        r.write(RDRXCTL, rdrxctl | RDRXCTL_CRCSTRIP | RDRXCTL_RSCACKC | RDRXCTL_FCOE_WRFIX);
        r.set(RFCTL, RFCTL_RSC_DIS);
        // The chip checks IPv4 header and TCP/UDP checksums whatever RXCSUM
        // says (7.1.11; the write-back's IPCS, L4CS, IPE, L4E bits). RXCSUM
        // only picks what the write-back's second dword holds (8.2.3.7.5):
        // PCSD gives the RSS hash rather than the IP payload (fragment)
        // checksum, which nothing here uses, as Linux's ixgbe_setup_mrqc
        // and DPDK's ixgbe_dev_rx_init do.
        r.write(RXCSUM, RXCSUM_PCSD);
        // Empty filter tables; entry 0 keeps the burned-in address but no pool.
        for i in 1..128 {
            r.write(ral(i), 0);
            r.write(rah(i), 0);
        }
        for i in 0..256 {
            r.write(mpsar(i), 0);
        }
        for i in 0..128 {
            r.write(mta(i), 0);
            r.write(vfta(i), 0);
            r.write(pfuta(i), 0);
            r.write(pfvlvfb(i), 0);
        }
        for i in 0..64 {
            r.write(pfvlvf(i), 0);
        }
        for i in 0..32 {
            r.write(rqsmr(i), 0);
            r.write(tqsm(i), 0);
        }
        r.set(CTRL_EXT, CTRL_EXT_NS_DIS);
        match self.settings.mode {
            Mode::Single => r.write(MRQC, 0),
            Mode::Rss { queues } => {
                let mut key = [0u8; 40];
                random(&mut key);
                for i in 0..10 {
                    r.write(rssrk(i), u32::from_le_bytes(key[4 * i as usize..4 * i as usize + 4].try_into().unwrap()));
                }
                for i in 0..32 {
                    let e = |j: u32| ((4 * i + j) % queues as u32) << (8 * j);
                    r.write(reta(i), e(0) | e(1) | e(2) | e(3));
                }
                r.write(MRQC, MRQC_MRQE_RSS | MRQC_RSS_FIELDS);
            }
            Mode::Vmdq { pools } => {
                r.write(MRQC, if pools == 32 { MRQC_MRQE_VMDQ_RSS_32 } else { MRQC_MRQE_VMDQ_RSS_64 });
                for i in 0..32 {
                    r.write(reta(i), 0);
                }
            }
        }
        let mut vlnctrl = VLNCTRL_VET_8100;
        let mut fctrl = 0;
        match &self.settings.port_filters {
            Some(f) => {
                if f.macs.is_empty() {
                    fctrl |= FCTRL_UPE | FCTRL_MPE;
                }
                for (k, m) in f.macs.iter().enumerate() {
                    let (lo, hi) = mac_words(m);
                    r.write(ral(k as u32 + 1), lo);
                    r.write(rah(k as u32 + 1), hi | RAH_AV);
                }
                if f.accept_broadcast {
                    fctrl |= FCTRL_BAM;
                }
                if f.accept_multicast {
                    fctrl |= FCTRL_MPE;
                }
                if !f.vlans.is_empty() {
                    vlnctrl |= VLNCTRL_VFE;
                    for &v in &f.vlans {
                        r.set(vfta(v as u32 / 32), 1 << (v % 32));
                    }
                }
            }
            None => {
                // VMDq: pools decide; the VLAN filter is on, pools' entries
                // open it per VLAN.
                fctrl |= FCTRL_BAM;
                vlnctrl |= VLNCTRL_VFE;
            }
        }
        r.write(FCTRL, fctrl);
        r.write(VLNCTRL, vlnctrl);
    }

    /// 4.6.8: the transmit side, everything but the queues.
    fn init_transmit(&self) {
        let r = &self.regs;
        r.write(txpbsize(0), 0xA0 << 10);
        r.write(txpbthresh(0), 0xA0);
        for i in 1..8 {
            r.write(txpbsize(i), 0);
            r.write(txpbthresh(i), 0);
        }
        r.write(DTXMXSZRQ, 0xfff);
        // MTQC only with the descriptor arbiter off (7.2.1.2.1).
        r.set(RTTDCS, RTTDCS_ARBDIS);
        r.write(
            MTQC,
            match self.settings.mode {
                Mode::Vmdq { pools: 32 } => MTQC_VT_ENA | MTQC_32_POOLS,
                Mode::Vmdq { .. } => MTQC_VT_ENA | MTQC_64_POOLS,
                _ => 0,
            },
        );
        r.clear(RTTDCS, RTTDCS_ARBDIS);
        r.set(DMATXCTL, DMATXCTL_TE);
    }

    /// 4.6.10.1: virtualisation with VMDq pools. Pools stay off until an
    /// app claims them.
    fn init_vmdq(&self) {
        let r = &self.regs;
        r.write(PFVTCTL, PFVTCTL_VT_ENA | PFVTCTL_RPL_EN | PFVTCTL_DIS_DEF_POOL);
        if self.settings.vm_to_vm {
            r.set(PFDTXGSWC, PFDTXGSWC_LBE);
            // Loopback needs a receive threshold (7.10.3.4).
            r.write(fcrth(0), 0x10000);
        } else {
            r.clear(PFDTXGSWC, PFDTXGSWC_LBE);
        }
        for i in 0..2 {
            r.write(pfvfre(i), 0);
            r.write(pfvfte(i), 0);
            r.write(pfvmtxsw(i), 0);
        }
        for p in 0..64 {
            r.write(pfvml2flt(p), 0);
            r.write(psrtype(p), 0);
            r.write(pfvmvir(p), 0);
            r.write(RTTDQSEL, p);
            r.write(RTTDT1C, 0);
        }
    }

    // -- claims ----------------------------------------------------------------

    /// Claim unit `unit` (pool, RSS queue or 0) for app `owner`.
    pub fn claim(&self, unit: u32, owner: &str) -> Result<Claimed> {
        let mut c = self.ctl.lock().unwrap();
        let units = c.claims.len();
        ensure!(
            (unit as usize) < units,
            "{} {unit}: {:?} has 0 to {}",
            self.unit_word(),
            self.settings.mode,
            units - 1
        );
        match &c.claims[unit as usize] {
            None => {
                let id = c.next_id;
                c.next_id += 1;
                c.claims[unit as usize] = Some(Claim { owner: owner.to_string(), id });
                if c.reporter.is_none() {
                    c.reporter = Some(id);
                }
                Ok(Claimed::Now(id))
            }
            Some(cl) if cl.owner == owner => Ok(Claimed::Later),
            Some(cl) => bail!("{} {unit} of {} is in use by app `{}`", self.unit_word(), self.name, cl.owner),
        }
    }

    /// The unit app `owner` holds already (an instance of it being
    /// replaced, on this worker or another: the new one takes that unit
    /// over, with its filters), else the first unit nobody has claimed.
    pub fn unit_for(&self, owner: &str) -> Option<u32> {
        let c = self.ctl.lock().unwrap();
        c.claims
            .iter()
            .position(|cl| cl.as_ref().is_some_and(|cl| cl.owner == owner))
            .or_else(|| c.claims.iter().position(Option::is_none))
            .map(|u| u as u32)
    }

    fn unit_word(&self) -> &'static str {
        match self.settings.mode {
            Mode::Vmdq { .. } => "pool",
            _ => "queue",
        }
    }

    pub(crate) fn release(&self, id: u64, unit: u32) {
        let mut c = self.ctl.lock().unwrap();
        if c.claims[unit as usize].as_ref().is_some_and(|cl| cl.id == id) {
            c.claims[unit as usize] = None;
        }
        for s in c.stat_sets.iter_mut() {
            if *s == Some(id) {
                *s = None;
            }
        }
        if c.reporter == Some(id) {
            c.reporter = c.claims.iter().flatten().map(|cl| cl.id).next();
        }
    }

    /// Whether app `id` publishes the port's counters.
    pub fn is_reporter(&self, id: u64) -> bool {
        self.ctl.lock().unwrap().reporter == Some(id)
    }

    // -- starting and stopping a unit ------------------------------------------

    /// Program a claimed unit's filters, start its rings, enable it.
    pub fn start(
        self: &Arc<Self>,
        id: u64,
        unit: u32,
        filters: &Filters,
        qs: &QueueSettings,
    ) -> Result<(RxQueue<R>, TxQueue<R>, u32)> {
        let mut c = self.ctl.lock().unwrap();
        let q = self.settings.mode.queue_of(unit);
        if self.settings.mode.vmdq() {
            self.check_pool_filters(&c, unit, filters)?;
        }
        // Everything that can fail without touching the chip, first: the
        // rings, and that the device can reach them (without an IOMMU, a
        // ring outside huge pages would have no physical address to give).
        let rx_ring = DescRing::new(qs.rx_ring)?;
        let tx_ring = DescRing::new(qs.tx_ring)?;
        self.dma.check()?;
        let set = match c.stat_sets.iter().position(Option::is_none) {
            Some(s) => {
                c.stat_sets[s] = Some(id);
                s as u32
            }
            None => SHARED_STAT_SET,
        };
        self.map_stat_set(q, set);
        if self.settings.mode.vmdq() {
            self.program_pool(&mut c, unit, filters);
        }
        let strip = filters.strip_vlan;
        let mut rx = RxQueue::new(self.clone(), q, rx_ring, qs.buffer_size);
        let tx = TxQueue::new(self.clone(), q, tx_ring);
        let started = self.start_rx(&mut rx, strip).and_then(|_| self.start_tx(&tx));
        if let Err(e) = started {
            drop(c);
            self.stop(id, unit, filters, rx, tx);
            return Err(e);
        }
        if !c.rx_on {
            // 4.6.7: the receiver goes on after its first queue.
            self.regs.set(RXCTRL, RXCTRL_RXEN);
            c.rx_on = true;
        }
        if self.settings.mode.vmdq() {
            let bit = 1 << (unit % 32);
            self.regs.set(pfvfre(unit / 32), bit);
            self.regs.set(pfvfte(unit / 32), bit);
        }
        rx.refill();
        rx.flush()?;
        Ok((rx, tx, set))
    }

    fn map_stat_set(&self, q: u32, set: u32) {
        let shift = 8 * (q % 4);
        for reg in [rqsmr(q / 4), tqsm(q / 4)] {
            let v = self.regs.read(reg) & !(0xf << shift);
            self.regs.write(reg, v | set << shift);
        }
    }

    fn start_rx(&self, rx: &mut RxQueue<R>, strip: bool) -> Result<()> {
        let r = &self.regs;
        let q = rx.queue;
        let ring = rx.ring();
        r.write(rdbal(q), ring.dma() as u32);
        r.write(rdbah(q), (ring.dma() >> 32) as u32);
        r.write(rdlen(q), ring.bytes());
        // 4.6.7: this DCA bit must be cleared (left set, payloads were seen corrupted).
        r.clear(dca_rxctrl(q), DCA_RXCTRL_BIT12);
        let vme = if strip { RXDCTL_VME } else { 0 };
        r.write(rxdctl(q), (r.read(rxdctl(q)) & !RXDCTL_VME) | vme);
        self.rx_enable(q, rx.buffer_size())
    }

    /// Start receive queue `q` (disabled, its ring programmed) with
    /// `bsize`-byte buffers, from descriptor 0 and with no buffer posted.
    /// Every frame that finds no descriptor is dropped (SRRCTL.Drop_En):
    /// a queue without buffers costs no other queue anything.
    pub(crate) fn rx_enable(&self, q: u32, bsize: u32) -> Result<()> {
        let r = &self.regs;
        r.write(srrctl(q), (bsize / 1024) | SRRCTL_DESCTYPE_ADV_ONEBUF | SRRCTL_DROP_EN);
        r.write(rdh(q), 0);
        r.write(rdt(q), 0);
        r.set(rxdctl(q), RXDCTL_ENABLE);
        r.wait(
            rxdctl(q),
            RXDCTL_ENABLE,
            RXDCTL_ENABLE,
            QUEUE_TIMEOUT,
            &format!("receive queue {q} start (RXDCTL.ENABLE)"),
        )
    }

    /// Stop receive queue `q` and wait until the chip says it has
    /// (4.6.7.1): only then may its buffers be taken back.
    pub(crate) fn rx_disable(&self, q: u32) -> Result<()> {
        let r = &self.regs;
        r.clear(rxdctl(q), RXDCTL_ENABLE);
        r.wait(rxdctl(q), RXDCTL_ENABLE, 0, QUEUE_TIMEOUT, &format!("receive queue {q} stop (RXDCTL.ENABLE)"))
    }

    fn start_tx(&self, tx: &TxQueue<R>) -> Result<()> {
        let r = &self.regs;
        let q = tx.queue;
        let ring = tx.ring();
        r.write(tdbal(q), ring.dma() as u32);
        r.write(tdbah(q), (ring.dma() >> 32) as u32);
        r.write(tdlen(q), ring.bytes());
        r.write(tdh(q), 0);
        r.write(tdt(q), 0);
        // Prefetch when 32 descriptors are free and one is ready; write
        // back at once (status reports are every 32 descriptors anyway).
        r.write(txdctl(q), 32 << TXDCTL_PTHRESH_SHIFT | 1 << TXDCTL_HTHRESH_SHIFT | TXDCTL_ENABLE);
        r.wait(
            txdctl(q),
            TXDCTL_ENABLE,
            TXDCTL_ENABLE,
            QUEUE_TIMEOUT,
            &format!("transmit queue {q} start (TXDCTL.ENABLE)"),
        )
    }

    /// Stop a unit: disable it, stop its rings, give its buffers back (or
    /// keep them out of use if the chip will not say it stopped), remove its
    /// filters, release the claim.
    pub fn stop(&self, id: u64, unit: u32, filters: &Filters, mut rx: RxQueue<R>, mut tx: TxQueue<R>) {
        let r = &self.regs;
        let mut c = self.ctl.lock().unwrap();
        if self.settings.mode.vmdq() {
            let bit = 1 << (unit % 32);
            r.clear(pfvfre(unit / 32), bit);
        }
        let q = rx.queue;
        match self.rx_disable(q) {
            Ok(()) => rx.release_buffers(),
            Err(e) => {
                log::error!("intel10g {}: {e:#}; its buffers are kept out of use", self.name);
                rx.abandon_buffers();
            }
        }
        // Let what is queued go out, then stop the ring.
        let t0 = Instant::now();
        while !tx.drained() && t0.elapsed() < QUEUE_TIMEOUT {
            std::thread::sleep(Duration::from_micros(100));
        }
        r.clear(txdctl(q), TXDCTL_ENABLE);
        match r.wait(txdctl(q), TXDCTL_ENABLE, 0, QUEUE_TIMEOUT, &format!("transmit queue {q} stop (TXDCTL.ENABLE)")) {
            Ok(()) => tx.release_buffers(),
            Err(e) => {
                log::error!("intel10g {}: {e:#}; its buffers are kept out of use", self.name);
                tx.abandon_buffers();
            }
        }
        if self.settings.mode.vmdq() {
            r.clear(pfvfte(unit / 32), 1 << (unit % 32));
            self.unprogram_pool(&mut c, unit, filters);
        }
        drop(c);
        self.release(id, unit);
    }

    // -- VMDq pool filters ---------------------------------------------------------

    /// Refuse filters that collide with other pools or overflow the tables,
    /// before anything is written.
    fn check_pool_filters(&self, c: &Control, pool: u32, f: &Filters) -> Result<()> {
        let mut new_macs = 0;
        for m in &f.macs {
            match c.macs.iter().flatten().find(|e| e.mac == *m) {
                Some(e) if m.is_unicast() && e.pools & !(1 << pool) != 0 => {
                    let other = e.pools.trailing_zeros();
                    bail!("MAC {m} is already in pool {other} of {}: a unicast address goes to one pool", self.name)
                }
                Some(_) => {}
                None => new_macs += 1,
            }
        }
        let free_macs = c.macs.iter().skip(1).filter(|e| e.is_none()).count();
        ensure!(new_macs <= free_macs, "{}: no room for {new_macs} more MAC addresses (127 in all)", self.name);
        let new_vlans = f.vlans.iter().filter(|v| !c.vlans.iter().flatten().any(|e| e.vid == **v)).count();
        let free_vlans = c.vlans.iter().filter(|e| e.is_none()).count();
        ensure!(new_vlans <= free_vlans, "{}: no room for {new_vlans} more VLAN filters (64 in all)", self.name);
        Ok(())
    }

    fn program_pool(&self, c: &mut Control, pool: u32, f: &Filters) {
        let r = &self.regs;
        let bit = 1u64 << pool;
        // All of a pool's traffic to its first queue (no RSS inside it).
        r.write(psrtype(pool), 0);
        let mut l2 = 0;
        if f.accept_untagged {
            l2 |= PFVML2FLT_AUPE;
        }
        if f.accept_broadcast {
            l2 |= PFVML2FLT_BAM;
        }
        if f.accept_multicast {
            l2 |= PFVML2FLT_MPE;
        }
        r.write(pfvml2flt(pool), l2);
        for m in &f.macs {
            let i = match c.macs.iter().position(|e| e.as_ref().is_some_and(|e| e.mac == *m)) {
                Some(i) => i,
                None => {
                    let i = c.macs.iter().skip(1).position(Option::is_none).expect("checked") + 1;
                    let (lo, hi) = mac_words(m);
                    r.write(ral(i as u32), lo);
                    r.write(rah(i as u32), hi | RAH_AV);
                    c.macs[i] = Some(MacEntry { mac: *m, pools: 0 });
                    i
                }
            };
            c.macs[i].as_mut().unwrap().pools |= bit;
            r.set(mpsar(2 * i as u32 + pool / 32), 1 << (pool % 32));
        }
        for &v in &f.vlans {
            let j = match c.vlans.iter().position(|e| e.as_ref().is_some_and(|e| e.vid == v)) {
                Some(j) => j,
                None => {
                    let j = c.vlans.iter().position(Option::is_none).expect("checked");
                    r.set(vfta(v as u32 / 32), 1 << (v % 32));
                    r.write(pfvlvf(j as u32), PFVLVF_VI_EN | v as u32);
                    c.vlans[j] = Some(VlanEntry { vid: v, pools: 0 });
                    j
                }
            };
            c.vlans[j].as_mut().unwrap().pools |= bit;
            r.set(pfvlvfb(2 * j as u32 + pool / 32), 1 << (pool % 32));
        }
        // A pool on one VLAN, with tags stripped on receive, gets its tag
        // put back on transmit.
        let vir = match (&f.vlans[..], f.strip_vlan) {
            ([v], true) => PFVMVIR_VLANA_DEFAULT | *v as u32,
            _ => 0,
        };
        r.write(pfvmvir(pool), vir);
        r.write(RTTDQSEL, pool);
        r.write(RTTDT1C, 0x80);
    }

    fn unprogram_pool(&self, c: &mut Control, pool: u32, f: &Filters) {
        let r = &self.regs;
        let bit = 1u64 << pool;
        for m in &f.macs {
            if let Some(i) = c.macs.iter().position(|e| e.as_ref().is_some_and(|e| e.mac == *m)) {
                r.clear(mpsar(2 * i as u32 + pool / 32), 1 << (pool % 32));
                let e = c.macs[i].as_mut().unwrap();
                e.pools &= !bit;
                if e.pools == 0 {
                    r.write(rah(i as u32), 0);
                    r.write(ral(i as u32), 0);
                    c.macs[i] = None;
                }
            }
        }
        for &v in &f.vlans {
            if let Some(j) = c.vlans.iter().position(|e| e.as_ref().is_some_and(|e| e.vid == v)) {
                r.clear(pfvlvfb(2 * j as u32 + pool / 32), 1 << (pool % 32));
                let e = c.vlans[j].as_mut().unwrap();
                e.pools &= !bit;
                if e.pools == 0 {
                    r.write(pfvlvf(j as u32), 0);
                    r.clear(vfta(v as u32 / 32), 1 << (v % 32));
                    c.vlans[j] = None;
                }
            }
        }
        r.write(pfvml2flt(pool), 0);
        r.write(pfvmvir(pool), 0);
        r.write(RTTDQSEL, pool);
        r.write(RTTDT1C, 0);
    }

    /// Change a running pool's filters in place.
    pub fn refilter(&self, pool: u32, old: &Filters, new: &Filters, rx_queue: u32) -> Result<()> {
        ensure!(self.settings.mode.vmdq(), "filters of {} change only with the port's settings", self.name);
        let mut c = self.ctl.lock().unwrap();
        // Check the new set as if the old one were gone.
        let removed = Filters { macs: old.macs.clone(), vlans: old.vlans.clone(), ..Filters::default() };
        self.unprogram_pool(&mut c, pool, &removed);
        if let Err(e) = self.check_pool_filters(&c, pool, new) {
            self.program_pool(&mut c, pool, old);
            return Err(e);
        }
        self.program_pool(&mut c, pool, new);
        let v = self.regs.read(rxdctl(rx_queue)) & !RXDCTL_VME;
        self.regs.write(rxdctl(rx_queue), v | if new.strip_vlan { RXDCTL_VME } else { 0 });
        Ok(())
    }

    // -- statistics and link ------------------------------------------------------

    fn read_stats(&self, s: &mut HwStats) {
        let r = &self.regs;
        let rd = |reg| r.read(reg) as u64;
        let rd64 = |lo, hi| {
            let l = r.read(lo) as u64;
            l | (r.read(hi) as u64) << 32
        };
        s.rx_packets += rd(GPRC);
        s.rx_bytes += rd64(GORCL, GORCH);
        s.tx_packets += rd(GPTC);
        s.tx_bytes += rd64(GOTCL, GOTCH);
        s.rx_broadcast += rd(BPRC);
        s.rx_multicast += rd(MPRC);
        s.tx_broadcast += rd(BPTC);
        s.tx_multicast += rd(MPTC);
        s.rx_total += rd(TPR);
        s.tx_total += rd(TPT);
        for i in 0..8 {
            s.rx_missed += rd(mpc(i));
            s.rx_no_buffer += rd(rnbc(i));
        }
        s.rx_errors += rd(CRCERRS) + rd(ILLERRC) + rd(ERRBC) + rd(RLEC) + rd(RUC) + rd(RFC) + rd(ROC) + rd(RJC);
        for (i, q) in s.queues.iter_mut().enumerate() {
            let i = i as u32;
            q.rx_packets += rd(qprc(i));
            q.rx_bytes += rd64(qbrc_l(i), qbrc_h(i));
            q.rx_drop += rd(qprdc(i));
            q.tx_packets += rd(qptc(i));
            q.tx_bytes += rd64(qbtc_l(i), qbtc_h(i));
        }
    }

    /// Fold the chip's counters into the totals, at most every `every`.
    pub fn sync_stats(&self, every: Duration) {
        let mut st = self.stats.lock().unwrap();
        if st.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        st.last = Some(Instant::now());
        self.read_stats(&mut st.stats);
        self.links.store(self.regs.read(LINKS), Ordering::Relaxed);
    }

    /// The totals as of the last sync.
    pub fn stats(&self) -> HwStats {
        self.stats.lock().unwrap().stats
    }

    /// LINKS.Link_Up as of the last sync.
    pub fn link_up(&self) -> bool {
        self.links.load(Ordering::Relaxed) & LINKS_LINK_UP != 0
    }
    /// Link speed in Mb/s as of the last sync (0 when down).
    pub fn link_speed(&self) -> u64 {
        let l = self.links.load(Ordering::Relaxed);
        if l & LINKS_LINK_UP == 0 {
            return 0;
        }
        match l & LINKS_SPEED_MASK {
            LINKS_SPEED_10G => 10_000,
            LINKS_SPEED_1G => 1_000,
            _ => 100,
        }
    }
}

impl<R: Registers> Drop for Device<R> {
    fn drop(&mut self) {
        // Every app has stopped its queues; stop the receiver too.
        self.regs.clear(RXCTRL, RXCTRL_RXEN);
        if let Some(f) = self.on_close.lock().unwrap().take() {
            f();
        }
    }
}

/// RAL and RAH (address bits) of a MAC address: first byte lowest.
pub fn mac_words(m: &MacAddr) -> (u32, u32) {
    let b = m.0;
    (u32::from_le_bytes([b[0], b[1], b[2], b[3]]), u16::from_le_bytes([b[4], b[5]]) as u32)
}

fn random(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut _, buf.len(), 0) };
    if n != buf.len() as isize {
        // A fixed key still spreads traffic; it is only more predictable.
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(0x6d).wrapping_add(0x5a);
        }
    }
}
