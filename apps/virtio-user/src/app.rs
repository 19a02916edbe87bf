//! The `VirtioUser` app: a virtio-net driver on a vhost-user socket (the
//! part QEMU plays for a guest, or DPDK's virtio-user), so that snabb-rs
//! can play a VM for a vhost-user switch: its own, DPDK's, OVS-DPDK's.
//!
//! | class        | ports                                                        | does                        |
//! |--------------|--------------------------------------------------------------|-----------------------------|
//! | `VirtioUser` | in: `input` (frames it sends); out: `output` (frames it got) | one virtio-net "VM" NIC     |
//!
//! Args (defaults in brackets): `socket`, `server` \[false: connect to a
//! listening backend, as QEMU's default; true: listen, as QEMU's
//! `server=on`\], `queues` \[1 queue pair\], `queue_size` \[256\], `mem_mb`
//! \[what the rings and buffers need\], `mac` \[none: the device's, if its
//! config space says\], `mtu` \[none; else NET_SET_MTU and frames longer
//! than MTU + 18 are dropped\], `mrg_rxbuf` \[true\], `rx_buffer` \[2060:
//! bytes per receive buffer, net header included, as DPDK's 2 KiB mbufs;
//! 1536 is Linux's\], `event_idx` \[true\], `indirect` \[true\], `csum` \[true:
//! CSUM and GUEST_CSUM\], `huge_pages` \[true: the memory on huge pages when
//! there are free ones, ordinary pages otherwise, said in the log\].
//!
//! The app owns its memory (one memfd, shared with the backend by
//! SET_MEM_TABLE, kept across connections), its eventfds, and its rings.
//! Control traffic runs from `tick` and never blocks (see `setup.rs`), so
//! a backend in the same engine works; the data path runs in `push` (the
//! input to the transmit rings, a flow hash choosing the ring) and `pull`
//! (the receive rings to the output). When the backend goes away (EOF, a
//! malformed reply, a refused request, a reply not within 5 s, a broken
//! ring), the connection is dropped and made again: a client retries with
//! back-off (10 ms doubling to 1 s), a server waits for the next backend.
//! Every connection starts fresh rings. New arguments are taken in place:
//! the connection is dropped and made again with them (a listener keeps its
//! path); counters carry on.
//!
//! Counters: `tx_packets`/`tx_bytes` (frames sent), `rx_packets`/`rx_bytes`
//! (frames received, those then dropped included; net headers excluded);
//! drops by reason
//! `tx_no_descriptors` (every transmit buffer with the backend),
//! `tx_oversize` (longer than the MTU allows), `tx_not_ready` (no backend
//! set up), `tx_lost` (handed to a backend that left before using them),
//! `rx_oversize`, `rx_bad_used`, `rx_bad_csum`, `rx_no_output` (no output
//! link: frames counted and dropped unread, a benchmark's sink); `tx_bad_used`, `tx_csum_completed`, `rx_partial_csum`,
//! `rx_csum_completed`, `broken_queues`, `kicks`, `calls` (interrupts the
//! backend raised though asked not to), `connections`, `disconnects`,
//! `setup_errors` (connections that ended before the device was set up),
//! `link_up` (1 while set up), `queue_pairs`, `features`
//! (the bits negotiated), `huge_pages` (1 when the memory is on huge pages).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snabb_apps_vhost_user::channel::{Channel, Listener, listen};
use snabb_apps_vhost_user::driver::DriverMemory;
use snabb_apps_vhost_user::frontend::{eventfd, eventfd_take};
use snabb_apps_vhost_user::protocol::{
    FLAG_NEED_REPLY, Header, MemoryRegion, ProtocolError, VERSION, VringAddress, pf, request_name,
};
use snabb_apps_vhost_user::virtio::{self, NetHdr, bit};
use snabb_core::ethernet::MacAddr;
use snabb_core::packet::PAYLOAD_SIZE;
use snabb_core::{App, AppClass, AppContext, Io, PortSpec};

use crate::queue::{QueueLayout, RxQueue, Stats, TxQueue};
use crate::setup::{Host, Negotiated, Next, Setup, SetupError, Want};

