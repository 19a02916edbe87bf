//! SPLIT VIRTQUEUE, DEVICE SIDE
//!
//! One virtqueue as the virtio 1.x spec lays it out ("split" rings): a
//! descriptor table, the driver's avail ring and our used ring, all in guest
//! memory. The guest is untrusted and runs concurrently, so:
//!
//!   * every index and descriptor is read once into a local, then checked;
//!     nothing is read twice and trusted twice;
//!   * every buffer address goes through `GuestMemory::translate_prefix`
//!     (a buffer crossing into an adjacent region is walked in pieces and
//!     counted in `split_buffers`; one reaching outside memory is a bad
//!     descriptor);
//!   * chains are bounded: at most `size` descriptors in the table, at most
//!     MAX_CHAIN descriptors in all (indirect entries included), one level
//!     of indirection, indirect tables a non-zero multiple of 16 bytes;
//!   * a bad chain is a counted drop (its head goes back on the used ring
//!     with length 0); only an avail index that jumps ahead by more than the
//!     ring size, or a head outside the table, stops the queue (`broken`):
//!     then nothing sensible can be said about the ring any more.
//!
//! Memory ordering follows the spec: the avail index is loaded with Acquire
//! before the ring entries and descriptors it covers are read; used entries
//! and buffer bytes are written before the used index is stored with
//! Release; a SeqCst fence separates that store from reading the driver's
//! interrupt suppression (used_event or avail flags), as Linux's vhost does.
//!
//! The used index is stored once per batch (BATCH packets at most: all
//! their buffers gathered, then all their bytes copied), and the caller asks
//! `take_signal` afterwards whether the guest wants an interrupt.
//!
//! Zero copy. A queue can also *lend* chains instead of copying:
//!
//!   * receive: `lend_rx` takes chains off the avail ring whose layout lets a
//!     NIC write a frame straight into them (the data room right after the
//!     net header, in one piece, or in the piece after a header-only one)
//!     and hands each out as a slot; `complete_rx` writes the header and
//!     the used entry once a frame is in it; `return_rx` takes back one that
//!     came back empty (the NIC let it go, its frame was dropped, or the
//!     frame was moved into the buffer before it), to be lent again first.
//!     Chains the NIC could not use (too small, split oddly) are *spares*:
//!     the copy path uses those, then returned ones, before the avail ring.
//!   * transmit: `receive_from_guest` makes a frame of a long enough,
//!     contiguous chain into a split packet (the first SNAPSHOT bytes copied
//!     into host memory, where the guest cannot change them; the rest left
//!     in its buffer), and its used entry waits for `complete_tx`, when the
//!     packet has been sent or dropped. At most `TxLend::bound` chains are
//!     out at once; past that, frames are copied.
//!
//! Lent chains come back in any order, so a queue lends nothing when
//! VIRTIO_F_IN_ORDER was negotiated (the device offers it only when it will
//! not lend).

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use snabb_core::memory::ForeignMemory;
use snabb_core::packet::{self, ForeignBuffer, PartialCsum};
use snabb_core::{BufferOwner, Link, Packet};

use crate::memory::{DirtyLog, GuestMemory};
use crate::virtio::*;

/// SET_VRING_ADDR's payload (frontend virtual addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringAddr {
    /// VHOST_VRING_F_LOG = 1: log used-ring writes at log_guest_addr.
    pub flags: u32,
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
    /// Guest-physical address of the used ring, for the dirty log.
    pub log_guest_addr: u64,
}

/// Entries we take between rewrites of avail_event (see
/// `write_avail_event`): with at most 32768 entries in a ring, the driver's
/// index stays more than 0x4000 short of the stale value.
const AVAIL_EVENT_REFRESH: u16 = 0x2000;
/// How many avail entries ahead of use their descriptors are prefetched.
const PREFETCH_AHEAD: u16 = 16;
/// Packets given buffers together before their bytes are copied, and
/// delivered to a guest between stores of the used index.
const BATCH: usize = 32;
/// How much of a packet's first buffer, past the net header, is fetched
/// for writing while the rest of its batch is gathered.
const PREFETCH_WRITE_BYTES: usize = 128;
/// Bytes of a lent transmit frame copied into host memory: every header a
/// switch decides on (Ethernet, two VLAN tags, IPv6 with options, TCP with
/// options) lies in them, where the guest cannot change them any more.
pub const SNAPSHOT: usize = 128;
/// Transmit frames shorter than this are copied, not lent: a copy of a few
/// hundred bytes costs less than lending and completing a chain.
pub const TX_LEND_MIN: usize = 512;
/// Receive chains sampled to choose the size a queue lends at.
const LEND_SAMPLE: u16 = 16;

/// Most descriptors one chain may have, indirect entries included. Linux
/// guests use at most MAX_SKB_FRAGS + 2 (19); 256 leaves room for any sane
/// driver and bounds the work a hostile one can cause per chain.
pub const MAX_CHAIN: u32 = 256;
/// Most chains one received packet may be merged from (MRG_RXBUF).
pub const MAX_MERGE: usize = 1024;
/// Most buffer pieces one received packet may be scattered over.
pub const MAX_SEGS: usize = 2048;

/// Counters of one queue. Drops are per packet (or per chain where no
/// packet could be made of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets moved (either direction) and their bytes (net header excluded).
    pub packets: u64,
    pub bytes: u64,
    /// Used-ring entries written.
    pub used: u64,
    /// Switch -> guest: times a call stopped with packets waiting because
    /// the guest had no (more) receive buffers. The packets stay on the link.
    pub no_buffer: u64,
    /// Chains dropped: address outside memory, overflowing address + length,
    /// chain too long or looping, bad indirect table, wrong direction.
    pub bad_descriptor: u64,
    /// Guest -> switch: chains shorter than the net header.
    pub too_short: u64,
    /// Guest -> switch: frames larger than a host packet.
    pub too_long: u64,
    /// Switch -> guest: packets dropped because they fit no buffer the
    /// guest offers (one chain without MRG_RXBUF; the whole ring, or
    /// MAX_MERGE chains / MAX_SEGS pieces, with it).
    pub no_room: u64,
    /// Guest -> switch: NEEDS_CSUM with csum_start/csum_offset outside the frame (dropped).
    pub bad_csum: u64,
    /// Partial checksums finished in software: guest -> switch, those a
    /// packet cannot carry on (see `PartialCsum`); switch -> guest, those
    /// for a guest without GUEST_CSUM.
    pub csum_completed: u64,
    /// Buffers that crossed from one memory region into the next.
    pub split_buffers: u64,
    /// The avail index jumped ahead by more than the ring size.
    pub bad_index: u64,
    /// 1 once the queue is stopped (see `Virtqueue::broken`).
    pub broken: u64,
    /// Bytes of frames copied between guest and host memory (both ways).
    pub copied_bytes: u64,
    /// Zero copy: frames delivered in a lent receive buffer, or sent from a
    /// lent transmit buffer (a split packet).
    pub zc_packets: u64,
    /// Zero copy: chains copied into or from, not lent, because their
    /// layout does not suit (receive: data room smaller than the queue
    /// lends at, or split; transmit: frame short, or in several pieces).
    pub zc_unsuitable: u64,
    /// Zero copy, transmit: frames copied because `bound` chains were out.
    pub zc_bound: u64,
    /// Zero copy, receive: bytes header edits moved in lent buffers (a
    /// stripped tunnel header: the used ring has no offset field).
    pub zc_moved_bytes: u64,
    /// Zero copy, receive: lent chains given back with nothing in them
    /// (length 0) when lending stopped along with the ring.
    pub zc_unused: u64,
    /// Zero copy, receive: frames delivered over several lent buffers
    /// (MRG_RXBUF), each later buffer's bytes moved down over the header
    /// room it was lent with (counted in `zc_moved_bytes`).
    pub zc_chained: u64,
}

