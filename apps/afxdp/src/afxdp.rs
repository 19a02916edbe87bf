//! AFXDP: one queue of a Linux interface as a port of the graph, through an
//! AF_XDP socket.
//!
//! Frames the queue receives go out on `tx`; packets arriving on `rx` are
//! sent on the queue (RawSocket's port names: the app is the wire's end).
//! One app per (interface, queue); the apps of one interface share its XDP
//! program ([`crate::attach`]).
//!
//! Each breath, `pull` takes what the RX ring holds (no system call), copies
//! each frame into a host packet and gives the frame back on the fill ring;
//! `push` copies what `rx` holds into free UMEM frames, posts them on the TX
//! ring, makes one `send()` when the kernel asks for it (always in copy
//! mode, where the kernel builds and sends the frames in that call) and
//! takes the completed frames back. `rx_buffers: Lend` hands the received
//! frames to the graph as foreign packets instead (see docs/ARCHITECTURE.md
//! for why copying is the default). The kernel's own counts (XDP_STATISTICS)
//! are read every 100 ms; the interface is looked at every second and the
//! socket opened again when it comes back, or when its MTU grows past what
//! the socket was opened for.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snabb_apps_rawsocket::socket::{Interface, L2_OVERHEAD};
use snabb_core::memory::{Backing, Region};
use snabb_core::packet::{Allocator, BufferOwner, ForeignBuffer, PAYLOAD_SIZE};
use snabb_core::{App, AppClass, AppContext, Io, Link, PULL_NPACKETS, Packet, PortSpec};

use crate::attach::{Attachment, Request, XdpAttach};
use crate::netlink::XdpMode;
use crate::xsk::{BindMode, Statistics, XDP_PACKET_HEADROOM, Xsk, XskConfig};

/// How the socket moves frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Zero copy where the driver has it, copy otherwise.
    Auto,
    /// Zero copy, or refuse to start.
    ZeroCopy,
    /// Copy, even where the driver has zero copy.
    Copy,
}

/// What received frames become in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RxBuffers {
    /// Copied into host packets; the frame goes back to the kernel at once.
    Copy,
    /// Lent as foreign packets (those longer than `copy_max`, 128 bytes:
    /// shorter ones are cheaper to copy), up to `lend_frames` at a time: a frame goes
    /// back to the kernel when its packet is dropped, or straight onto the
    /// TX ring when this app sends it. Past the budget (consumers holding
    /// packets: a stalled guest's full link), frames are copied, so the
    /// kernel never runs short of frames to receive into.
    Lend,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdpArgs {
    /// The interface (`eth0`, `veth1`...).
    pub interface: String,
    /// The queue (0 for an interface with one).
    #[serde(default)]
    pub queue: u32,
    #[serde(default = "mode_auto")]
    pub mode: Mode,
    /// Where the XDP program runs: Auto (native when the driver can),
    /// Native, Generic.
    #[serde(default = "xdp_auto")]
    pub xdp: XdpAttach,
    /// Take off another XDP program found on the interface (it is not put
    /// back when the app stops).
    #[serde(default)]
    pub replace: bool,
    /// RX ring entries (and fill ring: frames lent to the kernel), a power of two.
    #[serde(default = "ring")]
    pub rx_ring: u32,
    /// TX ring entries (and completion ring), a power of two.
    #[serde(default = "ring")]
    pub tx_ring: u32,
    /// UMEM frame size: 2048 or 4096.
    #[serde(default = "frame_size")]
    pub frame_size: u32,
    #[serde(default = "rx_lend")]
    pub rx_buffers: RxBuffers,
    /// With `rx_buffers: Lend`: frames that may be out in the graph at
    /// once (UMEM beyond the rings' own frames).
    #[serde(default = "lend_frames")]
    pub lend_frames: u32,
    /// Preferred busy polling: when the RX ring is empty, `pull` asks the
    /// kernel to poll the queue right away, in its system call on our CPU,
    /// taking up to this many frames (DPDK's af_xdp does the same, with
    /// 64). The driver's receive work then runs where the app runs rather
    /// than in a softirq on whichever CPU the interrupt (or, on a veth, the
    /// sender) ran. 0: leave it to the kernel.
    #[serde(default = "busy_poll")]
    pub busy_poll: u32,
    /// With `rx_buffers: Lend`, frames up to this long are copied all the
    /// same: two cache lines cost less to copy than a frame costs to lend
    /// and take back, and the next app then reads a packet already in the
    /// cache (docs/ARCHITECTURE.md has the measurements). 0 lends them all.
    #[serde(default = "copy_max")]
    pub copy_max: u32,
}