/// How long a reply may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests and replies handled per tick at most.
const MESSAGES_PER_TICK: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Packets one transmit ring takes before the next gets its turn (MQ).
const TX_BURST: usize = 64;

fn one() -> u16 {
    1
}
fn yes() -> bool {
    true
}
fn default_queue_size() -> u16 {
    256
}
/// DPDK's: a 2 KiB mbuf data room and the header in front of it.
fn default_rx_buffer() -> u32 {
    2048 + NetHdr::MAX_LEN as u32
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VirtioUserArgs {
    /// The vhost-user unix socket.
    pub socket: PathBuf,
    /// Listen (true) or connect (false, the default).
    #[serde(default)]
    pub server: bool,
    /// Queue pairs (1..=128).
    #[serde(default = "one")]
    pub queues: u16,
    /// Descriptors per ring (a power of two, 64..=32768).
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// Memory shared with the backend, MiB (default: what is needed).
    #[serde(default)]
    pub mem_mb: Option<u32>,
    /// This NIC's MAC, when the device does not say (for reports and
    /// generators; frames are sent as they are).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The MTU (68..=9216): NET_SET_MTU, and longer frames are dropped.
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default = "yes")]
    pub mrg_rxbuf: bool,
    /// Bytes of each receive buffer, the 12-byte net header included.
    #[serde(default = "default_rx_buffer")]
    pub rx_buffer: u32,
    #[serde(default = "yes")]
    pub event_idx: bool,
    #[serde(default = "yes")]
    pub indirect: bool,
    /// Take CSUM and GUEST_CSUM (partial checksums both ways).
    #[serde(default = "yes")]
    pub csum: bool,
    #[serde(default = "yes")]
    pub huge_pages: bool,
}