impl QueueStats {
    /// Counter names and values, for reports and shm.
    pub fn named(&self) -> [(&'static str, u64); 20] {
        [
            ("packets", self.packets),
            ("bytes", self.bytes),
            ("used", self.used),
            ("no_buffer", self.no_buffer),
            ("bad_descriptor", self.bad_descriptor),
            ("too_short", self.too_short),
            ("too_long", self.too_long),
            ("no_room", self.no_room),
            ("bad_csum", self.bad_csum),
            ("csum_completed", self.csum_completed),
            ("split_buffers", self.split_buffers),
            ("bad_index", self.bad_index),
            ("broken", self.broken),
            ("copied_bytes", self.copied_bytes),
            ("zc_packets", self.zc_packets),
            ("zc_unsuitable", self.zc_unsuitable),
            ("zc_bound", self.zc_bound),
            ("zc_moved_bytes", self.zc_moved_bytes),
            ("zc_unused", self.zc_unused),
            ("zc_chained", self.zc_chained),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtqError {
    #[error("queue size {0}: must be a power of two in 1..=32768")]
    BadSize(u16),
    #[error("{ring} ring at uva {addr:#x}: misaligned or not wholly inside guest memory")]
    BadRing { ring: &'static str, addr: u64 },
    #[error("packed rings are not supported")]
    Packed,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainError {
    /// A buffer or indirect table outside guest memory, or addr + len overflows.
    Outside,
    /// More than `size` table descriptors or MAX_CHAIN in all (loops end here).
    TooLong,
    /// `next` beyond the table.
    BadNext,
    /// Nested indirect, INDIRECT with NEXT, indirect not negotiated, bad table length.
    BadIndirect,
    /// A device-writable buffer in a chain for the device to read, or the reverse.
    Direction,
}

/// One piece of a buffer, translated.
#[derive(Clone, Copy, Debug)]
struct Seg {
    ptr: NonNull<u8>,
    gpa: u64,
    len: u32,
}

/// A chain that is out (lent), by slot.
#[derive(Clone, Copy, Debug)]
struct Lent {
    head: u16,
    /// Receive: the chain's first piece (the net header goes at its start).
    hdr: Option<Seg>,
    /// Receive: the piece a frame is written into, from its start.
    data: Option<Seg>,
}

/// A receive buffer a queue lends (see `Virtqueue::lend_rx`).
#[derive(Clone, Copy, Debug)]
pub struct LendRx {
    pub slot: u16,
    /// Where the frame goes, and its guest-physical address.
    pub ptr: NonNull<u8>,
    pub gpa: u64,
    /// Bytes of room there.
    pub cap: u32,
    /// The size the queue lends at (whole KiB; every lent buffer has room
    /// for at least this much).
    pub size: u32,
}

/// What a transmit queue needs to lend (see `Virtqueue::receive_from_guest`).
pub struct TxLend<'a> {
    pub owner: &'a BufferOwner,
    pub device: &'a ForeignMemory,
    /// This queue's index in the device, for the token.
    pub ring: u16,
    /// Chains out at once at most.
    pub bound: usize,
}

/// Where frame byte SNAPSHOT lies, when every byte from there to the end
/// of the frame (`len` bytes from piece `i` at `off`) is in that one piece.
fn tail_piece(segs: &[Seg], i: usize, off: usize, len: usize) -> Option<NonNull<u8>> {
    let mut at = 0usize; // frame offset of the current piece's first byte used
    let mut off = off;
    for s in &segs[i..] {
        let n = s.len as usize - off;
        if at + n > SNAPSHOT {
            let k = off + (SNAPSHOT - at);
            // The rest of the frame must end in this piece.
            return (at + n == len)
                // SAFETY: k < s.len: inside the translated piece.
                .then(|| unsafe { NonNull::new_unchecked(s.ptr.as_ptr().add(k)) });
        }
        at += n;
        off = 0;
    }
    None
}

/// A lent buffer's token: its queue and slot.
pub fn token(ring: u16, slot: u16) -> u64 {
    (ring as u64) << 16 | slot as u64
}
/// The queue and slot of a token.
pub fn untoken(t: u64) -> (u16, u16) {
    ((t >> 16) as u16, t as u16)
}

/// A descriptor as read from guest memory (little-endian on the wire).
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Read descriptor `i` of the table at `table`.
///
/// # Safety
/// `table` must point to at least `i + 1` descriptors of mapped memory.
#[inline(always)]
unsafe fn read_desc(table: *const u8, i: u32) -> Desc {
    let p = table.wrapping_add(i as usize * DESC_SIZE);
    // Volatile because the guest may be writing: we take one snapshot and
    // check only that. The ring's table is 16-aligned (start checks it);
    // an indirect table may be anywhere, so it is read byte by byte.
    if (p as usize).is_multiple_of(8) {
        // SAFETY: per the contract, and 8-aligned.
        let w: [u64; 2] = unsafe { std::ptr::read_volatile(p as *const [u64; 2]) };
        // Fields taken from the two words by shifts: going through a byte
        // array cost some sixty instructions a descriptor.
        let v = u64::from_le(w[1]);
        return Desc { addr: u64::from_le(w[0]), len: v as u32, flags: (v >> 32) as u16, next: (v >> 48) as u16 };
    }
    // SAFETY: per the contract; a byte array has alignment 1.
    let b: [u8; 16] = unsafe { std::ptr::read_volatile(p as *const [u8; 16]) };
    Desc {
        addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
    }
}

/// Prefetch hints (reading; writing, with PREFETCHW where the CPU has it):
/// core's, named here too for the crates that gather from rings.
pub use snabb_core::packet::{prefetch, prefetch_write};

/// Host pointers of a started ring (checked once, in `start`).
#[derive(Clone, Copy)]
struct Ring {
    desc: *const u8,
    /// avail: flags u16, idx u16, ring[size] u16, used_event u16.
    avail: *const u8,
    /// used: flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16.
    used: *mut u8,
    size: u16,
    indirect: bool,
}

impl Ring {
    #[inline(always)]
    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: avail is 2-aligned and holds at least 4 bytes (start).
        unsafe { &*(self.avail.add(2) as *const AtomicU16) }
    }
    #[inline(always)]
    fn avail_flags(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*(self.avail as *const AtomicU16) }
    }
    #[inline(always)]
    fn avail_entry(&self, i: u16) -> u16 {
        let at = 4 + 2 * (i & (self.size - 1)) as usize;
        // SAFETY: at + 2 <= 4 + 2 * size: inside the avail ring; 2-aligned.
        u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(at) as *const u16) })
    }
    /// Start fetching the descriptor that avail entry `i` names (masked
    /// into the table: a bad head is caught when the entry is used).
    #[inline(always)]
    fn prefetch_desc(&self, i: u16) {
        let head = self.avail_entry(i) & (self.size - 1);
        // SAFETY: head < size: inside the descriptor table.
        prefetch(unsafe { self.desc.add(head as usize * DESC_SIZE) });
    }
    /// used_event, at the end of the avail ring (EVENT_IDX only).
    #[inline(always)]
    fn used_event(&self) -> &AtomicU16 {
        // SAFETY: start checked 6 + 2 * size bytes with EVENT_IDX, 2-aligned.
        unsafe { &*(self.avail.add(4 + 2 * self.size as usize) as *const AtomicU16) }
    }
    #[inline(always)]
    fn used_flags(&self) -> &AtomicU16 {
        // SAFETY: used is 4-aligned and holds at least 4 bytes.
        unsafe { &*(self.used as *const AtomicU16) }
    }
    #[inline(always)]
    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*(self.used.add(2) as *const AtomicU16) }
    }
    /// avail_event, at the end of the used ring (EVENT_IDX only).
    #[inline(always)]
    fn avail_event(&self) -> &AtomicU16 {
        // SAFETY: start checked 6 + 8 * size bytes with EVENT_IDX, 2-aligned.
        unsafe { &*(self.used.add(4 + 8 * self.size as usize) as *const AtomicU16) }
    }
    /// Byte offset of used element `i` (for the dirty log).
    #[inline(always)]
    fn used_elem_offset(&self, i: u16) -> usize {
        4 + 8 * (i & (self.size - 1)) as usize
    }
    /// Store used element `i`, unless it already holds these values: a ring
    /// used in order comes round to the same (id, len) lap after lap, and a
    /// line left unwritten stays in the driver's cache. True when stored.
    #[inline(always)]
    fn write_used_elem(&self, i: u16, id: u32, len: u32) -> bool {
        let at = self.used_elem_offset(i);
        let elem = (id.to_le() as u64) | ((len.to_le() as u64) << 32);
        // SAFETY: at + 8 <= 4 + 8 * size: inside the used ring; 4-aligned
        // (read as two u32: 8-byte alignment is not promised). The driver
        // does not write the used ring; if it does, it garbles its own view.
        unsafe {
            let p = self.used.add(at) as *mut u32;
            let now = std::ptr::read_volatile(p) as u64 | (std::ptr::read_volatile(p.add(1)) as u64) << 32;
            if now == elem {
                return false;
            }
            std::ptr::write_volatile(p, id.to_le());
            std::ptr::write_volatile(p.add(1), len.to_le());
        }
        true
    }

    /// The chain at `head` (< size) when it is what drivers nearly always
    /// post: one descriptor of direction `write`, no NEXT or INDIRECT, of
    /// at least `min` bytes, wholly inside one memory region. None for
    /// anything else, which `walk` then takes piece by piece (and judges).
    #[inline(always)]
    fn single(&self, mem: &GuestMemory, head: u16, write: bool, min: u64) -> Option<Seg> {
        // SAFETY: head < size (the caller checked): inside the table.
        let d = unsafe { read_desc(self.desc, head as u32) };
        let len = d.len as u64;
        let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
        if d.flags != flags || len < min.max(1) {
            return None;
        }
        let (ptr, n) = mem.translate_prefix(d.addr, len)?;
        (n == len).then_some(Seg { ptr, gpa: d.addr, len: d.len })
    }

    /// Walk the chain at `head`, handing `f` each piece of each buffer in
    /// order; `f` returns false to stop early. `write` is the direction the
    /// buffers must have (device-writable for receive buffers).
    #[inline(always)]
    fn walk(
        &self,
        mem: &GuestMemory,
        head: u16,
        write: bool,
        splits: &mut u64,
        f: &mut impl FnMut(Seg) -> bool,
    ) -> Result<(), ChainError> {
        let mut table = self.desc;
        let mut table_len = self.size as u32;
        let mut i = head as u32;
        let mut in_table = 0u32; // descriptors read from the current table
        let mut total = 0u32;
        let mut indirect = false;
        loop {
            total += 1;
            in_table += 1;
            if total > MAX_CHAIN || in_table > table_len {
                return Err(ChainError::TooLong);
            }
            // SAFETY: i < table_len: the ring's table (checked in start) or
            // an indirect table translated below with table_len entries.
            let d = unsafe { read_desc(table, i) };
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if indirect || !self.indirect || d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(ChainError::BadIndirect);
                }
                if d.len == 0 || d.len % DESC_SIZE as u32 != 0 {
                    return Err(ChainError::BadIndirect);
                }
                let n = d.len / DESC_SIZE as u32;
                if n > MAX_CHAIN {
                    return Err(ChainError::TooLong);
                }
                let t = mem.translate(d.addr, d.len as usize).ok_or(ChainError::Outside)?;
                table = t.as_ptr();
                table_len = n;
                i = 0;
                in_table = 0;
                indirect = true;
                continue;
            }
            if (d.flags & VIRTQ_DESC_F_WRITE != 0) != write {
                return Err(ChainError::Direction);
            }
            let mut addr = d.addr;
            let mut left = d.len as u64;
            if addr.checked_add(left).is_none() {
                return Err(ChainError::Outside);
            }
            let mut first = true;
            while left > 0 {
                let (ptr, n) = mem.translate_prefix(addr, left).ok_or(ChainError::Outside)?;
                if first && n < left {
                    *splits += 1;
                }
                first = false;
                if !f(Seg { ptr, gpa: addr, len: n as u32 }) {
                    return Ok(());
                }
                addr += n;
                left -= n;
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next as u32 >= table_len {
                return Err(ChainError::BadNext);
            }
            i = d.next as u32;
        }
    }
}

/// A chain gathered for a received packet: its head and its room (its
/// pieces are in `Virtqueue::segs`, in order), and whether it is a spare.
#[derive(Clone, Copy)]
struct Gathered {
    head: u16,
    cap: u32,
    spare: bool,
}

