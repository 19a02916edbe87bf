//! The device side of one vhost-user connection: what the frontend set up
//! (features, memory, rings, eventfds, dirty log) and the virtqueues started
//! from it.
//!
//! Messages arrive in whatever order a frontend likes (QEMU 7.2 enables
//! rings before SET_FEATURES and before the memory table; DPDK after the
//! kick), so a ring is started whenever all it needs is known: its size,
//! its addresses, a kick (a descriptor or "poll"), a memory table, and
//! enabled (implicitly, unless VHOST_USER_F_PROTOCOL_FEATURES was acked).
//! Anything that changes what a running ring was started with (a new memory
//! table, new addresses, new features) stops it at its current avail index
//! and starts it again, so rings are always translated against the memory
//! that is mapped now. GET_VRING_BASE stops a ring until its next kick.
//!
//! A request the device cannot honour (a queue index out of range, a ring
//! outside memory, a mapping that fails) is an error for that request: it
//! is logged, answered with a non-zero ack when the frontend asked for one,
//! and the rest of the device keeps going. Only a message that does not
//! parse ends the connection (see [`crate::protocol`]).
//!
//! Zero copy. The device lends guest buffers through two owners of its own
//! (`BufferOwner`s, made anew each time lending starts): receive chains
//! (`lend_rx`, onto a `supply` link to a NIC) and transmit chains (split
//! packets out of `from_guest`). Their tokens name the ring and the slot
//! (`virtq::token`). A lent receive buffer that comes back full on the
//! input is completed in place (`to_guest`); one dropped anywhere comes
//! back on the owner's return ring (`drain_returns`) and is a spare for the
//! copy path; a transmit chain's used entry is written when its token comes
//! back. Lending stops (the owner is revoked, so a NIC lets go of every
//! buffer it holds) when the app says so, and before anything that changes
//! or stops a ring: `begin_quiesce` revokes, the app holds the message
//! until `quiet()`, then `end_quiesce` gives spare chains back empty.

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use snabb_core::packet::ForeignBuffer;
use snabb_core::{BufferOwner, Link, Packet};

use crate::memory::{DirtyLog, GuestMemory, RegionSpec};
use crate::protocol::{
    ConfigSpace, FLAG_NEED_REPLY, MAX_CONFIG, Message, ProtocolError, Reply, Request, VringState, has_reply, pf, req,
    request_name,
};
use crate::virtio::{self, bit, has};
use crate::virtq::{QueueStats, TxLend, Virtqueue, VringAddr, token, untoken};

/// The virtio-net config space status bit "link up".
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// What the app was configured with.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Queue pairs offered (GET_QUEUE_NUM, MQ).
    pub queue_pairs: u16,
    /// The MTU offered in the config space (VIRTIO_NET_F_MTU).
    pub mtu: u16,
    /// A MAC for the guest (VIRTIO_NET_F_MAC is offered only with one).
    pub mac: Option<[u8; 6]>,
    /// Offer VIRTIO_F_IN_ORDER: only when the port will lend no buffer
    /// (lent ones come back in any order).
    pub in_order: bool,
}

impl DeviceConfig {
    /// The virtio feature bits we offer.
    pub fn features(&self) -> u64 {
        let mut f = [
            virtio::VIRTIO_F_VERSION_1,
            virtio::VIRTIO_NET_F_MRG_RXBUF,
            virtio::VIRTIO_RING_F_INDIRECT_DESC,
            virtio::VIRTIO_RING_F_EVENT_IDX,
            virtio::VIRTIO_F_ANY_LAYOUT,
            virtio::VIRTIO_NET_F_CSUM,
            virtio::VIRTIO_NET_F_GUEST_CSUM,
            virtio::VIRTIO_NET_F_MTU,
            virtio::VIRTIO_NET_F_STATUS,
            virtio::VHOST_USER_F_PROTOCOL_FEATURES,
            virtio::VHOST_F_LOG_ALL,
        ]
        .iter()
        .fold(0, |a, b| a | bit(*b));
        if self.queue_pairs > 1 {
            f |= bit(virtio::VIRTIO_NET_F_MQ);
        }
        if self.mac.is_some() {
            f |= bit(virtio::VIRTIO_NET_F_MAC);
        }
        if self.in_order {
            f |= bit(virtio::VIRTIO_F_IN_ORDER);
        }
        f
    }

    /// The protocol feature bits we offer. Not CONFIG: QEMU's virtio-net
    /// keeps its own config space and warns about a backend offering it
    /// (GET_CONFIG is answered all the same).
    pub fn protocol_features(&self) -> u64 {
        pf::MQ | pf::REPLY_ACK | pf::LOG_SHMFD | pf::RARP | pf::NET_MTU | pf::STATUS
    }
}

