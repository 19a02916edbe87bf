//! PACKETS
//!
//! A `Packet` is an owned handle to one buffer. It cannot be cloned by
//! accident (`clone` makes a new buffer and copies), and dropping it returns
//! the buffer to where it came from:
//!
//!   * a **host** packet lives in DMA memory from this thread's freelist and
//!     goes back on it;
//!   * a **foreign** packet wraps a buffer the engine does not own (a guest's
//!     vring buffer, say). It names its [`BufferOwner`] and the owner's token,
//!     and on drop the token goes on the owner's return ring, which the owner
//!     drains on its next breath. It never reaches the host freelist.
//!
//! The handle points to a 32-byte *record* (data pointer, length, start,
//! device address, owner, capacity). Records are kept apart from the
//! buffers, packed two to a cache line in one array per chunk, so that a
//! small packet costs one line of metadata shared with a neighbour plus the
//! line of its data, and the records of the packets in flight stay close
//! together in the cache. Host buffers (2 MiB chunks, one buffer every
//! `STRIDE` bytes):
//!
//! ```text
//!   | headroom 256 B | payload 10240 B | pad 64 B |
//!   ^ base           ^ data at base+start (start = 256)
//! ```
//!
//! Stripping a header (`shift_left`) or prepending one (`shift_right`,
//! `prepend`) moves `start`: O(1), no bytes move, as long as the headroom
//! allows it. A buffer whose start is fixed (a guest receive buffer: the used
//! ring has no offset field) moves its bytes instead.
//!
//! A **split** packet is a host packet whose tail lies in a foreign buffer:
//! the head (a guest frame's headers, say) is a snapshot in host memory that
//! its owner cannot change, and the rest stays where it was lent
//! ([`BufferOwner::wrap_tail`]). Code that knows about splits reads the head
//! ([`Packet::head`]) and the tail ([`Packet::tail`]) as they are (a NIC
//! sends them as two descriptors, a vhost-user port copies them straight into
//! a guest); anything that asks for the whole frame at once (`data`,
//! `data_mut`, `append`...) gets it flattened into the host buffer first,
//! and the tail goes back to its owner.
//!
//! A **chain** packet is a frame that lies in several lent buffers of one
//! owner, in order (a NIC wrote a long frame over several of a guest's
//! receive buffers: [`chain`]). Its record is a host record whose data is
//! the first buffer's part, fixed where it is; the later buffers are listed
//! in the record's own host buffer, which is idle meanwhile. It reads as the
//! whole frame like any packet: `head` is the first buffer's part, `tail`
//! is None, [`Packet::for_each_piece`] visits every part without a copy,
//! and anything that asks for the whole frame at once flattens it into that
//! host buffer (every buffer goes home). Its owner takes it apart without a
//! copy with [`BufferOwner::reclaim_chain`].
//!
//! An owner can **revoke** its buffers ([`BufferOwner::revoke`]): whoever
//! holds them where a device may still write (a NIC receive ring) gives them
//! back at once. [`revocations`] changes whenever an owner revokes or goes.
//!
//! Every packet is at most [`BUFFER_SIZE`] bytes long, foreign ones
//! included (their capacity is capped there), so any packet can be copied
//! into a host buffer.
//!
//! Packets are `!Send`: each engine thread has its own *pool* (freelist,
//! shells, owners) and no lock is taken on the hot path. Allocations and
//! frees are counted per pool ([`stats`]) so that tests can check
//! conservation.
//!
//! Packets do cross threads, but only through a cross-worker link (see
//! `link::Interlink`), which hands the records over with Release/Acquire on
//! its cursors and marks each host record it carries with its home pool.
//! A record dropped away from home goes home: a host record is rearmed and
//! put on the *return ring* from this pool to its home (one per pair of
//! pools, single producer and single consumer, published in batches), which
//! the home drains into its freelist ([`collect_returns`], once a breath);
//! a foreign packet (and a split packet) goes home the same way and its
//! owner gets its token back there. Revocations are seen by every thread.
//! A pool whose thread ends with records still away is adopted
//! ([`adopt_orphans`]) until the last one is back.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::memory::{self, CHUNK_SIZE};

/// Bytes available in front of a fresh packet's data for prepending headers.
pub const HEADROOM: usize = 256;
/// Maximum packet length: 10 KiB, room for a 9216-byte jumbo frame and
/// its encapsulation. It is a whole number of KiB so that a NIC's receive
/// buffer size (SRRCTL.BSIZEPACKET, 1 KiB units) can match it exactly.
pub const PAYLOAD_SIZE: usize = 10 * 1024;
/// Bytes in a host buffer: headroom plus payload.
pub const BUFFER_SIZE: usize = HEADROOM + PAYLOAD_SIZE;

/// Distance from one host buffer to the next in a chunk: the buffer and one
/// cache line. An odd number of lines, so that the first data lines of
/// neighbouring buffers fall in different cache sets; with an even stride
/// (the buffer alone is 164 lines) they would crowd into a sixteenth of the
/// L1 sets and evict each other.
const STRIDE: usize = BUFFER_SIZE + 64;
const BUFFERS_PER_CHUNK: usize = CHUNK_SIZE / STRIDE;
const _: () = assert!(STRIDE.is_multiple_of(64) && !(STRIDE / 64).is_multiple_of(2));

/// Owner word of a host record at home.
const HOST: u32 = 0;
/// Top bit of `Record::owner`: a host record with a foreign tail (a split
/// packet; the rest of the word is the tail's owner).
const SPLIT: u32 = 1 << 31;
/// The 15 bits of an owner id kept for its slot's generation.
const GENERATION_MASK: u32 = 0x7fff;
/// The low 16 bits of an owner word: an owner's slot (never 0), or 0 for a
/// host record.
const SLOT_MASK: u32 = 0xffff;
/// A host record away from home has its home pool here, in the bits an
/// owner id keeps its generation in (its slot bits stay 0).
const AWAY_SHIFT: u32 = 16;
/// Pool ids are 1 to MAX_POOLS - 1: they fit above AWAY_SHIFT.
const MAX_POOLS: usize = 1 << 15;
/// Top bit of `Record::cap`: the data must stay where it is (see
/// [`Packet::has_fixed_start`]).
const FIXED_START: u32 = 1 << 31;
/// Low 16 bits of `Record::cap`: the buffer's size (below 64 KiB).
const CAP_MASK: u32 = 0xffff;
/// Bits 16-30 of `Record::cap`: a partial checksum still to finish (see
/// [`PartialCsum`]), [`CSUM_VERIFIED`], or 0 for neither.
const CSUM_SHIFT: u32 = 16;
const CSUM_BITS: u32 = 0x7fff << CSUM_SHIFT;
/// The checksum field's value (never a partial checksum: its offset part is
/// 0) for "a NIC checked the frame's checksums and found them good".
const CSUM_VERIFIED: u32 = 1 << 5;

/// A transport checksum the packet still needs (virtio's NEEDS_CSUM,
/// Linux's CHECKSUM_PARTIAL): the ones'-complement sum of the frame from
/// `start` on, complemented, belongs at `start + offset`, where the sender
/// left the pseudo-header sum. It travels with the packet until an app
/// that sends it out finishes it ([`Packet::finish_partial_csum`]) or hands
/// it on to a peer that accepts it (a guest with GUEST_CSUM).
///
/// Kept in 15 bits of the record: `start` below 1024 and `offset` even, 2
/// to 62 (TCP's 16 and UDP's 6 included). A request outside that is
/// finished where it arrives instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialCsum {
    pub start: u16,
    pub offset: u16,
}

impl PartialCsum {
    #[inline]
    fn encode(self) -> Option<u32> {
        (self.start < 1024 && self.offset.is_multiple_of(2) && (2..=62).contains(&self.offset))
            .then_some(((self.start as u32) << 5) | (self.offset as u32 >> 1))
    }
    #[inline]
    fn decode(bits: u32) -> Option<PartialCsum> {
        (bits & 31 != 0).then_some(PartialCsum { start: (bits >> 5) as u16, offset: ((bits & 31) << 1) as u16 })
    }
}

/// The per-packet metadata: in a chunk's record array for a host buffer, at
/// the front of a [`Shell`] for a foreign one. Half a cache line.
///
/// A host record on the freelist always has `start == HEADROOM` (and `data`
/// to match), so taking one costs a store of the length only.
#[repr(C, align(32))]
struct Record {
    /// First data byte: `base + start`.
    data: *mut u8,
    len: u32,
    /// Offset of the first data byte from the buffer's start.
    start: u32,
    /// Device address of the buffer's start (0 when unknown).
    dma: u64,
    /// HOST; a foreign owner's id (slot | generation << 16), with SPLIT
    /// set on a host record that has a foreign tail; or, for a host record
    /// that left its pool through a cross-worker link, its home pool <<
    /// AWAY_SHIFT (so that dropping it anywhere takes the slow path home).
    owner: u32,
    /// Bytes of buffer from its start (low 31 bits), and FIXED_START.
    cap: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == 32);
const _: () = assert!(BUFFER_SIZE as u32 <= CAP_MASK);

/// A foreign packet's record and the owner's token for its buffer (a
/// descriptor chain head, say).
#[repr(C)]
struct Shell {
    rec: Record,
    token: u64,
    /// Bytes moved inside the buffer by header edits (fixed start).
    moved: u32,
    /// The pool of the owner (and of this shell).
    home: u32,
}

/// Most buffers a chain packet spans: a frame of PAYLOAD_SIZE in 1 KiB
/// buffers (the smallest a NIC takes).
pub const MAX_CHAIN: usize = PAYLOAD_SIZE / 1024;

/// A chain packet's later buffers, listed at the start of its record's own
/// host buffer (in the headroom, which a flatten never writes).
#[repr(C)]
struct ChainList {
    n: u64,
    parts: [ChainPart; MAX_CHAIN - 1],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ChainPart {
    ptr: *mut u8,
    token: u64,
    len: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<ChainList>() <= HEADROOM);

/// The foreign tail of a split packet, kept beside its host record (in the
/// second half of the chunk's record block: `tail_of`). A chain record
/// (SPLIT with FIXED_START: a split head is never fixed) keeps here its own
/// host buffer's data pointer and device address, its first buffer's token,
/// and in `len` the bytes after the first buffer's part.
#[repr(C, align(32))]
struct Tail {
    ptr: *mut u8,
    dma: u64,
    token: u64,
    len: u32,
    /// The pool of the tail's owner, which is also the head's.
    home: u32,
}
const _: () = assert!(std::mem::size_of::<Tail>() == std::mem::size_of::<Record>());

/// An owned packet buffer. See the module documentation.
pub struct Packet {
    rec: NonNull<Record>,
    // Packets belong to the thread whose freelist they came from.
    _not_send: PhantomData<*mut Record>,
}

impl Packet {
    /// A new empty host packet with the default headroom.
    #[inline]
    pub fn new() -> Packet {
        allocate()
    }

    /// A new host packet holding a copy of `bytes`. Panics when `bytes` is
    /// longer than [`PAYLOAD_SIZE`].
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Packet {
        assert!(bytes.len() <= PAYLOAD_SIZE, "{}-byte packet: more than PAYLOAD_SIZE", bytes.len());
        let mut p = allocate_raw();
        let r = p.rec_mut();
        r.len = bytes.len() as u32;
        // SAFETY: a fresh host buffer has PAYLOAD_SIZE bytes after its start.
        crate::copy::copy(unsafe { std::slice::from_raw_parts_mut(r.data, bytes.len()) }, bytes);
        p
    }

    #[inline]
    fn rec(&self) -> &Record {
        // SAFETY: rec points to a live record this handle owns exclusively.
        unsafe { self.rec.as_ref() }
    }
    #[inline]
    fn rec_mut(&mut self) -> &mut Record {
        // SAFETY: as above; &mut self gives exclusive access.
        unsafe { self.rec.as_mut() }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.rec().len as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet's bytes (a split packet is flattened first: see the
    /// module documentation).
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.flatten_if_split();
        let r = self.rec();
        // SAFETY: data = base + start and start + len <= cap are invariants
        // of every record that is not split, and the buffer stays valid
        // while this handle lives.
        unsafe { std::slice::from_raw_parts(r.data, r.len as usize) }
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.flatten_if_split();
        let r = self.rec_mut();
        // SAFETY: as for data(); &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(r.data, r.len as usize) }
    }

    /// The bytes in this packet's own buffer: all of them, except for a
    /// split packet, whose head only (see [`Packet::tail`]). Never flattens.
    #[inline]
    pub fn head(&self) -> &[u8] {
        let r = self.rec();
        let n = r.len as usize - self.tail_len();
        // SAFETY: the head is data .. data + n, inside the record's buffer.
        unsafe { std::slice::from_raw_parts(r.data, n) }
    }

    /// The head, writable (a header edit that should not flatten).
    #[inline]
    pub fn head_mut(&mut self) -> &mut [u8] {
        let n = self.len() - self.tail_len();
        let r = self.rec_mut();
        // SAFETY: as for head(); &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(r.data, n) }
    }

    /// A split packet's foreign tail, which follows [`Packet::head`]. None
    /// for a chain packet too (see [`Packet::for_each_piece`]).
    #[inline]
    pub fn tail(&self) -> Option<TailRef<'_>> {
        if self.rec().owner & SPLIT == 0 || self.is_chain() {
            return None;
        }
        // SAFETY: a split record has its Tail beside it (tail_of), valid
        // while the handle lives.
        let t = unsafe { &*tail_of(self.rec) };
        // SAFETY: the lender vouched for ptr .. ptr + len (wrap_tail).
        let bytes = unsafe { std::slice::from_raw_parts(t.ptr, t.len as usize) };
        Some(TailRef { bytes, dma: t.dma })
    }

    /// True for a split packet (a host head and a foreign tail).
    #[inline]
    pub fn is_split(&self) -> bool {
        self.rec().owner & SPLIT != 0
    }

    /// True for a chain packet (a frame over several lent buffers: see
    /// the module documentation).
    #[inline]
    pub fn is_chain(&self) -> bool {
        let r = self.rec();
        r.owner & SPLIT != 0 && r.cap & FIXED_START != 0
    }

    /// Hand every part of the frame to `f` in order, where it lies (the
    /// head and tail of a split packet, each buffer of a chain), without
    /// flattening.
    #[inline]
    pub fn for_each_piece(&self, mut f: impl FnMut(&[u8])) {
        f(self.head());
        if let Some(t) = self.tail() {
            f(t.bytes);
        } else if self.is_chain() {
            // SAFETY: a chain record's list is valid while its handle lives.
            for c in unsafe { chain_parts(self.rec) } {
                // SAFETY: the lender vouched for each part's bytes until its
                // token comes back (`chain`, `BufferOwner::wrap`).
                f(unsafe { std::slice::from_raw_parts(c.ptr, c.len as usize) });
            }
        }
    }

    /// The owner's token and the frame's length in each buffer of a chain
    /// packet, in order (nothing for other packets).
    pub fn for_each_chain_part(&self, mut f: impl FnMut(u64, usize)) {
        if !self.is_chain() {
            return;
        }
        // SAFETY: a chain record has its Tail beside it and its list in its
        // host buffer, valid while the handle lives.
        unsafe {
            f((*tail_of(self.rec)).token, self.len() - self.tail_len());
            for c in chain_parts(self.rec) {
                f(c.token, c.len as usize);
            }
        }
    }

    #[inline(always)]
    fn tail_len(&self) -> usize {
        if self.rec().owner & SPLIT == 0 {
            return 0;
        }
        // SAFETY: as in tail().
        unsafe { (*tail_of(self.rec)).len as usize }
    }

    #[inline(always)]
    fn flatten_if_split(&self) {
        if self.rec().owner & SPLIT != 0 {
            // SAFETY: the record is this handle's; no reference into it is
            // live across the call (callers make theirs afterwards).
            unsafe { flatten(self.rec) }
        }
    }