fn mode_auto() -> Mode {
    Mode::Auto
}
fn xdp_auto() -> XdpAttach {
    XdpAttach::Auto
}
fn ring() -> u32 {
    2048
}
fn frame_size() -> u32 {
    4096
}
fn rx_lend() -> RxBuffers {
    RxBuffers::Lend
}
fn lend_frames() -> u32 {
    4096
}
fn busy_poll() -> u32 {
    64
}
/// The default of `copy_max`.
pub const COPY_MAX: u32 = 128;
fn copy_max() -> u32 {
    COPY_MAX
}

impl AfXdpArgs {
    pub fn new(interface: &str) -> AfXdpArgs {
        AfXdpArgs {
            interface: interface.to_string(),
            queue: 0,
            mode: Mode::Auto,
            xdp: XdpAttach::Auto,
            replace: false,
            rx_ring: ring(),
            tx_ring: ring(),
            frame_size: frame_size(),
            rx_buffers: RxBuffers::Lend,
            lend_frames: lend_frames(),
            copy_max: COPY_MAX,
            busy_poll: busy_poll(),
        }
    }

    /// The arguments' own consistency (names, ring and frame sizes).
    pub fn check(&self) -> anyhow::Result<()> {
        let n = &self.interface;
        anyhow::ensure!(
            !n.is_empty() && n.len() < libc::IFNAMSIZ && !n.contains(['/', ':', ' ', '\0']) && n != "." && n != "..",
            "interface `{n}`: not an interface name (1 to {} characters, no `/`, `:` or space)",
            libc::IFNAMSIZ - 1
        );
        for (what, v) in [("rx_ring", self.rx_ring), ("tx_ring", self.tx_ring)] {
            anyhow::ensure!(
                v.is_power_of_two() && (64..=1 << 16).contains(&v),
                "{what} {v}: a power of two from 64 to 65536"
            );
        }
        anyhow::ensure!(
            self.frame_size == 2048 || self.frame_size == 4096,
            "frame_size {}: 2048 or 4096 (the kernel takes no frame larger than a page)",
            self.frame_size
        );
        anyhow::ensure!(self.lend_frames <= 1 << 20, "lend_frames {}: at most 1048576", self.lend_frames);
        anyhow::ensure!(self.copy_max <= 4096, "copy_max {}: at most 4096", self.copy_max);
        Ok(())
    }

    /// Frames lent to the kernel on the fill ring: twice the RX ring, so
    /// that it still has a ring's worth while ours is full.
    fn fill_frames(&self) -> u32 {
        2 * self.rx_ring
    }

    /// Bytes of UMEM the socket pins (locked memory).
    pub fn umem_bytes(&self) -> u64 {
        self.frames() as u64 * self.frame_size as u64
    }

    fn frames(&self) -> u32 {
        self.fill_frames() + self.tx_ring + if self.rx_buffers == RxBuffers::Lend { self.lend_frames } else { 0 }
    }
}

/// Counters, named as they are published.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Frames taken from the RX ring (a frame in several descriptors
    /// once), and their bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames longer than a packet (10240 bytes), or whose descriptors do
    /// not fit the UMEM: counted in rx_packets, then dropped.
    pub rx_oversize: u64,
    pub rx_invalid: u64,
    /// With `rx_buffers: Lend`: frames copied all the same, because the
    /// graph held `lend_frames` already or the frame came in several buffers.
    pub rx_copied: u64,
    /// Frames received while `tx` had no link: dropped.
    pub rx_no_link: u64,
    /// Frames the kernel completed from the TX ring (sent, or dropped by
    /// the device: its tx_dropped), and their bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Times packets had to wait on `rx` because the TX ring (or the UMEM)
    /// was full; they stay on the link, whose txdrop counts any loss.
    pub tx_ring_full: u64,
    /// Packets longer than the interface's MTU allows, or than one frame
    /// without multi-buffer support: dropped.
    pub tx_oversize: u64,
    /// Packets shorter than an Ethernet header: dropped.
    pub tx_runt: u64,
    /// Packets dropped while the interface was down or gone, or left in
    /// the TX ring when the socket closed.
    pub tx_down_drops: u64,
    /// send() failures other than "busy, try again".
    pub tx_errors: u64,
    /// System calls the kernel asked for (NEED_WAKEUP).
    pub fill_wakeups: u64,
    pub tx_wakeups: u64,
    /// Polls of the queue made in `pull` (`busy_poll`).
    pub busy_polls: u64,
    /// The kernel's XDP_STATISTICS, summed over the sockets this app had.
    pub k: Statistics,
    /// Times the socket was opened again.
    pub reopens: u64,
}