impl VirtioUserArgs {
    pub fn new(socket: impl Into<PathBuf>) -> VirtioUserArgs {
        VirtioUserArgs {
            socket: socket.into(),
            server: false,
            queues: 1,
            queue_size: default_queue_size(),
            mem_mb: None,
            mac: None,
            mtu: None,
            mrg_rxbuf: true,
            rx_buffer: default_rx_buffer(),
            event_idx: true,
            indirect: true,
            csum: true,
            huge_pages: true,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!((1..=128).contains(&self.queues), "queues {}: must be 1..=128 queue pairs", self.queues);
        ensure!(
            self.queue_size.is_power_of_two() && (64..=32768).contains(&self.queue_size),
            "queue_size {}: must be a power of two in 64..=32768",
            self.queue_size
        );
        ensure!(
            (64..=65535).contains(&self.rx_buffer),
            "rx_buffer {}: must be 64..=65535 bytes (the net header included)",
            self.rx_buffer
        );
        if let Some(m) = self.mtu {
            ensure!((68..=9216).contains(&m), "mtu {m}: must be 68..=9216");
        }
        Ok(())
    }

    /// Feature bits to take when offered.
    fn want(&self) -> Want {
        let mut f = bit(virtio::VIRTIO_F_VERSION_1)
            | bit(virtio::VHOST_USER_F_PROTOCOL_FEATURES)
            | bit(virtio::VIRTIO_NET_F_MAC)
            | bit(virtio::VIRTIO_NET_F_STATUS);
        let on = |b: bool, x: u32| if b { bit(x) } else { 0 };
        f |= on(self.mrg_rxbuf, virtio::VIRTIO_NET_F_MRG_RXBUF);
        f |= on(self.event_idx, virtio::VIRTIO_RING_F_EVENT_IDX);
        f |= on(self.indirect, virtio::VIRTIO_RING_F_INDIRECT_DESC);
        f |= on(self.csum, virtio::VIRTIO_NET_F_CSUM) | on(self.csum, virtio::VIRTIO_NET_F_GUEST_CSUM);
        f |= on(self.mtu.is_some(), virtio::VIRTIO_NET_F_MTU);
        Want {
            features: f,
            protocol: pf::MQ | pf::REPLY_ACK | pf::NET_MTU | pf::STATUS | pf::CONFIG,
            queue_pairs: self.queues,
            queue_size: self.queue_size,
            mtu: self.mtu,
        }
    }
}

/// Arguments as the engine parses them: checked while parsing, so that
/// `snabb-rs config check` already reports a bad queue size or MTU, with
/// the line and column.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "VirtioUserArgs", into = "VirtioUserArgs")]
pub struct Checked(pub VirtioUserArgs);

impl TryFrom<VirtioUserArgs> for Checked {
    type Error = String;
    fn try_from(a: VirtioUserArgs) -> Result<Checked, String> {
        a.check().map_err(|e| e.to_string())?;
        Ok(Checked(a))
    }
}

impl From<Checked> for VirtioUserArgs {
    fn from(c: Checked) -> VirtioUserArgs {
        c.0
    }
}

/// Where everything lies in the memory: rings first (a 4 KiB-aligned
/// stretch each, ring `2p` receive and `2p + 1` transmit of pair `p`, as
/// virtio-net numbers them), then each ring's buffers.
#[derive(Clone, Debug)]
struct Layout {
    queues: Vec<QueueLayout>,
    size: usize,
}

/// Bytes from one buffer to the next: `len` rounded up to an odd number
/// of cache lines, so that the first lines of neighbouring buffers fall in
/// different cache sets (as the host packet buffers do).
fn stride(len: u32) -> u32 {
    let lines = len.div_ceil(64);
    64 * (lines | 1)
}

fn layout(args: &VirtioUserArgs) -> Layout {
    let n = 2 * args.queues as u64;
    let size = args.queue_size;
    let ring_area = snabb_apps_vhost_user::driver::ring_bytes(size).next_multiple_of(4096);
    let tx_len = (NetHdr::MAX_LEN + max_frame(args)) as u32;
    let mut at = n * ring_area;
    let queues = (0..n)
        .map(|i| {
            let buf_len = if i % 2 == 0 { args.rx_buffer } else { tx_len };
            let s = stride(buf_len);
            let q = QueueLayout { size, ring_gpa: i * ring_area, data_gpa: at, stride: s, buf_len };
            at += size as u64 * s as u64;
            q
        })
        .collect();
    Layout { queues, size: (at as usize).next_multiple_of(snabb_apps_vhost_user::driver::HUGE_PAGE) }
}

/// The longest frame sent: MTU + 18 (an Ethernet header and a VLAN tag),
/// or a whole host packet without an MTU.
fn max_frame(args: &VirtioUserArgs) -> usize {
    args.mtu.map_or(PAYLOAD_SIZE, |m| m as usize + 18)
}

/// How the app finds its backend.
enum Endpoint {
    Server(Listener),
    Client { next_try: Instant, backoff: Duration, failures: u64 },
}

struct Connection {
    chan: Channel,
    setup: Setup,
    /// When the awaited reply is due.
    deadline: Instant,
    running: bool,
    /// An unexpected message was logged.
    warned: bool,
}

/// Counts of the control path.
#[derive(Clone, Debug, Default)]
struct Events {
    connections: u64,
    disconnects: u64,
    setup_errors: u64,
    tx_not_ready: u64,
    tx_lost: u64,
    rx_no_output: u64,
    kicks: u64,
    calls: u64,
}

pub struct VirtioUser {
    name: String,
    args: VirtioUserArgs,
    // Rings point into `mem`: declared (so dropped) first.
    rx: Vec<RxQueue>,
    tx: Vec<TxQueue>,
    stats: Stats,
    ev: Events,
    endpoint: Endpoint,
    conn: Option<Connection>,
    /// What the last (or current) connection agreed.
    negotiated: Option<Negotiated>,
    kicks: Vec<OwnedFd>,
    calls: Vec<OwnedFd>,
    layout: Layout,
    mem: DriverMemory,
    /// Positions of the `input` and `output` ports (resolved in `link`).
    ports: (Option<usize>, Option<usize>),
    /// The receive ring served first next (rotates).
    next_rx: usize,
    /// Setups that failed in a row.
    setup_failures: u64,
}

impl AppClass for VirtioUser {
    type Args = Checked;
    const PORTS: PortSpec = PortSpec::new(&["input"], &["output"]);
    fn new(Checked(args): Checked, ctx: &AppContext) -> anyhow::Result<VirtioUser> {
        let (layout, mem, kicks, calls) = resources(&args, ctx.name)?;
        let endpoint = endpoint(&args, ctx.name)?;
        Ok(VirtioUser {
            name: ctx.name.to_string(),
            args,
            rx: Vec::new(),
            tx: Vec::new(),
            stats: Stats::default(),
            ev: Events::default(),
            endpoint,
            conn: None,
            negotiated: None,
            kicks,
            calls,
            layout,
            mem,
            ports: (None, None),
            next_rx: 0,
            setup_failures: 0,
        })
    }