    /// Bytes free in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.rec().start as usize
    }
    /// Bytes free after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.capacity() - self.len()
    }
    /// The largest length the packet can take without moving its start:
    /// the rest of its buffer, but never more than BUFFER_SIZE (a foreign
    /// buffer may be larger, and every packet must fit a host buffer when
    /// copied).
    #[inline]
    pub fn capacity(&self) -> usize {
        let r = self.rec();
        (((r.cap & CAP_MASK) - r.start) as usize).min(BUFFER_SIZE)
    }

    /// Device address of the first data byte (0 when unknown).
    #[inline]
    pub fn dma_addr(&self) -> u64 {
        let r = self.rec();
        if r.dma == 0 { 0 } else { r.dma + r.start as u64 }
    }

    /// True when the buffer (or a split packet's tail) belongs to a
    /// [`BufferOwner`], not to a host freelist.
    #[inline]
    pub fn is_foreign(&self) -> bool {
        self.rec().owner & (SPLIT | SLOT_MASK) != 0
    }

    /// A foreign packet that is not split: its record is a Shell.
    #[inline(always)]
    fn is_shell(&self) -> bool {
        let o = self.rec().owner;
        o & SPLIT == 0 && o & SLOT_MASK != 0
    }
    /// True when the data cannot move inside its buffer: header edits move bytes.
    #[inline]
    pub fn has_fixed_start(&self) -> bool {
        self.rec().cap & FIXED_START != 0
    }

    /// The partial checksum this packet still needs, if any.
    #[inline]
    pub fn partial_csum(&self) -> Option<PartialCsum> {
        PartialCsum::decode((self.rec().cap & CSUM_BITS) >> CSUM_SHIFT)
    }

    /// True when a NIC checked the frame's IP and TCP/UDP checksums and
    /// found them good (virtio's DATA_VALID, Linux's CHECKSUM_UNNECESSARY).
    /// Stripping or pushing more than two VLAN tags' worth of header forgets
    /// it: the outermost checksum is then another one.
    #[inline]
    pub fn csum_verified(&self) -> bool {
        (self.rec().cap & CSUM_BITS) >> CSUM_SHIFT == CSUM_VERIFIED
    }

    /// Note (or forget) that a NIC verified the checksums. A partial
    /// checksum request takes precedence: then nothing is noted.
    #[inline]
    pub fn set_csum_verified(&mut self, yes: bool) {
        let r = self.rec_mut();
        let bits = (r.cap & CSUM_BITS) >> CSUM_SHIFT;
        if yes && bits == 0 {
            r.cap |= CSUM_VERIFIED << CSUM_SHIFT;
        } else if !yes && bits == CSUM_VERIFIED {
            r.cap &= !CSUM_BITS;
        }
    }

    /// A header edit of `n` bytes at the front: the NIC's verdict holds
    /// through VLAN tags, not through a tunnel's headers.
    #[inline(always)]
    fn front_edit(&mut self, n: usize) {
        if n > 8 && self.csum_verified() {
            self.set_csum_verified(false);
        }
    }

    /// Note (or with None, forget) a partial checksum still to finish.
    /// False, with nothing noted, when the record cannot hold it (see
    /// [`PartialCsum`]): then the caller finishes it itself.
    #[inline]
    pub fn set_partial_csum(&mut self, c: Option<PartialCsum>) -> bool {
        let bits = match c {
            None => 0,
            Some(c) => match c.encode() {
                Some(b) => b,
                None => return false,
            },
        };
        let r = self.rec_mut();
        r.cap = (r.cap & !CSUM_BITS) | (bits << CSUM_SHIFT);
        true
    }

    /// Finish the partial checksum the packet carries, if any (an app does
    /// this before its packets leave the process, unless the peer takes
    /// the request itself). False when the request does not fit the
    /// frame: the bytes are left as they are. Either way none is left.
    #[inline]
    pub fn finish_partial_csum(&mut self) -> bool {
        let Some(c) = self.partial_csum() else { return true };
        self.set_partial_csum(None);
        if self.is_split() && !self.is_chain() && self.finish_split_csum(c) {
            return true;
        }
        crate::checksum::complete_checksum(self.data_mut(), c.start, c.offset)
    }

    /// Finish a split packet's partial checksum without flattening it, when
    /// the checksum field lies in the head (a guest's TCP frame: headers in
    /// the head, payload in the tail): the tail is summed where it is.
    #[cold]
    fn finish_split_csum(&mut self, c: PartialCsum) -> bool {
        use crate::checksum::{fold, ones_sum};
        let (start, at) = (c.start as usize, c.start as usize + c.offset as usize);
        let head_len = self.len() - self.tail_len();
        if start > head_len || at + 2 > head_len {
            return false;
        }
        let tail = fold(self.tail().map_or(0, |t| ones_sum(t.bytes)));
        let h = self.head_mut();
        // The tail's words start on an odd byte when the head's part is odd.
        let tail = if (head_len - start) % 2 == 1 { tail.swap_bytes() } else { tail };
        let csum = !fold(ones_sum(&h[start..]) + tail as u64);
        h[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        true
    }

    /// Set the length; bytes beyond the old length are whatever the buffer
    /// holds (a NIC or guest wrote them). Panics past the capacity.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "set_len({len}) beyond capacity {}", self.capacity());
        self.flatten_if_split();
        self.rec_mut().len = len as u32;
    }

    /// Shorten to `len` bytes (no-op when already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.flatten_if_split();
            self.rec_mut().len = len as u32;
        }
    }

    /// Set the length, zero-filling any growth. Panics past the capacity.
    pub fn resize(&mut self, len: usize) {
        let old = self.len();
        self.set_len(len);
        if len > old {
            self.data_mut()[old..].fill(0);
        }
    }

    /// Append bytes at the tail. Panics when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) {
        let old = self.len();
        assert!(bytes.len() <= self.tailroom(), "append of {} bytes: tailroom {}", bytes.len(), self.tailroom());
        self.flatten_if_split();
        self.rec_mut().len += bytes.len() as u32;
        crate::copy::copy(&mut self.data_mut()[old..], bytes);
    }

    /// Remove `n` bytes from the front (strip a header). O(1) unless the start
    /// is fixed, in which case the remaining bytes move down. Panics when `n`
    /// exceeds the length.
    #[inline]
    pub fn shift_left(&mut self, n: usize) {
        assert!(n <= self.len(), "shift_left({n}) of a {}-byte packet", self.len());
        self.front_edit(n);
        if self.is_chain() {
            self.flatten_if_split();
        }
        if n > self.len() - self.tail_len() {
            self.flatten_if_split();
        }
        if let Some(c) = self.partial_csum() {
            // A header in front of the checksummed part goes; one inside it
            // (a tunnel's outer checksum, say) cannot: finish it first.
            if (c.start as usize) < n || !self.set_partial_csum(Some(PartialCsum { start: c.start - n as u16, ..c })) {
                self.finish_partial_csum();
            }
        }
        if self.has_fixed_start() {
            let len = self.len();
            let d = self.data_mut();
            crate::copy::move_within(d, n..len, 0);
            self.count_moved(len - n);
        } else {
            let r = self.rec_mut();
            // SAFETY: n <= len, so the new start is still inside the buffer.
            r.data = unsafe { r.data.add(n) };
            r.start += n as u32;
        }
        self.rec_mut().len -= n as u32;
    }

    /// Make room for `n` bytes at the front (their content is unspecified).
    /// O(1) when the headroom allows it and the start is not fixed; otherwise
    /// the data moves up. Panics when the packet would not fit its buffer.
    #[inline]
    pub fn shift_right(&mut self, n: usize) {
        self.front_edit(n);
        if self.is_chain() {
            self.flatten_if_split();
        }
        if self.is_split() && n > self.headroom() {
            self.flatten_if_split();
        }
        if let Some(c) = self.partial_csum() {
            // The checksummed part moves back; past what the record holds,
            // finish it now (before the move: the request is the old one).
            let moved = u16::try_from(c.start as usize + n).ok().map(|start| PartialCsum { start, ..c });
            if !moved.is_some_and(|m| self.set_partial_csum(Some(m))) {
                self.finish_partial_csum();
            }
        }
        let len = self.len();
        assert!(len + n <= BUFFER_SIZE, "shift_right({n}): a {len}-byte packet would outgrow BUFFER_SIZE");
        if !self.has_fixed_start() && n <= self.headroom() {
            let r = self.rec_mut();
            // SAFETY: n <= start, so the new start is still inside the buffer.
            r.data = unsafe { r.data.sub(n) };
            r.start -= n as u32;
            r.len += n as u32;
            return;
        }
        assert!(n <= self.tailroom(), "shift_right({n}): {len}-byte packet does not fit its buffer");
        self.rec_mut().len += n as u32;
        let d = self.data_mut();
        crate::copy::move_within(d, 0..len, n);
        if self.has_fixed_start() {
            self.count_moved(len);
        }
    }

    /// Prepend a header. See [`Packet::shift_right`].
    pub fn prepend(&mut self, header: &[u8]) {
        self.shift_right(header.len());
        crate::copy::copy(&mut self.head_mut()[..header.len()], header);
    }

    /// A host packet with a copy of this packet's bytes. Foreign packets
    /// become host packets this way (the SIMD copy mode of a link).
    #[inline]
    pub fn copy_to_host(&self) -> Packet {
        let mut p = allocate_raw();
        let len = self.len();
        // Every packet fits a host buffer (BUFFER_SIZE), if not always
        // after the full headroom.
        p.set_start(HEADROOM.min(BUFFER_SIZE - len));
        p.rec_mut().len = len as u32;
        self.copy_bytes_into(p.data_mut());
        p.copy_partial_csum(self);
        p
    }

    /// Copy every byte (every part of a split or chain packet alike,
    /// without flattening it) into `dst`, which is exactly `len()` bytes
    /// long.
    #[inline]
    pub fn copy_bytes_into(&self, dst: &mut [u8]) {
        let mut at = 0;
        self.for_each_piece(|b| {
            crate::copy::copy(&mut dst[at..at + b.len()], b);
            at += b.len();
        });
    }

    /// Move a fresh host record's start (HEADROOM) down to `start`.
    #[inline(always)]
    fn set_start(&mut self, start: usize) {
        if start < HEADROOM {
            let r = self.rec_mut();
            // SAFETY: moving the start down inside the headroom.
            r.data = unsafe { r.data.sub(HEADROOM - start) };
            r.start = start as u32;
        }
    }

    /// Add to a foreign packet's tally of bytes moved in its buffer.
    #[inline(always)]
    fn count_moved(&mut self, n: usize) {
        if self.is_shell() {
            // SAFETY: a foreign packet's record is the front of a Shell.
            let sh = unsafe { &mut *self.rec.cast::<Shell>().as_ptr() };
            sh.moved = sh.moved.saturating_add(n as u32);
        }
        // SAFETY: this thread's State.
        unsafe { (*state()).moved_bytes += n as u64 };
    }

    /// Carry `of`'s partial checksum request over to this copy of it.
    #[inline(always)]
    fn copy_partial_csum(&mut self, of: &Packet) {
        let bits = of.rec().cap & CSUM_BITS;
        if bits != 0 {
            let r = self.rec_mut();
            r.cap = (r.cap & !CSUM_BITS) | bits;
        }
    }

    /// The owner id (as [`BufferOwner::id`] gives it: unique in the
    /// process) and token of a foreign packet (of a split packet's tail).
    pub fn foreign_token(&self) -> Option<(u64, u64)> {
        let (owner, home, token) = self.foreign_parts()?;
        Some(((home as u64) << 32 | owner as u64, token))
    }

    /// A foreign packet's (or split packet's tail's) owner id in its pool,
    /// that pool, and the token.
    #[inline]
    fn foreign_parts(&self) -> Option<(u32, u32, u64)> {
        let r = self.rec();
        if r.owner & SPLIT != 0 {
            // SAFETY: a split record has its Tail beside it.
            let t = unsafe { &*tail_of(self.rec) };
            return Some((r.owner & !SPLIT, t.home, t.token));
        }
        if !self.is_shell() {
            return None;
        }
        // SAFETY: a foreign packet's record is the front of a Shell.
        let sh = unsafe { &*self.rec.cast::<Shell>().as_ptr() };
        Some((r.owner, sh.home, sh.token))
    }

    /// Whether this packet's buffer (a split packet's tail) belongs to an
    /// owner that revoked it or went away: a device must not write into it
    /// any more. Owners of other threads are seen too.
    #[inline]
    pub fn is_revoked(&self) -> bool {
        let Some((owner, home, _)) = self.foreign_parts() else { return false };
        let slot = (owner & SLOT_MASK) as usize;
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        if home == st.pool {
            let o = &st.owners[slot];
            return !o.open || o.revoked;
        }
        let w = shared(home).status[slot].load(Ordering::Acquire);
        w & OWNER_OPEN == 0 || w & OWNER_REVOKED != 0
    }

    /// Mark a host record of this pool as leaving it (a cross-worker link
    /// does this as it publishes the packet): wherever it is dropped then,
    /// it goes home. Foreign and split packets know their home already.
    #[inline(always)]
    pub(crate) fn leave_home(&self, pool: u32) {
        if self.rec().owner == HOST {
            // SAFETY: the record is this handle's; no reference into it is
            // live across the write.
            unsafe { (*self.rec.as_ptr()).owner = pool << AWAY_SHIFT };
        }
    }

    /// The packet goes on to another thread other than by a link (a NIC
    /// ring handed with its app to another worker, see `handoff`): a host
    /// record of this thread's pool is marked so that it goes home wherever
    /// it is dropped, as a link between workers marks what it carries.
    /// Foreign and split packets know their home already. The handle itself
    /// must then cross threads inside something that says why that is sound.
    pub fn prepare_to_travel(&self) {
        self.leave_home(pool_id());
    }

    /// Give a fresh host packet (start HEADROOM) the headroom of `of`, when
    /// `of` has less: a clone keeps its original's headroom (as far as its
    /// length lets it fit a host buffer).
    #[inline(always)]
    fn match_headroom(&mut self, of: &Packet) {
        let start = (of.rec().start as usize).min(BUFFER_SIZE - of.len());
        self.set_start(start);
    }
}

/// A split packet's foreign tail: its bytes (the owner may change them at
/// any time: read them once) and device address.
#[derive(Clone, Copy, Debug)]
pub struct TailRef<'a> {
    pub bytes: &'a [u8],
    pub dma: u64,
}

impl Default for Packet {
    fn default() -> Self {
        Packet::new()
    }
}

impl Clone for Packet {
    /// A new host packet with the same bytes and the same headroom.
    #[inline]
    fn clone(&self) -> Packet {
        let mut p = allocate_raw();
        p.match_headroom(self);
        p.rec_mut().len = self.len() as u32;
        self.copy_bytes_into(p.data_mut());
        p.copy_partial_csum(self);
        p
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.rec();
        f.debug_struct("Packet")
            .field("len", &r.len)
            .field("start", &r.start)
            .field("owner", &r.owner)
            .field("tail", &self.tail_len())
            .field("token", &self.foreign_token().map_or(0, |t| t.1))
            .field("partial_csum", &self.partial_csum())
            .finish()
    }
}

impl Drop for Packet {
    #[inline(always)]
    fn drop(&mut self) {
        if self.rec().owner == HOST {
            free_host(self.rec);
        } else if self.rec().owner & SPLIT != 0 {
            free_split(self.rec);
        } else if self.rec().owner & SLOT_MASK == 0 {
            free_away(self.rec);
        } else {
            return_foreign(self.rec);
        }
    }
}

// ---------------------------------------------------------------------------
// Per-thread state: the host freelist, shells for foreign packets, the owner
// table and the counters.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Host packets handed out (frees + in_use).
    pub allocs: u64,
    /// Host packets returned to the freelist.
    pub frees: u64,
    /// Foreign packets created by owners.
    pub foreign_wrapped: u64,
    /// Foreign packets handed back to their owner (dropped or reclaimed).
    pub foreign_returned: u64,
    /// Host packets that exist now (allocs - frees).
    pub in_use: u64,
    /// Host packets this thread owns in all (free or in use).
    pub total: u64,
    /// Bytes moved inside fixed-start buffers by header edits.
    pub moved_bytes: u64,
    /// Split packets flattened (their tails copied into their heads).
    pub flattened: u64,
}