/// The open socket and everything that goes with it.
struct Port {
    /// Field order is drop order: socket, then UMEM, then the program.
    xsk: Xsk,
    umem: Rc<Region>,
    attachment: Arc<Attachment>,
    /// For `rx_buffers: Lend`: the graph's packets on our frames.
    owner: Option<BufferOwner>,
    base: *mut u8,
    umem_len: usize,
    frame_size: u32,
    /// Frames of ours (not in any ring, not lent), by address.
    free: Vec<u64>,
    /// Frames posted on the fill ring and not yet received back.
    in_fill: u32,
    /// For each frame, the length of the packet it starts while on the TX
    /// ring (0 otherwise): completions are counted from it.
    tx_len: Vec<u32>,
    ifc: Interface,
    queue: u32,
    /// Longest frame we send: the MTU and an Ethernet header and tag.
    tx_max: usize,
    /// Kernel statistics at the last reading.
    stats: Statistics,
    /// send() said the interface is down.
    down: bool,
}

impl Drop for Port {
    fn drop(&mut self) {
        // Out of the map first: the queue's frames go to the kernel's stack
        // rather than to a socket being closed.
        self.attachment.remove(self.queue);
    }
}

pub struct AfXdp {
    name: String,
    args: AfXdpArgs,
    port: Option<Port>,
    /// Our ports' positions (resolved in `link`): `tx` out, `rx` in.
    tx_port: Option<usize>,
    rx_port: Option<usize>,
    c: Counters,
    next_stats: Instant,
    next_check: Instant,
}

const STATS_EVERY: Duration = Duration::from_millis(100);
/// Fewest frames posted on the fill ring at once (it holds twice the RX
/// ring, so the kernel never waits for the rest).
const FILL_BATCH: u32 = 64;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Queues of an interface whose name starts with `prefix` (`rx-`, `tx-`),
/// as sysfs lists them; None when the interface is not there.
fn sysfs_queues(ifname: &str, prefix: &str) -> Option<u32> {
    let d = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    Some(d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count() as u32)
}

/// The number of queues of an interface (the larger of its RX and TX counts).
fn queue_count(ifname: &str) -> u32 {
    let count = |prefix| sysfs_queues(ifname, prefix).unwrap_or(1);
    count("rx-").max(count("tx-")).max(1)
}

/// The receive queues of an interface (its channels: `ethtool -l`), the
/// ones frames arrive on; None when there is no such interface.
pub fn rx_queue_count(ifname: &str) -> Option<u32> {
    sysfs_queues(ifname, "rx-").map(|n| n.max(1))
}