/// A packet given its buffers, waiting for its bytes to be copied: its
/// pieces are `Virtqueue::segs[segs.0..segs.1]`, merged from `chains` chains.
struct Reserved {
    p: Packet,
    segs: (u32, u32),
    chains: u16,
}

/// How gathering buffers for one packet ended.
enum Gather {
    Fits,
    /// The avail ring is empty: wait for the guest.
    Empty,
    /// The packet can never fit: drop it (chains stay for the next one).
    NoRoom,
    /// A bad chain after good ones, with too little room before it: give
    /// all of them back empty and drop the packet.
    Bad,
}

pub struct Virtqueue {
    ring: Ring,
    addr: VringAddr,
    /// GuestMemory::id the ring pointers were translated against.
    mem_id: u64,
    features: u64,
    hdr_len: usize,
    mrg_rxbuf: bool,
    /// The driver takes packets with a partial checksum (GUEST_CSUM).
    guest_csum: bool,
    event_idx: bool,
    /// Guest-physical address of the used ring when its writes are logged.
    log_used: Option<u64>,
    /// Next avail entry to read (last_avail_idx).
    next_avail: u16,
    /// Our used index, stored to the ring by `publish`.
    next_used: u16,
    published: u16,
    /// Used index at the last interrupt decision (EVENT_IDX's "old").
    signalled: u16,
    signalled_valid: bool,
    kicks_suppressed: bool,
    /// Used entries not yet written to the ring (see `push_used`).
    shadow: Vec<(u16, u32)>,
    /// Where `next_avail` was when avail_event was last written.
    avail_event_at: Option<u16>,
    /// Scratch for gathering receive buffers for a batch: allocated once,
    /// room for MAX_SEGS / MAX_MERGE more past the batch's first half.
    segs: Vec<Seg>,
    chains: Vec<Gathered>,
    /// The batch being delivered (at most BATCH).
    batch: Vec<Reserved>,
    stats: QueueStats,
    broken: Option<&'static str>,
    /// Avail entries up to here have had their descriptors prefetched.
    prefetched: u16,
    /// Chains out, by slot (receive buffers lent to a NIC, transmit buffers
    /// as packet tails), and the free slots.
    lent: Vec<Option<Lent>>,
    free_slots: Vec<u16>,
    /// Receive chains taken off the avail ring and not used: ones not fit
    /// to lend (`spare`) and lent ones that came back empty (`returned`,
    /// lent again first). The copy path fills spares, then returned ones.
    spare: VecDeque<u16>,
    returned: VecDeque<u16>,
    /// The data room (whole KiB) receive buffers are lent with; 0 until
    /// chosen from the first chains the guest posts.
    lend_size: u32,
}

// SAFETY: the raw pointers point into guest memory whose owner (the
// GuestMemory, checked by id on every call) is passed in by reference;
// nothing here is tied to a thread.
unsafe impl Send for Virtqueue {}

impl std::fmt::Debug for Virtqueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virtqueue")
            .field("size", &self.ring.size)
            .field("next_avail", &self.next_avail)
            .field("used_idx", &self.published)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Translate one ring: aligned both as a frontend address and as a host pointer.
fn ring_ptr(mem: &GuestMemory, ring: &'static str, uva: u64, len: usize, align: usize) -> Result<*mut u8, VirtqError> {
    let bad = VirtqError::BadRing { ring, addr: uva };
    if !uva.is_multiple_of(align as u64) {
        return Err(bad);
    }
    let p = mem.translate_uva(uva, len).ok_or(bad)?;
    if !(p.as_ptr() as usize).is_multiple_of(align) {
        return Err(VirtqError::BadRing { ring, addr: uva });
    }
    Ok(p.as_ptr())
}

fn translate_ring(size: u16, addr: &VringAddr, features: u64, mem: &GuestMemory) -> Result<Ring, VirtqError> {
    let n = size as usize;
    let event = has(features, VIRTIO_RING_F_EVENT_IDX) as usize;
    let desc = ring_ptr(mem, "descriptor", addr.desc_user_addr, n * DESC_SIZE, 16)?;
    let avail = ring_ptr(mem, "avail", addr.avail_user_addr, 4 + 2 * n + 2 * event, 2)?;
    let used = ring_ptr(mem, "used", addr.used_user_addr, 4 + 8 * n + 2 * event, 4)?;
    Ok(Ring { desc, avail, used, size, indirect: has(features, VIRTIO_RING_F_INDIRECT_DESC) })
}