struct OwnerSlot {
    generation: u16,
    open: bool,
    /// The owner asked for its buffers back (`BufferOwner::revoke`).
    revoked: bool,
    name: String,
    outstanding: u64,
    returns: Vec<u64>,
    /// Kept alive while the owner's buffers are out (its guest memory, say).
    keepalive: Option<Rc<dyn std::any::Any>>,
}

/// The freelist: a stack of free host records, used last on top, in a
/// reservation of address space big enough never to move, so that an
/// [`Allocator`] can walk its part of the stack with a bare pointer.
///
/// Normally the free records are `slots[0..top]`. An allocator *claims* the
/// top `n` of them, `slots[lo..hi]`, and takes them from the top down
/// without touching this struct; meanwhile frees go on above the claim
/// (`slots[hi..top]`) and single allocations take from there, or from below
/// the claim (lowering `lo`). When the allocator is done, its unused records
/// and those above are moved down to `lo`, and the stack is whole again.
/// One allocator holds a claim at a time; one made while another holds it
/// takes records one by one.
struct Freelist {
    slots: NonNull<NonNull<Record>>,
    top: usize,
    /// The claim, `lo..hi`; hi == 0 when there is none.
    lo: usize,
    hi: usize,
}

/// Slots reserved for the freelist (address space only; pages are touched
/// as the pool grows). Records in the claim can be stale, so the stack may
/// reach twice the pool plus one claim: the pool is limited to half of this.
const FREE_SLOTS: usize = 1 << 24;
/// Host records one thread may own at most: 8 Mi buffers, 84 GB.
const MAX_POOL: usize = (FREE_SLOTS - ALLOC_BATCH) / 2;

impl Freelist {
    fn new() -> Freelist {
        let bytes = FREE_SLOTS * std::mem::size_of::<NonNull<Record>>();
        // SAFETY: a fresh private anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "packet freelist: cannot reserve {bytes} bytes of address space");
        Freelist { slots: NonNull::new(p as *mut NonNull<Record>).unwrap(), top: 0, lo: 0, hi: 0 }
    }

    /// Free records now.
    #[inline]
    fn len(&self) -> usize {
        self.top - (self.hi - self.lo)
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> *mut NonNull<Record> {
        // SAFETY: callers keep i below FREE_SLOTS (see MAX_POOL).
        unsafe { self.slots.as_ptr().add(i) }
    }

    #[inline(always)]
    fn push(&mut self, rec: NonNull<Record>) {
        // SAFETY: top stays below FREE_SLOTS: see MAX_POOL.
        unsafe { self.slot(self.top).write(rec) };
        self.top += 1;
    }

    /// Take one free record, or None when there is none.
    #[inline(always)]
    fn pop(&mut self) -> Option<NonNull<Record>> {
        if self.top > self.hi {
            self.top -= 1;
            // Records that came home from another worker may still be in
            // its cache: ask for the ones a few allocations ahead.
            if self.top >= self.hi + PREFETCH_AHEAD {
                // SAFETY: slots hi..top hold free records.
                prefetch_write(unsafe { self.slot(self.top - PREFETCH_AHEAD).read() }.as_ptr());
            }
            // SAFETY: slots hi..top hold free records.
            return Some(unsafe { self.slot(self.top).read() });
        }
        self.pop_below()
    }

    #[cold]
    #[inline(never)]
    fn pop_below(&mut self) -> Option<NonNull<Record>> {
        if self.lo == 0 {
            return None;
        }
        self.lo -= 1;
        // SAFETY: slots 0..lo hold free records.
        Some(unsafe { self.slot(self.lo).read() })
    }

    /// Claim the top `n` free records (there must be as many): returns the
    /// claim's top and bottom, for the claimer to take from top down. None
    /// when a claim is held already.
    fn claim(&mut self, n: usize) -> Option<(*const NonNull<Record>, *const NonNull<Record>)> {
        if self.hi != 0 || n == 0 {
            return None;
        }
        debug_assert!(self.top >= n);
        self.lo = self.top - n;
        self.hi = self.top;
        Some((self.slot(self.hi), self.slot(self.lo)))
    }

    /// End the claim: the claimer left `bottom..cur` untaken. Returns how
    /// many.
    fn release(&mut self, cur: *const NonNull<Record>, bottom: *const NonNull<Record>) -> usize {
        // SAFETY: both point into the claim, bottom <= cur.
        let base = self.slots.as_ptr() as *const NonNull<Record>;
        let (c, b) = unsafe { (cur.offset_from(base) as usize, bottom.offset_from(base) as usize) };
        debug_assert!(self.lo <= b && b <= c && c <= self.hi && self.hi <= self.top);
        let left = c - b;
        let above = self.top - self.hi;
        // SAFETY: moving free records down inside the reservation; the
        // ranges may overlap, which ptr::copy allows.
        unsafe {
            if left > 0 && b != self.lo {
                ptr::copy(self.slot(b), self.slot(self.lo), left);
            }
            if above > 0 {
                ptr::copy(self.slot(self.hi), self.slot(self.lo + left), above);
            }
        }
        self.top = self.lo + left + above;
        self.lo = 0;
        self.hi = 0;
        left
    }
}

struct State {
    free: Freelist,
    /// Host records taken off the freelist so far (frees are derived:
    /// allocs - in use), counted per batch.
    allocs: u64,
    foreign_wrapped: u64,
    foreign_returned: u64,
    /// Host records in the pool.
    total: u64,
    moved_bytes: u64,
    flattened: u64,
    shells: Vec<NonNull<Record>>,
    chunks: Vec<memory::Chunk>,
    /// Each chunk's records, in a block of their own (from Box::into_raw):
    /// BUFFERS_PER_CHUNK records, then as many Tail slots (see `tail_of`).
    records: Vec<NonNull<[Record]>>,
    /// Blocks of shells for foreign packets (from Box::into_raw).
    shell_blocks: Vec<NonNull<[Shell]>>,
    owners: Vec<OwnerSlot>,
    next_step: usize,
    /// This pool's id (1 ..MAX_POOLS), and what other threads see of it.
    pool: u32,
    shared: &'static Shared,
    /// Return rings to the homes of records dropped here, one per home.
    outboxes: Vec<Outbox>,
    /// Return rings from other pools to this one, with how far each is read.
    inbound: Vec<(Arc<ReturnRing>, usize)>,
    /// `shared.inbound_gen` when `inbound` was last copied.
    inbound_gen: u32,
    /// Records of other pools may be dropped here (this thread consumes a
    /// cross-worker link): the batch free checks each record.
    visitors: bool,
    /// Returned shells and split records, kept aside while the rings are read.
    tagged: Vec<usize>,
    /// Keep-alive objects of owners gone, released by `collect`: dropped
    /// by `collect_returns` once it holds no reference into the State (a
    /// keep-alive may own packets).
    graveyard: Vec<Rc<dyn std::any::Any>>,
}

impl Drop for State {
    fn drop(&mut self) {
        // Only reached when every packet is home (see Retire): no handle
        // refers to a record any more.
        for b in self.records.drain(..).map(|b| b.as_ptr()) {
            // SAFETY: made by Box::into_raw in grow(), dropped once here.
            drop(unsafe { Box::from_raw(b) });
        }
        for b in self.shell_blocks.drain(..).map(|b| b.as_ptr()) {
            // SAFETY: made by Box::into_raw in grow_shells(), dropped once here.
            drop(unsafe { Box::from_raw(b) });
        }
        // SAFETY: the reservation made in Freelist::new, unused from here on.
        unsafe {
            libc::munmap(self.free.slots.as_ptr() as *mut libc::c_void, FREE_SLOTS * std::mem::size_of::<usize>());
        }
    }
}

thread_local! {
    // A raw pointer without a destructor: access is one TLS load.
    static STATE: Cell<*mut State> = const { Cell::new(ptr::null_mut()) };
    static RETIRE: Retire = const { Retire };
}

/// Runs at thread exit: records dropped here go home, and a pool with
/// every packet home gives its chunks back; one with records still away
/// (on other threads' links, or in their return rings) is adopted until
/// they are back ([`adopt_orphans`]).
struct Retire;
impl Drop for Retire {
    fn drop(&mut self) {
        let st = STATE.with(|s| s.replace(ptr::null_mut()));
        if st.is_null() {
            return;
        }
        // SAFETY: the pointer came from Box::into_raw in state() and was
        // just unhooked, so nothing else reaches it.
        let mut st = unsafe { Box::from_raw(st) };
        let outboxes = std::mem::take(&mut st.outboxes);
        for mut ob in outboxes {
            ob.flush();
            if !ob.overflow.is_empty() {
                let sh = shared(ob.home);
                sh.spill.lock().unwrap().append(&mut ob.overflow);
                sh.pending.store(true, Ordering::Release);
            }
            ob.ring.closed.store(true, Ordering::Release);
        }
        collect(&mut st);
        let graves = std::mem::take(&mut st.graveyard);
        if st.complete() {
            st.retire();
        } else {
            ORPHANS.lock().unwrap().push(Orphan(st));
        }
        drop(graves);
    }
}

/// A pool whose thread ended while some of its records were away.
struct Orphan(Box<State>);
// SAFETY: the thread that made the State has ended; nothing else refers to
// it. Its owner slots' keep-alive objects (`Rc`) were made on that thread,
// and every other clone of them lived there and is gone, so they may be
// dropped here. Whoever holds ORPHANS works on it alone.
unsafe impl Send for Orphan {}

static ORPHANS: Mutex<Vec<Orphan>> = Mutex::new(Vec::new());

/// Take back what came home to pools whose threads have ended, and free
/// those that are complete. The main engine calls this every tick; it is
/// cheap when there is none.
pub fn adopt_orphans() {
    let Ok(mut orphans) = ORPHANS.try_lock() else { return };
    if orphans.is_empty() {
        return;
    }
    let mut done = Vec::new();
    let mut graves = Vec::new();
    let mut i = 0;
    while i < orphans.len() {
        collect(&mut orphans[i].0);
        graves.append(&mut orphans[i].0.graveyard);
        if orphans[i].0.complete() {
            done.push(orphans.swap_remove(i));
        } else {
            i += 1;
        }
    }
    drop(orphans);
    for o in done {
        o.0.retire();
    }
    drop(graves);
}

/// Pools whose thread ended with records still away.
pub fn orphans() -> usize {
    ORPHANS.lock().unwrap().len()
}

impl State {
    /// Every record and every lent buffer is home.
    fn complete(&self) -> bool {
        self.free.len() as u64 == self.total && self.owners.iter().all(|o| o.outstanding == 0)
    }

    /// The pool's end: chunks back to the memory module, its id free.
    fn retire(self: Box<State>) {
        for c in &self.chunks {
            memory::recycle_chunk(*c);
        }
        let pool = self.pool;
        drop(self);
        if pool != 0 {
            release_pool_id(pool);
        }
    }

