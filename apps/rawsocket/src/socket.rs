//! AF_PACKET SOCKETS with memory-mapped rings, one per direction.
//!
//! Receive: a TPACKET_V3 ring. The kernel packs frames of any size one
//! after the other into blocks and hands over a whole block at a time (when
//! it is full, or `RETIRE_MS` after its first frame): reading costs no system
//! call and no per-frame handshake, and small frames do not waste ring memory.
//!
//! Transmit: a TPACKET_V2 ring on a second socket. Frames are copied into
//! fixed slots and one `send()` per batch makes the kernel take every slot
//! marked ready: one system call per batch and no per-frame `msghdr` or
//! `iovec`, as `sendmmsg` would need. V2 rather than V3: its transmit ring has
//! the same layout and has been in every kernel for much longer. A slot
//! stays the kernel's until the frame built from it is freed (the kernel may
//! send straight from ring memory), so a slot is reused only once its
//! status says AVAILABLE again. Two sockets, so that the receive socket can
//! ignore outgoing frames (PACKET_IGNORE_OUTGOING) and the transmit socket
//! receives nothing at all (protocol 0).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libc::{c_int, c_void};

/// A block is retired to user space at most this long after its first frame.
const RETIRE_MS: u32 = 1;
/// Receive blocks: each holds a frame of any length a packet can take.
/// Small, so that many of them make the ring: a block retired on its timer
/// holds only the frames that came by then, and a reader held up for a
/// while (a busy host) then finds many part-filled blocks.
pub const RX_BLOCK_SIZE: usize = 64 << 10;
/// Where frame data starts in a V2 transmit slot (TPACKET2_HDRLEN less the
/// sockaddr_ll the kernel does not use on transmit).
const TX_DATA: usize = libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>();
/// Bytes of an Ethernet header and a VLAN tag over the MTU that the kernel
/// accepts on transmit.
pub const L2_OVERHEAD: usize = 14 + 4;

/// An interface by name: its index and MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: i32,
    pub mtu: usize,
}

impl Interface {
    /// Look the interface up. A missing one is `NotFound`.
    pub fn lookup(name: &str) -> io::Result<Interface> {
        let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
        // SAFETY: c is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENODEV) {
                io::Error::new(io::ErrorKind::NotFound, "no such interface")
            } else {
                e
            });
        }
        Ok(Interface { name: name.to_string(), index: index as i32, mtu: mtu(name)? })
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    r
}

/// The interface's MTU (SIOCGIFMTU on a throwaway datagram socket, which
/// needs no privilege).
fn mtu(name: &str) -> io::Result<usize> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_mtu of the ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the ifru_mtu member.
    Ok(unsafe { r.ifr_ifru.ifru_mtu } as usize)
}

/// Whether the interface merges received frames (GRO, or LRO in the NIC):
/// merged frames can be far longer than a packet. None when it cannot be
/// told (no ethtool support, as on some virtual interfaces).
pub fn merges_frames(name: &str) -> Option<bool> {
    const ETH_FLAG_LRO: u32 = 1 << 15;
    let gro = ethtool_value(name, ETHTOOL_GGRO).map(|d| d != 0);
    let lro = ethtool_value(name, ETHTOOL_GFLAGS).map(|d| d & ETH_FLAG_LRO != 0);
    match (gro, lro) {
        (None, None) => None,
        (g, l) => Some(g.unwrap_or(false) || l.unwrap_or(false)),
    }
}

/// Whether the interface strips VLAN tags off received frames into its
/// descriptors (`rxvlan`, rx-vlan-offload): an XDP program then sees the
/// frames untagged. None when it cannot be told.
pub fn strips_vlan_tags(name: &str) -> Option<bool> {
    const ETH_FLAG_RXVLAN: u32 = 1 << 8;
    ethtool_value(name, ETHTOOL_GFLAGS).map(|d| d & ETH_FLAG_RXVLAN != 0)
}

// linux/ethtool.h
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_GGRO: u32 = 0x2b;

/// An ethtool "get" command answered with one value (struct ethtool_value).
fn ethtool_value(name: &str, cmd: u32) -> Option<u32> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut v = [cmd, 0u32]; // struct ethtool_value { cmd, data }
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_data = v.as_mut_ptr() as *mut libc::c_char;
    // SAFETY: SIOCETHTOOL reads the command from, and writes the value
    // into, the ethtool_value that ifr_data points to, which outlives the call.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut r) } >= 0;
    ok.then_some(v[1])
}