/// Why a request could not be honoured (the connection stays up).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue index {0} out of range (this port has {1} queues)")]
    QueueIndex(u32, usize),
    #[error("SET_VRING_NUM {0}: not a power of two in 1..=32768")]
    QueueSize(u32),
    #[error("SET_VRING_BASE {0}: not a split-ring index")]
    Base(u32),
    #[error("features {0:#x} were not offered")]
    Features(u64),
    #[error("memory table: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("SET_LOG_BASE without a file descriptor")]
    NoLogFd,
    #[error("MTU {0} out of range (68..=9216)")]
    Mtu(u64),
    #[error("config space: {0}")]
    Config(&'static str),
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}

/// One ring as the frontend described it.
#[derive(Default)]
struct Vring {
    num: Option<u16>,
    addr: Option<VringAddr>,
    /// Next avail index to read when (re)started.
    base: u16,
    /// SET_VRING_KICK seen since the last stop (with or without a descriptor).
    kicked: bool,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    err: Option<OwnedFd>,
    enabled: bool,
    queue: Option<Virtqueue>,
    /// Counts of queues of this ring that were stopped.
    retired: QueueStats,
    /// The broken queue was reported (log line, err eventfd).
    broken_reported: bool,
    /// The last reason the ring could not start, for the report.
    failed: Option<String>,
}

/// Add the counts of `b` to `a`.
pub fn add_stats(a: &mut QueueStats, b: &QueueStats) {
    let QueueStats {
        packets,
        bytes,
        used,
        no_buffer,
        bad_descriptor,
        too_short,
        too_long,
        no_room,
        bad_csum,
        csum_completed,
        split_buffers,
        bad_index,
        broken,
        copied_bytes,
        zc_packets,
        zc_unsuitable,
        zc_bound,
        zc_moved_bytes,
        zc_unused,
        zc_chained,
    } = b;
    a.packets += packets;
    a.bytes += bytes;
    a.used += used;
    a.no_buffer += no_buffer;
    a.bad_descriptor += bad_descriptor;
    a.too_short += too_short;
    a.too_long += too_long;
    a.no_room += no_room;
    a.bad_csum += bad_csum;
    a.csum_completed += csum_completed;
    a.split_buffers += split_buffers;
    a.bad_index += bad_index;
    a.broken += broken;
    a.copied_bytes += copied_bytes;
    a.zc_packets += zc_packets;
    a.zc_unsuitable += zc_unsuitable;
    a.zc_bound += zc_bound;
    a.zc_moved_bytes += zc_moved_bytes;
    a.zc_unused += zc_unused;
    a.zc_chained += zc_chained;
}

impl Vring {
    fn stop(&mut self) {
        if let Some(q) = self.queue.take() {
            self.base = q.next_avail();
            add_stats(&mut self.retired, q.stats());
        }
    }
    fn stats(&self) -> QueueStats {
        let mut s = self.retired.clone();
        if let Some(q) = &self.queue {
            add_stats(&mut s, q.stats());
        }
        s
    }
}

/// Write 1 to an eventfd (a call or err notification). A full counter or a
/// closed peer is not our problem: the guest just misses a wakeup.
fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local to a descriptor we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Packets one RX queue is offered per turn when a device has several.
const RX_QUEUE_BURST: usize = 32;
/// Transmit chains one queue lends at once at most: far below a guest's
/// ring (256 by default in QEMU), so that buffers a NIC is slow to give
/// back cannot starve the guest (what sank DPDK's dequeue zero copy).
pub const TX_LEND_BOUND: usize = 64;

/// One direction's lending: the owner lending now, and earlier owners
/// (revoked) whose buffers are not all back yet.
#[derive(Default)]
struct Lender {
    owner: Option<BufferOwner>,
    retiring: Vec<BufferOwner>,
}

impl Lender {
    /// Stop lending: revoke the owner (a NIC lets go of its buffers).
    fn stop(&mut self) {
        if let Some(o) = self.owner.take() {
            o.revoke();
            self.retiring.push(o);
        }
    }
    fn outstanding(&self) -> u64 {
        self.owner.iter().chain(&self.retiring).map(BufferOwner::outstanding).sum()
    }
    fn find(&self, id: u64) -> Option<&BufferOwner> {
        self.owner.iter().chain(&self.retiring).find(|o| o.id() == id)
    }
}

/// Counters of lending kept by the device (the queues keep the rest).
#[derive(Clone, Debug, Default)]
pub struct LendStats {
    /// Buffers not lent because the devices cannot reach the guest's
    /// memory there (no IOMMU and not huge pages; an IOMMU that refused).
    pub unreachable: u64,
    /// Lending wanted but not done: the guest negotiated IN_ORDER.
    pub in_order: u64,
    /// Times lending stopped before a control message could be served.
    pub quiesces: u64,
    /// Times the lent buffers did not all come back in time.
    pub quiesce_timeouts: u64,
}