    fn empty(pool: u32, shared: &'static Shared) -> State {
        State {
            free: Freelist::new(),
            allocs: 0,
            foreign_wrapped: 0,
            foreign_returned: 0,
            total: 0,
            moved_bytes: 0,
            flattened: 0,
            shells: Vec::new(),
            chunks: Vec::new(),
            records: Vec::new(),
            shell_blocks: Vec::new(),
            // Slot 0 stands for the host.
            owners: vec![OwnerSlot {
                generation: 0,
                open: false,
                revoked: false,
                name: "host".into(),
                outstanding: 0,
                returns: Vec::new(),
                keepalive: None,
            }],
            next_step: 1,
            pool,
            shared,
            outboxes: Vec::new(),
            inbound: Vec::new(),
            inbound_gen: u32::MAX,
            visitors: false,
            tagged: Vec::new(),
            graveyard: Vec::new(),
        }
    }
}

#[inline(always)]
fn state() -> *mut State {
    let st = STATE.with(|s| s.get());
    if !st.is_null() {
        return st;
    }
    init_state()
}

#[cold]
#[inline(never)]
fn init_state() -> *mut State {
    let pool = take_pool_id();
    let st = Box::into_raw(Box::new(State::empty(pool, shared(pool))));
    STATE.with(|s| s.set(st));
    // Register the exit hook; harmless if the thread is already exiting.
    let _ = RETIRE.try_with(|_| ());
    st
}

/// Allocate a host packet: pop the freelist, growing it when empty.
#[inline]
pub fn allocate() -> Packet {
    let mut p = allocate_raw();
    p.rec_mut().len = 0;
    p
}

/// A host packet with start HEADROOM and a length for the caller to set.
#[inline(always)]
fn allocate_raw() -> Packet {
    // SAFETY: state() is this thread's State; the reference ends before
    // anything else can reach the State.
    let st = unsafe { &mut *state() };
    let rec = match st.free.pop() {
        Some(r) => r,
        None => refill(st),
    };
    st.allocs += 1;
    Packet { rec, _not_send: PhantomData }
}

/// One packet for a frame that lies in several lent buffers of one owner,
/// in order: `parts`, each a foreign packet of an owner of this thread, not
/// split, holding its share of the frame (at least a byte). The parts are
/// taken (their tokens now ride in the chain) and the chain is returned;
/// when they do not qualify (one missing, of another owner or thread, empty
/// or carrying a partial checksum, more than [`MAX_CHAIN`] of them, fewer
/// than 2, or more than PAYLOAD_SIZE bytes in all), None, and `parts` are
/// left as they were. See the module documentation.
pub fn chain(parts: &mut [Option<Packet>]) -> Option<Packet> {
    let n = parts.len();
    if !(2..=MAX_CHAIN).contains(&n) {
        return None;
    }
    let pool = pool_id();
    let owner = parts[0].as_ref()?.rec().owner;
    let mut total = 0usize;
    for p in parts.iter() {
        let p = p.as_ref()?;
        // SAFETY: read only when is_shell: a foreign record is a Shell's.
        if !p.is_shell()
            || p.rec().owner != owner
            || unsafe { (*p.rec.cast::<Shell>().as_ptr()).home } != pool
            || p.is_empty()
            || p.partial_csum().is_some()
        {
            return None;
        }
        total += p.len();
    }
    if total > PAYLOAD_SIZE {
        return None;
    }
    let rec = allocate_raw().into_record();
    // SAFETY: rec is a fresh host record of this thread (start HEADROOM,
    // data = its buffer's base + HEADROOM), ours; its Tail slot is free;
    // the list goes in its headroom (ChainList fits: asserted above). Each
    // part is a Shell of this thread whose handle we consume: its token
    // moves into the chain (the owner's count of buffers out is unchanged)
    // and the shell goes back to the shells.
    unsafe {
        let r = rec.as_ptr();
        let list = &mut *((*r).data.sub(HEADROOM) as *mut ChainList);
        list.n = (n - 1) as u64;
        let first = parts[0].take().unwrap();
        let f = &*first.rec.cast::<Shell>().as_ptr();
        tail_of(rec).write(Tail {
            ptr: (*r).data,
            dma: (*r).dma,
            token: f.token,
            len: (total - first.len()) as u32,
            home: pool,
        });
        (*r).data = f.rec.data;
        (*r).start = 0;
        (*r).dma = if f.rec.dma == 0 { 0 } else { f.rec.dma + f.rec.start as u64 };
        (*r).len = total as u32;
        (*r).owner = owner | SPLIT;
        (*r).cap = FIXED_START | PAYLOAD_SIZE as u32 | (f.rec.cap & CSUM_BITS);
        let st = &mut *state();
        st.shells.push(first.into_record());
        for (k, p) in parts[1..].iter_mut().enumerate() {
            let p = p.take().unwrap();
            let sh = &*p.rec.cast::<Shell>().as_ptr();
            list.parts[k] = ChainPart { ptr: sh.rec.data, token: sh.token, len: sh.rec.len, _pad: 0 };
            st.shells.push(p.into_record());
        }
    }
    Some(Packet { rec, _not_send: PhantomData })
}

/// The freelist is empty: take what came home first, grow only then.
#[cold]
#[inline(never)]
fn refill(st: &mut State) -> NonNull<Record> {
    collect(st);
    if let Some(r) = st.free.pop() {
        return r;
    }
    grow(st);
    st.free.pop().expect("grow adds records")
}

/// Put a host record's start back to HEADROOM, and forget any partial
/// checksum request, as the freelist keeps them.
///
/// # Safety
/// `r` must be a host record no handle refers to any more.
#[inline(always)]
unsafe fn rearm(r: *mut Record) {
    // SAFETY: per the contract, r is ours to write.
    unsafe {
        let start = (*r).start;
        if start != HEADROOM as u32 {
            (*r).data = (*r).data.sub(start as usize).add(HEADROOM);
            (*r).start = HEADROOM as u32;
        }
        (*r).cap &= !CSUM_BITS;
    }
}

#[inline(always)]
fn free_host(rec: NonNull<Record>) {
    // SAFETY: rec is a host record of this thread (Packet is !Send) that its
    // handle is giving up; State is this thread's, referenced only here.
    unsafe {
        rearm(rec.as_ptr());
        (*state()).free.push(rec);
    }
}

/// How many records ahead `free_run` (of the packets it frees) and
/// `Freelist::pop` (of the records it will hand out) prefetch: enough to
/// cover a miss to another core's cache with the work of that many
/// packets. (`collect` asks for each record as it takes it back: it is
/// handed out again a little later.)
const PREFETCH_AHEAD: usize = 16;

/// A hint to bring `p`'s cache line in for reading: it reads no memory
/// architecturally and never faults, whatever the address. (The packet
/// code and the apps' rings share it.)
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint (SSE, always present on x86_64): it
    // never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A hint to bring `p`'s cache line in for writing (PREFETCHW): a line
/// another core holds (or has read) comes over once, ready to write, not
/// shared first and taken over again at the store. A read prefetch on a
/// CPU without PREFETCHW.
#[inline(always)]
pub fn prefetch_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        // SAFETY: PREFETCHW is a hint: it never faults, whatever the
        // address, and this CPU has it (checked above).
        unsafe {
            std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags, readonly));
        }
    } else {
        prefetch(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Whether the CPU has PREFETCHW (CPUID 8000_0001h, ECX bit 8: AMD's
/// 3DNowPrefetch, Intel's PRFCHW); std's feature detection does not name
/// it. Asked once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_prefetchw() -> bool {
    static KNOWN: AtomicU8 = AtomicU8::new(0); // 0 not asked, 1 no, 2 yes
    let k = KNOWN.load(Ordering::Relaxed);
    k == 2 || (k == 0 && detect_prefetchw(&KNOWN))
}

#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn detect_prefetchw(known: &AtomicU8) -> bool {
    let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    // Leaf 8000_0001h exists when the highest extended leaf is at least it.
    let yes = max >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0;
    known.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
    yes
}

/// Drop the `n` packets stored at `packets` (moved out: the caller must not
/// use or drop them again) and return their bytes. While no foreign packet
/// exists on this thread and no other pool's records can be here, all are
/// host packets of this pool and go straight onto the freelist in one pass.
///
/// # Safety
/// `packets` must point to `n` initialised packets that the caller gives up.
#[inline]
pub(crate) unsafe fn free_run(packets: *const Packet, n: usize) -> u64 {
    let st = state();
    let mut bytes = 0u64;
    // SAFETY: this thread's State, referenced only inside this block (no
    // packet is dropped while `free` is borrowed, nor while a borrow made
    // through `st` lives in the second loop). Every packet of this thread
    // was counted in foreign_wrapped if foreign, and records of other pools
    // arrive only through a cross-worker link, whose consumer sets
    // `visitors`: so when neither can be, these are host records of this
    // pool, and the freelist has room for every one (see MAX_POOL). In the
    // second loop, a record whose owner word names another pool and no
    // owner slot is a host record of that pool whose handle we consume:
    // ours to rearm until it is on the return ring (as in free_away).
    unsafe {
        if (*st).foreign_wrapped == (*st).foreign_returned && !(*st).visitors {
            let free = &mut (*st).free;
            let to = free.slot(free.top);
            for i in 0..n {
                let rec = (*packets.add(i)).rec;
                bytes += (*rec.as_ptr()).len as u64;
                rearm(rec.as_ptr());
                to.add(i).write(rec);
            }
            free.top += n;
        } else {
            // The return ring last used, by its index in `outboxes` (which
            // only grows while the thread lives).
            let mut last: Option<(u32, usize)> = None;
            for i in 0..n {
                // Records that came from another worker are in its cache,
                // not ours: ask for a few ahead so that their misses overlap.
                if i + PREFETCH_AHEAD < n {
                    prefetch_write((*packets.add(i + PREFETCH_AHEAD)).rec.as_ptr());
                }
                let p = ptr::read(packets.add(i));
                bytes += p.len() as u64;
                // A host record of another pool (the common visitor: the
                // other end of an interlink made it) goes home without a
                // call per packet; anything else takes its drop.
                let owner = p.rec().owner;
                let home = owner >> AWAY_SHIFT;
                if owner & (SPLIT | SLOT_MASK) != 0 || home == 0 || home == (*st).pool {
                    drop(p);
                    continue;
                }
                let rec = p.into_record();
                rearm(rec.as_ptr());
                (*rec.as_ptr()).owner = HOST;
                let ob = match last {
                    Some((h, k)) if h == home => k,
                    _ => {
                        let k = outbox_for(&mut *st, home);
                        last = Some((home, k));
                        k
                    }
                };
                let outboxes = &mut (*st).outboxes;
                outboxes[ob].push(rec.as_ptr() as usize);
            }
        }
    }
    bytes
}

/// Drop `n` packets that `next` yields, with one look-up of the freelist
/// for the whole batch (host packets; foreign ones go home one by one).
/// `next` must yield at least `n` packets.
#[inline]
pub fn free_batch(n: usize, mut next: impl FnMut() -> Packet) {
    let st = state();
    let mut left = n;
    while left > 0 {
        // A run of host packets goes straight onto the freelist; a foreign
        // packet ends the run and goes home on its own.
        let mut foreign = None;
        // SAFETY: this thread's State. The freelist has room for every host
        // record (see MAX_POOL); the records written are counted into `top`
        // before anything else (the foreign drop) touches the freelist.
        unsafe {
            let top = (*st).free.top;
            let to = (*st).free.slot(top);
            let mut m = 0;
            while left > 0 {
                let p = next();
                left -= 1;
                if p.rec().owner != HOST {
                    foreign = Some(p);
                    break;
                }
                rearm(p.rec.as_ptr());
                to.add(m).write(p.rec);
                std::mem::forget(p);
                m += 1;
            }
            (*st).free.top = top + m;
        }
        drop(foreign);
    }
}

/// Fresh host packets taken from the freelist in one go, so that a loop
/// that makes many packets pays for the freelist once: the allocator claims
/// the top of the freelist and walks it with a pointer kept in a register.
pub struct Allocator {
    /// Records cur-1 down to bottom are this allocator's; null when it
    /// holds no claim (another allocator does: it then takes one by one).
    cur: *const NonNull<Record>,
    bottom: *const NonNull<Record>,
}

/// Records an allocator claims at a time at most: more than a breath's
/// worth of packets for one output (`PULL_NPACKETS`).
const ALLOC_BATCH: usize = 128;

impl Allocator {
    /// An allocator holding up to `n` (at most 128) packets at a time.
    #[inline(always)]
    pub fn new(n: usize) -> Allocator {
        let (cur, bottom) = claim(n.clamp(1, ALLOC_BATCH));
        Allocator { cur, bottom }
    }

    /// A host packet (start HEADROOM) with a length for the caller to set.
    #[inline(always)]
    fn take(&mut self) -> Packet {
        if self.cur == self.bottom {
            let (rec, cur, bottom) = reclaim(self.cur, self.bottom);
            self.cur = cur;
            self.bottom = bottom;
            return Packet { rec, _not_send: PhantomData };
        }
        // SAFETY: cur > bottom, and bottom..cur are this allocator's records.
        let rec = unsafe {
            self.cur = self.cur.sub(1);
            self.cur.read()
        };
        Packet { rec, _not_send: PhantomData }
    }

    /// A new empty packet, as `Packet::new`.
    #[inline(always)]
    pub fn allocate(&mut self) -> Packet {
        let mut p = self.take();
        p.rec_mut().len = 0;
        p
    }

    /// A copy of `p`, as `p.clone()`.
    #[inline(always)]
    pub fn clone_of(&mut self, p: &Packet) -> Packet {
        let mut c = self.take();
        c.match_headroom(p);
        let len = p.len();
        let r = c.rec_mut();
        r.len = len as u32;
        // SAFETY: match_headroom left the fresh buffer at least `len` bytes
        // from its start (every packet is at most BUFFER_SIZE long).
        p.copy_bytes_into(unsafe { std::slice::from_raw_parts_mut(r.data, len) });
        c.copy_partial_csum(p);
        c
    }

    /// A new packet holding a copy of `bytes`, as `Packet::from_bytes`.
    /// Panics when `bytes` is longer than [`PAYLOAD_SIZE`].
    #[inline(always)]
    pub fn from_bytes(&mut self, bytes: &[u8]) -> Packet {
        assert!(bytes.len() <= PAYLOAD_SIZE, "{}-byte packet: more than PAYLOAD_SIZE", bytes.len());
        let mut c = self.take();
        let r = c.rec_mut();
        r.len = bytes.len() as u32;
        // SAFETY: a fresh host buffer has PAYLOAD_SIZE bytes after its start.
        crate::copy::copy(unsafe { std::slice::from_raw_parts_mut(r.data, bytes.len()) }, bytes);
        c
    }
}

impl Drop for Allocator {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.cur.is_null() {
            unclaim(self.cur, self.bottom);
        }
    }
}

/// Claim `n` records for a new allocator, growing the pool if needed; null
/// pointers when another allocator holds the claim.
#[inline(never)]
fn claim(n: usize) -> (*const NonNull<Record>, *const NonNull<Record>) {
    // SAFETY: this thread's State, referenced only within this function.
    let st = unsafe { &mut *state() };
    if st.free.hi != 0 {
        return (ptr::null(), ptr::null());
    }
    if st.free.len() < n {
        collect(st);
    }
    while st.free.len() < n {
        grow(st);
    }
    st.allocs += n as u64;
    st.free.claim(n).expect("no claim is held")
}

/// An allocator ran dry (or holds no claim): end its claim and make a new
/// one, or take a single record when another allocator holds the claim.
/// Returns the record and the allocator's new claim.
#[inline(never)]
fn reclaim(
    cur: *const NonNull<Record>,
    bottom: *const NonNull<Record>,
) -> (NonNull<Record>, *const NonNull<Record>, *const NonNull<Record>) {
    if !cur.is_null() {
        unclaim(cur, bottom);
    }
    let (cur, bottom) = claim(ALLOC_BATCH);
    if cur.is_null() {
        return (allocate_raw().into_record(), cur, bottom);
    }
    // SAFETY: a fresh claim of ALLOC_BATCH records: cur - 1 is in it.
    unsafe {
        let cur = cur.sub(1);
        (cur.read(), cur, bottom)
    }
}

#[inline(never)]
fn unclaim(cur: *const NonNull<Record>, bottom: *const NonNull<Record>) {
    // SAFETY: this thread's State, referenced only within this function.
    let st = unsafe { &mut *state() };
    let left = st.free.release(cur, bottom);
    st.allocs -= left as u64;
}

impl Packet {
    /// The record, giving up the handle without freeing it.
    #[inline(always)]
    fn into_record(self) -> NonNull<Record> {
        let rec = self.rec;
        std::mem::forget(self);
        rec
    }
}

/// Add chunks to the pool: one the first time, then twice as many as the
/// step before (as Snabb does), so a busy graph stops growing quickly.
#[cold]
#[inline(never)]
fn grow(st: &mut State) {
    let n = st.next_step;
    st.next_step = (n * 2).min(64);
    for _ in 0..n {
        assert!(
            st.total as usize + BUFFERS_PER_CHUNK <= MAX_POOL,
            "packet memory: more than {MAX_POOL} buffers on one thread"
        );
        let c = memory::alloc_chunk().expect("packet memory: cannot map a 2 MiB chunk");
        st.chunks.push(c);
        // The records, then a slot per record for a split packet's tail.
        let records: Box<[Record]> = (0..2 * BUFFERS_PER_CHUNK)
            .map(|i| {
                let base = c.virt + i * STRIDE;
                if i >= BUFFERS_PER_CHUNK {
                    return Record { data: ptr::null_mut(), len: 0, start: 0, dma: 0, owner: HOST, cap: 0 };
                }
                Record {
                    data: (base + HEADROOM) as *mut u8,
                    len: 0,
                    start: HEADROOM as u32,
                    dma: c.dma + (i * STRIDE) as u64,
                    owner: HOST,
                    cap: BUFFER_SIZE as u32,
                }
            })
            .collect();
        // SAFETY: a fresh allocation; the block is freed only with the State.
        let records = unsafe { NonNull::new_unchecked(Box::into_raw(records)) };
        // Pushed last to first, so that the first buffers are used first.
        for i in (0..BUFFERS_PER_CHUNK).rev() {
            // SAFETY: i is inside the block.
            st.free.push(unsafe { records.cast::<Record>().add(i) });
        }
        st.records.push(records);
        st.total += BUFFERS_PER_CHUNK as u64;
    }
}

/// This thread's packet counters.
pub fn stats() -> Stats {
    // SAFETY: a read of this thread's State.
    let st = unsafe { &*state() };
    let in_use = st.total - st.free.len() as u64;
    Stats {
        allocs: st.allocs,
        frees: st.allocs - in_use,
        foreign_wrapped: st.foreign_wrapped,
        foreign_returned: st.foreign_returned,
        in_use,
        total: st.total,
        moved_bytes: st.moved_bytes,
        flattened: st.flattened,
    }
}

/// Changes whenever an owner (of any thread) revokes its buffers or goes
/// away: a holder of foreign buffers a device may write into (a NIC receive
/// ring) compares it with the value it last saw, once a breath, and on a
/// change gives back every buffer [`Packet::is_revoked`] names.
#[inline]
pub fn revocations() -> u64 {
    REVOCATIONS.load(Ordering::Relaxed)
}

static REVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// This thread's pool id (1 and up).
pub fn pool_id() -> u32 {
    // SAFETY: a read of this thread's State.
    unsafe { (*state()).pool }
}

/// Records of other pools may come to this thread (it consumes a
/// cross-worker link): from now on its batch frees check every record.
pub fn expect_visitors() {
    // SAFETY: this thread's State; no other reference is live.
    unsafe { (*state()).visitors = true };
}

/// The Tail slot that goes with host record `rec` (the second half of its
/// chunk's record block).
///
/// # Safety
/// `rec` must be a host record of this thread.
#[inline(always)]
unsafe fn tail_of(rec: NonNull<Record>) -> *mut Tail {
    // SAFETY: per the contract, rec lies in the first half of a block of
    // 2 * BUFFERS_PER_CHUNK records; its Tail is BUFFERS_PER_CHUNK further.
    unsafe { rec.as_ptr().add(BUFFERS_PER_CHUNK) as *mut Tail }
}

/// A chain record's later buffers.
///
/// # Safety
/// `rec` must be a chain record owned by a live handle; the slice is valid
/// while the handle lives and the record stays a chain.
#[inline]
unsafe fn chain_parts<'a>(rec: NonNull<Record>) -> &'a [ChainPart] {
    // SAFETY: per the contract: `chain` wrote the list at the start of the
    // record's own host buffer, HEADROOM before the data pointer it kept.
    unsafe {
        let l = &*((*tail_of(rec)).ptr.sub(HEADROOM) as *const ChainList);
        &l.parts[..l.n as usize]
    }
}