fn packet_socket() -> io::Result<OwnedFd> {
    // Protocol 0: nothing is received until bind() names the interface.
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, opt: c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points to a T of size_of::<T>() bytes, as the option expects.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, val as *const T as *const c_void, size_of::<T>() as u32)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn bind(fd: &OwnedFd, ifindex: i32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(fd.as_raw_fd(), &sll as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_ll>() as u32)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A ring the kernel shares with us, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of the socket's ring, of the length
        // the ring was set up with; nothing else maps this address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { base: NonNull::new(p as *mut u8).unwrap(), len })
    }

    /// The u32 at `off`, shared with the kernel, as an atomic.
    ///
    /// # Safety
    /// `off` must be 4-byte aligned and `off + 4 <= len`.
    unsafe fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: per the contract the word is inside the mapping and
        // aligned; the kernel accesses it concurrently, hence atomics.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; no reference into
        // the ring outlives the socket that owns this mapping.
        unsafe { libc::munmap(self.base.as_ptr() as *mut c_void, self.len) };
    }
}

/// One received frame, as the ring holds it.
pub struct Frame<'a> {
    /// The bytes captured (the frame, without a VLAN tag the kernel took out).
    pub data: &'a [u8],
    /// The frame's length on the wire (more than `data` if it was cut).
    pub len: usize,
    /// TP_STATUS_* bits.
    pub status: u32,
    /// The VLAN tag the kernel took out of the frame: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
}

/// The receive side: a TPACKET_V3 ring on a socket bound to the interface.
pub struct RxRing {
    map: Mapping,
    fd: OwnedFd,
    blocks: usize,
    /// The block being read, and where in it.
    block: usize,
    in_block: bool,
    left: u32,
    offset: usize,
}

// Offsets in a V3 block descriptor and frame header (linux/if_packet.h).
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST: usize = 16;
const HDR3_SIZE: usize = size_of::<libc::tpacket3_hdr>();
/// sockaddr_ll follows the frame header, aligned; its sll_pkttype byte.
const HDR3_PKTTYPE: usize = HDR3_SIZE.next_multiple_of(libc::TPACKET_ALIGNMENT) + 10;

