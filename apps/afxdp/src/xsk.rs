//! AF_XDP SOCKETS: one socket bound to one queue of an interface, its UMEM
//! and its four rings.
//!
//!   Xsk::open(&XskConfig, &Region) -> Xsk    register the UMEM, make and map the rings
//!   xsk.bind(&XskConfig)                     bind to the queue (zero copy or copy)
//!   xsk.fill / xsk.tx                        rings we produce into (frame addresses, frames to send)
//!   xsk.rx / xsk.comp                        rings we consume from (received frames, sent addresses)
//!   xsk.wake_rx() / xsk.kick_tx()            the system calls NEED_WAKEUP asks for
//!   xsk.statistics()                         XDP_STATISTICS
//!
//! The UMEM is a [`Region`] of our packet memory (huge pages when there are
//! some), cut into frames of `frame_size` bytes (aligned mode: a frame's
//! address is a multiple of the size). The kernel fills frames we post on
//! the fill ring and hands them back on the RX ring; it sends frames we post
//! on the TX ring and hands their addresses back on the completion ring.
//! Each ring is a single-producer single-consumer array of a power-of-two
//! size, shared with the kernel through `mmap`, with free-running 32-bit
//! producer and consumer indices (Documentation/networking/af_xdp.rst). A
//! producer writes entries, then publishes its index with a release store;
//! a consumer reads the index with an acquire load, then the entries, then
//! publishes its own index with a release store. Each side keeps a cached
//! copy of the other's index and reads the shared one only when the cache
//! says the ring looks full (or empty), so a batch costs two shared-line
//! accesses, not two per entry.
//!
//! Binding: with neither XDP_COPY nor XDP_ZEROCOPY the kernel takes zero
//! copy where the driver has it and falls back to copy; XDP_OPTIONS then
//! says which it is. XDP_USE_NEED_WAKEUP (Linux 5.4) lets the kernel say,
//! through a flag in each ring, when it needs a system call to go on;
//! XDP_USE_SG (Linux 6.6) lets a frame longer than a UMEM frame travel in
//! several descriptors (XDP_PKT_CONTD on all but the last). Both are asked
//! for and dropped when an older kernel refuses them.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use libc::{c_int, c_void, xdp_desc};
use snabb_core::memory::Region;

/// Bytes the kernel keeps in front of the data of every frame it fills
/// (XDP_PACKET_HEADROOM): received data starts this far into its frame.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// XDP_MAX_TX_SKB_BUDGET (Linux 6.17): how many frames one system call
/// may send in copy mode (32 unless raised).
const XDP_MAX_TX_SKB_BUDGET: c_int = 9;
/// SOL_SOCKET options for busy polling (asm-generic/socket.h).
const SO_BUSY_POLL: c_int = 46;
const SO_PREFER_BUSY_POLL: c_int = 69;
const SO_BUSY_POLL_BUDGET: c_int = 70;
const SO_INCOMING_NAPI_ID: c_int = 56;
/// How long a busy poll of the queue may spin, in µs (DPDK's af_xdp uses 20).
const BUSY_POLL_USEC: c_int = 20;

/// How the socket is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero copy where the driver has it, copy otherwise.
    Auto,
    /// Zero copy, or an error.
    ZeroCopy,
    /// Copy, even where the driver has zero copy.
    Copy,
}

/// What to open.
#[derive(Clone, Debug)]
pub struct XskConfig {
    pub ifname: String,
    pub ifindex: u32,
    pub queue: u32,
    /// Bytes per UMEM frame: 2048 or 4096 (a power of two, at most a page).
    pub frame_size: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    pub mode: BindMode,
    /// Ask for XDP_USE_SG: frames longer than a UMEM frame can come (a
    /// jumbo MTU). Not asked otherwise: a zero-copy driver without
    /// multi-buffer support would fall back to copy mode.
    pub want_sg: bool,
    /// Preferred busy polling (Linux 5.11) with this budget: frames the
    /// kernel takes per poll of the queue, in our system call on our CPU
    /// rather than in its softirq. 0: off.
    pub busy_poll: u32,
    /// How long to wait for the queue while a socket we closed on it is
    /// still being released (the kernel lets go of it from a work queue).
    pub busy_wait: Duration,
}