impl Virtqueue {
    /// Validate and start: size a power of two <= 32768; rings aligned
    /// (desc 16, avail 2, used 4) and wholly inside `mem` (translated once
    /// here). `base` is the next avail index to read; the used index is
    /// read from the ring. `features` are the negotiated virtio features.
    pub fn start(
        size: u16,
        addr: &VringAddr,
        base: u16,
        features: u64,
        mem: &GuestMemory,
    ) -> Result<Virtqueue, VirtqError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(VirtqError::BadSize(size));
        }
        if has(features, VIRTIO_F_RING_PACKED) {
            return Err(VirtqError::Packed);
        }
        let ring = translate_ring(size, addr, features, mem)?;
        let used_idx = ring.used_idx().load(Ordering::Acquire);
        Ok(Virtqueue {
            ring,
            addr: *addr,
            mem_id: mem.id(),
            features,
            hdr_len: net_hdr_len(features),
            mrg_rxbuf: has(features, VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(features, VIRTIO_NET_F_GUEST_CSUM),
            event_idx: has(features, VIRTIO_RING_F_EVENT_IDX),
            log_used: (addr.flags & VHOST_VRING_F_LOG != 0).then_some(addr.log_guest_addr),
            next_avail: base,
            next_used: used_idx,
            published: used_idx,
            signalled: used_idx,
            signalled_valid: false,
            kicks_suppressed: false,
            avail_event_at: None,
            shadow: Vec::with_capacity(size as usize),
            segs: Vec::with_capacity(2 * MAX_SEGS),
            chains: Vec::with_capacity(2 * MAX_MERGE),
            batch: Vec::with_capacity(BATCH),
            stats: QueueStats::default(),
            broken: None,
            prefetched: base,
            lent: vec![None; size as usize],
            free_slots: (0..size).rev().collect(),
            spare: VecDeque::new(),
            returned: VecDeque::new(),
            lend_size: 0,
        })
    }

    /// Translate the rings again against new memory (SET_MEM_TABLE while
    /// the queue runs, as QEMU does on memory hotplug). The data-path calls
    /// do this by themselves when handed a different GuestMemory.
    pub fn remap(&mut self, mem: &GuestMemory) -> Result<(), VirtqError> {
        self.ring = translate_ring(self.ring.size, &self.addr, self.features, mem)?;
        self.mem_id = mem.id();
        Ok(())
    }

    pub fn size(&self) -> u16 {
        self.ring.size
    }
    /// GET_VRING_BASE's answer: the next avail index this queue would read.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }
    /// The used index as last stored to the ring.
    pub fn used_idx(&self) -> u16 {
        self.published
    }
    /// Some(reason) once the guest did something that makes no sense.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }
    /// The net header length in use (10 or 12).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    #[cold]
    fn break_queue(&mut self, why: &'static str) {
        if self.broken.is_none() {
            log::warn!("vhost-user: virtqueue stopped: {why}");
            self.broken = Some(why);
            self.stats.broken = 1;
        }
    }

    #[cold]
    fn count_bad(&mut self, e: ChainError) {
        if self.stats.bad_descriptor == 0 {
            log::warn!("vhost-user: guest gave a bad descriptor chain ({e:?}); dropping such chains and counting them");
        }
        self.stats.bad_descriptor += 1;
    }

    /// Ready for a data-path call with `mem`: not broken, rings translated against it.
    #[inline]
    fn ready(&mut self, mem: &GuestMemory) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if mem.id() != self.mem_id && self.remap(mem).is_err() {
            self.break_queue("rings not inside the new guest memory");
            return false;
        }
        true
    }

    /// The avail index, Acquire, checked against our position.
    #[inline]
    fn avail_idx(&mut self) -> Option<u16> {
        let idx = self.ring.avail_idx().load(Ordering::Acquire);
        if idx.wrapping_sub(self.next_avail) > self.ring.size {
            self.stats.bad_index += 1;
            self.break_queue("avail index ahead of the device by more than the ring size");
            return None;
        }
        Some(idx)
    }

    /// The avail entry at `i`, checked: a head outside the table stops the queue.
    #[inline]
    fn head_at(&mut self, i: u16) -> Option<u16> {
        let head = self.ring.avail_entry(i);
        if head >= self.ring.size {
            self.stats.bad_descriptor += 1;
            self.break_queue("avail ring names a descriptor beyond the table");
            return None;
        }
        Some(head)
    }

    /// Note a chain as used. The entries are written to the ring together in
    /// `publish`, not one by one between packet copies: the driver may still
    /// be reading the previous batch's entries in the same cache line.
    #[inline]
    fn push_used(&mut self, log: Option<&DirtyLog>, head: u16, len: u32) {
        if self.shadow.len() == self.shadow.capacity() {
            self.flush_used(log);
        }
        self.shadow.push((head, len));
        self.stats.used += 1;
    }

    fn flush_used(&mut self, log: Option<&DirtyLog>) {
        for &(head, len) in &self.shadow {
            let i = self.next_used;
            let stored = self.ring.write_used_elem(i, head as u32, len);
            if let (true, Some(log), Some(gpa)) = (stored, log, self.log_used) {
                log.mark(gpa + self.ring.used_elem_offset(i) as u64, 8);
            }
            self.next_used = i.wrapping_add(1);
        }
        self.shadow.clear();
    }

    /// Store the used index (Release: the entries and buffers before it are visible first).
    #[inline]
    fn publish(&mut self, log: Option<&DirtyLog>) {
        self.flush_used(log);
        if self.kicks_suppressed {
            self.write_avail_event(log);
        }
        if self.next_used == self.published {
            return;
        }
        self.ring.used_idx().store(self.next_used, Ordering::Release);
        self.published = self.next_used;
        if let (Some(log), Some(gpa)) = (log, self.log_used) {
            log.mark(gpa + 2, 2);
        }
    }

    /// With EVENT_IDX the driver kicks when its avail index passes
    /// avail_event; one behind our position is as far away as it can be.
    /// The driver reads that word on every refill, so it is written again
    /// only after AVAIL_EVENT_REFRESH entries, not on every call: the
    /// driver's index stays within `size` of ours and cannot reach the
    /// stale value in between (a stray kick would cost it a wakeup, nothing
    /// more: we poll).
    #[inline]
    fn write_avail_event(&mut self, log: Option<&DirtyLog>) {
        if !self.event_idx {
            return;
        }
        if let Some(at) = self.avail_event_at
            && self.next_avail.wrapping_sub(at) < AVAIL_EVENT_REFRESH
        {
            return;
        }
        self.avail_event_at = Some(self.next_avail);
        self.ring.avail_event().store(self.next_avail.wrapping_sub(1), Ordering::Relaxed);
        if let (Some(log), Some(gpa)) = (log, self.log_used) {
            log.mark(gpa + 4 + 8 * self.ring.size as u64, 2);
        }
    }

    /// Guest -> switch (a guest TX queue). Take up to `max` chains, copy each
    /// frame (after the net header) into a fresh host packet, completing a
    /// partial checksum when the header asks for it, hand it to `out`, and
    /// put the chain on the used ring. Returns the chains taken.
    ///
    /// With `lend`, a frame of at least TX_LEND_MIN bytes in one piece of
    /// memory the devices reach is not copied: it goes out as a split
    /// packet (SNAPSHOT bytes copied, the rest lent), and its chain waits
    /// for `complete_tx`.
    pub fn receive_from_guest(
        &mut self,
        mem: &GuestMemory,
        log: Option<&DirtyLog>,
        max: usize,
        mut lend: Option<&TxLend<'_>>,
        mut out: impl FnMut(Packet),
    ) -> usize {
        if !self.ready(mem) {
            return 0;
        }
        let Some(avail) = self.avail_idx() else { return 0 };
        let n = (avail.wrapping_sub(self.next_avail) as usize).min(max);
        let ring = self.ring;
        let mut taken = 0;
        if lend.is_some() && self.mrg_in_order() {
            lend = None;
        }
        // Fresh packets for the batch, from the freelist in one go.
        let mut alloc = packet::Allocator::new(n);
        while taken < n {
            let Some(head) = self.head_at(self.next_avail) else { break };
            self.next_avail = self.next_avail.wrapping_add(1);
            taken += 1;

            // The chain's pieces, then the header out of them (read once).
            let mut segs = std::mem::take(&mut self.segs);
            segs.clear();
            let mut total = 0u64;
            let r = if let Some(s) = ring.single(mem, head, false, 0) {
                total = s.len as u64;
                segs.push(s);
                Ok(())
            } else {
                ring.walk(mem, head, false, &mut self.stats.split_buffers, &mut |s| {
                    // A looping chain ends as TooLong in walk; past MAX_SEGS
                    // pieces, or a frame longer than a packet, it is dropped.
                    total += s.len as u64;
                    if segs.len() < MAX_SEGS {
                        segs.push(s);
                    }
                    true
                })
            };
            let complete = segs.len() < MAX_SEGS;
            let res = self.frame_from_chain(&segs, total, r, complete, head, &mut alloc, lend);
            self.segs = segs;
            match res {
                Ok((p, lent)) => {
                    if !lent {
                        self.push_used(log, head, 0);
                    }
                    out(p);
                }
                // A lent chain dropped here comes back through the return ring.
                Err(lent) => {
                    if !lent {
                        self.push_used(log, head, 0);
                    }
                }
            }
        }
        self.publish(log);
        taken
    }

    /// VIRTIO_F_IN_ORDER was negotiated: chains must be used in order, so
    /// none may be lent (lent ones come back in any order).
    #[inline]
    fn mrg_in_order(&self) -> bool {
        has(self.features, VIRTIO_F_IN_ORDER)
    }

    /// Make a packet of a transmit chain's pieces: a copy, or a split
    /// packet lending the frame's tail (then `Ok((p, true))`: the chain is
    /// out until `complete_tx`). Err: the frame was dropped (counted);
    /// `Err(true)` when it was lent all the same (its chain comes back
    /// through the return ring).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn frame_from_chain(
        &mut self,
        segs: &[Seg],
        total: u64,
        walked: Result<(), ChainError>,
        complete: bool,
        head: u16,
        alloc: &mut packet::Allocator,
        lend: Option<&TxLend<'_>>,
    ) -> Result<(Packet, bool), bool> {
        let hdr_len = self.hdr_len;
        if let Err(e) = walked {
            self.count_bad(e);
            return Err(false);
        }
        if !complete {
            self.count_bad(ChainError::TooLong);
            return Err(false);
        }
        if total < hdr_len as u64 {
            self.stats.too_short += 1;
            return Err(false);
        }
        let frame_len = total - hdr_len as u64;
        if frame_len > packet::PAYLOAD_SIZE as u64 {
            self.stats.too_long += 1;
            return Err(false);
        }
        let frame_len = frame_len as usize;
        // The header: the first hdr_len bytes, wherever they lie.
        let mut hdr = [0u8; NetHdr::MAX_LEN];
        let (mut got, mut i, mut off) = (0usize, 0usize, 0usize);
        let mut words = None;
        if let Some(s) = segs.first()
            && s.len as usize > hdr_len
        {
            // The usual layout: the header and the frame's start in the
            // first piece. Read as two words (see NetHdr::from_words).
            // SAFETY: s.ptr is valid for s.len > hdr_len bytes (translated),
            // hdr_len is 10 or 12; each byte is read once, and any value is
            // valid.
            words = Some(unsafe {
                let head = s.ptr.as_ptr().cast::<u64>().read_unaligned();
                let tail = if hdr_len == 12 {
                    u32::from_le(s.ptr.as_ptr().add(8).cast::<u32>().read_unaligned())
                } else {
                    u16::from_le(s.ptr.as_ptr().add(8).cast::<u16>().read_unaligned()) as u32
                };
                (u64::from_le(head), tail)
            });
            (got, off) = (hdr_len, hdr_len);
        }
        while got < hdr_len {
            let s = segs[i];
            let k = (hdr_len - got).min(s.len as usize);
            // SAFETY: s.ptr is valid for s.len bytes (translated); each byte
            // is read once, and any value is a valid u8.
            let b = unsafe { std::slice::from_raw_parts(s.ptr.as_ptr(), k) };
            hdr[got..got + k].copy_from_slice(b);
            got += k;
            if k == s.len as usize {
                i += 1;
                off = 0;
            } else {
                off = k;
            }
        }
        // Bytes past hdr_len are still 0 (num_buffers 0 in the short form):
        // parsed as a whole array, without a length to check at run time.
        let h = match words {
            Some((head, tail)) => NetHdr::from_words(head, tail),
            None => NetHdr::parse(&hdr),
        };
        // Where the frame lies: pieces from segs[i] at `off`.
        // The tail that could be lent: from frame byte SNAPSHOT to the end,
        // if it lies in one piece (Linux puts a frame's headers in the
        // first descriptor and its payload in the next ones).
        let tail = if frame_len >= TX_LEND_MIN { tail_piece(segs, i, off, frame_len) } else { None };
        let mut lent = false;
        let mut p = match lend {
            Some(l) if tail.is_some() => {
                let at = tail.expect("checked");
                match self.lend_tx(l, head, (segs, i, off), at, frame_len, alloc) {
                    Some(p) => {
                        lent = true;
                        p
                    }
                    None => self.copy_frame(segs, i, off, frame_len, alloc),
                }
            }
            Some(_) => {
                self.stats.zc_unsuitable += 1;
                self.copy_frame(segs, i, off, frame_len, alloc)
            }
            None => self.copy_frame(segs, i, off, frame_len, alloc),
        };
        if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            if h.csum_start as usize + h.csum_offset as usize + 2 > p.len() {
                self.stats.bad_csum += 1;
                return Err(lent);
            }
            // The request travels with the packet (a guest that accepts
            // partial checksums gets it as it is); one the packet cannot
            // carry is finished here.
            let c = PartialCsum { start: h.csum_start, offset: h.csum_offset };
            if !p.set_partial_csum(Some(c)) {
                complete_checksum(p.data_mut(), c.start, c.offset);
                self.stats.csum_completed += 1;
            }
        }
        self.stats.packets += 1;
        self.stats.bytes += p.len() as u64;
        Ok((p, lent))
    }

    /// Copy a frame (from piece `i` at `off`) into a fresh host packet.
    #[inline(always)]
    fn copy_frame(&mut self, segs: &[Seg], i: usize, off: usize, len: usize, alloc: &mut packet::Allocator) -> Packet {
        self.stats.copied_bytes += len as u64;
        if let Some(s) = segs.get(i)
            && s.len as usize - off == len
        {
            // The usual layout: the frame in one piece, copied at once.
            // SAFETY: s.ptr is valid for s.len = off + len bytes
            // (translated); each byte is read once, into our packet.
            return alloc.from_bytes(unsafe { std::slice::from_raw_parts(s.ptr.as_ptr().add(off), len) });
        }
        let mut p = alloc.allocate();
        let mut off = off;
        for s in &segs[i..] {
            let n = s.len as usize - off;
            if n > 0 {
                // SAFETY: s.ptr is valid for s.len bytes (translated); the
                // guest may change them meanwhile: each byte is read once,
                // into our packet.
                p.append(unsafe { std::slice::from_raw_parts(s.ptr.as_ptr().add(off), n) });
            }
            off = 0;
        }
        debug_assert_eq!(p.len(), len);
        p
    }

    /// Lend a transmit frame of `len` bytes at `at` as a split packet, or
    /// None (bound reached, unreachable memory, no slot).
    #[inline]
    /// `frame` says where the frame starts (pieces from `segs[i]` at
    /// `off`), `tail` where its byte SNAPSHOT is (the rest lies there).
    #[allow(clippy::type_complexity)]
    fn lend_tx(
        &mut self,
        l: &TxLend<'_>,
        head: u16,
        frame: (&[Seg], usize, usize),
        tail: NonNull<u8>,
        len: usize,
        alloc: &mut packet::Allocator,
    ) -> Option<Packet> {
        let tail_len = len - SNAPSHOT;
        if self.lent_count() >= l.bound {
            self.stats.zc_bound += 1;
            return None;
        }
        let Some(dma) = l.device.dma(tail.as_ptr() as usize, tail_len) else {
            self.stats.zc_unsuitable += 1;
            return None;
        };
        let slot = self.free_slots.pop()?;
        self.lent[slot as usize] = Some(Lent { head, hdr: None, data: None });
        // The snapshot: the frame's first SNAPSHOT bytes, read once, ours
        // from then on.
        let (segs, i, mut off) = frame;
        let mut h = alloc.allocate();
        for s in &segs[i..] {
            let n = (s.len as usize - off).min(SNAPSHOT - h.len());
            // SAFETY: off + n <= s.len: inside the translated piece.
            h.append(unsafe { std::slice::from_raw_parts(s.ptr.as_ptr().add(off), n) });
            off = 0;
            if h.len() == SNAPSHOT {
                break;
            }
        }
        self.stats.copied_bytes += SNAPSHOT as u64;
        self.stats.zc_packets += 1;
        let tail = ForeignBuffer {
            base: tail,
            cap: tail_len as u32,
            dma,
            start: 0,
            len: tail_len as u32,
            token: token(l.ring, slot),
            fixed_start: false,
        };
        // SAFETY: the tail lies in guest memory that the owner's keep-alive
        // object (the mapping) holds until the token is back.
        Some(unsafe { l.owner.wrap_tail(h, tail) })
    }

    /// A lent transmit chain is back (its packet was sent or dropped): its
    /// used entry goes on the ring (published with the next batch, or by
    /// `publish_now`).
    pub fn complete_tx(&mut self, log: Option<&DirtyLog>, slot: u16) -> bool {
        let Some(l) = self.lent.get_mut(slot as usize).and_then(Option::take) else { return false };
        self.free_slots.push(slot);
        if self.broken.is_none() {
            self.push_used(log, l.head, 0);
        }
        true
    }

    /// Chains out now (lent, not back).
    pub fn lent_count(&self) -> usize {
        self.lent.len() - self.free_slots.len()
    }
    /// Receive chains taken and not used, waiting for the copy path.
    pub fn spare_count(&self) -> usize {
        self.spare.len() + self.returned.len()
    }

    /// Spare chain `i` of the copy path's order (spares, then returned).
    #[inline]
    fn spare_at(&self, i: usize) -> u16 {
        if i < self.spare.len() { self.spare[i] } else { self.returned[i - self.spare.len()] }
    }
    #[inline]
    fn spare_remove(&mut self, i: usize) {
        if i < self.spare.len() {
            self.spare.remove(i);
        } else {
            self.returned.remove(i - self.spare.len());
        }
    }
    /// The first `k` of the copy path's spare chains were used.
    #[inline]
    fn spare_drain(&mut self, k: usize) {
        let a = k.min(self.spare.len());
        self.spare.drain(..a);
        self.returned.drain(..k - a);
    }

    /// Store the used entries noted so far and the used index.
    pub fn publish_now(&mut self, log: Option<&DirtyLog>) {
        self.publish(log);
    }

    /// The data room receive buffers are lent with (whole KiB; 0 until the
    /// first `lend_rx` chose it).
    pub fn lend_size(&self) -> u32 {
        self.lend_size
    }

    /// Receive (a guest RX queue): take chains off the avail ring to lend,
    /// up to `max`, leaving at least `reserve` of the ring's chains to the
    /// copy path. Each lendable chain is offered to `offer`, which lends it
    /// (true) or not (false: the chain becomes a spare and lending stops
    /// for now). A chain whose layout does not suit is a spare at once
    /// (counted in `zc_unsuitable`). Returns the chains lent.
    ///
    /// A chain suits when a frame of `lend_size` bytes can be written into
    /// one piece of it at once, where virtio wants the frame: right after
    /// the net header in the first piece, or from the start of the second
    /// piece when the first holds the header alone (Linux's "big" layout).
    /// The size is the smallest data room among the first chains the guest
    /// posts, in whole KiB (the NIC's SRRCTL.BSIZEPACKET unit).
    pub fn lend_rx(
        &mut self,
        mem: &GuestMemory,
        log: Option<&DirtyLog>,
        max: usize,
        reserve: usize,
        mut offer: impl FnMut(LendRx) -> bool,
    ) -> usize {
        if !self.ready(mem) || self.mrg_in_order() {
            return 0;
        }
        let Some(mut avail) = self.avail_idx() else { return 0 };
        if self.lend_size == 0 {
            self.lend_size = self.sample_lend_size(mem, avail);
            if self.lend_size == 0 {
                return 0;
            }
        }
        let limit = (self.ring.size as usize).saturating_sub(reserve.max(1));
        let mut lent = 0;
        while lent < max && self.lent_count() < limit {
            // Chains that came back empty go out again first.
            let head = if let Some(h) = self.returned.pop_front() {
                h
            } else {
                if self.next_avail == avail {
                    match self.avail_idx() {
                        Some(a) if a != self.next_avail => avail = a,
                        _ => break,
                    }
                }
                let Some(head) = self.head_at(self.next_avail) else { break };
                self.next_avail = self.next_avail.wrapping_add(1);
                head
            };
            let (first, data) = match self.rx_layout(mem, head) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    self.stats.zc_unsuitable += 1;
                    self.spare.push_back(head);
                    continue;
                }
                Err(e) => {
                    self.count_bad(e);
                    self.push_used(log, head, 0);
                    continue;
                }
            };
            let Some(slot) = self.free_slots.pop() else {
                self.spare.push_back(head);
                break;
            };
            self.lent[slot as usize] = Some(Lent { head, hdr: Some(first), data: Some(data) });
            if !offer(LendRx { slot, ptr: data.ptr, gpa: data.gpa, cap: data.len, size: self.lend_size }) {
                self.lent[slot as usize] = None;
                self.free_slots.push(slot);
                self.spare.push_back(head);
                break;
            }
            lent += 1;
        }
        self.publish(log);
        lent
    }

    /// The first piece of the chain at `head`, and the piece a frame would
    /// go into, when the chain suits lending (see `lend_rx`). Inlined: a
    /// call returns the two pieces through memory, and lend_rx's reading
    /// them back in other widths stalls on store forwarding.
    #[inline(always)]
    fn rx_layout(&mut self, mem: &GuestMemory, head: u16) -> Result<Option<(Seg, Seg)>, ChainError> {
        let mut pieces: [Option<Seg>; 2] = [None, None];
        let mut n = 0;
        self.ring.walk(mem, head, true, &mut self.stats.split_buffers, &mut |s| {
            pieces[n] = Some(s);
            n += 1;
            n < 2
        })?;
        let hdr_len = self.hdr_len as u32;
        let need = self.lend_size;
        Ok(match pieces {
            [Some(f), _] if f.len >= hdr_len + need => {
                // SAFETY: hdr_len < f.len: inside the translated piece.
                let ptr = unsafe { NonNull::new_unchecked(f.ptr.as_ptr().add(hdr_len as usize)) };
                Some((f, Seg { ptr, gpa: f.gpa + hdr_len as u64, len: f.len - hdr_len }))
            }
            // With MRG_RXBUF a frame may take several buffers, and each
            // later one's bytes are moved down over its header room
            // (`complete_rx_chain`): only within one piece.
            [Some(f), Some(d)] if f.len == hdr_len && d.len >= need && !self.mrg_rxbuf => Some((f, d)),
            _ => None,
        })
    }

    /// The data room of the first chains posted (up to LEND_SAMPLE), the
    /// smallest, in whole KiB; 0 when there is no chain yet or none has a
    /// KiB of room. The chains stay on the ring.
    fn sample_lend_size(&mut self, mem: &GuestMemory, avail: u16) -> u32 {
        let n = avail.wrapping_sub(self.next_avail).min(LEND_SAMPLE);
        let mut least = u32::MAX;
        self.lend_size = 1024; // measure as if lending at the smallest size
        for k in 0..n {
            let head = self.ring.avail_entry(self.next_avail.wrapping_add(k));
            if head >= self.ring.size {
                break;
            }
            if let Ok(Some((_, d))) = self.rx_layout(mem, head) {
                least = least.min(d.len);
            }
        }
        if least == u32::MAX { 0 } else { (least / 1024 * 1024).clamp(1024, 16 * 1024) }
    }

    /// A lent receive chain holds a frame of `len` bytes, written where it
    /// was lent: write its header (`h`, with num_buffers 1) and its used
    /// entry. False for a slot that is not out (nothing written).
    #[inline]
    pub fn complete_rx(&mut self, log: Option<&DirtyLog>, slot: u16, len: usize, mut h: NetHdr) -> bool {
        let Some(Lent { head, hdr: Some(first), data: Some(data) }) =
            self.lent.get_mut(slot as usize).and_then(Option::take)
        else {
            return false;
        };
        self.free_slots.push(slot);
        if self.broken.is_some() || len > data.len as usize {
            return false;
        }
        h.num_buffers = 1;
        let bytes = h.to_bytes();
        let hdr = &bytes[..self.hdr_len];
        if log.is_none() && data.gpa == first.gpa + self.hdr_len as u64 {
            // The header room ends where the NIC started writing, so its
            // line is (but for a header across a line boundary) one the
            // device wrote: no driver keeps it in its cache, which is what
            // write_unless_equal spares, and a plain store is cheapest.
            // SAFETY: first.ptr is valid for first.len bytes (translated
            // when lent), at least hdr_len (rx_layout lends no chain whose
            // first piece is shorter). The guest should not touch
            // a buffer it gave us; if it does, it only garbles its own frame.
            unsafe { store_header(first.ptr.as_ptr(), hdr) };
        } else {
            let mut w = Scatter { segs: std::slice::from_ref(&first), i: 0, off: 0, log };
            w.write_unless_equal(hdr);
        }
        if let Some(log) = log {
            // The NIC wrote the frame: the pages are dirty all the same.
            log.mark(data.gpa, len as u64);
        }
        self.push_used(log, head, (self.hdr_len + len) as u32);
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        self.stats.zc_packets += 1;
        true
    }

    /// A frame lies in several lent receive chains of this queue, its
    /// share of it in each (`parts`: slot and length, in order), written
    /// where each was lent: right after the header room of its first
    /// piece. Write the header (`h`, with num_buffers) into the first,
    /// move each later one's bytes down to the start of its chain (virtio
    /// 5.1.6.4: only the first buffer of a merged frame has the header),
    /// and write the used entries. False, with every chain returned
    /// empty, when the queue cannot take it that way (no MRG_RXBUF, a
    /// slot not out, a chain lent in two pieces, a length over its room;
    /// counted in `no_room`).
    pub fn complete_rx_chain(&mut self, log: Option<&DirtyLog>, parts: &[(u16, usize)], mut h: NetHdr) -> bool {
        let hdr_len = self.hdr_len;
        let fits = |l: &Option<Lent>, len: usize| {
            matches!(l, Some(Lent { hdr: Some(f), data: Some(d), .. })
                if d.gpa == f.gpa + hdr_len as u64 && len <= d.len as usize)
        };
        let ok = self.mrg_rxbuf
            && self.broken.is_none()
            && parts.len() <= u16::MAX as usize
            && parts.iter().enumerate().all(|(k, &(slot, len))| {
                self.lent.get(slot as usize).is_some_and(|l| fits(l, len))
                    && !parts[..k].iter().any(|&(s, _)| s == slot)
            });
        if !ok {
            // Not for want of buffers, but the frame is lost all the same.
            self.stats.no_room += 1;
            for &(slot, _) in parts {
                self.return_rx(slot);
            }
            return false;
        }
        let mut total = 0;
        let mut moved = 0;
        for (k, &(slot, len)) in parts.iter().enumerate() {
            let Some(Lent { head, hdr: Some(first), .. }) = self.lent[slot as usize].take() else {
                unreachable!("checked above")
            };
            self.free_slots.push(slot);
            if k == 0 {
                h.num_buffers = parts.len() as u16;
                let bytes = h.to_bytes();
                let mut w = Scatter { segs: std::slice::from_ref(&first), i: 0, off: 0, log };
                w.write_unless_equal(&bytes[..hdr_len]);
                if let Some(log) = log {
                    log.mark(first.gpa + hdr_len as u64, len as u64);
                }
                self.push_used(log, head, (hdr_len + len) as u32);
            } else {
                // SAFETY: the first piece is translated guest memory of
                // first.len bytes, and hdr_len + len <= first.len (checked:
                // the data lies in it from hdr_len). The guest gave us the
                // buffer; if it writes it meanwhile it garbles its own frame.
                let b = unsafe { std::slice::from_raw_parts_mut(first.ptr.as_ptr(), hdr_len + len) };
                snabb_core::copy::move_within(b, hdr_len..hdr_len + len, 0);
                if let Some(log) = log {
                    log.mark(first.gpa, len as u64);
                }
                self.push_used(log, head, len as u32);
                moved += len as u64;
            }
            total += len as u64;
        }
        self.stats.packets += 1;
        self.stats.bytes += total;
        self.stats.zc_packets += 1;
        self.stats.zc_chained += 1;
        self.stats.zc_moved_bytes += moved;
        true
    }

    /// Whether the guest takes frames over several buffers (MRG_RXBUF).
    pub fn mrg_rxbuf(&self) -> bool {
        self.mrg_rxbuf
    }

    /// Count bytes header edits moved inside lent receive buffers.
    pub fn count_moved(&mut self, n: u64) {
        self.stats.zc_moved_bytes += n;
    }

    /// A lent receive chain came back empty (the NIC let it go, its
    /// packet was dropped, its frame was moved into the buffer before it):
    /// it goes out again first, or serves the copy path. False for a slot
    /// that is not out.
    pub fn return_rx(&mut self, slot: u16) -> bool {
        let Some(l) = self.lent.get_mut(slot as usize).and_then(Option::take) else { return false };
        self.free_slots.push(slot);
        self.returned.push_back(l.head);
        true
    }

    /// Give every spare chain back to the guest with nothing in it (length
    /// 0): lending stops along with the ring, and a chain taken must be
    /// used. Returns how many.
    pub fn give_back_spares(&mut self, log: Option<&DirtyLog>) -> usize {
        let n = self.spare_count();
        while let Some(head) = self.spare.pop_front().or_else(|| self.returned.pop_front()) {
            self.push_used(log, head, 0);
        }
        self.stats.zc_unused += n as u64;
        self.publish(log);
        n
    }

    /// Forget every lent chain (the device's memory or ring is going away
    /// with them still out; their tokens are void from now on).
    pub fn forget_lent(&mut self) {
        for (i, l) in self.lent.iter_mut().enumerate() {
            if l.take().is_some() {
                self.free_slots.push(i as u16);
            }
        }
    }

    /// Prefetch the descriptors of the avail entries up to PREFETCH_AHEAD
    /// past `next_avail` (and before `avail`) not prefetched yet: the
    /// driver has just written them, and waiting for each line in turn,
    /// packet after packet, is what bounds the rate.
    #[inline]
    fn prefetch_ahead(&mut self, avail: u16) {
        let ahead = avail.wrapping_sub(self.next_avail).min(PREFETCH_AHEAD);
        let end = self.next_avail.wrapping_add(ahead);
        let mut i = self.prefetched;
        // Behind next_avail (or never set for this stretch): start there.
        if i.wrapping_sub(self.next_avail) > ahead {
            i = self.next_avail;
        }
        while i != end {
            self.ring.prefetch_desc(i);
            i = i.wrapping_add(1);
        }
        self.prefetched = end;
    }

    /// What drivers post nearly always: one device-writable descriptor, no
    /// NEXT or INDIRECT, wholly in one memory region and big enough: taken
    /// (true) without `gather`'s general walk. Anything else (spares first,
    /// a chain, a short or straddling buffer, a bad entry) is left to
    /// `gather`, which reads the same entry again and decides as before.
    #[inline(always)]
    fn gather_one(&mut self, mem: &GuestMemory, need: usize, avail: u16) -> bool {
        if self.spare_count() != 0 || self.next_avail == avail {
            return false;
        }
        let Some((head, s)) = self.single_at_next(mem, need, avail) else { return false };
        self.segs.push(s);
        self.chains.push(Gathered { head, cap: s.len, spare: false });
        true
    }

    /// The chain at `next_avail` (the caller saw that it is before `avail`)
    /// when it is one device-writable descriptor with room for `need` bytes
    /// (see `Ring::single`): its head and its piece. None for anything
    /// else, a head beyond the table included, for `gather` to judge.
    #[inline(always)]
    fn single_at_next(&mut self, mem: &GuestMemory, need: usize, avail: u16) -> Option<(u16, Seg)> {
        self.prefetch_ahead(avail);
        let head = self.ring.avail_entry(self.next_avail);
        if head >= self.ring.size {
            return None;
        }
        let s = self.ring.single(mem, head, true, need.max(self.hdr_len) as u64)?;
        Some((head, s))
    }

    /// Gather receive buffers for a packet of `need` bytes (header included),
    /// appending to `segs`/`chains` (a batch's earlier packets stay there),
    /// reading avail entries from `next_avail` without consuming them (bad
    /// chains in front excepted: those are given back).
    fn gather(&mut self, mem: &GuestMemory, log: Option<&DirtyLog>, need: usize, avail: &mut u16) -> Option<Gather> {
        let ring = self.ring;
        let first_seg = self.segs.len();
        let first_chain = self.chains.len();
        let mut peek = self.next_avail;
        // Spare chains (taken off the avail ring earlier, given back unused
        // by a NIC) go first.
        let mut spare_i = 0usize;
        let mut cap = 0usize;
        loop {
            if cap >= need {
                return Some(Gather::Fits);
            }
            let merged = self.chains.len() - first_chain;
            let from_spare = spare_i < self.spare_count();
            let whole_ring = !from_spare && peek.wrapping_sub(self.next_avail) == ring.size;
            if (!self.mrg_rxbuf && merged > 0) || merged == MAX_MERGE || whole_ring {
                return Some(Gather::NoRoom);
            }
            let head = if from_spare {
                spare_i += 1;
                self.spare_at(spare_i - 1)
            } else {
                if peek == *avail {
                    *avail = self.avail_idx()?;
                    if peek == *avail {
                        return Some(Gather::Empty);
                    }
                }
                self.prefetch_ahead(*avail);
                let head = self.head_at(peek)?;
                peek = peek.wrapping_add(1);
                head
            };
            let first = self.segs.len();
            let mut chain_cap = 0u64;
            let mut full = false;
            let segs = &mut self.segs;
            let r = ring.walk(mem, head, true, &mut self.stats.split_buffers, &mut |s| {
                if segs.len() - first_seg == MAX_SEGS {
                    full = true;
                    return false;
                }
                chain_cap += s.len as u64;
                segs.push(s);
                true
            });
            // A first chain too small for the header, or an empty one, is
            // as useless as a bad one: drivers put the header in the first.
            let small = chain_cap == 0 || (merged == 0 && chain_cap < self.hdr_len as u64);
            if full && merged > 0 {
                // Too many pieces for this packet; the chain stays for the next one.
                self.segs.truncate(first);
                return Some(Gather::NoRoom);
            }
            // A first chain of more than MAX_SEGS pieces can never be used.
            if full || r.is_err() || small || chain_cap > u32::MAX as u64 {
                self.segs.truncate(first);
                self.count_bad(r.err().unwrap_or(ChainError::TooLong));
                if merged == 0 {
                    // Nothing gathered yet: give this chain back and go on.
                    self.push_used(log, head, 0);
                    if from_spare {
                        spare_i -= 1;
                        self.spare_remove(spare_i);
                    } else {
                        self.next_avail = peek;
                    }
                    continue;
                }
                self.chains.push(Gathered { head, cap: 0, spare: from_spare });
                return Some(Gather::Bad);
            }
            cap += chain_cap as usize;
            self.chains.push(Gathered { head, cap: chain_cap as u32, spare: from_spare });
        }
    }

    /// The chains `first..` of the batch were used (or given back empty):
    /// consume them from where they came from (spares from the front, the
    /// rest from the avail ring).
    fn consume_chains(&mut self, first: usize) {
        if self.spare_count() == 0 {
            self.next_avail = self.next_avail.wrapping_add((self.chains.len() - first) as u16);
            return;
        }
        let spares = self.chains[first..].iter().filter(|c| c.spare).count();
        let from_avail = self.chains.len() - first - spares;
        self.spare_drain(spares);
        self.next_avail = self.next_avail.wrapping_add(from_avail as u16);
    }

    /// Switch -> guest (a guest RX queue). Deliver packets from `input`
    /// while the guest has buffers; see QueueStats for what is dropped.
    /// Returns the packets delivered.
    pub fn transmit_to_guest(&mut self, mem: &GuestMemory, log: Option<&DirtyLog>, input: &Link) -> usize {
        self.transmit_to_guest_upto(mem, log, input, usize::MAX, |_| false)
    }

    /// As `transmit_to_guest`, stopping after `max` packets delivered (a
    /// device with several RX queues gives each its turn).
    ///
    /// In batches: buffers for up to BATCH packets are gathered first, each
    /// packet's first lines fetched for writing as soon as its buffer is
    /// known, then the batch's bytes are copied and the used index stored.
    /// Copying right after gathering would wait for each line in turn.
    /// Delivery also stops at a packet `stop` names (a lent buffer of this
    /// device's, which goes back by `complete_rx` instead).
    pub fn transmit_to_guest_upto(
        &mut self,
        mem: &GuestMemory,
        log: Option<&DirtyLog>,
        input: &Link,
        max: usize,
        stop: impl Fn(&Packet) -> bool + Copy,
    ) -> usize {
        if !self.ready(mem) {
            return 0;
        }
        let Some(mut avail) = self.avail_idx() else { return 0 };
        let mut sent = 0;
        if log.is_none() {
            sent = self.transmit_simple(mem, input, max, &mut avail, stop);
        }
        loop {
            let more = self.reserve(mem, log, input, max - sent, &mut avail, stop);
            sent += self.batch.len();
            self.copy_batch(log);
            self.publish(log);
            if !more || sent >= max {
                return sent;
            }
        }
    }

    /// What `transmit_to_guest_upto` meets nearly always, without
    /// `reserve`'s general walk: no spare chains, no dirty log, and each
    /// packet whole in one host buffer going into one descriptor of the
    /// guest's that holds it with its header. Batch by batch as `reserve`
    /// and `copy_batch` do (the same buffers, the same used entries and
    /// counts, the same `write_one`); it stops at the first packet or buffer that is anything
    /// else, or when the guest has no buffers left, and leaves the rest to
    /// the general path (which counts what it drops). Returns the packets
    /// delivered.
    #[inline]
    fn transmit_simple(
        &mut self,
        mem: &GuestMemory,
        input: &Link,
        max: usize,
        avail: &mut u16,
        stop: impl Fn(&Packet) -> bool,
    ) -> usize {
        if self.spare_count() != 0 {
            return 0;
        }
        let hdr_len = self.hdr_len;
        let mut sent = 0;
        loop {
            if *avail == self.next_avail {
                let Some(a) = self.avail_idx() else { return sent };
                *avail = a;
            }
            // (shadow holds a ring's worth, and publish empties it.)
            let n = (avail.wrapping_sub(self.next_avail) as usize)
                .min(max - sent)
                .min(BATCH)
                .min(input.nreadable())
                .min(self.shadow.capacity() - self.shadow.len());
            if n == 0 {
                return sent;
            }
            // The buffers first, each packet left on the link (moving them
            // into a batch and out again, the CPU loaded each entry whole
            // before its field stores were done: see NetHdr::from_words).
            self.segs.clear();
            let mut k = 0;
            for p in input.queued().take(n) {
                if p.is_split() || stop(p) {
                    break;
                }
                let need = hdr_len + p.len();
                let Some((head, s)) = self.single_at_next(mem, need, *avail) else { break };
                self.segs.push(s);
                self.shadow.push((head, need as u32));
                self.prefetch_frame(k, need);
                self.next_avail = self.next_avail.wrapping_add(1);
                k += 1;
            }
            if k == 0 {
                return sent;
            }
            // Then the bytes (as copy_batch, one chain a packet).
            for j in 0..k {
                let mut p = input.receive().expect("seen on the link above");
                let mut h = NetHdr { num_buffers: 1, ..NetHdr::default() };
                csum_flags(self.guest_csum, &mut self.stats, &mut h, &mut p);
                write_one(hdr_len, self.segs[j], &h, p.data(), None);
                let len = p.len() as u64;
                self.stats.packets += 1;
                self.stats.bytes += len;
                self.stats.copied_bytes += len;
            }
            self.stats.used += k as u64;
            self.publish(None);
            sent += k;
            if k < n {
                return sent;
            }
        }
    }

    /// Fill `batch` with up to `max` (at most BATCH) packets from `input`
    /// and the buffers for each, their chains put on the used ring in order
    /// (stored there, not yet published). Packets that fit no buffer are
    /// dropped here. False when delivery stops: the link is empty, the
    /// guest has no buffers, or the queue broke.
    fn reserve(
        &mut self,
        mem: &GuestMemory,
        log: Option<&DirtyLog>,
        input: &Link,
        max: usize,
        avail: &mut u16,
        stop: impl Fn(&Packet) -> bool,
    ) -> bool {
        self.segs.clear();
        self.chains.clear();
        let max = max.min(BATCH);
        while self.batch.len() < max {
            // Room for one more packet's worst case (see the capacities).
            if self.segs.len() >= MAX_SEGS || self.chains.len() >= MAX_MERGE {
                return true;
            }
            if input.front_is(&stop) {
                return false;
            }
            let Some(len) = input.front_len() else { return false };
            let need = self.hdr_len + len;
            let (first_seg, first_chain) = (self.segs.len(), self.chains.len());
            let g = if self.gather_one(mem, need, *avail) {
                Some(Gather::Fits)
            } else {
                self.gather(mem, log, need, avail)
            };
            let fits = matches!(g, Some(Gather::Fits));
            match g {
                None => {} // broken
                Some(Gather::Empty) => self.stats.no_buffer += 1,
                Some(Gather::NoRoom) => {
                    drop(input.receive());
                    self.stats.no_room += 1;
                }
                Some(Gather::Bad) => {
                    drop(input.receive());
                    for i in first_chain..self.chains.len() {
                        let head = self.chains[i].head;
                        self.push_used(log, head, 0);
                    }
                    self.consume_chains(first_chain);
                }
                Some(Gather::Fits) => {
                    let p = input.receive().expect("front_len saw a packet");
                    let mut left = need as u32;
                    for i in first_chain..self.chains.len() {
                        let c = self.chains[i];
                        let n = c.cap.min(left);
                        left -= n;
                        self.push_used(log, c.head, n);
                    }
                    let chains = self.chains.len() - first_chain;
                    self.consume_chains(first_chain);
                    self.prefetch_frame(first_seg, need);
                    let segs = (first_seg as u32, self.segs.len() as u32);
                    self.batch.push(Reserved { p, segs, chains: chains as u16 });
                }
            }
            if !fits {
                self.segs.truncate(first_seg);
                self.chains.truncate(first_chain);
                if matches!(g, None | Some(Gather::Empty)) {
                    return false;
                }
            }
        }
        true
    }

    /// Start fetching the lines a frame of `need` bytes (header included)
    /// will be written to in its first piece: for writing past the header,
    /// for reading the header's own line when it is apart (it is compared
    /// first, and left in the driver's cache when it holds the same bytes).
    #[inline]
    fn prefetch_frame(&self, first_seg: usize, need: usize) {
        let s = self.segs[first_seg];
        let start = s.ptr.as_ptr() as usize;
        let data = start + self.hdr_len;
        let end = start + need.min(s.len as usize).min(self.hdr_len + PREFETCH_WRITE_BYTES);
        if start & !63 != data & !63 {
            prefetch(start as *const u8);
        }
        let mut line = data & !63;
        while line < end {
            prefetch_write(line as *const u8);
            line += 64;
        }
    }

    /// Write each batched packet's header and frame into its buffers.
    fn copy_batch(&mut self, log: Option<&DirtyLog>) {
        let mut batch = std::mem::take(&mut self.batch);
        for mut r in batch.drain(..) {
            let mut h = NetHdr { num_buffers: if self.mrg_rxbuf { r.chains } else { 1 }, ..NetHdr::default() };
            csum_flags(self.guest_csum, &mut self.stats, &mut h, &mut r.p);
            let segs = &self.segs[r.segs.0 as usize..r.segs.1 as usize];
            let one = segs.len() == 1 && !r.p.is_split() && self.hdr_len + r.p.len() <= segs[0].len as usize;
            if one {
                // The usual case: the whole frame after the header in one
                // buffer (gather saw to its room), from one host buffer.
                write_one(self.hdr_len, segs[0], &h, r.p.data(), log);
            } else {
                let hdr = h.to_bytes();
                let mut w = Scatter { segs, i: 0, off: 0, log };
                w.write_unless_equal(&hdr[..self.hdr_len]);
                // A split packet (another guest's frame) is copied from where
                // its parts lie: one copy from guest to guest.
                r.p.for_each_piece(|b| w.write(b));
            }
            self.stats.packets += 1;
            self.stats.bytes += r.p.len() as u64;
            self.stats.copied_bytes += r.p.len() as u64;
        }
        self.batch = batch;
    }

    /// Whether the guest takes partial checksums and DATA_VALID (GUEST_CSUM).
    pub fn guest_csum(&self) -> bool {
        self.guest_csum
    }

    /// The net header a packet goes to the guest with, but for num_buffers:
    /// see `csum_flags`.
    #[inline]
    pub fn header_for(&mut self, p: &mut Packet) -> NetHdr {
        let mut h = NetHdr::default();
        csum_flags(self.guest_csum, &mut self.stats, &mut h, p);
        h
    }

    /// After receive/transmit: true when the guest asked for an interrupt
    /// for what was put on the used ring since the last call (EVENT_IDX:
    /// used_event crossed; else unless VRING_AVAIL_F_NO_INTERRUPT).
    pub fn take_signal(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let new = self.published;
        let old = self.signalled;
        if new == old {
            return false;
        }
        // Our used index store must be visible before we read what the
        // driver wants, or we could miss an interrupt it asked for.
        fence(Ordering::SeqCst);
        let valid = self.signalled_valid;
        self.signalled = new;
        self.signalled_valid = true;
        if self.event_idx {
            let event = self.ring.used_event().load(Ordering::Relaxed);
            // vring_need_event: did used move past `event` in (old, new]?
            !valid || new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.ring.avail_flags().load(Ordering::Relaxed) & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Tell the guest not to kick us (we poll): VRING_USED_F_NO_NOTIFY, and
    /// with EVENT_IDX an avail_event kept behind our position (refreshed on
    /// every call).
    pub fn suppress_kicks(&mut self) {
        self.kicks_suppressed = true;
        if self.broken.is_some() {
            return;
        }
        self.ring.used_flags().store(VRING_USED_F_NO_NOTIFY, Ordering::Relaxed);
        self.write_avail_event(None);
    }

    /// Like suppress_kicks, logging the writes (during migration).
    pub fn suppress_kicks_logged(&mut self, log: Option<&DirtyLog>) {
        self.suppress_kicks();
        if let (Some(log), Some(gpa)) = (log, self.log_used) {
            log.mark(gpa, 2);
            if self.event_idx {
                log.mark(gpa + 4 + 8 * self.ring.size as u64, 2);
            }
        }
    }
}

/// The header's checksum flags for `p`: its partial checksum handed on
/// (GUEST_CSUM) or finished, and DATA_VALID when a NIC verified the
/// checksums and the guest takes the flag (it may be set only with
/// GUEST_CSUM: virtio 1.2, 5.1.6.3.1).
#[inline]
fn csum_flags(guest_csum: bool, stats: &mut QueueStats, h: &mut NetHdr, p: &mut Packet) {
    if let Some(c) = p.partial_csum() {
        if guest_csum {
            h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            h.csum_start = c.start;
            h.csum_offset = c.offset;
        } else {
            p.finish_partial_csum();
            stats.csum_completed += 1;
        }
    } else if guest_csum && p.csum_verified() {
        h.flags = VIRTIO_NET_HDR_F_DATA_VALID;
    }
}

/// Write frame `b` with its net header `h` into `s`, one buffer that holds
/// both (the caller checked: `hdr_len + b.len() <= s.len`).
#[inline(always)]
fn write_one(hdr_len: usize, s: Seg, h: &NetHdr, b: &[u8], log: Option<&DirtyLog>) {
    let start = s.ptr.as_ptr() as usize;
    if !b.is_empty() && start & !63 == (start + hdr_len) & !63 {
        // The header shares its line with the frame's first bytes (which
        // take the line anyway): stored as its two words, without a compare.
        let (head, tail) = h.to_words();
        // SAFETY: s.ptr is valid for s.len >= hdr_len + 1 bytes (translated;
        // per the contract), hdr_len is 10 or 12.
        unsafe {
            s.ptr.as_ptr().cast::<u64>().write_unaligned(head.to_le());
            if hdr_len == 12 {
                s.ptr.as_ptr().add(8).cast::<u32>().write_unaligned(tail.to_le());
            } else {
                s.ptr.as_ptr().add(8).cast::<u16>().write_unaligned((tail as u16).to_le());
            }
        }
        if let Some(log) = log {
            log.mark(s.gpa, hdr_len as u64);
        }
    } else {
        let hdr = h.to_bytes();
        Scatter { segs: std::slice::from_ref(&s), i: 0, off: 0, log }.write_unless_equal(&hdr[..hdr_len]);
    }
    // SAFETY: s.ptr is valid for s.len >= hdr_len + b.len() bytes
    // (translated; per the contract). The guest should not touch a buffer
    // it gave us; if it does, it only garbles its own packet.
    let dst = unsafe { std::slice::from_raw_parts_mut(s.ptr.as_ptr().add(hdr_len), b.len()) };
    snabb_core::copy::copy(dst, b);
    if let Some(log) = log {
        log.mark(s.gpa + hdr_len as u64, b.len() as u64);
    }
}

/// Store a net header (10 or 12 bytes) at `dst` in two integer moves: a
/// copy of a length known only at run time is a call, dearer than the
/// header. (Arms of `copy_nonoverlapping` with constant lengths do not do:
/// the compiler merges them back into one call with the length chosen.)
///
/// # Safety
/// `dst` must be valid for `src.len()` bytes of writes.
#[inline(always)]
unsafe fn store_header(dst: *mut u8, src: &[u8]) {
    let s = src.as_ptr();
    // SAFETY: per the contract, and src is src.len() bytes long; each arm
    // reads and writes inside the first src.len() bytes (unaligned moves).
    unsafe {
        match src.len() {
            12 => {
                let (a, b) = (s.cast::<u64>().read_unaligned(), s.add(8).cast::<u32>().read_unaligned());
                dst.cast::<u64>().write_unaligned(a);
                dst.add(8).cast::<u32>().write_unaligned(b);
            }
            10 => {
                let (a, b) = (s.cast::<u64>().read_unaligned(), s.add(8).cast::<u16>().read_unaligned());
                dst.cast::<u64>().write_unaligned(a);
                dst.add(8).cast::<u16>().write_unaligned(b);
            }
            n => std::ptr::copy_nonoverlapping(s, dst, n),
        }
    }
}

/// A cursor writing bytes across gathered buffer pieces, logging each write.
struct Scatter<'a> {
    segs: &'a [Seg],
    i: usize,
    off: usize,
    log: Option<&'a DirtyLog>,
}