/// Make a chain record a host record of this pool again (its own buffer,
/// as the freelist keeps it, but for the checksum bits) and hand each of
/// its tokens, first buffer's first, to `f`.
///
/// # Safety
/// `rec` must be a chain record whose handle is gone or is being turned
/// into a host packet, ours to write.
unsafe fn unchain(rec: NonNull<Record>, mut f: impl FnMut(u64)) {
    // SAFETY: per the contract.
    unsafe {
        let (r, t) = (rec.as_ptr(), tail_of(rec));
        f((*t).token);
        for c in chain_parts(rec) {
            f(c.token);
        }
        (*r).data = (*t).ptr;
        (*r).start = HEADROOM as u32;
        (*r).dma = (*t).dma;
        (*r).cap = BUFFER_SIZE as u32 | ((*r).cap & CSUM_BITS);
    }
}

/// Copy a split packet's tail into its head's buffer, right after the
/// head, and give the tail back to its owner: the packet is then an
/// ordinary host packet. A chain packet's parts are copied into its
/// record's own host buffer, and every buffer goes back.
///
/// # Safety
/// `rec` must be a split record of this thread owned by a live handle, with
/// no reference into the record live.
#[cold]
#[inline(never)]
unsafe fn flatten(rec: NonNull<Record>) {
    // SAFETY: per the contract.
    if unsafe { (*rec.as_ptr()).cap } & FIXED_START != 0 {
        return unsafe { flatten_chain(rec) };
    }
    // SAFETY: per the contract; wrap_tail checked that head and tail fit
    // the host buffer from the head's start.
    unsafe {
        let r = rec.as_ptr();
        let t = tail_of(rec);
        let tail_len = (*t).len as usize;
        let head_len = (*r).len as usize - tail_len;
        let dst = std::slice::from_raw_parts_mut((*r).data.add(head_len), tail_len);
        crate::copy::copy(dst, std::slice::from_raw_parts((*t).ptr, tail_len));
        let owner = (*r).owner & !SPLIT;
        let (home, token) = ((*t).home, (*t).token);
        let st = state();
        // The head stays a host record of the tail's pool (wrap_tail made
        // them together), away from it if this is not that pool.
        (*r).owner = if home == (*st).pool { HOST } else { home << AWAY_SHIFT };
        (*st).flattened += 1;
        if home == (*st).pool {
            let keepalive = give_back(&mut *st, owner, token);
            drop(keepalive);
        } else {
            let sh = shared(home);
            sh.tokens.lock().unwrap().push((owner, token));
            sh.pending.store(true, Ordering::Release);
        }
    }
}

/// `flatten` for a chain record.
///
/// # Safety
/// As for `flatten`, and `rec` is a chain record.
unsafe fn flatten_chain(rec: NonNull<Record>) {
    // SAFETY: per the contract: `chain` checked that the frame fits a host
    // buffer after HEADROOM, where its own buffer's data pointer is; the
    // list lies before it, so the copies never overwrite it.
    unsafe {
        let r = rec.as_ptr();
        let t = tail_of(rec);
        let dst = std::slice::from_raw_parts_mut((*t).ptr, (*r).len as usize);
        let first = (*r).len as usize - (*t).len as usize;
        crate::copy::copy(&mut dst[..first], std::slice::from_raw_parts((*r).data, first));
        let mut at = first;
        for c in chain_parts(rec) {
            let n = c.len as usize;
            crate::copy::copy(&mut dst[at..at + n], std::slice::from_raw_parts(c.ptr, n));
            at += n;
        }
        let (owner, home) = ((*r).owner & !SPLIT, (*t).home);
        let st = state();
        (*st).flattened += 1;
        let mut tokens = [0u64; MAX_CHAIN];
        let mut n = 0;
        unchain(rec, |tok| {
            tokens[n] = tok;
            n += 1;
        });
        (*r).owner = if home == (*st).pool { HOST } else { home << AWAY_SHIFT };
        if home == (*st).pool {
            let mut keepalive = None;
            for &tok in &tokens[..n] {
                keepalive = give_back(&mut *st, owner, tok).or(keepalive);
            }
            drop(keepalive);
        } else {
            let sh = shared(home);
            sh.tokens.lock().unwrap().extend(tokens[..n].iter().map(|&tok| (owner, tok)));
            sh.pending.store(true, Ordering::Release);
        }
    }
}

/// A split packet is dropped: its head goes on the freelist, its tail home
/// (on another thread, both go home together).
#[cold]
#[inline(never)]
fn free_split(rec: NonNull<Record>) {
    // SAFETY: this thread's State, referenced only in this function; rec is
    // a split record whose handle is going.
    let st = unsafe { &mut *state() };
    // SAFETY: as above.
    if unsafe { (*tail_of(rec)).home } != st.pool {
        // SAFETY: as above.
        let home = unsafe { (*tail_of(rec)).home };
        send_home(st, home, rec.as_ptr() as usize | TAGGED);
        return;
    }
    let keepalive = home_free(st, rec.as_ptr() as usize);
    drop(keepalive);
}

/// A host record of another pool is dropped here (or of this pool, back
/// home through a cross-worker link): rearmed, and onto its home's
/// freelist, through the return ring when that is another pool's.
#[cold]
#[inline(never)]
fn free_away(rec: NonNull<Record>) {
    // SAFETY: this thread's State, referenced only in this function; rec is
    // a host record no handle refers to any more, ours to write until it
    // is on its home's ring.
    let st = unsafe { &mut *state() };
    let home = unsafe { (*rec.as_ptr()).owner } >> AWAY_SHIFT;
    // SAFETY: as above.
    unsafe {
        rearm(rec.as_ptr());
        (*rec.as_ptr()).owner = HOST;
    }
    if home == st.pool {
        st.free.push(rec);
    } else {
        send_home(st, home, rec.as_ptr() as usize);
    }
}

/// One of `owner`'s buffers (token `token`) is back from the graph, in
/// `st`, the owner's pool. Returns the owner's keep-alive object when this
/// was the last buffer of an owner that went away: the caller drops it,
/// outside any borrow of the State (it may own packets itself).
fn give_back(st: &mut State, owner: u32, token: u64) -> Option<Rc<dyn std::any::Any>> {
    st.foreign_returned += 1;
    let o = &mut st.owners[(owner & SLOT_MASK) as usize];
    o.outstanding -= 1;
    if o.open {
        o.returns.push(token);
        None
    } else if o.outstanding == 0 {
        o.keepalive.take()
    } else {
        None
    }
}

/// The last step of a free, in the record's home pool `st`: a host record
/// goes on the freelist; a split record's head too, and its tail's token to
/// its owner; a shell to the shells, and its token to its owner.
fn home_free(st: &mut State, e: usize) -> Option<Rc<dyn std::any::Any>> {
    let r = (e & !TAGGED) as *mut Record;
    // SAFETY: a record of this pool that no handle refers to any more, sent
    // (or brought) home; nothing else touches it now.
    unsafe {
        let owner = (*r).owner;
        if owner & SPLIT != 0 && (*r).cap & FIXED_START != 0 {
            let mut keepalive = None;
            let mut tokens = [0u64; MAX_CHAIN];
            let mut n = 0;
            unchain(NonNull::new_unchecked(r), |tok| {
                tokens[n] = tok;
                n += 1;
            });
            (*r).owner = HOST;
            rearm(r);
            st.free.push(NonNull::new_unchecked(r));
            for &tok in &tokens[..n] {
                keepalive = give_back(st, owner & !SPLIT, tok).or(keepalive);
            }
            keepalive
        } else if owner & SPLIT != 0 {
            let token = (*tail_of(NonNull::new_unchecked(r))).token;
            (*r).owner = HOST;
            rearm(r);
            st.free.push(NonNull::new_unchecked(r));
            give_back(st, owner & !SPLIT, token)
        } else if owner & SLOT_MASK != 0 {
            let token = (*r.cast::<Shell>()).token;
            st.shells.push(NonNull::new_unchecked(r));
            give_back(st, owner, token)
        } else {
            (*r).owner = HOST;
            rearm(r);
            st.free.push(NonNull::new_unchecked(r));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Pools across threads: ids, what other threads see of a pool, return rings.

/// A return ring entry that needs more than the freelist at home (a shell
/// or a split record): records are 32-byte aligned, so the low bit is free.
const TAGGED: usize = 1;
/// Entries a return ring holds: more than the records a busy link moves in
/// a breath, several times over.
const RETURN_RING: usize = 8192;
/// Ring entries (pointers) in a cache line, and how far ahead of where it
/// reads a ring's consumer asks for the lines the other core wrote.
pub(crate) const SLOTS_PER_LINE: usize = 8;
pub(crate) const RING_AHEAD: usize = 2 * SLOTS_PER_LINE;
/// Entries written before they are published at once.
const RETURN_BATCH: usize = 64;
/// Owner status bits in `Shared::status`.
const OWNER_OPEN: u32 = 1;
const OWNER_REVOKED: u32 = 2;

/// What other threads see of a pool, and how they send its records home.
/// Made once per pool id and kept for the process's life (ids are reused).
struct Shared {
    /// Per owner slot: OWNER_OPEN | OWNER_REVOKED, as `is_revoked` on
    /// another thread reads it.
    status: Box<[AtomicU32]>,
    /// Return rings from other pools to this one; `inbound_gen` changes
    /// when one is added.
    inbound: Mutex<Vec<Arc<ReturnRing>>>,
    inbound_gen: AtomicU32,
    /// Tail tokens given back on other threads (split packets flattened
    /// there): owner id in this pool, token.
    tokens: Mutex<Vec<(u32, u64)>>,
    /// Entries that found their return ring full when their thread ended.
    spill: Mutex<Vec<usize>>,
    /// `tokens` or `spill` may hold something.
    pending: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            status: (0..=SLOT_MASK).map(|_| AtomicU32::new(0)).collect(),
            inbound: Mutex::new(Vec::new()),
            inbound_gen: AtomicU32::new(0),
            tokens: Mutex::new(Vec::new()),
            spill: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        }
    }
}

static POOLS: [AtomicPtr<Shared>; MAX_POOLS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_POOLS];
/// The next pool id never used, and ids free again.
static POOL_IDS: Mutex<(u32, Vec<u32>)> = Mutex::new((1, Vec::new()));

fn take_pool_id() -> u32 {
    let mut ids = POOL_IDS.lock().unwrap();
    let id = match ids.1.pop() {
        Some(id) => id,
        None => {
            let id = ids.0;
            assert!((id as usize) < MAX_POOLS, "packet pools: more than {} threads with packets", MAX_POOLS - 1);
            ids.0 += 1;
            id
        }
    };
    if POOLS[id as usize].load(Ordering::Acquire).is_null() {
        POOLS[id as usize].store(Box::into_raw(Box::new(Shared::new())), Ordering::Release);
    }
    id
}

fn release_pool_id(id: u32) {
    let sh = shared(id);
    for s in sh.status.iter() {
        s.store(0, Ordering::Relaxed);
    }
    POOL_IDS.lock().unwrap().1.push(id);
}

/// What other threads see of pool `id` (one that exists or existed).
#[inline]
fn shared(id: u32) -> &'static Shared {
    let p = POOLS[id as usize].load(Ordering::Acquire);
    assert!(!p.is_null(), "packet pool {id} does not exist");
    // SAFETY: a Shared is made once per id and never freed.
    unsafe { &*p }
}

/// Keeps a value on a cache line (two, against the adjacent-line
/// prefetcher) of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// Records dropped in one pool going home to another: single producer (the
/// pool they were dropped in) and single consumer (their home). The
/// producer writes entries, then publishes its cursor with a Release store
/// every RETURN_BATCH entries and once a breath; the home reads up to it
/// (Acquire) and publishes how far it read.
struct ReturnRing {
    slots: Box<[AtomicUsize]>,
    tail: Padded<AtomicUsize>,
    head: Padded<AtomicUsize>,
    /// The producing pool's thread ended: once empty, the ring can go.
    closed: AtomicBool,
}

/// The producer's end of a return ring, kept in its pool.
struct Outbox {
    home: u32,
    ring: Arc<ReturnRing>,
    /// Next entry to write, and the last published.
    tail: usize,
    published: usize,
    /// The home's read cursor as last seen.
    head: usize,
    /// Entries that found the ring full, written when there is room.
    overflow: Vec<usize>,
}

impl Outbox {
    #[inline]
    fn push(&mut self, e: usize) {
        let n = self.ring.slots.len();
        if self.tail - self.head == n {
            self.head = self.ring.head.0.load(Ordering::Acquire);
            if self.tail - self.head == n {
                self.overflow.push(e);
                return;
            }
        }
        self.ring.slots[self.tail & (n - 1)].store(e, Ordering::Relaxed);
        self.tail += 1;
        if self.tail - self.published >= RETURN_BATCH {
            self.publish();
        }
    }

    #[inline]
    fn publish(&mut self) {
        self.ring.tail.0.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// Publish what is written, and write what waited for room.
    fn flush(&mut self) {
        if !self.overflow.is_empty() {
            let waiting = std::mem::take(&mut self.overflow);
            for e in waiting {
                self.push(e);
            }
        }
        if self.tail != self.published {
            self.publish();
        }
    }
}

/// Send entry `e` (a record, TAGGED when it needs more than the freelist)
/// home to pool `home`, through this pool's return ring to it.
fn send_home(st: &mut State, home: u32, e: usize) {
    let i = outbox_for(st, home);
    st.outboxes[i].push(e);
}

/// The index in `st.outboxes` of the return ring to pool `home`.
#[inline]
fn outbox_for(st: &mut State, home: u32) -> usize {
    match st.outboxes.iter().position(|o| o.home == home) {
        Some(i) => i,
        None => open_outbox(st, home),
    }
}

#[cold]
#[inline(never)]
fn open_outbox(st: &mut State, home: u32) -> usize {
    let ring = Arc::new(ReturnRing {
        slots: (0..RETURN_RING).map(|_| AtomicUsize::new(0)).collect(),
        tail: Padded(AtomicUsize::new(0)),
        head: Padded(AtomicUsize::new(0)),
        closed: AtomicBool::new(false),
    });
    let sh = shared(home);
    sh.inbound.lock().unwrap().push(ring.clone());
    sh.inbound_gen.fetch_add(1, Ordering::Release);
    st.outboxes.push(Outbox { home, ring, tail: 0, published: 0, head: 0, overflow: Vec::new() });
    st.outboxes.len() - 1
}

/// Publish the records this thread dropped for other pools (the engine
/// does it after each breath; they are also published every 64).
pub fn flush_returns() {
    // SAFETY: this thread's State; no other reference is live.
    let st = unsafe { &mut *state() };
    for ob in &mut st.outboxes {
        ob.flush();
    }
}

/// Take back this pool's records that came home from other threads (the
/// engine does it once a breath; an allocation that finds the freelist
/// empty does it before growing the pool).
pub fn collect_returns() {
    let graves = {
        // SAFETY: this thread's State; the reference ends in this block.
        let st = unsafe { &mut *state() };
        collect(st);
        std::mem::take(&mut st.graveyard)
    };
    drop(graves);
}

/// `collect_returns` on the pool `st` (this thread's, or an orphan).
fn collect(st: &mut State) {
    let generation = st.shared.inbound_gen.load(Ordering::Acquire);
    if generation != st.inbound_gen {
        st.inbound_gen = generation;
        let rings = st.shared.inbound.lock().unwrap().clone();
        for r in rings {
            if !st.inbound.iter().any(|(x, _)| Arc::ptr_eq(x, &r)) {
                let head = r.head.0.load(Ordering::Relaxed);
                st.inbound.push((r, head));
            }
        }
    }
    let mut gone = false;
    {
        let State { inbound, free, tagged, .. } = &mut *st;
        for (ring, head) in inbound.iter_mut() {
            let tail = ring.tail.0.load(Ordering::Acquire);
            if tail == *head {
                gone |= ring.closed.load(Ordering::Acquire) && ring.tail.0.load(Ordering::Acquire) == *head;
                continue;
            }
            let mask = ring.slots.len() - 1;
            let slots = &ring.slots[..];
            // The cursors stay in registers for the loop: host records go
            // straight onto the freelist, above its top, counted in at the
            // end (it has room for every record: see MAX_POOL).
            let (mut h, top) = (*head, free.top);
            let to = free.slot(top);
            let mut m = 0;
            while h != tail {
                // The entries were written on the other core: ask for the
                // lines a little ahead, so that their misses overlap.
                if h.is_multiple_of(SLOTS_PER_LINE) && tail - h > RING_AHEAD {
                    prefetch(&slots[(h + RING_AHEAD) & mask]);
                }
                let e = slots[h & mask].load(Ordering::Relaxed);
                // The record's line is in the other core's cache: it will
                // be written here when it is next allocated (soon: the
                // freelist is a stack), so start taking it over now.
                prefetch_write((e & !TAGGED) as *const Record);
                if e & TAGGED == 0 {
                    // SAFETY: a rearmed host record of this pool
                    // (free_away), into a free slot above the top.
                    unsafe { to.add(m).write(NonNull::new_unchecked(e as *mut Record)) };
                    m += 1;
                } else {
                    tagged.push(e);
                }
                h += 1;
            }
            free.top = top + m;
            *head = h;
            ring.head.0.store(tail, Ordering::Release);
        }
    }
    if st.shared.pending.load(Ordering::Relaxed) && st.shared.pending.swap(false, Ordering::Acquire) {
        let spill = std::mem::take(&mut *st.shared.spill.lock().unwrap());
        for e in spill {
            if e & TAGGED == 0 {
                // SAFETY: as above.
                st.free.push(unsafe { NonNull::new_unchecked(e as *mut Record) });
            } else {
                st.tagged.push(e);
            }
        }
        let tokens = std::mem::take(&mut *st.shared.tokens.lock().unwrap());
        for (owner, token) in tokens {
            if let Some(k) = give_back(st, owner, token) {
                st.graveyard.push(k);
            }
        }
    }
    if !st.tagged.is_empty() {
        let mut tagged = std::mem::take(&mut st.tagged);
        for &e in &tagged {
            if let Some(k) = home_free(st, e) {
                st.graveyard.push(k);
            }
        }
        tagged.clear();
        st.tagged = tagged;
    }
    if gone {
        // Rings from pools that ended, read to the end: forget them.
        let mut all = st.shared.inbound.lock().unwrap();
        st.inbound.retain(|(r, head)| {
            let keep = !(r.closed.load(Ordering::Acquire) && r.tail.0.load(Ordering::Acquire) == *head);
            if !keep {
                all.retain(|x| !Arc::ptr_eq(x, r));
            }
            keep
        });
    }
}

// ---------------------------------------------------------------------------
// Foreign buffers.

/// Describes a buffer that a [`BufferOwner`] lends to the graph.
#[derive(Clone, Copy, Debug)]
pub struct ForeignBuffer {
    /// First byte of the buffer in this process's memory.
    pub base: NonNull<u8>,
    /// Bytes in the buffer.
    pub cap: u32,
    /// Device address of `base` (0 when unknown).
    pub dma: u64,
    /// Offset of the first data byte.
    pub start: u32,
    /// Bytes of data now in the buffer.
    pub len: u32,
    /// The owner's name for the buffer, given back when it returns.
    pub token: u64,
    /// Data must not move inside the buffer (header edits move bytes).
    pub fixed_start: bool,
}

/// What an owner gets back when it takes its own packet out of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub token: u64,
    pub start: u32,
    pub len: u32,
    /// Bytes header edits moved inside the buffer (its start being fixed).
    pub moved: u32,
}