/// The kernel's XDP_STATISTICS for one socket (the last three are 0
/// before Linux 5.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Frames dropped for want of a fill-ring frame or of room in a frame.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because our RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty_descs: u64,
}

/// One ring's mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by mmap in Ring::map with this length
        // and nothing refers to it any more (the ring that held it is going).
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
    }
}

/// A ring shared with the kernel, entries of type `T` (a frame address
/// for the fill and completion rings, an `xdp_desc` for RX and TX).
pub struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
    /// Our own index (the producer's for fill and TX, the consumer's for
    /// RX and completion).
    head: u32,
    /// Our cached copy of the kernel's index.
    cached: u32,
}

impl<T: Copy> Ring<T> {
    /// Map ring `pgoff` of socket `fd`, of `size` entries, whose layout the
    /// kernel gave in `off`.
    fn map(fd: c_int, pgoff: i64, size: u32, off: &libc::xdp_ring_offset) -> io::Result<Ring<T>> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: mapping a ring of this socket at the offset the kernel
        // defines for it; the kernel checks the length against the ring.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p as *mut u8;
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS for this ring and
        // lie inside the mapping; the kernel aligns them for their types.
        let (producer, consumer, flags, entries) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.flags as usize) as *const AtomicU32,
                base.add(off.desc as usize) as *mut T,
            )
        };
        // A new ring: both indices are 0.
        Ok(Ring {
            _map: Mapping { ptr: base, len },
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            head: 0,
            cached: 0,
        })
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping this ring owns.
        unsafe { &*self.producer }
    }
    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }

    pub fn size(&self) -> u32 {
        self.mask + 1
    }

    /// The kernel asks for a system call before it goes on with this ring
    /// (XDP_RING_NEED_WAKEUP).
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: points into the mapping this ring owns.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // --- as producer (fill, TX) ---------------------------------------------

    /// Entries we may write now, up to `want` (the kernel's consumer index
    /// is read only when the cached one says there are fewer).
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let size = self.mask + 1;
        let free = size - self.head.wrapping_sub(self.cached);
        if free >= want {
            return want;
        }
        self.cached = self.consumer().load(Ordering::Acquire);
        want.min(size - self.head.wrapping_sub(self.cached))
    }

    /// Write entry `i` past our index (below what `free` allowed).
    #[inline]
    pub fn put(&mut self, i: u32, v: T) {
        let slot = self.head.wrapping_add(i) & self.mask;
        // SAFETY: slot is masked into the ring's entries, which the mapping
        // holds; the kernel does not read it until we publish it.
        unsafe { self.entries.add(slot as usize).write(v) };
    }

    /// Publish `n` entries written with `put`.
    #[inline]
    pub fn submit(&mut self, n: u32) {
        self.head = self.head.wrapping_add(n);
        self.producer().store(self.head, Ordering::Release);
    }

    /// Entries published and not yet taken by the kernel.
    #[inline]
    pub fn outstanding(&mut self) -> u32 {
        self.cached = self.consumer().load(Ordering::Acquire);
        self.head.wrapping_sub(self.cached)
    }

    // --- as consumer (RX, completion) ---------------------------------------

    /// Entries ready to read, up to `max` (the kernel's producer index is
    /// read only when the cached one says there are none).
    #[inline]
    pub fn ready(&mut self, max: u32) -> u32 {
        let mut n = self.cached.wrapping_sub(self.head);
        if n == 0 {
            self.cached = self.producer().load(Ordering::Acquire);
            n = self.cached.wrapping_sub(self.head);
        }
        // More than the ring holds: a kernel bug; read none rather than
        // entries that are not there.
        if n > self.mask + 1 { 0 } else { n.min(max) }
    }

    /// Entry `i` past our index (below what `ready` said).
    #[inline]
    pub fn get(&self, i: u32) -> T {
        let slot = self.head.wrapping_add(i) & self.mask;
        // SAFETY: slot is masked into the entries the mapping holds; the
        // kernel published it (acquire in `ready`) and does not write it
        // again until we release it.
        unsafe { self.entries.add(slot as usize).read() }
    }

    /// Give `n` entries back to the kernel.
    #[inline]
    pub fn release(&mut self, n: u32) {
        self.head = self.head.wrapping_add(n);
        self.consumer().store(self.head, Ordering::Release);
    }
}