fn open(a: &AfXdpArgs, app: &str) -> anyhow::Result<Port> {
    let name = &a.interface;
    let ifc = Interface::lookup(name).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("interface `{name}`: no such interface (see `ip link`)")
        } else {
            anyhow::anyhow!("interface `{name}`: {e}")
        }
    })?;
    let queues = queue_count(name);
    anyhow::ensure!(
        a.queue < queues,
        "interface `{name}` has {queues} queue{}: there is no queue {}",
        if queues == 1 { "" } else { "s" },
        a.queue
    );
    let frames = a.frames();
    let umem = Rc::new(
        Region::new(frames as usize * a.frame_size as usize)
            .map_err(|e| anyhow::anyhow!("interface `{name}`: UMEM of {frames} frames: {e}"))?,
    );
    let rx_room = (a.frame_size - XDP_PACKET_HEADROOM) as usize;
    let cfg = XskConfig {
        ifname: name.clone(),
        ifindex: ifc.index as u32,
        queue: a.queue,
        frame_size: a.frame_size,
        fill_size: a.fill_frames(),
        comp_size: a.tx_ring,
        rx_size: a.rx_ring,
        tx_size: a.tx_ring,
        mode: match a.mode {
            Mode::Auto => BindMode::Auto,
            Mode::ZeroCopy => BindMode::ZeroCopy,
            Mode::Copy => BindMode::Copy,
        },
        want_sg: ifc.mtu + L2_OVERHEAD > rx_room,
        busy_poll: a.busy_poll,
        busy_wait: Duration::from_secs(2),
    };
    let mut xsk = Xsk::open(&cfg, &umem)?;
    let attachment =
        Attachment::get(&Request { ifname: name, ifindex: ifc.index as u32, queues, mode: a.xdp, replace: a.replace })?;
    xsk.bind(&cfg)?;
    attachment.insert(a.queue, xsk.fd())?;
    let owner = (a.rx_buffers == RxBuffers::Lend)
        .then(|| BufferOwner::register(&format!("AfXdp {app}"), Some(umem.clone() as Rc<dyn std::any::Any>)));
    let tx_max = (ifc.mtu + L2_OVERHEAD).min(PAYLOAD_SIZE);
    if tx_max > rx_room && !xsk.sg {
        log::warn!(
            "AfXdp `{app}`: interface `{name}` has MTU {} but this kernel has no multi-buffer AF_XDP (Linux 6.6): \
             frames longer than {rx_room} bytes are dropped both ways",
            ifc.mtu
        );
    }
    log::info!(
        "AfXdp `{app}`: interface `{name}` queue {}: {} mode, XDP program in {} mode, UMEM {} frames of {} ({} MiB, {}){}{}{}",
        a.queue,
        if xsk.zerocopy { "zero-copy" } else { "copy" },
        attachment.mode().name(),
        frames,
        a.frame_size,
        umem.len() >> 20,
        if umem.backing() == Backing::Huge { "huge pages" } else { "ordinary pages" },
        if xsk.need_wakeup { ", need_wakeup" } else { "" },
        if xsk.busy_polling {
            ", busy polling"
        } else if xsk.busy_pending {
            ", busy polling once the queue's NAPI context shows"
        } else {
            ""
        },
        if xsk.sg { ", multi-buffer" } else { "" },
    );
    // A NIC (a bus device: not a veth or tap, whose flag means nothing for
    // frames their peer sends) that strips tags hands XDP untagged frames.
    if snabb_apps_rawsocket::socket::strips_vlan_tags(name) == Some(true)
        && std::path::Path::new(&format!("/sys/class/net/{name}/device")).exists()
    {
        log::warn!(
            "AfXdp `{app}`: interface `{name}` strips VLAN tags into its descriptors (rx-vlan-offload), where XDP \
             does not see them: tagged frames arrive untagged; `ethtool -K {name} rxvlan off` if VLANs matter"
        );
    }
    if a.mode == Mode::Auto && !xsk.zerocopy {
        log::info!("AfXdp `{app}`: the driver of `{name}` has no zero-copy AF_XDP: frames are copied by the kernel");
    }
    let mut port = Port {
        base: umem.as_ptr(),
        umem_len: umem.len(),
        xsk,
        umem,
        attachment,
        owner,
        frame_size: a.frame_size,
        free: (0..frames as u64).rev().map(|i| i * a.frame_size as u64).collect(),
        in_fill: 0,
        tx_len: vec![0; frames as usize],
        ifc,
        queue: a.queue,
        tx_max,
        stats: Statistics::default(),
        down: false,
    };
    port.refill(a.fill_frames());
    Ok(port)
}

impl Port {
    /// Post free frames on the fill ring until `target` are there, in
    /// batches of at least FILL_BATCH: the kernel reads our producer index
    /// and entries from another CPU, and each line we write between two
    /// of its reads costs it a miss; a few frames posted every breath made
    /// it miss on nearly every frame (perf: xp_alloc on the sending CPU).
    /// Below half the target, whatever there is goes at once.
    #[inline]
    fn refill(&mut self, target: u32) {
        let want = target.saturating_sub(self.in_fill).min(self.free.len() as u32);
        if want == 0 || (want < FILL_BATCH.min(target / 2) && self.in_fill >= target / 2) {
            return;
        }
        let n = self.xsk.fill.free(want);
        for i in 0..n {
            let a = self.free.pop().unwrap();
            self.xsk.fill.put(i, a);
        }
        self.xsk.fill.submit(n);
        self.in_fill += n;
    }

    #[inline]
    fn frame_of(&self, addr: u64) -> u64 {
        addr & !(self.frame_size as u64 - 1)
    }

    /// Take completed TX frames back, counting their packets.
    #[inline]
    fn reap(&mut self, c: &mut Counters) {
        let n = self.xsk.comp.ready(u32::MAX);
        if n == 0 {
            return;
        }
        let frames = self.tx_len.len() as u64;
        for i in 0..n {
            let f = self.frame_of(self.xsk.comp.get(i));
            let idx = f / self.frame_size as u64;
            if idx >= frames {
                // Not a frame of ours: a kernel bug; do not trust it.
                c.tx_errors += 1;
                continue;
            }
            let len = std::mem::take(&mut self.tx_len[idx as usize]);
            if len != 0 {
                c.tx_packets += 1;
                c.tx_bytes += len as u64;
            }
            self.free.push(f);
        }
        self.xsk.comp.release(n);
    }

    /// The bytes of a descriptor, if they lie in the UMEM.
    #[inline]
    fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let end = (addr as usize).checked_add(len as usize)?;
        // SAFETY: [addr, end) is inside the UMEM mapping, which lives as
        // long as self; the kernel filled it before publishing the descriptor.
        (end <= self.umem_len)
            .then(|| unsafe { std::slice::from_raw_parts(self.base.add(addr as usize), len as usize) })
    }
}