/// The state of one connection.
pub struct Device {
    // Declared (so dropped) before the memory their rings point into.
    vrings: Vec<Vring>,
    cfg: DeviceConfig,
    features: u64,
    protocol_features: u64,
    owner: bool,
    mem: Arc<GuestMemory>,
    log: Option<DirtyLog>,
    status: u64,
    mtu: Option<u64>,
    /// Indexes of running, enabled rings, by direction (rebuilt on changes).
    to_guest: Vec<usize>,
    from_guest: Vec<usize>,
    /// Rotates which RX queue is offered packets first.
    next_rx: usize,
    rarp: Vec<[u8; 6]>,
    /// Requests that failed (logged, nacked).
    pub errors: u64,
    /// Lending receive buffers (to a NIC) and transmit buffers (as tails).
    rx_lender: Lender,
    /// The ids of rx_lender's owners, refilled per call of `to_guest` (kept
    /// so that the hot path allocates nothing).
    lender_ids: Vec<u64>,
    tx_lender: Lender,
    /// Lending is stopped until the lent buffers are back (a control
    /// message waits for it).
    quiescing: bool,
    /// Rings with used entries to publish and maybe signal.
    dirty: u128,
    lend_stats: LendStats,
    /// The device's name for its owners and log lines.
    name: String,
}

impl Device {
    pub fn new(cfg: DeviceConfig) -> Device {
        let n = 2 * cfg.queue_pairs.max(1) as usize;
        Device {
            vrings: (0..n).map(|_| Vring::default()).collect(),
            cfg,
            features: 0,
            protocol_features: 0,
            owner: false,
            mem: Arc::new(GuestMemory::empty()),
            log: None,
            status: 0,
            mtu: None,
            to_guest: Vec::new(),
            from_guest: Vec::new(),
            next_rx: 0,
            rarp: Vec::new(),
            errors: 0,
            rx_lender: Lender::default(),
            lender_ids: Vec::with_capacity(4),
            tx_lender: Lender::default(),
            quiescing: false,
            dirty: 0,
            lend_stats: LendStats::default(),
            name: "vhost-user".into(),
        }
    }