/// An AF_XDP socket bound to one queue, with its rings.
pub struct Xsk {
    pub fill: Ring<u64>,
    pub comp: Ring<u64>,
    pub rx: Ring<xdp_desc>,
    pub tx: Ring<xdp_desc>,
    /// The driver moves frames in and out of the UMEM itself.
    pub zerocopy: bool,
    /// Frames may span several descriptors (XDP_USE_SG was taken).
    pub sg: bool,
    /// The kernel tells when it needs a wakeup (XDP_USE_NEED_WAKEUP taken).
    pub need_wakeup: bool,
    /// Preferred busy polling was taken: `busy_poll` runs the queue.
    pub busy_polling: bool,
    /// Busy polling was asked for but the socket knows no NAPI context yet
    /// (a veth: it learns it from the first frame): see `learn_napi`.
    pub busy_pending: bool,
    // Last: closed after the rings are unmapped.
    fd: OwnedFd,
}

fn setsockopt<T>(fd: c_int, opt: c_int, v: &T) -> io::Result<()> {
    // SAFETY: v is a valid T for the call's duration and its size is passed.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_XDP, opt, v as *const T as *const c_void, size_of::<T>() as u32) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// getsockopt into a T; the length the kernel wrote.
fn getsockopt<T>(fd: c_int, opt: c_int, v: &mut T) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: v is a valid, writable T of `len` bytes.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, v as *mut T as *mut c_void, &mut len) };
    if r == 0 { Ok(len as usize) } else { Err(io::Error::last_os_error()) }
}

fn is_perm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