/// A lender of foreign buffers (a vhost-user port lending guest receive
/// buffers, say). Its packets come back either through
/// [`BufferOwner::reclaim`] (the owner consumes one of its own packets) or,
/// when dropped anywhere else, on its return ring ([`BufferOwner::drain_returns`]).
///
/// If the owner is dropped while packets are out, its slot stays closed but
/// alive, holding the keep-alive object, until the last one comes back; its
/// tokens are then discarded.
pub struct BufferOwner {
    /// The id in its pool (slot | generation << 16), as records hold it.
    id: u32,
    pool: u32,
    _not_send: PhantomData<*mut Record>,
}

impl BufferOwner {
    /// Register an owner. `keepalive` holds whatever must outlive every
    /// buffer lent (the mapping of guest memory, for instance).
    pub fn register(name: &str, keepalive: Option<Rc<dyn std::any::Any>>) -> BufferOwner {
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        let slot = match st.owners.iter().skip(1).position(|o| !o.open && o.outstanding == 0) {
            Some(i) => i + 1,
            None => {
                assert!(st.owners.len() < 0xffff, "too many buffer owners");
                st.owners.push(OwnerSlot {
                    generation: 0,
                    open: false,
                    revoked: false,
                    name: String::new(),
                    outstanding: 0,
                    returns: Vec::new(),
                    keepalive: None,
                });
                st.owners.len() - 1
            }
        };
        let o = &mut st.owners[slot];
        o.generation = o.generation.wrapping_add(1) & GENERATION_MASK as u16;
        o.open = true;
        o.revoked = false;
        o.name = name.to_string();
        o.returns = Vec::with_capacity(4096);
        o.keepalive = keepalive;
        st.shared.status[slot].store(OWNER_OPEN, Ordering::Release);
        BufferOwner { id: slot as u32 | (o.generation as u32) << 16, pool: st.pool, _not_send: PhantomData }
    }

    fn slot(&self) -> usize {
        (self.id & 0xffff) as usize
    }

    /// Lend a buffer to the graph as a packet.
    ///
    /// # Safety
    /// `buf.base .. buf.base + buf.cap` must be valid for reads and writes
    /// for as long as the packet exists: until it comes back through
    /// `reclaim` or the return ring, or, if the owner is dropped first, for
    /// as long as the owner's keep-alive object lives. `start + len <= cap`
    /// is checked here.
    // Inlined: called out of line, `buf` comes through memory the caller
    // has just stored field by field, and the wider loads here stall on
    // store forwarding (a lent buffer a packet pays for it).
    #[inline]
    pub unsafe fn wrap(&self, buf: ForeignBuffer) -> Packet {
        assert!(
            buf.start as u64 + buf.len as u64 <= buf.cap as u64,
            "foreign buffer: start {} + len {} beyond cap {}",
            buf.start,
            buf.len,
            buf.cap
        );
        assert!(buf.cap <= CAP_MASK, "foreign buffer: cap {} of 64 KiB or more", buf.cap);
        assert!(buf.len as usize <= BUFFER_SIZE, "foreign buffer: {} bytes, more than BUFFER_SIZE", buf.len);
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        let shell = match st.shells.pop() {
            Some(s) => s,
            None => grow_shells(st),
        };
        st.owners[self.slot()].outstanding += 1;
        st.foreign_wrapped += 1;
        // SAFETY: shell is a free shell owned by this thread; start <= cap
        // was checked, so data stays inside the lent buffer.
        unsafe {
            shell.cast::<Shell>().as_ptr().write(Shell {
                rec: Record {
                    data: buf.base.as_ptr().add(buf.start as usize),
                    len: buf.len,
                    start: buf.start,
                    dma: buf.dma,
                    owner: self.id,
                    cap: buf.cap | if buf.fixed_start { FIXED_START } else { 0 },
                },
                token: buf.token,
                moved: 0,
                home: st.pool,
            });
        }
        Packet { rec: shell, _not_send: PhantomData }
    }

    /// Make a split packet: `head` (a host packet holding the first bytes
    /// of a frame, a snapshot the lender cannot change) followed by
    /// `tail.len` bytes of the lent buffer from `tail.start` (the rest of
    /// the frame, left where it is). The tail's token comes back on the
    /// return ring when the packet is dropped or flattened. `tail.cap`,
    /// `tail.fixed_start` are not used.
    ///
    /// # Safety
    /// As for [`BufferOwner::wrap`]: `tail.base + tail.start` for
    /// `tail.len` bytes must stay valid until the token comes back (or the
    /// keep-alive object goes). `head` must be a host packet, not split,
    /// with room after it for the tail (checked).
    pub unsafe fn wrap_tail(&self, head: Packet, tail: ForeignBuffer) -> Packet {
        assert!(!head.is_foreign(), "wrap_tail: the head must be a host packet");
        // The head must be of this pool, as the tail is: one of another
        // (it came over a cross-worker link) is copied first.
        let head = if head.rec().owner == HOST { head } else { head.copy_to_host() };
        let total = head.len() + tail.len as usize;
        assert!(total <= head.capacity(), "wrap_tail: {total} bytes do not fit the head's buffer");
        let rec = head.into_record();
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        st.owners[self.slot()].outstanding += 1;
        st.foreign_wrapped += 1;
        // SAFETY: rec is a host record of this thread that we now own; its
        // Tail slot is free (only split records use it).
        unsafe {
            tail_of(rec).write(Tail {
                ptr: tail.base.as_ptr().add(tail.start as usize),
                dma: if tail.dma == 0 { 0 } else { tail.dma + tail.start as u64 },
                token: tail.token,
                len: tail.len,
                home: st.pool,
            });
            (*rec.as_ptr()).len = total as u32;
            (*rec.as_ptr()).owner = self.id | SPLIT;
        }
        Packet { rec, _not_send: PhantomData }
    }