    /// Name the device (for its buffer owners and log lines).
    pub fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    pub fn features(&self) -> u64 {
        self.features
    }
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }
    pub fn owner(&self) -> bool {
        self.owner
    }
    pub fn status(&self) -> u64 {
        self.status
    }
    pub fn mtu(&self) -> Option<u64> {
        self.mtu
    }
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }
    pub fn logging(&self) -> bool {
        has(self.features, virtio::VHOST_F_LOG_ALL) && self.log.is_some()
    }
    /// Rings that are running now (started and enabled), by direction.
    pub fn running(&self) -> (usize, usize) {
        (self.to_guest.len(), self.from_guest.len())
    }
    pub fn ring_count(&self) -> usize {
        self.vrings.len()
    }
    /// A ring's counters (including queues of it that were stopped).
    pub fn ring_stats(&self, i: usize) -> QueueStats {
        self.vrings.get(i).map(Vring::stats).unwrap_or_default()
    }
    /// Why a ring is not running, if it tried and failed.
    pub fn ring_failure(&self, i: usize) -> Option<&str> {
        self.vrings.get(i).and_then(|v| v.failed.as_deref())
    }
    /// The next avail index of ring `i` (running or stopped).
    pub fn ring_base(&self, i: usize) -> Option<u16> {
        self.vrings.get(i).map(|v| v.queue.as_ref().map_or(v.base, Virtqueue::next_avail))
    }
    /// MACs the frontend asked us to announce (SEND_RARP) since last taken.
    pub fn take_rarp(&mut self) -> Vec<[u8; 6]> {
        std::mem::take(&mut self.rarp)
    }

    /// Handle one message; returns the reply to send, if any (request code
    /// and payload). An Err is a malformed message: drop the connection.
    pub fn handle(&mut self, msg: Message) -> Result<Option<(u32, Vec<u8>)>, ProtocolError> {
        let code = msg.header.request;
        let need_reply = msg.header.flags & FLAG_NEED_REPLY != 0;
        let request = Request::parse(msg)?;
        log::debug!("vhost-user: {}", request_name(code));
        let result = self.execute(request);
        let reply = match result {
            Ok(Some(r)) => Some(r.encode()),
            Ok(None) if need_reply => Some(Reply::U64(0).encode()),
            Ok(None) => None,
            Err(e) => {
                self.errors += 1;
                log::warn!("vhost-user: {} failed: {e}", request_name(code));
                if code == req::GET_CONFIG {
                    // An empty config reply is the protocol's "error".
                    Some(Vec::new())
                } else if need_reply || has_reply(code) || self.log_base_reply(code) {
                    Some(Reply::U64(1).encode())
                } else {
                    None
                }
            }
        };
        Ok(reply.map(|r| (code, r)))
    }

    /// SET_LOG_BASE is answered when LOG_SHMFD was negotiated (QEMU waits).
    fn log_base_reply(&self, code: u32) -> bool {
        code == req::SET_LOG_BASE && self.protocol_features & pf::LOG_SHMFD != 0
    }

    fn ring(&mut self, index: u32) -> Result<usize, DeviceError> {
        let i = index as usize;
        if i >= self.vrings.len() {
            return Err(DeviceError::QueueIndex(index, self.vrings.len()));
        }
        Ok(i)
    }

    fn execute(&mut self, request: Request) -> Result<Option<Reply>, DeviceError> {
        match request {
            Request::GetFeatures => return Ok(Some(Reply::U64(self.cfg.features()))),
            Request::SetFeatures(f) => {
                let offered = self.cfg.features();
                if f & !offered != 0 {
                    return Err(DeviceError::Features(f & !offered));
                }
                // LOG_ALL comes and goes during migration with rings running;
                // any other change restarts them with the new features.
                let changed = (f ^ self.features) & !bit(virtio::VHOST_F_LOG_ALL);
                self.features = f;
                if changed != 0 {
                    self.restart_all();
                }
                self.refresh();
            }
            Request::SetOwner => self.owner = true,
            Request::ResetOwner => {
                // Deprecated; the spec suggests disabling every ring.
                for v in &mut self.vrings {
                    v.stop();
                    v.kicked = false;
                }
                self.refresh();
            }
            Request::SetMemTable { regions, fds } => {
                let specs: Vec<RegionSpec> = regions
                    .iter()
                    .map(|r| RegionSpec {
                        guest_phys_addr: r.guest_phys_addr,
                        memory_size: r.memory_size,
                        userspace_addr: r.userspace_addr,
                        mmap_offset: r.mmap_offset,
                    })
                    .collect();
                // Rings point into the old memory: stop them before it goes
                // (start_ready restarts them, translated against the new one).
                for v in &mut self.vrings {
                    v.stop();
                }
                self.to_guest.clear();
                self.from_guest.clear();
                self.mem = Arc::new(GuestMemory::empty());
                let mapped = GuestMemory::map(&specs, fds);
                match mapped {
                    Ok(m) => self.mem = Arc::new(m),
                    Err(e) => {
                        self.refresh();
                        return Err(e.into());
                    }
                }
                self.start_ready();
            }
            Request::SetLogBase { area, fd } => {
                let fd = fd.ok_or(DeviceError::NoLogFd)?;
                self.log = None;
                self.log = Some(DirtyLog::map(fd, area.mmap_size, area.mmap_offset)?);
                if self.log_base_reply(req::SET_LOG_BASE) {
                    return Ok(Some(Reply::U64(0)));
                }
            }
            Request::SetLogFd(_fd) => {
                // The log-done eventfd: we log synchronously, nothing to signal.
            }
            Request::SetVringNum(s) => {
                let i = self.ring(s.index)?;
                if s.num == 0 || s.num > virtio::MAX_QUEUE_SIZE as u32 || !s.num.is_power_of_two() {
                    return Err(DeviceError::QueueSize(s.num));
                }
                self.vrings[i].stop();
                self.vrings[i].num = Some(s.num as u16);
                self.try_start(i);
            }
            Request::SetVringAddr(a) => {
                let i = self.ring(a.index)?;
                self.vrings[i].stop();
                self.vrings[i].addr = Some(VringAddr {
                    flags: a.flags,
                    desc_user_addr: a.desc_user_addr,
                    used_user_addr: a.used_user_addr,
                    avail_user_addr: a.avail_user_addr,
                    log_guest_addr: a.log_guest_addr,
                });
                self.try_start(i);
            }
            Request::SetVringBase(s) => {
                let i = self.ring(s.index)?;
                if s.num > u16::MAX as u32 {
                    return Err(DeviceError::Base(s.num));
                }
                self.vrings[i].stop();
                self.vrings[i].base = s.num as u16;
                self.try_start(i);
            }
            Request::GetVringBase(s) => {
                let Ok(i) = self.ring(s.index) else {
                    self.errors += 1;
                    log::warn!("vhost-user: GET_VRING_BASE of queue {} (out of range)", s.index);
                    return Ok(Some(Reply::VringState(VringState { index: s.index, num: 0 })));
                };
                let v = &mut self.vrings[i];
                v.stop();
                // Stopped until the next SET_VRING_KICK.
                v.kicked = false;
                v.kick = None;
                let num = v.base as u32;
                self.refresh();
                return Ok(Some(Reply::VringState(VringState { index: s.index, num })));
            }
            Request::SetVringKick(index, fd) => {
                let i = self.ring(index)?;
                let v = &mut self.vrings[i];
                v.kick = fd;
                v.kicked = true;
                self.try_start(i);
            }
            Request::SetVringCall(index, fd) => {
                let i = self.ring(index)?;
                self.vrings[i].call = fd;
            }
            Request::SetVringErr(index, fd) => {
                let i = self.ring(index)?;
                self.vrings[i].err = fd;
            }
            Request::GetProtocolFeatures => return Ok(Some(Reply::U64(self.cfg.protocol_features()))),
            Request::SetProtocolFeatures(f) => {
                let offered = self.cfg.protocol_features();
                if f & !offered != 0 {
                    // Keep what we know; the rest is the frontend's mistake.
                    log::warn!("vhost-user: protocol features {:#x} were not offered; ignored", f & !offered);
                }
                self.protocol_features = f & offered;
            }
            Request::GetQueueNum => return Ok(Some(Reply::U64(self.cfg.queue_pairs as u64))),
            Request::SetVringEnable(s) => {
                let i = self.ring(s.index)?;
                self.vrings[i].enabled = s.num != 0;
                if s.num == 0 {
                    // Keep the queue (and its avail index); just stop serving it.
                    self.refresh();
                } else {
                    self.try_start(i);
                }
            }
            Request::SendRarp(mac) => {
                if self.rarp.len() < 16 {
                    self.rarp.push(mac);
                }
            }
            Request::NetSetMtu(mtu) => {
                if !(68..=9216).contains(&mtu) {
                    return Err(DeviceError::Mtu(mtu));
                }
                self.mtu = Some(mtu);
            }
            Request::SetBackendReqFd(_) => {
                // Not offered (no BACKEND_REQ); the descriptor is closed.
                return Err(DeviceError::Unsupported("SET_BACKEND_REQ_FD"));
            }
            Request::GetConfig(c) => return self.get_config(c).map(|c| Some(Reply::Config(c))),
            Request::SetConfig(c) => {
                // The guest may write the MAC only when the config lets it
                // (it does not: no CTRL_MAC_ADDR); accept and ignore.
                log::debug!("vhost-user: SET_CONFIG offset {} size {} ignored", c.offset, c.size);
            }
            Request::SetStatus(s) => self.status = s,
            Request::GetStatus => return Ok(Some(Reply::U64(self.status))),
            Request::Other(code) => {
                log::warn!("vhost-user: request {code} ({}) not supported", request_name(code));
                return Err(DeviceError::Unsupported(request_name(code)));
            }
        }
        Ok(None)
    }

    /// The virtio-net config space: mac, status, max_virtqueue_pairs, mtu.
    fn config_space(&self) -> [u8; 12] {
        let mut b = [0; 12];
        b[0..6].copy_from_slice(&self.cfg.mac.unwrap_or_default());
        b[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        b[8..10].copy_from_slice(&self.cfg.queue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.cfg.mtu.to_le_bytes());
        b
    }

    fn get_config(&self, c: ConfigSpace) -> Result<ConfigSpace, DeviceError> {
        let (off, size) = (c.offset as usize, c.size as usize);
        if off + size > MAX_CONFIG {
            return Err(DeviceError::Config("window beyond the config space"));
        }
        let space = self.config_space();
        let payload = (off..off + size).map(|i| space.get(i).copied().unwrap_or(0)).collect();
        Ok(ConfigSpace { offset: c.offset, size: c.size, flags: c.flags, payload })
    }

    /// Stop every running ring and start again what can start (new features).
    fn restart_all(&mut self) {
        for v in &mut self.vrings {
            v.stop();
        }
        self.start_ready();
    }

    fn start_ready(&mut self) {
        for i in 0..self.vrings.len() {
            self.try_start(i);
        }
        self.refresh();
    }

    /// Start ring `i` if all it needs is known and it is not running yet.
    fn try_start(&mut self, i: usize) {
        let implicit_enable = !has(self.features, virtio::VHOST_USER_F_PROTOCOL_FEATURES);
        let features = self.features;
        let log = if has(features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let v = &mut self.vrings[i];
        if v.queue.is_none()
            && v.kicked
            && (v.enabled || implicit_enable)
            && !self.mem.is_empty()
            && let (Some(num), Some(addr)) = (v.num, v.addr)
        {
            match Virtqueue::start(num, &addr, v.base, features, &self.mem) {
                Ok(mut q) => {
                    // We poll: the guest need not kick.
                    q.suppress_kicks_logged(log);
                    v.queue = Some(q);
                    v.failed = None;
                    v.broken_reported = false;
                    log::debug!("vhost-user: queue {i} started (size {num}, base {})", v.base);
                }
                Err(e) => {
                    self.errors += 1;
                    log::warn!("vhost-user: queue {i} cannot start: {e}");
                    v.failed = Some(e.to_string());
                }
            }
        }
        self.refresh();
    }

    /// Rebuild the lists of rings to serve.
    fn refresh(&mut self) {
        let implicit_enable = !has(self.features, virtio::VHOST_USER_F_PROTOCOL_FEATURES);
        self.to_guest.clear();
        self.from_guest.clear();
        for (i, v) in self.vrings.iter().enumerate() {
            if v.queue.is_some() && (v.enabled || implicit_enable) {
                if i % 2 == 0 { self.to_guest.push(i) } else { self.from_guest.push(i) }
            }
        }
    }

    /// Switch to guest: offer the packets on `input` to the running RX
    /// queues, a different one first each time (spreading the load over
    /// queue pairs). A lent buffer of ours coming back full is completed
    /// where it is; everything else is copied. Returns packets delivered.
    pub fn to_guest(&mut self, input: &Link) -> usize {
        let n = self.to_guest.len();
        if n == 0 {
            return 0;
        }
        let mut sent = 0;
        if self.rx_lender.owner.is_none() && self.rx_lender.retiring.is_empty() {
            sent += self.copy_to_guest(input, |_| false);
        } else {
            let mut scratch = std::mem::take(&mut self.lender_ids);
            scratch.clear();
            scratch.extend(self.rx_lender.owner.iter().chain(&self.rx_lender.retiring).map(|o| o.id()));
            let ids = &scratch[..];
            let mrg = has(self.features, virtio::VIRTIO_NET_F_MRG_RXBUF);
            // Ours to complete in place: a lent buffer of ours, or a chain
            // of them from one queue for a guest that merges buffers. A
            // split packet (another guest's frame), or a chain this guest
            // cannot take as it is, is copied (a chain from where it lies).
            let ours = |p: &Packet| {
                let Some((o, t)) = p.foreign_token() else { return false };
                if !ids.contains(&o) {
                    return false;
                }
                if !p.is_split() {
                    return true;
                }
                // (A partial checksum to finish for the guest would flatten it.)
                let mut same_ring = p.is_chain() && mrg && p.partial_csum().is_none();
                p.for_each_chain_part(|tk, _| same_ring &= untoken(tk).0 == untoken(t).0);
                same_ring
            };
            loop {
                while input.front_is(ours) {
                    let p = input.receive().expect("front_is saw a packet");
                    if self.complete_lent(p) {
                        sent += 1;
                    }
                }
                if input.is_empty() {
                    break;
                }
                let copied = self.copy_to_guest(input, ours);
                sent += copied;
                if copied == 0 && !input.front_is(ours) {
                    break; // the guest has no buffers for the rest
                }
            }
            self.lender_ids = scratch;
        }
        self.publish_dirty();
        sent
    }

    /// The copy path of `to_guest`, stopping at a packet `stop` names.
    fn copy_to_guest(&mut self, input: &Link, stop: impl Fn(&Packet) -> bool + Copy) -> usize {
        let n = self.to_guest.len();
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let first = self.next_rx % n;
        self.next_rx = self.next_rx.wrapping_add(1);
        // One queue takes all it can; several take turns, a burst each, so
        // that one whose guest refills fast does not starve the others.
        let burst = if n == 1 { usize::MAX } else { RX_QUEUE_BURST };
        let mut sent = 0;
        loop {
            let before = sent;
            for k in 0..n {
                if input.is_empty() || input.front_is(stop) {
                    return sent;
                }
                let v = &mut self.vrings[self.to_guest[(first + k) % n]];
                if let Some(q) = &mut v.queue {
                    sent += q.transmit_to_guest_upto(&self.mem, log, input, burst, stop);
                    if q.take_signal()
                        && let Some(c) = &v.call
                    {
                        signal(c);
                    }
                }
            }
            if sent == before || n == 1 {
                return sent;
            }
        }
    }

    /// A lent receive buffer of ours is back with a frame in it: header
    /// and used entry (published by the caller). False when it could not
    /// be delivered (its ring went away or broke; counted there).
    fn complete_lent(&mut self, mut p: Packet) -> bool {
        let Some((id, t)) = p.foreign_token() else { return false };
        let (ring, slot) = untoken(t);
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let Some(q) = self.vrings.get_mut(ring as usize).and_then(|v| v.queue.as_mut()) else { return false };
        if p.is_chain() {
            let h = q.header_for(&mut p);
            let Some(owner) = self.rx_lender.find(id) else { return false };
            let mut parts = [(0u16, 0usize); snabb_core::packet::MAX_CHAIN];
            let mut n = 0;
            let Ok(_) = owner.reclaim_chain(p, |tk, len| {
                parts[n] = (untoken(tk).1, len);
                n += 1;
            }) else {
                return false;
            };
            let ok = q.complete_rx_chain(log, &parts[..n], h);
            self.dirty |= 1 << (ring % 128);
            return ok;
        }
        // The header is made from the packet (its checksum state) before
        // the packet is given up: a partial checksum the guest does not
        // take is finished in its buffer.
        let h = q.header_for(&mut p);
        let Some(owner) = self.rx_lender.find(id) else { return false };
        let Ok(r) = owner.reclaim(p) else { return false };
        q.count_moved(r.moved as u64);
        let ok = q.complete_rx(log, slot, r.len as usize, h);
        self.dirty |= 1 << (ring % 128);
        ok
    }

    /// Publish used entries noted on every ring marked dirty, and signal
    /// the guests that asked.
    fn publish_dirty(&mut self) {
        if self.dirty == 0 {
            return;
        }
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let d = std::mem::take(&mut self.dirty);
        for (i, v) in self.vrings.iter_mut().enumerate() {
            if d & (1 << (i % 128)) == 0 {
                continue;
            }
            if let Some(q) = &mut v.queue {
                q.publish_now(log);
                if q.take_signal()
                    && let Some(c) = &v.call
                {
                    signal(c);
                }
            }
        }
    }

    /// Guest to switch: take up to `max` packets from the running TX queues,
    /// lending long frames as split packets when `lend` (and the guest did
    /// not negotiate IN_ORDER).
    pub fn from_guest(&mut self, max: usize, lend: bool, mut out: impl FnMut(Packet)) -> usize {
        let lend = lend && !self.quiescing && self.may_lend();
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        if lend && self.tx_lender.owner.is_none() {
            self.tx_lender.owner = Some(self.new_owner("tx"));
        } else if !lend {
            self.tx_lender.stop();
        }
        let device = lend.then(|| self.mem.device_memory());
        let mut got = 0;
        for &i in &self.from_guest {
            if got >= max {
                break;
            }
            let v = &mut self.vrings[i];
            if let Some(q) = &mut v.queue {
                let l = match (&self.tx_lender.owner, device) {
                    (Some(owner), Some(device)) => Some(TxLend { owner, device, ring: i as u16, bound: TX_LEND_BOUND }),
                    _ => None,
                };
                got += q.receive_from_guest(&self.mem, log, max - got, l.as_ref(), &mut out);
                if q.take_signal()
                    && let Some(c) = &v.call
                {
                    signal(c);
                }
            }
        }
        got
    }

    /// Whether the negotiated features let buffers be lent (not IN_ORDER).
    fn may_lend(&mut self) -> bool {
        if has(self.features, virtio::VIRTIO_F_IN_ORDER) {
            if self.lend_stats.in_order == 0 {
                log::warn!(
                    "{}: the guest negotiated IN_ORDER (offered while the port's links did not lend): \
                     copying until it connects again",
                    self.name
                );
            }
            self.lend_stats.in_order += 1;
            return false;
        }
        true
    }

    fn new_owner(&self, what: &str) -> BufferOwner {
        // The owner keeps the memory mapped (and registered with the
        // devices) while any of its buffers is out.
        let keep: Rc<dyn std::any::Any> = Rc::new(self.mem.clone());
        BufferOwner::register(&format!("{} {what}", self.name), Some(keep))
    }

    /// Lend receive buffers onto `supply` (a NIC queue's `supply` input),
    /// as many as the link takes, leaving an eighth of each ring to the
    /// copy path. Returns how many were lent.
    pub fn lend_rx(&mut self, supply: &Link) -> usize {
        if self.quiescing || self.to_guest.is_empty() || !self.may_lend() {
            return 0;
        }
        let room = supply.nwritable();
        if room == 0 {
            return 0;
        }
        if self.rx_lender.owner.is_none() {
            self.rx_lender.owner = Some(self.new_owner("rx"));
        }
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let device = self.mem.device_memory();
        let owner = self.rx_lender.owner.as_ref().expect("made above");
        let (name, stats) = (&self.name, &mut self.lend_stats);
        let mut lent = 0;
        let mut tx = supply.transmitter();
        for &i in &self.to_guest {
            let Some(q) = &mut self.vrings[i].queue else { continue };
            let reserve = q.size() as usize / 8;
            lent += q.lend_rx(&self.mem, log, room - lent, reserve, |b| {
                // A NIC takes its buffer size from the first buffer it is
                // given: every buffer says it holds less than a KiB more
                // than the queue lends at, so that they all agree.
                let cap = b.cap.min(b.size + 1023).min(u16::MAX as u32);
                let Some(dma) = device.dma(b.ptr.as_ptr() as usize, cap as usize).filter(|d| d % 2 == 0) else {
                    if stats.unreachable == 0 {
                        log::warn!(
                            "{name}: a NIC cannot reach the guest's memory (no IOMMU and not in huge pages, \
                             or refused): its buffers are copied into, not lent"
                        );
                    }
                    stats.unreachable += 1;
                    return false;
                };
                let fb = ForeignBuffer {
                    base: b.ptr,
                    cap,
                    dma,
                    start: 0,
                    len: 0,
                    token: token(i as u16, b.slot),
                    fixed_start: true,
                };
                // SAFETY: the buffer lies in guest memory that the owner's
                // keep-alive object (the mapping) holds until it is back.
                tx.send(unsafe { owner.wrap(fb) });
                true
            });
            if lent >= room {
                break;
            }
        }
        lent
    }

    /// Stop lending receive buffers: the owner is revoked, so a NIC gives
    /// back every buffer it holds; they come back as spares.
    pub fn stop_lending_rx(&mut self) {
        self.rx_lender.stop();
    }

    /// Take back the tokens of lent buffers that were dropped (or let go by
    /// a NIC): receive chains become spares, transmit chains are used.
    /// Owners with nothing out any more are let go.
    pub fn drain_returns(&mut self) {
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        let vrings = &mut self.vrings;
        let dirty = &mut self.dirty;
        for lender in [&mut self.rx_lender, &mut self.tx_lender] {
            for o in lender.owner.iter().chain(&lender.retiring) {
                if o.returns_pending() == 0 {
                    continue;
                }
                o.drain_returns(|t| {
                    let (ring, slot) = untoken(t);
                    let Some(q) = vrings.get_mut(ring as usize).and_then(|v| v.queue.as_mut()) else { return };
                    if ring % 2 == 0 {
                        q.return_rx(slot);
                    } else if q.complete_tx(log, slot) {
                        *dirty |= 1 << (ring % 128);
                    }
                });
            }
            lender.retiring.retain(|o| o.outstanding() > 0);
        }
        self.publish_dirty();
    }

    /// Buffers lent and not back, both directions.
    pub fn lent_outstanding(&self) -> u64 {
        self.rx_lender.outstanding() + self.tx_lender.outstanding()
    }

    /// Whether anything is lent or spare (a ring change must wait).
    pub fn lending_state(&self) -> bool {
        self.lent_outstanding() > 0
            || self.vrings.iter().filter_map(|v| v.queue.as_ref()).any(|q| q.spare_count() > 0 || q.lent_count() > 0)
    }

    /// Stop lending before a control message that changes or stops rings:
    /// both owners are revoked; the caller waits for `quiet()`.
    pub fn begin_quiesce(&mut self) {
        self.quiescing = true;
        self.lend_stats.quiesces += 1;
        self.rx_lender.stop();
        self.tx_lender.stop();
    }

    /// Every lent buffer is back.
    pub fn quiet(&self) -> bool {
        self.lent_outstanding() == 0
    }

    /// Lending is stopped until `end_quiesce`.
    pub fn quiescing(&self) -> bool {
        self.quiescing
    }

    /// No owner of lent buffers is left (none lends, none retires): the
    /// device holds nothing tied to the thread that lent (`BufferOwner`s
    /// are that thread's), so it may go on on another.
    pub fn lends_nothing(&self) -> bool {
        [&self.rx_lender, &self.tx_lender].iter().all(|l| l.owner.is_none() && l.retiring.is_empty())
    }

    /// Lending is over for now: spare receive chains go back to the guest
    /// empty, and owners are let go (after a timeout, with buffers still
    /// out: their tokens are void, their memory stays mapped until they
    /// come back).
    pub fn end_quiesce(&mut self, timed_out: bool) {
        self.drain_returns();
        let log = if has(self.features, virtio::VHOST_F_LOG_ALL) { self.log.as_ref() } else { None };
        for v in &mut self.vrings {
            if let Some(q) = &mut v.queue {
                q.give_back_spares(log);
                q.forget_lent();
            }
        }
        if timed_out {
            self.lend_stats.quiesce_timeouts += 1;
        }
        self.rx_lender = Lender::default();
        self.tx_lender = Lender::default();
        self.quiescing = false;
    }

    pub fn lend_stats(&self) -> &LendStats {
        &self.lend_stats
    }

    /// Whether serving `msg` would stop or change a running ring (so lent
    /// buffers must be back first): a new memory table, ring settings,
    /// GET_VRING_BASE, disabling a ring, a reset, or new features other
    /// than LOG_ALL (which comes and goes with migration, rings running).
    pub fn changes_rings(&self, msg: &Message) -> bool {
        let word = |at: usize| msg.payload.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        match msg.header.request {
            req::SET_MEM_TABLE
            | req::SET_VRING_NUM
            | req::SET_VRING_ADDR
            | req::SET_VRING_BASE
            | req::GET_VRING_BASE
            | req::RESET_OWNER
            | req::RESET_DEVICE
            | req::ADD_MEM_REG
            | req::REM_MEM_REG => true,
            // VhostUserVringState: index u32, num u32.
            req::SET_VRING_ENABLE => msg.payload.get(4..8).is_none_or(|b| b == [0, 0, 0, 0]),
            req::SET_FEATURES => word(0).is_none_or(|f| (f ^ self.features) & !bit(virtio::VHOST_F_LOG_ALL) != 0),
            _ => false,
        }
    }

    /// Look for queues the guest broke (at tick rate): report each once, on
    /// the log and the err eventfd, and stop serving it. Returns how many
    /// broke since the last call.
    pub fn check_broken(&mut self) -> usize {
        let mut newly = 0;
        for (i, v) in self.vrings.iter_mut().enumerate() {
            if v.broken_reported {
                continue;
            }
            if let Some(why) = v.queue.as_ref().and_then(Virtqueue::broken) {
                v.broken_reported = true;
                newly += 1;
                log::warn!("vhost-user: queue {i} stopped: {why}");
                if let Some(e) = &v.err {
                    signal(e);
                }
            }
        }
        if newly > 0 {
            self.refresh_broken();
        }
        newly
    }

    fn refresh_broken(&mut self) {
        let vr = &self.vrings;
        self.to_guest.retain(|&i| vr[i].queue.as_ref().is_some_and(|q| q.broken().is_none()));
        self.from_guest.retain(|&i| vr[i].queue.as_ref().is_some_and(|q| q.broken().is_none()));
    }

    /// Counters over all rings: (to guest, from guest).
    pub fn totals(&self) -> (QueueStats, QueueStats) {
        let (mut to, mut from) = (QueueStats::default(), QueueStats::default());
        for (i, v) in self.vrings.iter().enumerate() {
            add_stats(if i % 2 == 0 { &mut to } else { &mut from }, &v.stats());
        }
        (to, from)
    }

    /// Rings that broke.
    pub fn broken_count(&self) -> usize {
        self.vrings.iter().filter(|v| v.broken_reported).count()
    }
}

/// A RARP "reverse request" announcing `mac` (what QEMU sends for a guest
/// without GUEST_ANNOUNCE after migration), padded to the minimum frame.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}