    /// New arguments in place (a restart would make the new app, listening
    /// on the same path, while the old one still listens there): the
    /// backend is dropped and found again with the new arguments; memory and
    /// eventfds are made anew when the layout changes; counters carry on.
    fn reconfigure(&mut self, Checked(args): Checked, ctx: &AppContext) -> anyhow::Result<bool> {
        let fresh = if layout(&args).queues.len() != self.layout.queues.len()
            || (args.queue_size, args.rx_buffer, args.mtu, args.mem_mb, args.huge_pages)
                != (self.args.queue_size, self.args.rx_buffer, self.args.mtu, self.args.mem_mb, self.args.huge_pages)
        {
            Some(resources(&args, ctx.name)?)
        } else {
            None
        };
        self.disconnect(End::Stopped);
        // The old listener goes first, so that the same path can be bound again.
        self.endpoint = Endpoint::Client { next_try: Instant::now(), backoff: BACKOFF_MIN, failures: 0 };
        self.endpoint = endpoint(&args, ctx.name)?;
        if let Some((layout, mem, kicks, calls)) = fresh {
            (self.layout, self.mem, self.kicks, self.calls) = (layout, mem, kicks, calls);
        }
        self.negotiated = None;
        self.setup_failures = 0;
        self.args = args;
        Ok(true)
    }
}

/// The layout, memory and eventfds `args` need.
fn resources(args: &VirtioUserArgs, name: &str) -> anyhow::Result<(Layout, DriverMemory, Vec<OwnedFd>, Vec<OwnedFd>)> {
    args.check()?;
    let layout = layout(args);
    let size = match args.mem_mb {
        Some(mb) => {
            let have = mb as usize * (1 << 20);
            anyhow::ensure!(
                have >= layout.size,
                "mem_mb {mb}: the rings and buffers need {} MiB",
                layout.size.div_ceil(1 << 20)
            );
            have
        }
        None => layout.size,
    };
    let mem = memory(name, size, args.huge_pages)?;
    let rings = 2 * args.queues as usize;
    let mk = || (0..rings).map(|_| eventfd()).collect::<std::io::Result<Vec<_>>>();
    let (kicks, calls) = (mk()?, mk()?);
    Ok((layout, mem, kicks, calls))
}

fn endpoint(args: &VirtioUserArgs, name: &str) -> anyhow::Result<Endpoint> {
    Ok(if args.server {
        Endpoint::Server(listen(&args.socket, name)?)
    } else {
        Endpoint::Client { next_try: Instant::now(), backoff: BACKOFF_MIN, failures: 0 }
    })
}

/// The shared memory: huge pages when asked and there are some.
fn memory(name: &str, size: usize, huge: bool) -> anyhow::Result<DriverMemory> {
    let off = std::env::var("SNABB_RS_NO_HUGEPAGES").is_ok_and(|v| !v.is_empty() && v != "0");
    if huge && !off {
        match DriverMemory::new_huge(size) {
            Ok(m) => {
                log::info!("{name}: {} MiB of guest memory on huge pages", m.size() >> 20);
                return Ok(m);
            }
            Err(e) => log::info!(
                "{name}: no huge pages for {} MiB of guest memory ({e}); using ordinary pages",
                size.div_ceil(1 << 20)
            ),
        }
    } else {
        log::info!(
            "{name}: {} MiB of guest memory on ordinary pages{}",
            size.div_ceil(1 << 20),
            if off { " (SNABB_RS_NO_HUGEPAGES is set)" } else { "" }
        );
    }
    DriverMemory::new(size).map_err(|e| anyhow::anyhow!("{name}: {} MiB of guest memory: {e}", size >> 20))
}

/// What the setup conversation asks of us.
struct HostView<'a> {
    mem: &'a DriverMemory,
    rx: &'a [RxQueue],
    tx: &'a [TxQueue],
    kicks: &'a [OwnedFd],
    calls: &'a [OwnedFd],
}