impl RxRing {
    /// Open a receive ring of `blocks` blocks on the interface.
    pub fn open(ifindex: i32, blocks: usize, promiscuous: bool) -> io::Result<RxRing> {
        let fd = packet_socket()?;
        setsockopt(&fd, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V3 as c_int))?;
        // Frames this host sends out of the interface are not ours to forward
        // (older kernels lack the option; the pkttype check below stays).
        let _ = setsockopt(&fd, libc::PACKET_IGNORE_OUTGOING, &(1 as c_int));
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: RX_BLOCK_SIZE as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame_size,
            tp_frame_nr: (RX_BLOCK_SIZE / frame_size as usize * blocks) as u32,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::PACKET_RX_RING, &req)?;
        let map = Mapping::new(&fd, RX_BLOCK_SIZE * blocks)?;
        bind(&fd, ifindex, libc::ETH_P_ALL as u16)?;
        if promiscuous {
            let mr = libc::packet_mreq {
                mr_ifindex: ifindex,
                mr_type: libc::PACKET_MR_PROMISC as u16,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            // Dropped by the kernel when the socket closes.
            setsockopt(&fd, libc::PACKET_ADD_MEMBERSHIP, &mr)?;
        }
        Ok(RxRing { map, fd, blocks, block: 0, in_block: false, left: 0, offset: 0 })
    }

    fn block_base(&self) -> usize {
        self.block * RX_BLOCK_SIZE
    }

    /// Give the current block back to the kernel and move to the next.
    fn release(&mut self) {
        // SAFETY: the status word is at an aligned offset inside the block.
        unsafe { self.map.word(self.block_base() + BLOCK_STATUS) }.store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.block = (self.block + 1) % self.blocks;
        self.in_block = false;
    }

    /// Whether a block of frames is waiting.
    #[inline]
    pub fn ready(&self) -> bool {
        // SAFETY: the aligned status word of the current block descriptor.
        self.in_block
            || unsafe { self.map.word(self.block_base() + BLOCK_STATUS) }.load(Ordering::Acquire) & libc::TP_STATUS_USER
                != 0
    }

    /// Hand up to `max` frames to `f`, in the order they arrived. Returns
    /// how many were handed over, and how many the ring held in error (an
    /// offset out of its block: the rest of that block is skipped).
    pub fn receive(&mut self, max: usize, mut f: impl FnMut(Frame)) -> (usize, u64) {
        let (mut n, mut errors) = (0, 0);
        while n < max {
            let base = self.block_base();
            if !self.in_block {
                // SAFETY: aligned words of the block descriptor, inside the ring.
                let status = unsafe { self.map.word(base + BLOCK_STATUS) }.load(Ordering::Acquire);
                if status & libc::TP_STATUS_USER == 0 {
                    break;
                }
                // SAFETY: as above; the block is ours until released.
                let (num, first) = unsafe {
                    (
                        self.map.word(base + BLOCK_NUM_PKTS).load(Ordering::Relaxed),
                        self.map.word(base + BLOCK_FIRST).load(Ordering::Relaxed),
                    )
                };
                self.in_block = true;
                self.left = num;
                self.offset = first as usize;
            }
            if self.left == 0 {
                self.release();
                continue;
            }
            let off = self.offset;
            if off < BLOCK_FIRST || off & 3 != 0 || off + HDR3_PKTTYPE + 1 > RX_BLOCK_SIZE {
                errors += 1;
                self.release();
                continue;
            }
            // SAFETY: the header lies inside this block (checked above),
            // which is ours until released; the kernel wrote it before
            // setting the block status we read with Acquire.
            let (h, pkttype) = unsafe {
                let p = self.map.base.as_ptr().add(base + off);
                (std::ptr::read_unaligned(p as *const libc::tpacket3_hdr), *p.add(HDR3_PKTTYPE))
            };
            let (mac, snap) = (h.tp_mac as usize, h.tp_snaplen as usize);
            if off + mac + snap > RX_BLOCK_SIZE || h.tp_next_offset & 3 != 0 {
                errors += 1;
                self.release();
                continue;
            }
            self.left -= 1;
            self.offset = off + h.tp_next_offset as usize;
            if pkttype != libc::PACKET_OUTGOING {
                let vlan = (h.tp_status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
                    let tpid =
                        if h.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { h.hv1.tp_vlan_tpid } else { 0x8100 };
                    (tpid, h.hv1.tp_vlan_tci as u16)
                });
                // SAFETY: the frame lies inside the block (checked above).
                let data = unsafe { std::slice::from_raw_parts(self.map.base.as_ptr().add(base + off + mac), snap) };
                f(Frame { data, len: h.tp_len as usize, status: h.tp_status, vlan });
                n += 1;
            }
            if self.left == 0 {
                self.release();
            }
        }
        (n, errors)
    }

    /// Frames the kernel dropped because the ring was full, since the last call.
    pub fn kernel_drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats_v3 is plain old data.
        let mut st: libc::tpacket_stats_v3 = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: st and len describe a buffer of the size the option fills.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut _ as *mut c_void,
                &mut len,
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(st.tp_drops as u64) }
    }
}

/// What a `send()` on the transmit ring came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// The kernel took what it could; anything left is retried next time.
    Sent,
    /// The interface is down: nothing can go.
    Down,
    /// The interface is gone (deleted): the sockets must be opened again.
    Gone,
    Error(i32),
}

/// The transmit side: a TPACKET_V2 ring on a socket bound to the interface.
pub struct TxRing {
    map: Mapping,
    fd: OwnedFd,
    frame_size: usize,
    frames: usize,
    /// The next slot to fill.
    head: usize,
    /// The oldest slot handed to the kernel and not yet seen taken.
    tail: usize,
    /// Lengths of the frames in slots tail..head.
    lens: Vec<u32>,
}

const TX_STATUS: usize = 0;
const TX_LEN: usize = 4;