impl AppClass for AfXdp {
    type Args = AfXdpArgs;
    const PORTS: PortSpec = PortSpec::new(&["rx"], &["tx"]);

    fn validate(args: &AfXdpArgs) -> anyhow::Result<()> {
        args.check()
    }

    fn new(args: AfXdpArgs, ctx: &AppContext) -> anyhow::Result<AfXdp> {
        args.check()?;
        let port = open(&args, ctx.name)?;
        let now = Instant::now();
        Ok(AfXdp {
            name: ctx.name.to_string(),
            args,
            port: Some(port),
            tx_port: None,
            rx_port: None,
            c: Counters::default(),
            next_stats: now,
            next_check: now + CHECK_EVERY,
        })
    }

    /// New arguments are taken in place: the socket is closed and opened
    /// again (a new app could not bind the queue while this one holds it).
    /// When the new socket cannot be opened, the old arguments are opened
    /// again and the error returned.
    fn reconfigure(&mut self, args: AfXdpArgs, _ctx: &AppContext) -> anyhow::Result<bool> {
        args.check()?;
        if args == self.args {
            return Ok(true);
        }
        // The interface keeps its program meanwhile (frames in between go
        // to the kernel, not to a reloaded program's empty map).
        let _keep = self.port.as_ref().map(|p| p.attachment.clone());
        self.close();
        match open(&args, &self.name) {
            Ok(p) => {
                log::info!("AfXdp `{}`: reconfigured", self.name);
                self.port = Some(p);
                self.args = args;
                Ok(true)
            }
            Err(e) => {
                self.port = open(&self.args, &self.name)
                    .map_err(|e2| log::warn!("AfXdp `{}`: opening the old settings again: {e2:#}", self.name))
                    .ok();
                Err(e)
            }
        }
    }
}

impl AfXdp {
    pub fn counters_now(&self) -> Counters {
        self.c
    }

    /// Whether the socket is in zero-copy mode, and where the XDP program runs.
    pub fn modes(&self) -> Option<(bool, XdpMode)> {
        self.port.as_ref().map(|p| (p.xsk.zerocopy, p.attachment.mode()))
    }

    /// Read the kernel's statistics now (they are also read every 100 ms).
    pub fn update_kernel_stats(&mut self) {
        let Some(p) = &mut self.port else { return };
        if p.xsk.learn_napi() {
            log::info!(
                "AfXdp `{}`: interface `{}` queue {}: busy polling its NAPI context from now on",
                self.name,
                self.args.interface,
                p.queue
            );
        }
        if let Ok(s) = p.xsk.statistics() {
            let (k, o) = (&mut self.c.k, p.stats);
            k.rx_dropped += s.rx_dropped.saturating_sub(o.rx_dropped);
            k.rx_invalid_descs += s.rx_invalid_descs.saturating_sub(o.rx_invalid_descs);
            k.tx_invalid_descs += s.tx_invalid_descs.saturating_sub(o.tx_invalid_descs);
            k.rx_ring_full += s.rx_ring_full.saturating_sub(o.rx_ring_full);
            k.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs.saturating_sub(o.rx_fill_ring_empty_descs);
            k.tx_ring_empty_descs += s.tx_ring_empty_descs.saturating_sub(o.tx_ring_empty_descs);
            p.stats = s;
        }
    }

    /// Close the socket (and the program, when no other app holds it).
    fn close(&mut self) {
        if let Some(p) = &mut self.port {
            p.reap(&mut self.c);
            self.update_kernel_stats();
            let p = self.port.as_mut().unwrap();
            self.c.tx_down_drops += p.xsk.tx.outstanding() as u64;
        }
        self.port = None;
    }

    /// Every second: is the interface still the one we opened, with an MTU
    /// the socket can carry?
    fn check_interface(&mut self) {
        let now = Interface::lookup(&self.args.interface).ok();
        let reopen = match (&self.port, &now) {
            (None, Some(_)) => true,
            (Some(_), None) => {
                log::warn!(
                    "AfXdp `{}`: interface `{}` is gone; looking for it every second",
                    self.name,
                    self.args.interface
                );
                self.close();
                false
            }
            (Some(p), Some(n)) => {
                if n.index != p.ifc.index {
                    true
                } else if n.mtu != p.ifc.mtu {
                    let rx_room = (p.frame_size - XDP_PACKET_HEADROOM) as usize;
                    let need_sg = n.mtu + L2_OVERHEAD > rx_room;
                    if need_sg && !p.xsk.sg {
                        true
                    } else {
                        let p = self.port.as_mut().unwrap();
                        p.ifc.mtu = n.mtu;
                        p.tx_max = (n.mtu + L2_OVERHEAD).min(PAYLOAD_SIZE);
                        false
                    }
                } else {
                    false
                }
            }
            (None, None) => false,
        };
        if reopen {
            let _keep = self.port.as_ref().map(|p| p.attachment.clone());
            self.close();
            match open(&self.args, &self.name) {
                Ok(p) => {
                    log::info!("AfXdp `{}`: interface `{}` opened again", self.name, self.args.interface);
                    self.port = Some(p);
                    self.c.reopens += 1;
                }
                Err(e) => log::warn!("AfXdp `{}`: {e:#}", self.name),
            }
        }
    }