impl Xsk {
    pub fn open(c: &XskConfig, umem: &Region) -> anyhow::Result<Xsk> {
        let ifname = &c.ifname;
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => anyhow!(
                    "interface `{ifname}`: AF_XDP socket: permission denied: it needs CAP_NET_RAW (and CAP_NET_ADMIN, CAP_BPF for the XDP program: run as root)"
                ),
                Some(libc::EAFNOSUPPORT | libc::EINVAL | libc::EPROTONOSUPPORT) => anyhow!(
                    "interface `{ifname}`: this kernel has no AF_XDP sockets (Linux 4.18 or later, built with CONFIG_XDP_SOCKETS)"
                ),
                _ => anyhow!("interface `{ifname}`: AF_XDP socket: {e}"),
            });
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();

        // SAFETY: xdp_umem_reg is plain data; all-zero is valid.
        let mut reg: libc::xdp_umem_reg = unsafe { zeroed() };
        reg.addr = umem.as_ptr() as u64;
        reg.len = umem.len() as u64;
        reg.chunk_size = c.frame_size;
        reg.headroom = 0;
        if let Err(e) = setsockopt(raw, libc::XDP_UMEM_REG, &reg) {
            let mib = umem.len() >> 20;
            return Err(match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM | libc::EAGAIN) => anyhow!(
                    "interface `{ifname}`: registering the UMEM ({mib} MiB): {e}: the kernel pins it against the \
                     locked-memory limit: raise it (`ulimit -l`, LimitMEMLOCK=) or run with CAP_IPC_LOCK"
                ),
                _ => anyhow!("interface `{ifname}`: registering the UMEM ({mib} MiB, frames of {}): {e}", c.frame_size),
            });
        }
        for (opt, n, what) in [
            (libc::XDP_UMEM_FILL_RING, c.fill_size, "fill ring"),
            (libc::XDP_UMEM_COMPLETION_RING, c.comp_size, "completion ring"),
            (libc::XDP_RX_RING, c.rx_size, "RX ring"),
            (libc::XDP_TX_RING, c.tx_size, "TX ring"),
        ] {
            setsockopt(raw, opt, &(n as c_int))
                .map_err(|e| anyhow!("interface `{ifname}`: {what} of {n} entries: {e}"))?;
        }
        // SAFETY: plain data, filled by the kernel.
        let mut off: libc::xdp_mmap_offsets = unsafe { zeroed() };
        let len = getsockopt(raw, libc::XDP_MMAP_OFFSETS, &mut off)
            .map_err(|e| anyhow!("interface `{ifname}`: XDP_MMAP_OFFSETS: {e}"))?;
        if len < size_of::<libc::xdp_mmap_offsets>() {
            // Before Linux 5.4 there are no ring flags, so no NEED_WAKEUP.
            anyhow::bail!(
                "interface `{ifname}`: this kernel's AF_XDP rings have no flags (Linux 5.4 or later is needed)"
            );
        }
        let map_err = |what: &str, e: io::Error| anyhow!("interface `{ifname}`: mapping the {what}: {e}");
        let fill = Ring::map(raw, libc::XDP_UMEM_PGOFF_FILL_RING as i64, c.fill_size, &off.fr)
            .map_err(|e| map_err("fill ring", e))?;
        let comp = Ring::map(raw, libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64, c.comp_size, &off.cr)
            .map_err(|e| map_err("completion ring", e))?;
        let rx = Ring::map(raw, libc::XDP_PGOFF_RX_RING, c.rx_size, &off.rx).map_err(|e| map_err("RX ring", e))?;
        let tx = Ring::map(raw, libc::XDP_PGOFF_TX_RING, c.tx_size, &off.tx).map_err(|e| map_err("TX ring", e))?;

        let busy_polling = c.busy_poll > 0 && {
            let set = |opt, v: c_int| {
                // SAFETY: an int option on our socket, its size passed.
                let r = unsafe { libc::setsockopt(raw, libc::SOL_SOCKET, opt, &v as *const c_int as *const c_void, 4) };
                if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
            };
            match set(SO_PREFER_BUSY_POLL, 1)
                .and_then(|_| set(SO_BUSY_POLL, BUSY_POLL_USEC))
                .and_then(|_| set(SO_BUSY_POLL_BUDGET, c.busy_poll.min(u16::MAX as u32) as c_int))
            {
                Ok(()) => true,
                Err(e) => {
                    log::info!(
                        "interface `{ifname}`: no preferred busy polling ({e}): the kernel's softirq runs the queue"
                    );
                    false
                }
            }
        };
        Ok(Xsk {
            fill,
            comp,
            rx,
            tx,
            zerocopy: false,
            sg: false,
            need_wakeup: false,
            busy_polling,
            busy_pending: false,
            fd,
        })
    }

    /// Bind to the queue. After the interface has its XDP program: the
    /// socket learns the queue's NAPI context at bind, which busy polling
    /// needs, and a veth has one only while an XDP program is on it.
    pub fn bind(&mut self, c: &XskConfig) -> anyhow::Result<()> {
        let (sg, need_wakeup) = bind(&self.fd, c)?;
        let raw = self.fd();
        // SAFETY: plain data, filled by the kernel.
        let mut opts: libc::xdp_options = unsafe { zeroed() };
        self.zerocopy =
            getsockopt(raw, libc::XDP_OPTIONS, &mut opts).is_ok() && opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        // In copy mode a send() moves at most 32 frames unless told more
        // (Linux 6.17); older kernels refuse the option and we send again.
        if !self.zerocopy && c.tx_size > 32 {
            let _ = setsockopt(raw, XDP_MAX_TX_SKB_BUDGET, &c.tx_size);
        }
        (self.sg, self.need_wakeup) = (sg, need_wakeup);
        if self.busy_polling && self.napi_id() == 0 {
            // Busy polling runs the NAPI context the socket learned; a
            // driver that names it for the queue gives it at bind, a veth
            // only with the first frame the socket receives. Until then a
            // poll would be a system call for nothing.
            self.busy_polling = false;
            self.busy_pending = true;
        }
        Ok(())
    }

    /// The NAPI context the socket learned (0: none yet).
    fn napi_id(&self) -> c_int {
        let mut id: c_int = 0;
        let mut len = size_of::<c_int>() as libc::socklen_t;
        // SAFETY: an int option of our socket, its size passed.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                SO_INCOMING_NAPI_ID,
                &mut id as *mut c_int as *mut c_void,
                &mut len,
            )
        };
        if r == 0 { id } else { 0 }
    }

    /// With busy polling pending: has the socket learned its NAPI context
    /// since? Then busy polling starts (true). Called now and then, off
    /// the hot path.
    pub fn learn_napi(&mut self) -> bool {
        if self.busy_pending && self.napi_id() != 0 {
            self.busy_pending = false;
            self.busy_polling = true;
            return true;
        }
        false
    }

    pub fn fd(&self) -> c_int {
        self.fd.as_raw_fd()
    }

    /// Ask the kernel to go on with the fill ring (zero-copy drivers that
    /// ran out of frames wait for this).
    pub fn wake_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking receive on our own socket.
        let r = unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Run the queue's NAPI poll here, now (preferred busy polling): the
    /// driver's receive work, up to the budget, on our CPU.
    pub fn busy_poll(&self) {
        // SAFETY: a zero-length, non-blocking receive on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Make the kernel send what the TX ring holds (in copy mode, a batch
    /// per call, built into skbs in this system call).
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking send on our own socket.
        let r = unsafe { libc::sendto(self.fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    pub fn statistics(&self) -> io::Result<Statistics> {
        // SAFETY: plain data, filled by the kernel.
        let mut s: libc::xdp_statistics = unsafe { zeroed() };
        let len = getsockopt(self.fd(), libc::XDP_STATISTICS, &mut s)?;
        let full = len >= size_of::<libc::xdp_statistics>();
        Ok(Statistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: if full { s.rx_ring_full } else { 0 },
            rx_fill_ring_empty_descs: if full { s.rx_fill_ring_empty_descs } else { 0 },
            tx_ring_empty_descs: if full { s.tx_ring_empty_descs } else { 0 },
        })
    }
}

/// Bind, dropping flags an older kernel refuses; (scatter-gather, need
/// wakeup) as taken.
fn bind(fd: &OwnedFd, c: &XskConfig) -> anyhow::Result<(bool, bool)> {
    let ifname = &c.ifname;
    let mode = match c.mode {
        BindMode::Auto => 0,
        BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
        BindMode::Copy => libc::XDP_COPY,
    };
    let sg = if c.want_sg { libc::XDP_USE_SG } else { 0 };
    let mut flags = [libc::XDP_USE_NEED_WAKEUP | sg, libc::XDP_USE_NEED_WAKEUP, 0].into_iter().peekable();
    if sg == 0 {
        flags.next();
    }
    let deadline = Instant::now() + c.busy_wait;
    let mut f = flags.next().unwrap();
    loop {
        // SAFETY: sockaddr_xdp is plain data.
        let mut sa: libc::sockaddr_xdp = unsafe { zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_flags = mode | f;
        sa.sxdp_ifindex = c.ifindex;
        sa.sxdp_queue_id = c.queue;
        // SAFETY: sa is a valid sockaddr_xdp and its size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_xdp as *const libc::sockaddr,
                size_of::<libc::sockaddr_xdp>() as u32,
            )
        };
        if r == 0 {
            return Ok((f & libc::XDP_USE_SG != 0, f & libc::XDP_USE_NEED_WAKEUP != 0));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // An older kernel refuses a flag it does not know; a zero-copy
            // driver may not take frames in several buffers.
            Some(libc::EINVAL) if flags.peek().is_some() => f = flags.next().unwrap(),
            Some(libc::EOPNOTSUPP) if f & libc::XDP_USE_SG != 0 => f = flags.next().unwrap(),
            Some(libc::EBUSY) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Some(libc::EBUSY) => anyhow::bail!(
                "interface `{ifname}` queue {}: already bound to another AF_XDP socket (another app, or another program such as DPDK's af_xdp)",
                c.queue
            ),
            Some(libc::EOPNOTSUPP) if c.mode == BindMode::ZeroCopy => {
                anyhow::bail!("interface `{ifname}`: its driver has no zero-copy AF_XDP (use mode: Auto or Copy)")
            }
            Some(libc::ENODEV | libc::ENXIO) => anyhow::bail!("interface `{ifname}`: gone"),
            _ if is_perm(&e) => {
                anyhow::bail!("interface `{ifname}`: binding an AF_XDP socket: permission denied (CAP_NET_RAW)")
            }
            _ => anyhow::bail!("interface `{ifname}` queue {}: binding the AF_XDP socket: {e}", c.queue),
        }
    }
}