impl TxRing {
    /// A transmit ring of about `frames` slots, each big enough for a frame
    /// of `max_frame` bytes.
    pub fn open(ifindex: i32, frames: usize, max_frame: usize, qdisc_bypass: bool) -> io::Result<TxRing> {
        let fd = packet_socket()?;
        setsockopt(&fd, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V2 as c_int))?;
        // A frame the kernel refuses is skipped, not left to block the ring.
        setsockopt(&fd, libc::PACKET_LOSS, &(1 as c_int))?;
        if qdisc_bypass {
            setsockopt(&fd, libc::PACKET_QDISC_BYPASS, &(1 as c_int))?;
        }
        let frame_size = (TX_DATA + max_frame).next_power_of_two();
        let block_size = frame_size.max(64 << 10);
        let blocks = (frames * frame_size).div_ceil(block_size).max(1);
        let frames = blocks * (block_size / frame_size);
        let req = libc::tpacket_req {
            tp_block_size: block_size as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: frames as u32,
        };
        setsockopt(&fd, libc::PACKET_TX_RING, &req)?;
        let map = Mapping::new(&fd, block_size * blocks)?;
        // Protocol 0: this socket only sends.
        bind(&fd, ifindex, 0)?;
        Ok(TxRing { map, fd, frame_size, frames, head: 0, tail: 0, lens: vec![0; frames] })
    }

    /// The largest frame a slot holds.
    pub fn max_frame(&self) -> usize {
        self.frame_size - TX_DATA
    }

    fn status(&self, slot: usize) -> u32 {
        // SAFETY: slots are frame_size apart inside the mapping; the status
        // word is the first, aligned, word of a slot.
        unsafe { self.map.word(slot * self.frame_size + TX_STATUS) }.load(Ordering::Acquire)
    }

    /// Whether the next slot is free. (Slots are freed in order as a rule;
    /// one still in use stops the ring until it is freed.)
    #[inline]
    pub fn head_free(&self) -> bool {
        self.status(self.head) == libc::TP_STATUS_AVAILABLE
    }

    /// Copy a frame into the head slot and mark it for the kernel. False
    /// (and nothing done) when the slot is not free or the frame too long.
    #[inline]
    pub fn put(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.max_frame() || self.status(self.head) != libc::TP_STATUS_AVAILABLE {
            return false;
        }
        let slot = self.head * self.frame_size;
        // SAFETY: the slot is AVAILABLE, so the kernel neither reads nor
        // writes it until we set SEND_REQUEST below; the data fits the slot.
        unsafe {
            let data = self.map.base.as_ptr().add(slot + TX_DATA);
            snabb_core::copy::copy(std::slice::from_raw_parts_mut(data, frame.len()), frame);
            self.map.word(slot + TX_LEN).store(frame.len() as u32, Ordering::Relaxed);
            self.map.word(slot + TX_STATUS).store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        }
        self.lens[self.head] = frame.len() as u32;
        self.head = (self.head + 1) % self.frames;
        true
    }

    /// Frames handed to the kernel and not yet taken.
    pub fn pending(&self) -> bool {
        self.tail != self.head
    }

    /// Ask the kernel to send every ready slot, without waiting.
    pub fn kick(&mut self) -> Kick {
        // SAFETY: a zero-length send on our own socket: the kernel walks the ring.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if r >= 0 {
            return Kick::Sent;
        }
        match io::Error::last_os_error().raw_os_error().unwrap_or(0) {
            libc::EAGAIN | libc::ENOBUFS | libc::EINTR => Kick::Sent,
            libc::ENETDOWN => Kick::Down,
            libc::ENXIO | libc::ENODEV => Kick::Gone,
            e => Kick::Error(e),
        }
    }

    /// Count the frames the kernel has taken since the last call:
    /// (frames, bytes, frames it refused).
    pub fn reclaim(&mut self) -> (u64, u64, u64) {
        let (mut n, mut bytes, mut refused) = (0, 0, 0);
        // The kernel takes slots in ring order; the first still marked
        // SEND_REQUEST is where it stopped.
        loop {
            if self.tail == self.head {
                break;
            }
            match self.status(self.tail) {
                libc::TP_STATUS_SEND_REQUEST => break,
                libc::TP_STATUS_WRONG_FORMAT => {
                    // Not left by PACKET_LOSS; should it happen, the slot is
                    // freed so the ring cannot stall on it.
                    refused += 1;
                    self.set_status(self.tail, libc::TP_STATUS_AVAILABLE);
                }
                _ => {
                    n += 1;
                    bytes += self.lens[self.tail] as u64;
                }
            }
            self.tail = (self.tail + 1) % self.frames;
        }
        (n, bytes, refused)
    }

    fn set_status(&self, slot: usize, status: u32) {
        // SAFETY: as in status(); callers only change slots the kernel is
        // not using (see discard_pending and reclaim).
        unsafe { self.map.word(slot * self.frame_size + TX_STATUS) }.store(status, Ordering::Release);
    }

    /// Take back every frame the kernel has not taken (the interface is
    /// down); returns how many. Call `reclaim` first. The kernel looks at
    /// the ring only inside `send()`, and resumes at the slot where it
    /// stopped, which is `tail`: so the head moves back there too.
    pub fn discard_pending(&mut self) -> u64 {
        let mut n = 0;
        let mut s = self.tail;
        while s != self.head {
            if self.status(s) == libc::TP_STATUS_SEND_REQUEST {
                // Not in the kernel's hands outside send(), and we are not in send().
                self.set_status(s, libc::TP_STATUS_AVAILABLE);
                n += 1;
            }
            s = (s + 1) % self.frames;
        }
        self.head = self.tail;
        n
    }

    /// Slots in the ring.
    pub fn frames(&self) -> usize {
        self.frames
    }
}