    fn receive(&mut self, out: &Link) {
        let Some(p) = &mut self.port else { return };
        let c = &mut self.c;
        // Completions too, for a zero-copy driver that sends without us.
        p.reap(c);
        if let Some(owner) = &p.owner {
            let free = &mut p.free;
            owner.drain_returns(|t| free.push(t));
        }
        let max = PULL_NPACKETS.min(out.nwritable()) as u32;
        let n = if max == 0 { 0 } else { p.xsk.rx.ready(max) };
        if n > 0 {
            // Frames that may still be lent this batch.
            let copy_max = self.args.copy_max;
            let mut lend = match &p.owner {
                Some(o) => (self.args.lend_frames as u64).saturating_sub(o.outstanding()) as u32,
                None => 0,
            };
            let mut alloc = Allocator::new(n as usize);
            let mut tx = out.transmitter();
            let fs = p.frame_size as u64;
            let mut i = 0;
            while i < n {
                let d = p.xsk.rx.get(i);
                if d.options & libc::XDP_PKT_CONTD != 0 {
                    // A frame in several descriptors (a jumbo MTU).
                    match gather(p, c, i, n, &mut alloc) {
                        Some((used, pkt)) => {
                            i += used;
                            if let Some(pkt) = pkt {
                                tx.send(pkt);
                            }
                            continue;
                        }
                        // Its last descriptor is not there yet.
                        None => break,
                    }
                }
                i += 1;
                c.rx_packets += 1;
                c.rx_bytes += d.len as u64;
                let frame = d.addr & !(fs - 1);
                let Some(bytes) = p.bytes(d.addr, d.len) else {
                    c.rx_invalid += 1;
                    if (frame as usize) < p.umem_len {
                        p.free.push(frame);
                    }
                    continue;
                };
                if let Some(owner) = p.owner.as_ref().filter(|_| lend > 0 && d.len > copy_max) {
                    lend -= 1;
                    let start = (d.addr - frame) as u32;
                    // SAFETY: the frame lies in the UMEM (checked above),
                    // which the owner's keep-alive holds until the packet
                    // comes back; the kernel lets go of a frame it put on
                    // the RX ring until we post it again.
                    let pkt = unsafe {
                        owner.wrap(ForeignBuffer {
                            base: std::ptr::NonNull::new_unchecked(p.base.add(frame as usize)),
                            cap: p.frame_size,
                            dma: p.umem.dma(frame as usize),
                            start,
                            len: d.len,
                            token: frame,
                            fixed_start: false,
                        })
                    };
                    tx.send(pkt);
                } else {
                    let mut pkt = alloc.allocate();
                    pkt.set_len(d.len as usize);
                    snabb_core::copy::copy(pkt.data_mut(), bytes);
                    p.free.push(frame);
                    tx.send(pkt);
                    c.rx_copied += (p.owner.is_some() && d.len > copy_max) as u64;
                }
            }
            p.xsk.rx.release(i);
            p.in_fill = p.in_fill.saturating_sub(i);
        }
        p.refill(self.args.fill_frames());
        if n == 0 && p.xsk.busy_polling {
            // Nothing waiting: poll the queue now, here. (It also does
            // what a fill-ring wakeup would.)
            c.busy_polls += 1;
            p.xsk.busy_poll();
        } else if p.xsk.need_wakeup && p.xsk.fill.needs_wakeup() {
            c.fill_wakeups += 1;
            let _ = p.xsk.wake_rx();
        }
    }