impl Host for HostView<'_> {
    fn vring_addr(&self, i: u16) -> VringAddress {
        let p = i as usize / 2;
        let (desc, avail, used) = if i.is_multiple_of(2) { self.rx[p].addrs() } else { self.tx[p].addrs() };
        VringAddress {
            index: i as u32,
            flags: 0,
            desc_user_addr: desc,
            used_user_addr: used,
            avail_user_addr: avail,
            log_guest_addr: used - self.mem.bytes() as u64,
        }
    }
    fn memory(&self) -> std::io::Result<(MemoryRegion, OwnedFd)> {
        let r = self.mem.region();
        let region = MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            mmap_offset: r.mmap_offset,
        };
        Ok((region, self.mem.fd().try_clone_to_owned()?))
    }
    fn kick(&self, i: u16) -> std::io::Result<OwnedFd> {
        self.kicks[i as usize].try_clone()
    }
    fn call(&self, i: u16) -> std::io::Result<OwnedFd> {
        self.calls[i as usize].try_clone()
    }
}

/// Why a connection ended.
enum End {
    /// The backend closed it.
    Closed,
    /// The app is stopping.
    Stopped,
    Error(String),
}

impl VirtioUser {
    /// Find a backend if there is none: accept one, or try to connect.
    fn attach(&mut self) {
        let stream = match &mut self.endpoint {
            Endpoint::Server(l) => match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("{}: accept on {}: {e}", self.name, self.args.socket.display());
                    return;
                }
            },
            Endpoint::Client { next_try, backoff, failures } => {
                let now = Instant::now();
                if now < *next_try {
                    return;
                }
                match UnixStream::connect(&self.args.socket) {
                    // The back-off is reset once the device is set up: a
                    // backend that refuses the setup is retried less and less often.
                    Ok(s) => {
                        *failures = 0;
                        s
                    }
                    Err(e) => {
                        if *failures == 0 {
                            log::info!("{}: connecting to {}: {e}; retrying", self.name, self.args.socket.display());
                        }
                        *failures += 1;
                        *next_try = now + *backoff;
                        *backoff = (*backoff * 2).min(BACKOFF_MAX);
                        return;
                    }
                }
            }
        };
        match Channel::new(stream) {
            Ok(mut chan) => {
                // A backend that does not read what we send loses its
                // connection rather than stalling the engine.
                chan.set_send_timeout(Duration::ZERO);
                log::info!("{}: connected to the backend on {}", self.name, self.args.socket.display());
                self.ev.connections += 1;
                self.conn = Some(Connection {
                    chan,
                    setup: Setup::new(self.args.want()),
                    deadline: Instant::now() + REPLY_TIMEOUT,
                    running: false,
                    warned: false,
                });
            }
            Err(e) => log::warn!("{}: new connection: {e}", self.name),
        }
    }

    /// Move the setup on as far as the backend's replies allow.
    fn converse(&mut self) -> Result<(), End> {
        for _ in 0..MESSAGES_PER_TICK {
            let Some(c) = &mut self.conn else { return Ok(()) };
            if c.running {
                // Nothing is expected; a message is a backend's mistake, EOF its leaving.
                return match c.chan.try_recv() {
                    Ok(None) => Ok(()),
                    Ok(Some(m)) => {
                        if !c.warned {
                            log::warn!(
                                "{}: unexpected {} message from the backend; ignored (and any more)",
                                self.name,
                                request_name(m.header.request)
                            );
                            c.warned = true;
                        }
                        Ok(())
                    }
                    Err(ProtocolError::Closed) => Err(End::Closed),
                    Err(e) => Err(End::Error(e.to_string())),
                };
            }
            let view = HostView { mem: &self.mem, rx: &self.rx, tx: &self.tx, kicks: &self.kicks, calls: &self.calls };
            match c.setup.next(&view).map_err(|e| End::Error(e.to_string()))? {
                Next::Wait => match c.chan.try_recv() {
                    Ok(Some(m)) => c.setup.reply(&m).map_err(|e| End::Error(setup_error(&c.setup, e)))?,
                    Ok(None) => {
                        if Instant::now() > c.deadline {
                            let what = c.setup.waiting_for().unwrap_or("a reply");
                            return Err(End::Error(format!("no reply to {what} within {REPLY_TIMEOUT:?}")));
                        }
                        return Ok(());
                    }
                    Err(ProtocolError::Closed) => return Err(End::Closed),
                    Err(e) => return Err(End::Error(e.to_string())),
                },
                Next::Send { request, ack } => {
                    let code = request.code();
                    let (payload, fds) = request.encode();
                    let flags = VERSION | if ack { FLAG_NEED_REPLY } else { 0 };
                    let h = Header { request: code, flags, size: payload.len() as u32 };
                    c.chan.send(h, &payload, &fds).map_err(|e| match e {
                        ProtocolError::Closed => End::Closed,
                        e => End::Error(format!("sending {}: {e}", request_name(code))),
                    })?;
                    c.deadline = Instant::now() + REPLY_TIMEOUT;
                    drop(request); // closes our duplicates of the fds sent
                }
                Next::Build { features, queue_pairs } => self.build(features, queue_pairs),
                Next::Done => {
                    c.running = true;
                    self.setup_failures = 0;
                    if let Endpoint::Client { backoff, .. } = &mut self.endpoint {
                        *backoff = BACKOFF_MIN;
                    }
                    let n = c.setup.negotiated().clone();
                    log::info!(
                        "{}: set up: features {:#x}, protocol features {:#x}, {} queue pair(s){}{}",
                        self.name,
                        n.features,
                        n.protocol_features,
                        n.queue_pairs,
                        n.mac.map(|m| format!(", mac {}", MacAddr(m))).unwrap_or_default(),
                        n.mtu.map(|m| format!(", mtu {m}")).unwrap_or_default(),
                    );
                    self.negotiated = Some(n);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Fresh rings for a connection that agreed on `features`.
    fn build(&mut self, features: u64, pairs: u16) {
        self.rx.clear();
        self.tx.clear();
        let max = max_frame(&self.args);
        for p in 0..pairs as usize {
            self.rx.push(RxQueue::new(&self.mem, &self.layout.queues[2 * p], features));
            self.tx.push(TxQueue::new(&self.mem, &self.layout.queues[2 * p + 1], features, max));
        }
        // Interrupts left over from the last connection mean nothing now.
        for c in &self.calls {
            eventfd_take(c);
        }
    }

    /// Forget the backend: its rings stop; what it had not used is lost.
    fn disconnect(&mut self, end: End) {
        let Some(c) = self.conn.take() else { return };
        if !c.running && !matches!(end, End::Stopped) {
            self.ev.setup_errors += 1;
            self.setup_failures += 1;
        }
        match end {
            End::Closed => log::info!("{}: the backend went away", self.name),
            End::Stopped => {}
            End::Error(why) => {
                // A backend that fails every setup the same way is said so
                // once, then every 64th time.
                if self.setup_failures <= 1 || self.setup_failures.is_multiple_of(64) {
                    log::warn!("{}: dropping the connection: {why}", self.name);
                } else {
                    log::debug!("{}: dropping the connection: {why}", self.name);
                }
            }
        }
        self.ev.disconnects += 1;
        let mut lost = 0;
        for q in &mut self.tx {
            q.reap(&mut self.stats);
            lost += q.in_flight() as u64;
        }
        self.ev.tx_lost += lost;
        self.rx.clear();
        self.tx.clear();
        if let Endpoint::Client { next_try, backoff, .. } = &mut self.endpoint {
            *next_try = Instant::now() + *backoff;
            if !c.running {
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn running(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.running)
    }

    fn kick(&mut self, ring: usize) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our own eventfd.
        unsafe { libc::write(self.kicks[ring].as_raw_fd(), (&one as *const u64).cast(), 8) };
        self.ev.kicks += 1;
    }

    /// True while a backend is set up and its rings run.
    pub fn link_up(&self) -> bool {
        self.running()
    }
    /// What the current or last connection agreed.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }
    /// This NIC's MAC: the device's, else the `mac` argument.
    pub fn mac(&self) -> Option<MacAddr> {
        self.negotiated.as_ref().and_then(|n| n.mac).map(MacAddr).or(self.args.mac)
    }
    /// Whether the memory is on huge pages.
    pub fn huge_pages(&self) -> bool {
        self.mem.is_huge()
    }
    /// One counter by name (see the module doc), for tests.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let mut v = None;
        self.counters(&mut |k, x| {
            if k == name {
                v = Some(x)
            }
        });
        v
    }
}

fn setup_error(s: &Setup, e: SetupError) -> String {
    match s.waiting_for() {
        Some(w) => format!("{e} (awaiting {w})"),
        None => e.to_string(),
    }
}

/// A hash of a frame's flow (addresses and ports of IPv4 or IPv6 TCP and
/// UDP, else the MACs), to keep each flow on one transmit ring as a
/// guest's XPS does.
#[inline]
fn flow_hash(f: &[u8]) -> u32 {
    let word = |i: usize| f.get(i..i + 4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
    let mut l3 = 14;
    let mut et = f.get(12..14).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if et == 0x8100 || et == 0x88a8 {
        l3 = 18;
        et = f.get(16..18).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    }
    let h = match et {
        0x0800 if f.len() >= l3 + 20 => {
            let ihl = 4 * (f[l3] & 15) as usize;
            let ports =
                if matches!(f[l3 + 9], 6 | 17) && f[l3 + 6] & 0x3f == 0 && f[l3 + 7] == 0 { word(l3 + ihl) } else { 0 };
            word(l3 + 12) ^ word(l3 + 16) ^ ports
        }
        0x86dd if f.len() >= l3 + 40 => {
            let ports = if matches!(f[l3 + 6], 6 | 17) { word(l3 + 40) } else { 0 };
            (8..40).step_by(4).fold(ports, |a, i| a ^ word(l3 + i))
        }
        _ => word(0) ^ word(4) ^ word(8),
    };
    let h = h.wrapping_mul(0x9e37_79b1);
    h ^ (h >> 16)
}

impl App for VirtioUser {
    fn has_pull(&self) -> bool {
        true
    }

    fn link(&mut self, io: &Io) {
        self.ports = (io.input.index_of("input"), io.output.index_of("output"));
    }

    fn pull(&mut self, io: &Io) {
        if !self.running() {
            return;
        }
        let n = self.rx.len();
        let first = self.next_rx % n.max(1);
        self.next_rx = self.next_rx.wrapping_add(1);
        let Some(out) = self.ports.1.map(|i| io.output.at(i)) else {
            // Nobody takes what arrives: count it and drop it unread, so
            // the backend is not held up (a benchmark's sink, as testpmd's rxonly).
            for k in 0..n {
                let i = (first + k) % n;
                self.ev.rx_no_output += self.rx[i].discard(&mut self.stats) as u64;
                if self.rx[i].publish() {
                    self.kick(2 * i);
                }
            }
            return;
        };
        let mut room = out.nwritable();
        if room == 0 {
            return; // frames wait in the rings; the backend counts what does not fit
        }
        let mut tx = out.transmitter();
        for k in 0..n {
            let i = (first + k) % n;
            room -= self.rx[i].receive(room, &mut self.stats, |p| tx.send(p));
            if self.rx[i].publish() {
                self.kick(2 * i);
            }
            if room == 0 {
                break;
            }
        }
    }

    fn push(&mut self, io: &Io) {
        let Some(input) = self.ports.0.map(|i| io.input.at(i)) else { return };
        if input.is_empty() {
            return;
        }
        if !self.running() {
            self.ev.tx_not_ready += input.discard().0;
            return;
        }
        if self.tx.len() == 1 {
            if self.tx[0].send_all(input, &mut self.stats) {
                self.kick(1);
            }
            return;
        }
        let n = self.tx.len();
        for q in &mut self.tx {
            q.reap(&mut self.stats);
        }
        let mut sent = 0;
        for p in input.drain() {
            let q = flow_hash(p.data()) as usize % n;
            self.tx[q].put(p, &mut self.stats);
            sent += 1;
            if sent % TX_BURST == 0 {
                // Publish now and then, so the backend starts on a long input early.
                for i in 0..n {
                    if self.tx[i].publish() {
                        self.kick(2 * i + 1);
                    }
                }
            }
        }
        for i in 0..n {
            if self.tx[i].publish() {
                self.kick(2 * i + 1);
            }
        }
    }

    fn tick(&mut self, _io: &Io) {
        if self.conn.is_none() {
            self.attach();
        } else if let Endpoint::Server(l) = &self.endpoint {
            // One backend at a time: a second one sees its connection close.
            while let Ok(s) = l.accept() {
                log::warn!("{}: a second backend on {}: refused", self.name, self.args.socket.display());
                drop(s);
            }
        }
        if let Err(end) = self.converse() {
            self.disconnect(end);
            return;
        }
        if self.running() && (self.rx.iter().any(RxQueue::broken) || self.tx.iter().any(TxQueue::broken)) {
            self.disconnect(End::Error("a ring broke (see above)".into()));
            return;
        }
        for c in &self.calls {
            self.ev.calls += eventfd_take(c);
        }
    }

    fn stop(&mut self) {
        self.disconnect(End::Stopped);
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let s = &self.stats;
        let e = &self.ev;
        for (k, v) in [
            ("tx_packets", s.tx_packets),
            ("tx_bytes", s.tx_bytes),
            ("tx_no_descriptors", s.tx_no_descriptors),
            ("tx_oversize", s.tx_oversize),
            ("tx_not_ready", e.tx_not_ready),
            ("tx_lost", e.tx_lost),
            ("tx_bad_used", s.tx_bad_used),
            ("tx_csum_completed", s.tx_csum_completed),
            ("rx_packets", s.rx_packets),
            ("rx_bytes", s.rx_bytes),
            ("rx_oversize", s.rx_oversize),
            ("rx_bad_used", s.rx_bad_used),
            ("rx_bad_csum", s.rx_bad_csum),
            ("rx_no_output", e.rx_no_output),
            ("rx_partial_csum", s.rx_partial_csum),
            ("rx_csum_completed", s.rx_csum_completed),
            ("broken_queues", s.broken_queues),
            ("kicks", e.kicks),
            ("calls", e.calls),
            ("connections", e.connections),
            ("disconnects", e.disconnects),
            ("setup_errors", e.setup_errors),
            ("link_up", self.running() as u64),
            ("queue_pairs", if self.running() { self.tx.len() as u64 } else { 0 }),
            ("features", self.negotiated.as_ref().map_or(0, |n| n.features)),
            ("huge_pages", self.mem.is_huge() as u64),
        ] {
            emit(k, v);
        }
    }

    fn report(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mode = if self.args.server { "server" } else { "client" };
        let _ = write!(out, "{} ({mode}, {} MiB memory", self.args.socket.display(), self.mem.size() >> 20);
        let _ = write!(out, "{}): ", if self.mem.is_huge() { " on huge pages" } else { "" });
        match (&self.conn, &self.negotiated) {
            (Some(c), Some(n)) if c.running => {
                let _ = writeln!(
                    out,
                    "set up, features {:#x}, {} queue pair(s){}",
                    n.features,
                    n.queue_pairs,
                    self.mac().map(|m| format!(", mac {m}")).unwrap_or_default()
                );
            }
            (Some(c), _) => {
                let _ = writeln!(out, "setting up (awaiting {})", c.setup.waiting_for().unwrap_or("nothing"));
            }
            (None, _) => out.push_str("no backend\n"),
        }
        let (s, e) = (&self.stats, &self.ev);
        let _ = writeln!(
            out,
            "  sent {} frames {} bytes (dropped: {} no descriptors, {} oversize, {} backend not ready, {} lost \
             with a backend); received {} frames {} bytes (dropped: {} oversize, {} bad used entries, {} no output)",
            s.tx_packets,
            s.tx_bytes,
            s.tx_no_descriptors,
            s.tx_oversize,
            e.tx_not_ready,
            e.tx_lost,
            s.rx_packets,
            s.rx_bytes,
            s.rx_oversize,
            s.rx_bad_used,
            e.rx_no_output
        );
        let _ = writeln!(
            out,
            "  {} connections, {} disconnects, {} setup errors, {} broken rings",
            e.connections, e.disconnects, e.setup_errors, s.broken_queues
        );
    }
}