    /// Ask for every buffer lent back: whoever holds one where a device may
    /// write into it (a NIC's receive ring) gives it back at once (see
    /// [`revocations`]); buffers elsewhere come back as they are dropped.
    /// Lending more with a revoked owner is an error (make a new one).
    pub fn revoke(&self) {
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        let o = &mut st.owners[self.slot()];
        if !o.revoked {
            o.revoked = true;
            st.shared.status[self.slot()].fetch_or(OWNER_REVOKED, Ordering::Release);
            REVOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether [`BufferOwner::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        st.owners[self.slot()].revoked
    }

    /// Take back one of this owner's packets without going through the
    /// return ring (to put it on a used ring with its final start and
    /// length). A packet of another owner, or a host packet, is given back.
    pub fn reclaim(&self, p: Packet) -> Result<Reclaimed, Packet> {
        let r = p.rec();
        // SAFETY: a record whose owner word is an owner id is a Shell's.
        if r.owner != self.id || unsafe { (*p.rec.cast::<Shell>().as_ptr()).home } != self.pool {
            return Err(p);
        }
        // SAFETY: a foreign packet's record is the front of a Shell.
        let token = unsafe { (*p.rec.cast::<Shell>().as_ptr()).token };
        // SAFETY: as above.
        let moved = unsafe { (*p.rec.cast::<Shell>().as_ptr()).moved };
        let out = Reclaimed { token, start: r.start, len: r.len, moved };
        let shell = p.rec;
        std::mem::forget(p);
        // SAFETY: this thread's State; the shell's handle was just consumed.
        let st = unsafe { &mut *state() };
        st.owners[self.slot()].outstanding -= 1;
        st.foreign_returned += 1;
        st.shells.push(shell);
        Ok(out)
    }

    /// Take back one of this owner's chain packets (see [`chain`]) without
    /// the return ring: `f` gets each buffer's token and the frame's length
    /// in it, in order. Returns the frame's length. Any other packet is
    /// given back.
    pub fn reclaim_chain(&self, p: Packet, mut f: impl FnMut(u64, usize)) -> Result<usize, Packet> {
        // SAFETY: read only for a chain record, which has its Tail beside it.
        if !p.is_chain() || p.rec().owner & !SPLIT != self.id || unsafe { (*tail_of(p.rec)).home } != self.pool {
            return Err(p);
        }
        let total = p.len();
        p.for_each_chain_part(&mut f);
        let rec = p.into_record();
        // SAFETY: this thread's State; the chain's handle was just consumed.
        let st = unsafe { &mut *state() };
        let mut n = 0;
        // SAFETY: a chain record of this pool whose handle is gone.
        unsafe {
            unchain(rec, |_| n += 1);
            (*rec.as_ptr()).owner = HOST;
            rearm(rec.as_ptr());
        }
        st.free.push(rec);
        st.owners[self.slot()].outstanding -= n;
        st.foreign_returned += n;
        Ok(total)
    }

    /// Hand every token that came back since the last call to `f`.
    pub fn drain_returns(&self, mut f: impl FnMut(u64)) {
        // Swap the ring out so that f may drop packets (of any owner).
        let mut ring = {
            // SAFETY: this thread's State; the reference ends in this block.
            let st = unsafe { &mut *state() };
            std::mem::take(&mut st.owners[self.slot()].returns)
        };
        for &t in &ring {
            f(t);
        }
        ring.clear();
        // SAFETY: as above.
        let st = unsafe { &mut *state() };
        let o = &mut st.owners[self.slot()];
        if o.returns.is_empty() {
            o.returns = ring;
        } else {
            // f dropped more of our packets: keep them for the next call.
            ring.extend_from_slice(&o.returns);
            o.returns = ring;
        }
    }

    /// Buffers lent and not yet back.
    pub fn outstanding(&self) -> u64 {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        st.owners[self.slot()].outstanding
    }

    /// Tokens waiting on the return ring.
    pub fn returns_pending(&self) -> usize {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        st.owners[self.slot()].returns.len()
    }

    /// The owner's id, unique in the process (its pool in the high half):
    /// what [`Packet::foreign_token`] names a packet's owner by.
    pub fn id(&self) -> u64 {
        (self.pool as u64) << 32 | self.id as u64
    }
}

impl Drop for BufferOwner {
    fn drop(&mut self) {
        let keepalive = {
            // SAFETY: this thread's State; the reference ends in this block.
            let st = unsafe { &mut *state() };
            let o = &mut st.owners[self.slot()];
            o.open = false;
            o.returns = Vec::new();
            st.shared.status[self.slot()].store(OWNER_REVOKED, Ordering::Release);
            if !o.revoked {
                o.revoked = true;
                REVOCATIONS.fetch_add(1, Ordering::Relaxed);
            }
            if o.outstanding == 0 { o.keepalive.take() } else { None }
        };
        // Dropped outside the borrow: it may own packets itself.
        drop(keepalive);
    }
}

impl fmt::Debug for BufferOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        write!(f, "BufferOwner({} #{})", st.owners[self.slot()].name, self.id)
    }
}

#[cold]
fn grow_shells(st: &mut State) -> NonNull<Record> {
    let block: Box<[Shell]> = (0..256)
        .map(|_| Shell {
            rec: Record { data: ptr::null_mut(), len: 0, start: 0, dma: 0, owner: HOST, cap: 0 },
            token: 0,
            moved: 0,
            home: 0,
        })
        .collect();
    // SAFETY: a fresh allocation; the block is freed only with the State.
    let block = unsafe { NonNull::new_unchecked(Box::into_raw(block)) };
    for i in 0..block.len() {
        // SAFETY: i is inside the block.
        st.shells.push(unsafe { block.cast::<Shell>().add(i).cast() });
    }
    st.shell_blocks.push(block);
    st.shells.pop().unwrap()
}

/// A foreign packet is dropped: its token goes to its owner, at home.
#[cold]
fn return_foreign(shell: NonNull<Record>) {
    let keepalive = {
        // SAFETY: this thread's State; shell is the dropped packet's record,
        // now unreachable from any handle. The borrow ends in this block.
        let st = unsafe { &mut *state() };
        // SAFETY: as above: the shell is ours to read.
        let home = unsafe { (*shell.cast::<Shell>().as_ptr()).home };
        if home != st.pool {
            send_home(st, home, shell.as_ptr() as usize | TAGGED);
            return;
        }
        home_free(st, shell.as_ptr() as usize)
    };
    drop(keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with a UDP-like checksum field at 40, holding a "pseudo-header"
    /// seed, and what finishing the request (start 34, offset 6) gives.
    fn partial_frame() -> (Vec<u8>, Vec<u8>) {
        let mut f: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        f[40..42].copy_from_slice(&[0x12, 0x34]);
        let mut done = f.clone();
        assert!(crate::checksum::complete_checksum(&mut done, 34, 6));
        (f, done)
    }

    #[test]
    fn partial_csum_is_noted_carried_and_forgotten_on_free() {
        let (f, done) = partial_frame();
        let c = PartialCsum { start: 34, offset: 6 };
        let mut p = Packet::from_bytes(&f);
        assert_eq!(p.partial_csum(), None);
        assert!(p.set_partial_csum(Some(c)));
        assert_eq!(p.partial_csum(), Some(c));
        assert_eq!(p.capacity(), BUFFER_SIZE - HEADROOM, "the request leaves the capacity alone");
        // What the record cannot hold is refused, and nothing is noted.
        for bad in [(1024, 6), (34, 7), (34, 0), (34, 64)] {
            let mut q = Packet::from_bytes(&f);
            assert!(!q.set_partial_csum(Some(PartialCsum { start: bad.0, offset: bad.1 })), "{bad:?}");
            assert_eq!(q.partial_csum(), None);
        }
        assert!(p.set_partial_csum(Some(PartialCsum { start: 1023, offset: 62 })));
        assert_eq!(p.partial_csum(), Some(PartialCsum { start: 1023, offset: 62 }));
        assert!(p.set_partial_csum(Some(c)));
        // Copies carry it, by every path.
        assert_eq!(p.clone().partial_csum(), Some(c));
        assert_eq!(p.copy_to_host().partial_csum(), Some(c));
        assert_eq!(Allocator::new(1).clone_of(&p).partial_csum(), Some(c));
        // Finishing sums the frame and forgets the request.
        let mut q = p.clone();
        assert!(q.finish_partial_csum());
        assert_eq!((q.data(), q.partial_csum()), (&done[..], None));
        assert!(q.finish_partial_csum(), "nothing to do is no failure");
        assert_eq!(q.data(), &done[..]);
        // A freed record comes back without it.
        drop(p);
        drop(q);
        let fresh: Vec<Packet> = (0..64).map(|_| Packet::new()).collect();
        assert!(fresh.iter().all(|p| p.partial_csum().is_none()));
    }

    #[test]
    fn header_edits_move_or_finish_the_partial_csum() {
        let (f, done) = partial_frame();
        let c = PartialCsum { start: 34, offset: 6 };
        // Stripping and pushing headers in front of the summed part moves it.
        let mut p = Packet::from_bytes(&f);
        p.set_partial_csum(Some(c));
        p.shift_left(14);
        assert_eq!(p.partial_csum(), Some(PartialCsum { start: 20, offset: 6 }));
        p.prepend(&[0xaa; 18]);
        assert_eq!(p.partial_csum(), Some(PartialCsum { start: 38, offset: 6 }));
        p.shift_left(4);
        assert!(p.finish_partial_csum());
        assert_eq!(&p.data()[14..], &done[14..], "the sum still covers the same bytes");
        // Stripping into the summed part finishes it first.
        let mut p = Packet::from_bytes(&f);
        p.set_partial_csum(Some(c));
        p.shift_left(40);
        assert_eq!(p.partial_csum(), None);
        assert_eq!(p.data(), &done[40..]);
        // Pushing it past what the record holds finishes it first.
        let mut p = Packet::from_bytes(&f);
        p.set_partial_csum(Some(c));
        p.prepend(&[0xbb; 1000]);
        assert_eq!(p.partial_csum(), None);
        assert_eq!(&p.data()[1000..], &done[..]);
        // A request that does not fit the frame leaves the bytes alone.
        let mut p = Packet::from_bytes(&f[..38]);
        p.set_partial_csum(Some(c));
        assert!(!p.finish_partial_csum());
        assert_eq!((p.data(), p.partial_csum()), (&f[..38], None));
    }

    #[test]
    fn alloc_free_conserves() {
        let before = stats();
        {
            let mut v: Vec<Packet> = (0..1000).map(|_| Packet::new()).collect();
            assert_eq!(stats().in_use, before.in_use + 1000);
            v.truncate(10);
        }
        let after = stats();
        assert_eq!(after.in_use, before.in_use);
        assert_eq!(after.allocs - before.allocs, 1000);
        assert_eq!(after.frees - before.frees, 1000);
    }

    #[test]
    fn shifts_are_o1_within_headroom() {
        let mut p = Packet::from_bytes(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM);
        let a = p.data().as_ptr();
        p.shift_left(2);
        assert_eq!(p.data(), &[3, 4, 5, 6]);
        // SAFETY: pointer arithmetic only, for comparison.
        assert_eq!(p.data().as_ptr(), unsafe { a.add(2) }, "strip moved the start, not bytes");
        p.prepend(&[9, 9, 9]);
        assert_eq!(p.data(), &[9, 9, 9, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM - 1);
        // Beyond the headroom: the data moves up, nothing is lost.
        let big = vec![7u8; HEADROOM + 10];
        p.prepend(&big);
        assert_eq!(p.len(), 7 + HEADROOM + 10);
        assert_eq!(&p.data()[HEADROOM + 10..], &[9, 9, 9, 3, 4, 5, 6]);
        assert!(p.data()[..HEADROOM + 10].iter().all(|&b| b == 7));
    }

    #[test]
    fn capacity_and_resize() {
        let mut p = Packet::new();
        assert_eq!(p.capacity(), PAYLOAD_SIZE);
        p.resize(PAYLOAD_SIZE);
        assert!(p.data().iter().all(|&b| b == 0));
        assert_eq!(p.tailroom(), 0);
        p.truncate(10);
        assert_eq!(p.len(), 10);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.set_len(PAYLOAD_SIZE + 1)));
        assert!(r.is_err());
    }

    #[test]
    fn freed_packets_come_back_clean() {
        let mut p = Packet::from_bytes(&[1; 100]);
        p.shift_left(50);
        drop(p);
        let q = Packet::new();
        assert_eq!(q.headroom(), HEADROOM);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn clone_is_a_copy() {
        let mut p = Packet::from_bytes(b"hello");
        let q = p.clone();
        p.data_mut()[0] = b'j';
        assert_eq!(q.data(), b"hello");
        assert_eq!(p.data(), b"jello");
    }

    #[test]
    fn dma_address_follows_start() {
        let mut p = Packet::from_bytes(&[0; 64]);
        let a = p.dma_addr();
        assert_ne!(a, 0);
        p.shift_left(14);
        assert_eq!(p.dma_addr(), a + 14);
        assert_eq!(memory::virt_to_dma(p.data().as_ptr()), Some(p.dma_addr()));
    }

    /// A test owner: a pool of plain buffers lent out by index.
    struct TestOwner {
        // Boxed: each buffer's address is lent out and must not move.
        #[allow(clippy::vec_box)]
        bufs: Vec<Box<[u8; 2048]>>,
        owner: BufferOwner,
    }
    impl TestOwner {
        fn new(n: usize) -> TestOwner {
            TestOwner {
                bufs: (0..n).map(|_| Box::new([0u8; 2048])).collect(),
                owner: BufferOwner::register("test", None),
            }
        }
        fn lend(&mut self, i: usize, fixed: bool) -> Packet {
            let b = &mut self.bufs[i];
            b[12..16].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
            // SAFETY: the boxes live as long as the owner, which outlives
            // every packet in these tests.
            unsafe {
                self.owner.wrap(ForeignBuffer {
                    base: NonNull::new(b.as_mut_ptr()).unwrap(),
                    cap: 2048,
                    dma: 0x1000 * (i as u64 + 1),
                    start: 12,
                    len: 4,
                    token: i as u64,
                    fixed_start: fixed,
                })
            }
        }
    }

    #[test]
    fn foreign_drop_returns_to_owner_not_freelist() {
        let mut t = TestOwner::new(4);
        let before = stats();
        let p = t.lend(2, false);
        assert!(p.is_foreign());
        assert_eq!(p.data(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(p.dma_addr(), 0x3000 + 12);
        assert_eq!(t.owner.outstanding(), 1);
        drop(p);
        let after = stats();
        assert_eq!(after.frees, before.frees, "never freed into the host freelist");
        assert_eq!(t.owner.outstanding(), 0);
        let mut got = vec![];
        t.owner.drain_returns(|tok| got.push(tok));
        assert_eq!(got, vec![2]);
        t.owner.drain_returns(|_| panic!("drained twice"));
    }

    #[test]
    fn reclaim_takes_own_packet_only() {
        let mut t = TestOwner::new(2);
        let mut other = TestOwner::new(1);
        let mut p = t.lend(1, true);
        p.shift_left(2);
        let r = t.owner.reclaim(p).unwrap();
        assert_eq!(r, Reclaimed { token: 1, start: 12, len: 2, moved: 2 });
        assert_eq!(&t.bufs[1][12..14], &[0xcc, 0xdd], "fixed start: bytes moved down");
        let q = other.lend(0, false);
        let q = t.owner.reclaim(q).unwrap_err();
        assert!(t.owner.reclaim(Packet::new()).is_err());
        drop(q);
        assert_eq!(other.owner.returns_pending(), 1);
        assert_eq!(t.owner.outstanding(), 0);
    }

    #[test]
    fn copy_to_host_detaches() {
        let mut t = TestOwner::new(1);
        let p = t.lend(0, false);
        let h = p.copy_to_host();
        drop(p);
        assert!(!h.is_foreign());
        assert_eq!(h.data(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(t.owner.returns_pending(), 1);
    }

    #[test]
    fn owner_dropped_with_buffers_out_keeps_memory_alive() {
        let mem: Rc<dyn std::any::Any> = Rc::new(vec![0u8; 64]);
        let weak = Rc::downgrade(&mem);
        let owner = BufferOwner::register("closing", Some(mem));
        let mut backing = [0u8; 64];
        // SAFETY: backing outlives p in this test.
        let p = unsafe {
            owner.wrap(ForeignBuffer {
                base: NonNull::new(backing.as_mut_ptr()).unwrap(),
                cap: 64,
                dma: 0,
                start: 0,
                len: 64,
                token: 9,
                fixed_start: false,
            })
        };
        drop(owner);
        assert!(weak.upgrade().is_some(), "keep-alive held while a buffer is out");
        drop(p);
        assert!(weak.upgrade().is_none(), "released with the last buffer");
        // The slot can be reused with a new generation.
        let o2 = BufferOwner::register("next", None);
        assert_eq!(o2.outstanding(), 0);
    }

    /// Runs `f` on a fresh thread: a pool of its own, counted from zero.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn allocator_hands_out_distinct_fresh_packets_and_returns_the_rest() {
        on_fresh_thread(|| {
            let mut a = Allocator::new(10);
            let mut ps: Vec<Packet> = (0..300).map(|i| a.from_bytes(&[i as u8; 60])).collect();
            ps.push(a.allocate());
            assert_eq!(ps.last().unwrap().headroom(), HEADROOM);
            let mut addrs: Vec<*const u8> = ps.iter().map(|p| p.data().as_ptr()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 301, "no buffer handed out twice");
            // Claims of 10, then 128 at a time: 394 taken, 93 still held.
            assert_eq!(stats().in_use, 10 + 3 * 128, "the rest of the claim is held");
            drop(a);
            assert_eq!(stats().in_use, 301);
            drop(ps);
            let s = stats();
            assert_eq!((s.in_use, s.allocs, s.frees), (0, 301, 301));
        });
    }

    #[test]
    fn frees_and_single_allocations_during_a_claim() {
        on_fresh_thread(|| {
            let keep: Vec<Packet> = (0..150).map(|_| Packet::new()).collect();
            let mut a = Allocator::new(100);
            let mut held = Vec::new();
            for i in 0..1000 {
                // Frees land above the claim, single allocations take from
                // there or from below it; none may touch the claim.
                held.push(a.from_bytes(&[i as u8; 20]));
                held.push(Packet::from_bytes(&[1; 5]));
                if i % 3 == 0 {
                    held.swap_remove(i % held.len());
                    held.swap_remove(0);
                }
            }
            let mut addrs: Vec<*const u8> = held.iter().chain(&keep).map(|p| p.data().as_ptr()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), held.len() + keep.len(), "no buffer handed out twice");
            drop(a);
            drop(held);
            drop(keep);
            let s = stats();
            assert_eq!(s.in_use, 0);
            assert_eq!(s.allocs, s.frees);
            // The freelist is whole again: every record can be had once.
            let all: Vec<Packet> = (0..s.total).map(|_| Packet::new()).collect();
            assert_eq!(stats().total, s.total, "no growth needed");
            let mut addrs: Vec<*const u8> = all.iter().map(|p| p.data().as_ptr()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len() as u64, s.total);
        });
    }

    #[test]
    fn nested_allocators_take_one_by_one() {
        on_fresh_thread(|| {
            let mut a = Allocator::new(64);
            let mut b = Allocator::new(64);
            let mut ps = Vec::new();
            for i in 0..500 {
                ps.push(a.from_bytes(&[1; 60]));
                ps.push(b.from_bytes(&[2; 60]));
                if i == 250 {
                    // Dropped out of order: b takes over the claim.
                    drop(std::mem::replace(&mut a, Allocator::new(1)));
                }
            }
            let mut addrs: Vec<*const u8> = ps.iter().map(|p| p.data().as_ptr()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 1000);
            assert!(ps.iter().enumerate().all(|(i, p)| p.data()[0] == 1 + (i % 2) as u8));
            drop(a);
            drop(b);
            drop(ps);
            assert_eq!(stats().in_use, 0);
        });
    }

    #[test]
    fn clone_of_keeps_headroom_and_copies_foreign_data() {
        let mut a = Allocator::new(4);
        let mut p = Packet::from_bytes(&[7; 100]);
        p.prepend(&[1; 200]);
        let q = a.clone_of(&p);
        assert_eq!((q.headroom(), q.data()), (HEADROOM - 200, p.data()));
        p.shift_left(250);
        let q = a.clone_of(&p);
        assert_eq!((q.headroom(), q.data()), (HEADROOM, p.data()));
        let mut t = TestOwner::new(1);
        let f = t.lend(0, false);
        let h = a.clone_of(&f);
        assert!(!h.is_foreign());
        assert_eq!((h.headroom(), h.data()), (12, &[0xaa, 0xbb, 0xcc, 0xdd][..]));
    }

    #[test]
    fn buffers_freed_with_moved_starts_come_back_fresh() {
        on_fresh_thread(|| {
            let l = crate::Link::new(64);
            for i in 0..50 {
                let mut p = Packet::from_bytes(&[0; 100]);
                if i % 2 == 0 {
                    p.shift_left(30);
                } else {
                    p.prepend(&[0; 40]);
                }
                l.transmit(p);
            }
            l.discard();
            let mut a = Allocator::new(50);
            for _ in 0..50 {
                let p = a.allocate();
                assert_eq!((p.headroom(), p.capacity()), (HEADROOM, PAYLOAD_SIZE));
                assert_eq!(memory::virt_to_dma(p.data().as_ptr()), Some(p.dma_addr()));
            }
        });
    }

    #[test]
    fn buffers_do_not_crowd_cache_sets() {
        // The first data lines of 64 consecutive buffers hit 64 different
        // L1 sets (64-byte lines, 4 KiB per way).
        let sets: std::collections::BTreeSet<usize> = (0..64).map(|i| (i * STRIDE + HEADROOM) / 64 % 64).collect();
        assert_eq!(sets.len(), 64);
    }
    /// A test lender of one big buffer, for split tails.
    fn tail_of_bytes(bytes: &mut [u8], token: u64) -> ForeignBuffer {
        ForeignBuffer {
            base: NonNull::new(bytes.as_mut_ptr()).unwrap(),
            cap: bytes.len() as u32,
            dma: 0x10_0000,
            start: 0,
            len: bytes.len() as u32,
            token,
            fixed_start: false,
        }
    }

    /// Lend `bufs` (test memory) as one chain: part k is the bytes of
    /// `frame` at `cuts[k]..cuts[k+1]`, written at +12 in buffer k.
    fn lend_chain(owner: &BufferOwner, bufs: &mut [Vec<u8>], frame: &[u8], cuts: &[usize], token0: u64) -> Packet {
        let mut parts: Vec<Option<Packet>> = Vec::new();
        for (k, b) in bufs.iter_mut().enumerate().take(cuts.len() - 1) {
            let part = &frame[cuts[k]..cuts[k + 1]];
            b[12..12 + part.len()].copy_from_slice(part);
            // SAFETY: the buffers outlive every packet made of them here.
            parts.push(Some(unsafe {
                owner.wrap(ForeignBuffer {
                    base: NonNull::new(b.as_mut_ptr()).unwrap(),
                    cap: b.len() as u32,
                    dma: 0x10_0000 * (k as u64 + 1),
                    start: 12,
                    len: part.len() as u32,
                    token: token0 + k as u64,
                    fixed_start: true,
                })
            }));
        }
        chain(&mut parts).expect("the parts qualify")
    }

    #[test]
    fn chain_packets_read_copy_flatten_and_go_home() {
        let owner = BufferOwner::register("chain", None);
        let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 2048]).collect();
        let frame: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let cuts = [0, 2036, 4072, 5000];
        let before = stats();
        let p = lend_chain(&owner, &mut bufs, &frame, &cuts, 10);
        assert!(p.is_chain() && p.is_split() && p.is_foreign() && p.has_fixed_start());
        assert_eq!(p.len(), 5000);
        assert_eq!(p.head(), &frame[..2036]);
        assert!(p.tail().is_none());
        assert_eq!(p.dma_addr(), 0x10_0000 + 12);
        assert_eq!(p.headroom(), 0);
        assert_eq!(p.capacity(), PAYLOAD_SIZE);
        assert_eq!(p.foreign_token(), Some((owner.id(), 10)));
        assert_eq!(owner.outstanding(), 3);
        let mut pieces = vec![];
        p.for_each_piece(|b| pieces.extend_from_slice(b));
        assert_eq!(pieces, frame);
        let mut parts = vec![];
        p.for_each_chain_part(|t, n| parts.push((t, n)));
        assert_eq!(parts, vec![(10, 2036), (11, 2036), (12, 928)]);
        // Copies gather every part and leave the chain as it is.
        assert_eq!(p.clone().data(), &frame[..]);
        assert_eq!(p.copy_to_host().data(), &frame[..]);
        let mut a = Allocator::new(1);
        assert_eq!(a.clone_of(&p).data(), &frame[..]);
        drop(a);
        assert!(p.is_chain());
        // Dropped: every buffer goes home, the record to the freelist.
        drop(p);
        let mut got = vec![];
        owner.drain_returns(|t| got.push(t));
        assert_eq!(got, vec![10, 11, 12]);
        // The whole frame at once flattens it into a host buffer.
        let mut p = lend_chain(&owner, &mut bufs, &frame, &cuts, 20);
        p.set_csum_verified(true);
        assert_eq!(p.data(), &frame[..]);
        assert!(!p.is_chain() && !p.is_split() && !p.is_foreign() && !p.has_fixed_start());
        assert!(p.csum_verified(), "the checksum verdict survives the flatten");
        assert_eq!((p.headroom(), p.capacity()), (HEADROOM, PAYLOAD_SIZE));
        owner.drain_returns(|t| got.push(t));
        assert_eq!(got, vec![10, 11, 12, 20, 21, 22]);
        assert_eq!(stats().flattened, before.flattened + 1);
        p.append(&[1, 2, 3]);
        assert_eq!(&p.data()[5000..], &[1, 2, 3]);
        drop(p);
        // Header edits and growth flatten first: the bytes come out right.
        let mut p = lend_chain(&owner, &mut bufs, &frame, &cuts, 30);
        p.shift_left(14);
        assert!(!p.is_chain());
        assert_eq!(p.data(), &frame[14..]);
        drop(p);
        let mut p = lend_chain(&owner, &mut bufs, &frame, &cuts, 40);
        p.prepend(&[9; 4]);
        assert_eq!(&p.data()[..4], &[9; 4]);
        assert_eq!(&p.data()[4..], &frame[..]);
        let mut p2 = lend_chain(&owner, &mut bufs, &frame, &cuts, 50);
        p2.set_len(6000);
        assert_eq!(&p2.data()[..5000], &frame[..]);
        drop((p, p2));
        assert_eq!(owner.outstanding(), 0);
        let after = stats();
        assert_eq!(after.in_use, before.in_use);
        assert_eq!(after.foreign_wrapped - before.foreign_wrapped, after.foreign_returned - before.foreign_returned);
    }

    #[test]
    fn a_chain_is_taken_apart_by_its_owner_without_a_copy() {
        let owner = BufferOwner::register("chain", None);
        let other = BufferOwner::register("other", None);
        let mut bufs: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; 1100]).collect();
        let frame: Vec<u8> = (0..2100u32).map(|i| i as u8).collect();
        let before = stats();
        let p = lend_chain(&owner, &mut bufs, &frame, &[0, 1024, 2048, 2100], 5);
        let p = other.reclaim_chain(p, |_, _| panic!("not its chain")).unwrap_err();
        let p = other.reclaim(p).unwrap_err();
        let mut parts = vec![];
        assert_eq!(owner.reclaim_chain(p, |t, n| parts.push((t, n))).ok(), Some(2100));
        assert_eq!(parts, vec![(5, 1024), (6, 1024), (7, 52)]);
        assert_eq!(owner.outstanding(), 0);
        let mut got = vec![];
        owner.drain_returns(|t| got.push(t));
        assert!(got.is_empty(), "reclaimed, not returned");
        // A plain foreign packet is not a chain.
        let mut t = TestOwner::new(1);
        let q = t.lend(0, true);
        assert!(!q.is_chain());
        let q = t.owner.reclaim_chain(q, |_, _| {}).unwrap_err();
        drop(q);
        let after = stats();
        assert_eq!(after.in_use, before.in_use);
        assert_eq!(after.foreign_wrapped - before.foreign_wrapped, after.foreign_returned - before.foreign_returned);
    }

    #[test]
    fn chain_refuses_parts_that_do_not_qualify_and_leaves_them() {
        let a = BufferOwner::register("a", None);
        let mut t = TestOwner::new(4);
        let mut bufs: Vec<Vec<u8>> = (0..2).map(|_| vec![0u8; 256]).collect();
        let wrap = |o: &BufferOwner, b: &mut Vec<u8>, len: u32, token: u64| {
            // SAFETY: the buffers outlive the packets (dropped below).
            unsafe {
                o.wrap(ForeignBuffer {
                    base: NonNull::new(b.as_mut_ptr()).unwrap(),
                    cap: 256,
                    dma: 0,
                    start: 0,
                    len,
                    token,
                    fixed_start: true,
                })
            }
        };
        let (b0, b1) = bufs.split_at_mut(1);
        // One part, two owners, an empty part, a host packet, a missing one.
        let mut one = [Some(t.lend(0, true))];
        assert!(chain(&mut one).is_none() && one[0].is_some());
        let mut mixed = [Some(t.lend(1, true)), Some(wrap(&a, &mut b0[0], 10, 1))];
        assert!(chain(&mut mixed).is_none() && mixed.iter().all(Option::is_some));
        let mut empty = [Some(t.lend(2, true)), Some(wrap(&a, &mut b1[0], 0, 2))];
        empty[0] = Some(wrap(&a, &mut b0[0], 10, 3));
        assert!(chain(&mut empty).is_none() && empty.iter().all(Option::is_some));
        let mut host = [Some(t.lend(3, true)), Some(Packet::from_bytes(&[1; 10]))];
        assert!(chain(&mut host).is_none());
        let mut missing = [host[0].take(), None];
        assert!(chain(&mut missing).is_none() && missing[0].is_some());
        let mut csum = [Some(wrap(&a, &mut b0[0], 10, 4)), Some(wrap(&a, &mut b1[0], 10, 5))];
        csum[1].as_mut().unwrap().set_partial_csum(Some(PartialCsum { start: 0, offset: 6 }));
        assert!(chain(&mut csum).is_none() && csum.iter().all(Option::is_some));
        drop((one, mixed, empty, host, missing, csum));
        assert_eq!(t.owner.outstanding() + a.outstanding(), 0);
    }

    #[test]
    fn split_packets_read_copy_flatten_and_go_home() {
        let owner = BufferOwner::register("split", None);
        let mut tail: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
        let frame: Vec<u8> = (0..64u8).chain(tail.iter().copied()).collect();
        let before = stats();
        let head = Packet::from_bytes(&frame[..64]);
        // SAFETY: `tail` outlives every packet made of it here.
        let mut p = unsafe { owner.wrap_tail(head, tail_of_bytes(&mut tail, 7)) };
        assert!(p.is_split() && p.is_foreign());
        assert_eq!(p.len(), 1064);
        assert_eq!(p.head(), &frame[..64]);
        assert_eq!(p.tail().unwrap().bytes, &frame[64..]);
        assert_eq!(p.tail().unwrap().dma, 0x10_0000);
        assert_eq!(p.foreign_token(), Some((owner.id(), 7)));
        assert_eq!(owner.outstanding(), 1);
        // Copies gather both parts and leave the original split.
        assert_eq!(p.clone().data(), &frame[..]);
        assert_eq!(p.copy_to_host().data(), &frame[..]);
        let mut a = Allocator::new(1);
        assert_eq!(a.clone_of(&p).data(), &frame[..]);
        drop(a);
        assert!(p.is_split());
        // Header edits inside the head stay O(1) and keep it split.
        p.shift_left(14);
        p.prepend(&[9; 14]);
        assert!(p.is_split());
        assert_eq!(&p.head()[..14], &[9; 14]);
        // The whole frame at once flattens it, and the tail goes home.
        let mut want = frame.clone();
        want[..14].copy_from_slice(&[9; 14]);
        assert_eq!(p.data(), &want[..]);
        assert!(!p.is_split() && !p.is_foreign());
        assert_eq!(owner.outstanding(), 0);
        let mut got = vec![];
        owner.drain_returns(|t| got.push(t));
        assert_eq!(got, vec![7]);
        assert_eq!(stats().flattened, before.flattened + 1);
        drop(p);
        // Dropped while split: head to the freelist, tail home.
        let head = Packet::from_bytes(&frame[..64]);
        // SAFETY: as above.
        let p = unsafe { owner.wrap_tail(head, tail_of_bytes(&mut tail, 8)) };
        drop(p);
        owner.drain_returns(|t| got.push(t));
        assert_eq!(got, vec![7, 8]);
        let after = stats();
        assert_eq!(after.in_use, before.in_use);
        assert_eq!(after.foreign_wrapped - before.foreign_wrapped, after.foreign_returned - before.foreign_returned);
    }

    #[test]
    fn split_packets_flatten_before_a_deep_strip_or_growth() {
        let owner = BufferOwner::register("split", None);
        let mut tail = vec![5u8; 100];
        // SAFETY: `tail` outlives the packets.
        let mut p = unsafe { owner.wrap_tail(Packet::from_bytes(&[1; 20]), tail_of_bytes(&mut tail, 1)) };
        p.shift_left(30); // past the head
        assert!(!p.is_split());
        assert_eq!(p.data(), &[5u8; 90][..]);
        // SAFETY: as above.
        let mut p = unsafe { owner.wrap_tail(Packet::from_bytes(&[1; 20]), tail_of_bytes(&mut tail, 2)) };
        p.append(&[6]);
        assert!(!p.is_split());
        assert_eq!(p.len(), 121);
        assert_eq!(p.data()[120], 6);
        let mut n = 0;
        owner.drain_returns(|_| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn csum_verified_is_carried_and_forgotten_past_vlan_tags() {
        let mut p = Packet::from_bytes(&[0u8; 100]);
        assert!(!p.csum_verified());
        p.set_csum_verified(true);
        assert!(p.csum_verified() && p.partial_csum().is_none());
        assert!(p.clone().csum_verified() && p.copy_to_host().csum_verified());
        p.shift_left(4); // a VLAN tag
        p.shift_right(8); // QinQ pushed
        assert!(p.csum_verified());
        p.shift_left(50); // an outer IP tunnel
        assert!(!p.csum_verified());
        // A partial checksum request is not overwritten by a verdict.
        let mut q = Packet::from_bytes(&[0u8; 100]);
        assert!(q.set_partial_csum(Some(PartialCsum { start: 34, offset: 6 })));
        q.set_csum_verified(true);
        assert!(!q.csum_verified() && q.partial_csum().is_some());
        // Freed records forget it.
        let mut r = Packet::from_bytes(&[0u8; 60]);
        r.set_csum_verified(true);
        drop(r);
        assert!(!Packet::new().csum_verified());
    }

    #[test]
    fn a_foreign_buffer_larger_than_a_host_buffer_cannot_overflow_a_copy() {
        let owner = BufferOwner::register("big", None);
        let mut big = vec![0x5au8; 40000];
        let base = NonNull::new(big.as_mut_ptr()).unwrap();
        let fb =
            |start: u32, len: u32| ForeignBuffer { base, cap: 40000, dma: 0, start, len, token: 0, fixed_start: true };
        // SAFETY: `big` outlives the packets.
        let mut p = unsafe { owner.wrap(fb(12, 0)) };
        assert_eq!(p.capacity(), BUFFER_SIZE, "capped at what a host buffer holds");
        p.set_len(BUFFER_SIZE);
        let c = p.copy_to_host();
        assert_eq!(c.len(), BUFFER_SIZE);
        assert!(c.data().iter().all(|&b| b == 0x5a));
        let d = p.clone();
        assert_eq!(d.len(), BUFFER_SIZE);
        let mut a = Allocator::new(1);
        assert_eq!(a.clone_of(&p).len(), BUFFER_SIZE);
        drop((a, c, d, p));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above.
            drop(unsafe { owner.wrap(fb(0, BUFFER_SIZE as u32 + 1)) })
        }));
        assert!(r.is_err(), "a lender may not wrap more than BUFFER_SIZE bytes");
        let mut n = 0;
        owner.drain_returns(|_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn revoking_marks_the_owners_packets_and_bumps_the_count() {
        let mut t = TestOwner::new(2);
        let p = t.lend(0, true);
        let r0 = revocations();
        assert!(!p.is_revoked() && !t.owner.is_revoked());
        t.owner.revoke();
        assert!(p.is_revoked());
        assert_eq!(revocations(), r0 + 1);
        t.owner.revoke();
        assert_eq!(revocations(), r0 + 1, "once");
        assert!(!Packet::new().is_revoked());
        let other = TestOwner::new(1);
        let q = {
            let mut o = other;
            let q = o.lend(0, false);
            drop(o.owner);
            std::mem::forget(o.bufs);
            q
        };
        assert!(q.is_revoked(), "an owner that went away revoked its buffers");
        assert_eq!(revocations(), r0 + 2);
        drop((p, q));
    }

    #[test]
    fn fixed_start_moves_are_counted_per_buffer() {
        let mut t = TestOwner::new(1);
        let before = stats().moved_bytes;
        let mut p = t.lend(0, true);
        p.shift_right(4);
        p.shift_left(6);
        let r = t.owner.reclaim(p).unwrap();
        assert_eq!(r.moved, 4 + 2);
        assert_eq!(stats().moved_bytes - before, 6);
    }
    #[test]
    fn a_split_packets_partial_checksum_is_finished_without_flattening() {
        let owner = BufferOwner::register("csum", None);
        for (head_len, total) in [(54, 1500), (55, 1501), (64, 65), (60, 999)] {
            let (f, _) = partial_frame();
            let mut frame: Vec<u8> = f.iter().copied().cycle().take(total).collect();
            frame[40..42].copy_from_slice(&[0x12, 0x34]);
            let mut want = frame.clone();
            assert!(crate::checksum::complete_checksum(&mut want, 34, 6));
            let mut tail = frame[head_len..].to_vec();
            let mut head = Packet::from_bytes(&frame[..head_len]);
            assert!(head.set_partial_csum(Some(PartialCsum { start: 34, offset: 6 })));
            // SAFETY: `tail` outlives the packet.
            let mut p = unsafe { owner.wrap_tail(head, tail_of_bytes(&mut tail, 0)) };
            assert!(p.finish_partial_csum());
            assert!(p.is_split(), "summed where it lies");
            assert_eq!(p.data(), &want[..], "head {head_len}, total {total}");
        }
        owner.drain_returns(|_| {});
    }
}