    fn transmit(&mut self, input: &Link) {
        let Some(p) = &mut self.port else {
            // No interface: what comes in is dropped, as on a cable with no end.
            self.c.tx_down_drops += input.discard().0;
            return;
        };
        let c = &mut self.c;
        p.reap(c);
        if p.down {
            c.tx_down_drops += input.discard().0;
            return;
        }
        let fs = p.frame_size as usize;
        let mut room = p.xsk.tx.free(u32::MAX).min(p.free.len() as u32);
        let mut queued = 0u32;
        while let Some(len) = input.front_len() {
            let pieces = len.div_ceil(fs).max(1) as u32;
            if pieces > room {
                c.tx_ring_full += 1;
                break;
            }
            let mut pkt = input.receive().unwrap();
            if let Some(owner) = &p.owner {
                // One of our own frames: sent from where it is.
                match owner.reclaim(pkt) {
                    Ok(r) => {
                        if (r.len as usize) > p.tx_max {
                            c.tx_oversize += 1;
                            p.free.push(r.token);
                            continue;
                        }
                        p.tx_len[(r.token / fs as u64) as usize] = r.len;
                        let d = libc::xdp_desc { addr: r.token + r.start as u64, len: r.len, options: 0 };
                        p.xsk.tx.put(queued, d);
                        queued += 1;
                        room -= 1;
                        // The frame left the lent pool for the TX ring.
                        continue;
                    }
                    Err(back) => pkt = back,
                }
            }
            // The kernel takes no partial checksum from us: finish it.
            pkt.finish_partial_csum();
            if len > p.tx_max || (pieces > 1 && !p.xsk.sg) {
                c.tx_oversize += 1;
                continue;
            }
            if len < 14 {
                c.tx_runt += 1;
                continue;
            }
            let data = pkt.data();
            let first = *p.free.last().unwrap();
            for (k, piece) in data.chunks(fs).enumerate() {
                let f = p.free.pop().unwrap();
                // SAFETY: f is a free frame of ours (not on any ring), inside
                // the UMEM; a piece is at most a frame long.
                unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), p.base.add(f as usize), piece.len()) };
                let more = (k as u32) + 1 < pieces;
                let d = libc::xdp_desc {
                    addr: f,
                    len: piece.len() as u32,
                    options: if more { libc::XDP_PKT_CONTD } else { 0 },
                };
                p.xsk.tx.put(queued, d);
                queued += 1;
            }
            p.tx_len[(first / fs as u64) as usize] = len as u32;
            room -= pieces;
        }
        if queued > 0 {
            p.xsk.tx.submit(queued);
        }
    }

    /// Make the kernel send what the TX ring holds, while it asks for it
    /// and gets on with it.
    fn kick(&mut self) {
        let Some(p) = &mut self.port else { return };
        let c = &mut self.c;
        let mut gone = false;
        loop {
            let before = p.xsk.tx.outstanding();
            if before == 0 || (p.xsk.need_wakeup && !p.xsk.tx.needs_wakeup()) {
                break;
            }
            c.tx_wakeups += 1;
            match p.xsk.kick_tx() {
                Ok(()) => p.down = false,
                Err(e) => match e.raw_os_error() {
                    // Busy (budget spent, completion ring full, device queue
                    // stopped): again below, or next breath.
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => {}
                    Some(libc::ENETDOWN) => {
                        p.down = true;
                        break;
                    }
                    Some(libc::ENXIO) => {
                        gone = true;
                        break;
                    }
                    _ => {
                        if c.tx_errors == 0 {
                            log::warn!("AfXdp `{}`: send: {e}", self.name);
                        }
                        c.tx_errors += 1;
                        break;
                    }
                },
            }
            p.reap(c);
            if p.xsk.tx.outstanding() >= before {
                break;
            }
        }
        if gone {
            log::warn!("AfXdp `{}`: the socket lost its interface `{}`", self.name, self.args.interface);
            self.close();
        }
    }
}

/// Gather a frame that spans descriptors i.. (XDP_PKT_CONTD on all but the
/// last) into a host packet: (descriptors used, the packet unless dropped),
/// or None when its last descriptor is not among the n ready.
#[cold]
fn gather(p: &mut Port, c: &mut Counters, i: u32, n: u32, alloc: &mut Allocator) -> Option<(u32, Option<Packet>)> {
    let mut end = i;
    while p.xsk.rx.get(end).options & libc::XDP_PKT_CONTD != 0 {
        end += 1;
        if end == n {
            return None;
        }
    }
    let used = end - i + 1;
    let total: usize = (i..=end).map(|k| p.xsk.rx.get(k).len as usize).sum();
    c.rx_packets += 1;
    c.rx_copied += p.owner.is_some() as u64;
    c.rx_bytes += total as u64;
    let mut pkt = (total <= PAYLOAD_SIZE).then(|| alloc.allocate());
    if pkt.is_none() {
        c.rx_oversize += 1;
    }
    for k in i..=end {
        let d = p.xsk.rx.get(k);
        let frame = p.frame_of(d.addr);
        match p.bytes(d.addr, d.len) {
            Some(b) => {
                if let Some(pkt) = &mut pkt {
                    pkt.append(b);
                }
            }
            None => {
                c.rx_invalid += 1;
                pkt = None;
            }
        }
        if (frame as usize) < p.umem_len {
            p.free.push(frame);
        }
    }
    Some((used, pkt))
}