impl Scatter<'_> {
    /// Write `src` (a net header) at the start of the first piece, unless
    /// the buffer holds it already. A driver that recycles its buffers
    /// reads the header from a line it then keeps: storing the same bytes
    /// again would take that line away from it on every packet. That
    /// spares nothing when the frame's first bytes follow in the header's
    /// line (the usual layout: they take the line anyway), so then the
    /// header is stored without the compare.
    #[inline]
    fn write_unless_equal(&mut self, src: &[u8]) {
        if let Some(s) = self.segs.first()
            && self.i == 0
            && self.off == 0
            && s.len as usize >= src.len()
        {
            // The header and the frame's first byte (at `end`) in one line.
            let start = s.ptr.as_ptr() as usize;
            let end = start + src.len();
            if s.len as usize > src.len() && start & !63 == end & !63 {
                // SAFETY: s.ptr is valid for s.len > src.len() bytes
                // (translated). The guest should not touch a buffer it gave
                // us; if it does, it only garbles its own packet.
                unsafe { store_header(s.ptr.as_ptr(), src) };
                if let Some(log) = self.log {
                    log.mark(s.gpa, src.len() as u64);
                }
                self.advance(src.len());
                return;
            }
            // SAFETY: s.ptr is valid for s.len >= src.len() bytes (translated).
            // The guest may write them meanwhile: each byte is read once and
            // any value is a valid u8; a stale match only leaves the guest
            // its own bytes, in a buffer it gave us.
            let same = (0..src.len()).all(|k| unsafe { std::ptr::read_volatile(s.ptr.as_ptr().add(k)) } == src[k]);
            if same {
                self.advance(src.len());
                return;
            }
        }
        self.write(src);
    }

    /// Write `src` at the cursor. The caller made sure the pieces hold it all.
    #[inline]
    fn write(&mut self, mut src: &[u8]) {
        while !src.is_empty() && self.i < self.segs.len() {
            let s = self.segs[self.i];
            let room = s.len as usize - self.off;
            let n = room.min(src.len());
            // SAFETY: s.ptr is valid for s.len bytes (translated) and
            // off + n <= s.len. The guest should not touch a buffer it gave
            // us; if it does, it only garbles its own packet.
            let dst = unsafe { std::slice::from_raw_parts_mut(s.ptr.as_ptr().add(self.off), n) };
            snabb_core::copy::copy(dst, &src[..n]);
            if let Some(log) = self.log {
                log.mark(s.gpa + self.off as u64, n as u64);
            }
            src = &src[n..];
            self.advance(n);
        }
    }

    /// Move the cursor `n` bytes on, within the current piece.
    #[inline]
    fn advance(&mut self, n: usize) {
        self.off += n;
        if self.off == self.segs[self.i].len as usize {
            self.i += 1;
            self.off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(64))]
    struct Lines([u8; 256]);

    fn seg(buf: &mut Lines, at: usize, len: u32) -> Seg {
        let ptr = NonNull::new(buf.0[at..].as_mut_ptr()).unwrap();
        Seg { ptr, gpa: 0x1000 + at as u64, len }
    }

    const HDR: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn a_header_lands_exact_whatever_the_layout() {
        // (offset of the piece in a line-aligned buffer, its length, header
        // length): the frame shares the header's line; the header alone in
        // its piece; a header across a line boundary; a header that ends a
        // line; the 10-byte header, with a frame and alone.
        for (at, len, h) in [(0, 200, 12), (0, 12, 12), (58, 100, 12), (52, 100, 12), (4, 100, 10), (64, 10, 10)] {
            for old in [0xeeu8, 0] {
                let mut b = Lines([old; 256]);
                // The same bytes already there, or others.
                if old == 0 {
                    b.0[at..at + h].copy_from_slice(&HDR[..h]);
                }
                let segs = [seg(&mut b, at, len)];
                let mut w = Scatter { segs: &segs, i: 0, off: 0, log: None };
                w.write_unless_equal(&HDR[..h]);
                let (i, off) = (w.i, w.off);
                assert_eq!(&b.0[at..at + h], &HDR[..h], "piece at {at}, {len} bytes, header {h}");
                assert!(b.0[..at].iter().all(|&x| x == old), "nothing before the piece is touched");
                assert!(b.0[at + h..].iter().all(|&x| x == old), "nothing after the header is touched");
                if len as usize == h {
                    assert_eq!((i, off), (1, 0), "the cursor moves to the next piece");
                } else {
                    assert_eq!((i, off), (0, h), "the cursor is after the header");
                }
            }
        }
    }
}