impl App for AfXdp {
    fn has_pull(&self) -> bool {
        true
    }

    fn link(&mut self, io: &Io) {
        let one = |n: usize| (n == 1).then_some(0);
        self.tx_port = io.output.index_of("tx").or_else(|| one(io.output.len()));
        self.rx_port = io.input.index_of("rx").or_else(|| one(io.input.len()));
        for (name, _) in io.output.named().chain(io.input.named()) {
            if name != "tx" && name != "rx" && (io.output.len() > 1 || io.input.len() > 1) {
                log::warn!("AfXdp `{}`: port `{name}` is not used (ports: rx in, tx out)", self.name);
            }
        }
    }

    fn pull(&mut self, io: &Io) {
        if let Some(i) = self.tx_port {
            self.receive(io.output.at(i));
        } else if let Some(p) = &mut self.port {
            // Nothing to receive into: the frames still go back to the kernel.
            let n = p.xsk.rx.ready(u32::MAX);
            for i in 0..n {
                let d = p.xsk.rx.get(i);
                if d.options & libc::XDP_PKT_CONTD == 0 {
                    self.c.rx_packets += 1;
                    self.c.rx_no_link += 1;
                }
                self.c.rx_bytes += d.len as u64;
                let f = p.frame_of(d.addr);
                p.free.push(f);
            }
            p.xsk.rx.release(n);
            p.in_fill = p.in_fill.saturating_sub(n);
            p.refill(self.args.fill_frames());
        }
    }

    fn push(&mut self, io: &Io) {
        if let Some(input) = self.rx_port.map(|i| io.input.at(i)).filter(|l| !l.is_empty()) {
            self.transmit(input);
        }
        self.kick();
    }

    fn tick(&mut self, _io: &Io) {
        let now = Instant::now();
        if now >= self.next_stats {
            self.next_stats = now + STATS_EVERY;
            self.update_kernel_stats();
        }
        if now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            self.check_interface();
        }
    }

    fn stop(&mut self) {
        self.close();
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let c = &self.c;
        let (zc, native) = match self.modes() {
            Some((zc, m)) => (zc as u64, (m == XdpMode::Native) as u64),
            None => (0, 0),
        };
        for (k, v) in [
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("rx_oversize", c.rx_oversize),
            ("rx_invalid", c.rx_invalid),
            ("rx_copied", c.rx_copied),
            ("rx_no_link", c.rx_no_link),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("tx_ring_full", c.tx_ring_full),
            ("tx_oversize", c.tx_oversize),
            ("tx_runt", c.tx_runt),
            ("tx_down_drops", c.tx_down_drops),
            ("tx_errors", c.tx_errors),
            ("fill_wakeups", c.fill_wakeups),
            ("tx_wakeups", c.tx_wakeups),
            ("busy_polls", c.busy_polls),
            ("xdp_rx_dropped", c.k.rx_dropped),
            ("xdp_rx_invalid_descs", c.k.rx_invalid_descs),
            ("xdp_tx_invalid_descs", c.k.tx_invalid_descs),
            ("xdp_rx_ring_full", c.k.rx_ring_full),
            ("xdp_rx_fill_ring_empty_descs", c.k.rx_fill_ring_empty_descs),
            ("xdp_tx_ring_empty_descs", c.k.tx_ring_empty_descs),
            ("zerocopy", zc),
            ("xdp_native", native),
            ("reopens", c.reopens),
        ] {
            emit(k, v);
        }
    }

    fn report(&self, out: &mut String) {
        let c = &self.c;
        let state = match &self.port {
            Some(p) => format!(
                "queue {}, {}, XDP {}",
                p.queue,
                if p.xsk.zerocopy { "zero-copy" } else { "copy" },
                p.attachment.mode().name()
            ),
            None => "gone".to_string(),
        };
        out.push_str(&format!(
            "{} ({state}): rx {} frames {} bytes ({} kernel drops, {} ring full, {} fill empty); tx {} frames {} bytes ({} ring full, {} oversize, {} dropped while down)\n",
            self.args.interface,
            c.rx_packets,
            c.rx_bytes,
            c.k.rx_dropped,
            c.k.rx_ring_full,
            c.k.rx_fill_ring_empty_descs,
            c.tx_packets,
            c.tx_bytes,
            c.tx_ring_full,
            c.tx_oversize,
            c.tx_down_drops
        ));
    }
}
