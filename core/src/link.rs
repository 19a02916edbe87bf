//! LINKS
//!
//! A link is a single-producer, single-consumer ring of packets between two
//! apps of one engine. A full link drops the packet and counts it: links
//! never block and never push back.
//!
//!   Link::new(size)         size a power of two (default 1024)
//!   transmit(p)             producer side; drops when full
//!   receive() -> Option     consumer side
//!   drain()                 consumer side, a batch: an iterator over the
//!                           packets queued now
//!   queued()                consumer side, the packets queued now by
//!                           reference, left on the link
//!   transmitter()           producer side, a batch: a handle whose `send`
//!                           keeps the cursor in a register
//!   transfer(to)            everything queued onto another link, in bulk
//!   discard() -> (n, bytes) drop everything queued, in bulk
//!   front_len() / front_is(f) the oldest packet, left on the link
//!   nreadable() / nwritable() / is_empty() / is_full()
//!   counters()              rx/tx packets and bytes, drops, bytes copied
//!
//! In `CopyMode::Simd` the consumer receives a copy of each foreign packet
//! in a fresh host buffer and the original goes back to its owner at once:
//! this is how a guest's buffer is detached from the graph. Host packets
//! pass as they are (they are detached already).
//!
//! All state is in cells: both endpoint apps hold the link by shared
//! reference within one thread, and no `&mut` ever aliases. The ring slots
//! are `MaybeUninit`: slots from `read` up to `write` hold packets, the rest
//! hold nothing, so a transmit is a single store (no read of the old slot).
//!
//! Counting costs one add per packet, on the consumer's side, which reads
//! each packet anyway: packet counts come from the cursors (with a base
//! carried over when the engine rewinds an empty link), bytes are counted
//! as they are received, and sent bytes are those received plus those
//! still queued.

use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::ptr;

use serde::{Deserialize, Serialize};

use crate::packet::{self, Packet};

/// Slots in a link unless the config says otherwise.
pub const DEFAULT_SIZE: usize = 1024;
/// The largest ring a link may have.
pub const MAX_SIZE: usize = 1 << 16;

/// How a link hands packets on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyMode {
    /// The buffer itself moves on.
    #[default]
    Zero,
    /// The consumer gets a copy made by the vectorised copier.
    Simd,
}

/// A snapshot of a link's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rxpackets: u64,
    pub rxbytes: u64,
    pub txpackets: u64,
    pub txbytes: u64,
    pub txdrop: u64,
    /// Bytes copied by the link in `Simd` mode (foreign packets).
    pub copybytes: u64,
}

impl LinkCounters {
    /// Counter names and values, in a fixed order (for shm and reports).
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("rxpackets", self.rxpackets),
            ("rxbytes", self.rxbytes),
            ("txpackets", self.txpackets),
            ("txbytes", self.txbytes),
            ("txdrop", self.txdrop),
            ("copybytes", self.copybytes),
        ]
    }
}

type Slot = UnsafeCell<MaybeUninit<Packet>>;

/// # Safety
/// `ring` must point to `mask + 1` slots and slot `i & mask` must be empty.
#[inline(always)]
unsafe fn slot_put(ring: *const Slot, mask: u32, i: u32, p: Packet) {
    // SAFETY: i & mask is in bounds; the slot is empty per the contract.
    unsafe { (*(*ring.add((i & mask) as usize)).get()).write(p) };
}

/// # Safety
/// `ring` must point to `mask + 1` slots and slot `i & mask` must hold a
/// packet that nobody else will take.
#[inline(always)]
unsafe fn slot_take(ring: *const Slot, mask: u32, i: u32) -> Packet {
    // SAFETY: i & mask is in bounds; the slot is full per the contract.
    unsafe { (*(*ring.add((i & mask) as usize)).get()).assume_init_read() }
}

pub struct Link {
    ring: Box<[Slot]>,
    mask: u32,
    read: Cell<u32>,
    write: Cell<u32>,
    copy: Cell<CopyMode>,
    txbase: Cell<u64>,
    rxbase: Cell<u64>,
    rxbytes: Cell<u64>,
    txdrop: Cell<u64>,
    copybytes: Cell<u64>,
    /// A `Drain` (RX_BUSY) or `Transmitter` (TX_BUSY) holds that side.
    busy: Cell<u8>,
    /// Where the cursors of an empty link rest (see `rewind`).
    home: u32,
}

const RX_BUSY: u8 = 1;
const TX_BUSY: u8 = 2;

impl Link {
    /// A link of `size` slots. Panics unless `size` is a power of two in
    /// 2..=MAX_SIZE (the config checks this before it gets here).
    pub fn new(size: usize) -> Link {
        assert!(valid_size(size), "link size {size}: must be a power of two in 2..={MAX_SIZE}");
        let ring: Box<[Slot]> = (0..size).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
        let home = home_slot(ring.as_ptr(), size);
        Link {
            ring,
            mask: (size - 1) as u32,
            read: Cell::new(home),
            write: Cell::new(home),
            copy: Cell::new(CopyMode::Zero),
            txbase: Cell::new(0),
            rxbase: Cell::new(0),
            rxbytes: Cell::new(0),
            txdrop: Cell::new(0),
            copybytes: Cell::new(0),
            busy: Cell::new(0),
            home,
        }
    }

    /// Panics when a batch handle holds `side`: using a side through two
    /// handles at once is a bug in the app, and would hand one slot out twice.
    #[inline(always)]
    fn check_free(&self, side: u8) {
        if self.busy.get() & side != 0 {
            busy_panic(side);
        }
    }

    #[inline]
    pub fn capacity(&self) -> usize {
        self.ring.len()
    }
    #[inline]
    pub fn nreadable(&self) -> usize {
        self.write.get().wrapping_sub(self.read.get()) as usize
    }
    #[inline]
    pub fn nwritable(&self) -> usize {
        self.ring.len() - self.nreadable()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.read.get() == self.write.get()
    }
    #[inline]
    pub fn is_full(&self) -> bool {
        self.nreadable() == self.ring.len()
    }

    /// # Safety
    /// `i` must be a cursor value outside `read..write` (an empty slot).
    #[inline(always)]
    unsafe fn put(&self, i: u32, p: Packet) {
        // SAFETY: per the contract the slot is empty; only this thread
        // touches the ring and no reference into it outlives this call.
        unsafe { slot_put(self.ring.as_ptr(), self.mask, i, p) }
    }

    /// # Safety
    /// `i` must be a cursor value inside `read..write`, and the caller must
    /// move `read` past it before the slot is read again.
    #[inline(always)]
    unsafe fn take(&self, i: u32) -> Packet {
        // SAFETY: per the contract the slot holds a packet, moved out here.
        unsafe { slot_take(self.ring.as_ptr(), self.mask, i) }
    }

    /// Put a packet on the link; if the link is full the packet is dropped
    /// and counted in `txdrop`.
    #[inline(always)]
    pub fn transmit(&self, p: Packet) {
        self.check_free(TX_BUSY);
        let w = self.write.get();
        if w.wrapping_sub(self.read.get()) as usize == self.ring.len() {
            self.txdrop.set(self.txdrop.get() + 1);
            return;
        }
        let p = match self.copy.get() {
            CopyMode::Zero => p,
            CopyMode::Simd => self.copy_packet(p),
        };
        // SAFETY: the link is not full, so slot `w` is empty.
        unsafe { self.put(w, p) };
        self.write.set(w.wrapping_add(1));
    }

    /// Simd mode: a foreign packet (or a split one, with a foreign tail)
    /// becomes a host copy and the original goes home at once. A host
    /// packet is detached already: it passes as it is.
    #[cold]
    #[inline(never)]
    fn copy_packet(&self, p: Packet) -> Packet {
        if !p.is_foreign() {
            return p;
        }
        self.copybytes.set(self.copybytes.get() + p.len() as u64);
        p.copy_to_host()
    }

    /// Take the oldest packet off the link.
    #[inline(always)]
    pub fn receive(&self) -> Option<Packet> {
        self.check_free(RX_BUSY);
        let r = self.read.get();
        if r == self.write.get() {
            return None;
        }
        // SAFETY: slot `r` is inside read..write; `read` moves past it next.
        let p = unsafe { self.take(r) };
        self.read.set(r.wrapping_add(1));
        self.rxbytes.set(self.rxbytes.get() + p.len() as u64);
        Some(p)
    }

    /// The packets queued now, oldest first, as an iterator that keeps its
    /// place in the ring in a register. Packets the iterator does not reach
    /// stay on the link.
    #[inline]
    pub fn drain(&self) -> Drain<'_> {
        self.check_free(RX_BUSY);
        self.busy.set(self.busy.get() | RX_BUSY);
        let r = self.read.get();
        let n = self.write.get().wrapping_sub(r) as usize;
        let at = (r & self.mask) as usize;
        let first = n.min(self.ring.len() - at);
        let ring = self.ring.as_ptr();
        // SAFETY: at + first <= ring.len().
        let (from, stop) = unsafe { (ring.add(at), ring.add(at + first)) };
        Drain { link: self, at: from, stop, from, r, wrap: n - first, bytes: 0 }
    }

    /// A batch sender: as `transmit`, with its place in the ring kept in a
    /// register until the sender is dropped.
    #[inline]
    pub fn transmitter(&self) -> Transmitter<'_> {
        self.check_free(TX_BUSY);
        self.busy.set(self.busy.get() | TX_BUSY);
        let w = self.write.get();
        let room = self.ring.len() - w.wrapping_sub(self.read.get()) as usize;
        let at = (w & self.mask) as usize;
        // In Simd mode every send takes the slow path, which copies.
        let first = if self.copy.get() == CopyMode::Simd { 0 } else { room.min(self.ring.len() - at) };
        let ring = self.ring.as_ptr() as *mut Slot;
        // SAFETY: at + first <= ring.len().
        let (from, stop) = unsafe { (ring.add(at), ring.add(at + first)) };
        Transmitter { link: self, at: from, stop, from, w, wrap: if first == 0 { 0 } else { room - first }, drops: 0 }
    }

    /// Move every queued packet onto `to`, oldest first, as sending each
    /// packet from `drain()` to `to` would (packets that do not fit are
    /// dropped and counted in `to`'s `txdrop`), but in bulk: the ring slots
    /// are copied run by run. Returns how many packets were moved.
    pub fn transfer(&self, to: &Link) -> usize {
        if std::ptr::eq(self, to) || to.copy.get() == CopyMode::Simd {
            let before = to.txpackets();
            let mut tx = to.transmitter();
            for p in self.drain() {
                tx.send(p);
            }
            drop(tx);
            return (to.txpackets() - before) as usize;
        }
        self.check_free(RX_BUSY);
        to.check_free(TX_BUSY);
        let (r, w) = (self.read.get(), to.write.get());
        let n = self.write.get().wrapping_sub(r) as usize;
        let k = n.min(to.ring.len() - w.wrapping_sub(to.read.get()) as usize);
        let (from, into) = (self.ring.as_ptr(), to.ring.as_ptr() as *mut Slot);
        let mut bytes = 0;
        let mut moved = 0;
        while moved < k {
            // The longest run that wraps round neither ring.
            let i = (r.wrapping_add(moved as u32) & self.mask) as usize;
            let j = (w.wrapping_add(moved as u32) & to.mask) as usize;
            let run = (k - moved).min(self.ring.len() - i).min(to.ring.len() - j);
            // SAFETY: slots i..i+run of `self` lie inside its read..write and
            // hold packets; slots j..j+run of `to` are free (k is at most its
            // room). The packets change rings: `self` forgets them when its
            // read cursor moves past them below, `to` takes them on when its
            // write cursor does. The rings are different links' (checked
            // above), so the runs do not overlap.
            unsafe {
                for x in 0..run {
                    bytes += (*(*from.add(i + x)).get()).assume_init_ref().len() as u64;
                }
                ptr::copy_nonoverlapping(from.add(i), into.add(j), run);
            }
            moved += run;
        }
        self.read.set(r.wrapping_add(k as u32));
        to.write.set(w.wrapping_add(k as u32));
        self.rxbytes.set(self.rxbytes.get() + bytes);
        if n > k {
            let (dropped, _) = self.discard();
            to.txdrop.set(to.txdrop.get() + dropped);
        }
        k
    }

    /// Drop every queued packet, in bulk; returns how many and their bytes.
    pub fn discard(&self) -> (u64, u64) {
        self.check_free(RX_BUSY);
        let (r, end) = (self.read.get(), self.write.get());
        let n = end.wrapping_sub(r) as usize;
        // `read` moves first: the slots are taken below, and a foreign
        // packet's owner may look at this link while it is dropped.
        self.read.set(end);
        // The queued packets lie in at most two runs: up to the end of the
        // ring, then from its start.
        let at = (r & self.mask) as usize;
        let first = n.min(self.ring.len() - at);
        let ring = self.ring.as_ptr() as *const Packet;
        // SAFETY: the n slots from `r` held packets inside read..write, and
        // `read` has moved past them, so each is given up exactly once.
        // A slot is an UnsafeCell<MaybeUninit<Packet>>: a Packet's layout.
        let bytes = unsafe { packet::free_run(ring.add(at), first) + packet::free_run(ring, n - first) };
        self.rxbytes.set(self.rxbytes.get() + bytes);
        (n as u64, bytes)
    }

    /// The packets queued now, oldest first, by reference: they stay on the
    /// link. Holds the receive side while it lives, as `drain` does (a fan-out
    /// copies them all, then hands the originals on with `drain`).
    #[inline]
    pub fn queued(&self) -> Queued<'_> {
        self.check_free(RX_BUSY);
        self.busy.set(self.busy.get() | RX_BUSY);
        let r = self.read.get();
        let n = self.write.get().wrapping_sub(r) as usize;
        let at = (r & self.mask) as usize;
        let first = n.min(self.ring.len() - at);
        let ring = self.ring.as_ptr();
        // SAFETY: at + first <= ring.len().
        let stop = unsafe { ring.add(at + first) };
        // SAFETY: as above.
        Queued { link: self, at: unsafe { ring.add(at) }, stop, wrap: n - first }
    }

    /// What `f` says of the oldest packet, without taking it (false when
    /// the link is empty).
    #[inline]
    pub fn front_is(&self, f: impl FnOnce(&Packet) -> bool) -> bool {
        if self.is_empty() {
            return false;
        }
        // SAFETY: the slot at `read` holds a packet (the link is not empty);
        // the shared reference does not outlive `f`.
        f(unsafe { (*self.ring[(self.read.get() & self.mask) as usize].get()).assume_init_ref() })
    }

    /// Length of the oldest packet, without taking it.
    pub fn front_len(&self) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        // SAFETY: the slot at `read` holds a packet (the link is not empty);
        // the shared reference ends within this expression.
        Some(unsafe { (*self.ring[(self.read.get() & self.mask) as usize].get()).assume_init_ref().len() })
    }

    /// Move the cursors of an empty link back to its home slot, so that a link
    /// that is emptied every breath keeps reusing the same few cache lines
    /// of its ring instead of sweeping all of it.
    #[inline]
    pub fn rewind(&self) {
        let (r, w) = (self.read.get(), self.write.get());
        if r == w && r != self.home {
            let moved = w.wrapping_sub(self.home) as u64;
            self.txbase.set(self.txbase.get() + moved);
            self.rxbase.set(self.rxbase.get() + moved);
            self.read.set(self.home);
            self.write.set(self.home);
        }
    }

    pub fn copy_mode(&self) -> CopyMode {
        self.copy.get()
    }
    pub fn set_copy_mode(&self, mode: CopyMode) {
        self.copy.set(mode);
    }

    fn queued_bytes(&self) -> u64 {
        let mut bytes = 0;
        let mut i = self.read.get();
        while i != self.write.get() {
            // SAFETY: i is inside read..write; the reference ends at once.
            bytes += unsafe { (*self.ring[(i & self.mask) as usize].get()).assume_init_ref().len() } as u64;
            i = i.wrapping_add(1);
        }
        bytes
    }

    pub fn counters(&self) -> LinkCounters {
        // Cursors are free-running u32s between rewinds; a link that is
        // never empty for 2^32 packets would wrap them, which a rewind
        // (any empty moment) prevents.
        LinkCounters {
            rxpackets: self.rxbase.get() + self.read.get().wrapping_sub(self.home) as u64,
            rxbytes: self.rxbytes.get(),
            txpackets: self.txbase.get() + self.write.get().wrapping_sub(self.home) as u64,
            txbytes: self.rxbytes.get() + self.queued_bytes(),
            txdrop: self.txdrop.get(),
            copybytes: self.copybytes.get(),
        }
    }

    /// Packets sent so far (cheap: no scan of the queue).
    #[inline]
    pub fn txpackets(&self) -> u64 {
        self.txbase.get() + self.write.get().wrapping_sub(self.home) as u64
    }

    /// Drop every packet on the link; returns how many there were.
    pub fn drain_all(&self) -> usize {
        self.discard().0 as usize
    }

    /// A link of another size holding this link's packets and counters.
    /// Packets that do not fit are dropped and counted in `txdrop`.
    pub fn resized(&self, size: usize) -> Link {
        let before = self.counters();
        let new = Link::new(size);
        new.copy.set(self.copy.get());
        let mut moved = 0u64;
        let mut i = self.read.get();
        let end = self.write.get();
        while i != end {
            // SAFETY: i is inside read..write of the old link, whose `read`
            // moves to `end` right after this loop.
            let p = unsafe { self.take(i) };
            i = i.wrapping_add(1);
            if new.is_full() {
                new.txdrop.set(new.txdrop.get() + 1);
            } else {
                // SAFETY: `new` is not full, so slot `write` is empty.
                unsafe { new.put(new.write.get(), p) };
                new.write.set(new.write.get() + 1);
                moved += 1;
            }
        }
        self.read.set(end);
        let queued = before.txpackets - before.rxpackets;
        let lost = queued - moved;
        new.txbase.set(before.txpackets - lost - moved);
        new.rxbase.set(before.rxpackets);
        new.rxbytes.set(before.rxbytes);
        new.txdrop.set(new.txdrop.get() + before.txdrop);
        new.copybytes.set(before.copybytes);
        new
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.discard();
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("size", &self.capacity())
            .field("queued", &self.nreadable())
            .field("copy", &self.copy.get())
            .field("counters", &self.counters())
            .finish()
    }
}

/// The packets queued on a link when `drain` was called. Dropping the
/// iterator commits how far it got.
///
/// It walks the queue as (at most) two contiguous runs of slots, to the end
/// of the ring and then from its start, so that taking a packet is a load
/// and a pointer increment.
pub struct Drain<'a> {
    link: &'a Link,
    /// Next slot to take, and the end of the current run.
    at: *const Slot,
    stop: *const Slot,
    /// Start of the current run, and the cursor value there.
    from: *const Slot,
    r: u32,
    /// Packets in the second run, from the ring's start (0 once in it).
    wrap: usize,
    bytes: u64,
}

impl Drain<'_> {
    /// Packets taken so far from the current run.
    #[inline(always)]
    fn taken(&self) -> u32 {
        // SAFETY: at and from point into the same ring, at >= from.
        unsafe { self.at.offset_from(self.from) as u32 }
    }
}

impl Iterator for Drain<'_> {
    type Item = Packet;
    #[inline(always)]
    fn next(&mut self) -> Option<Packet> {
        if self.at == self.stop {
            if self.wrap == 0 {
                return None;
            }
            // End of the first run: go on from the ring's start.
            self.r = self.r.wrapping_add(self.taken());
            let ring = self.link.ring.as_ptr();
            self.from = ring;
            self.at = ring;
            // SAFETY: wrap <= ring.len().
            self.stop = unsafe { ring.add(self.wrap) };
            self.wrap = 0;
        }
        // SAFETY: `at` is a slot inside the link's read..write; this iterator
        // alone reads the ring while it lives (RX_BUSY), and moves `read`
        // past the slot when it drops.
        let p = unsafe { (*(*self.at).get()).assume_init_read() };
        // SAFETY: at < stop, so at + 1 is at most one past the run.
        self.at = unsafe { self.at.add(1) };
        self.bytes += p.len() as u64;
        Some(p)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        // SAFETY: as in taken().
        let n = unsafe { self.stop.offset_from(self.at) } as usize + self.wrap;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Drain<'_> {}

impl Drop for Drain<'_> {
    #[inline]
    fn drop(&mut self) {
        self.link.read.set(self.r.wrapping_add(self.taken()));
        self.link.rxbytes.set(self.link.rxbytes.get() + self.bytes);
        self.link.busy.set(self.link.busy.get() & !RX_BUSY);
    }
}

/// The packets queued on a link when `queued` was called, by reference.
pub struct Queued<'a> {
    link: &'a Link,
    at: *const Slot,
    stop: *const Slot,
    wrap: usize,
}

impl<'a> Iterator for Queued<'a> {
    type Item = &'a Packet;
    #[inline(always)]
    fn next(&mut self) -> Option<&'a Packet> {
        if self.at == self.stop {
            if self.wrap == 0 {
                return None;
            }
            let ring = self.link.ring.as_ptr();
            self.at = ring;
            // SAFETY: wrap <= ring.len().
            self.stop = unsafe { ring.add(self.wrap) };
            self.wrap = 0;
        }
        // SAFETY: `at` is a slot inside read..write, so it holds a packet;
        // the receive side is held (RX_BUSY) while this iterator lives, so
        // nobody takes the packet out from under the reference, and the
        // producer never writes slots inside read..write.
        let p = unsafe { (*(*self.at).get()).assume_init_ref() };
        // SAFETY: at < stop, so at + 1 is at most one past the run.
        self.at = unsafe { self.at.add(1) };
        Some(p)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        // SAFETY: at and stop point into the same ring, stop >= at.
        let n = unsafe { self.stop.offset_from(self.at) } as usize + self.wrap;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Queued<'_> {}

impl Drop for Queued<'_> {
    #[inline]
    fn drop(&mut self) {
        self.link.busy.set(self.link.busy.get() & !RX_BUSY);
    }
}

/// A batch sender on a link; see [`Link::transmitter`].
///
/// Like [`Drain`], it fills the free slots as (at most) two contiguous runs,
/// so that a send is a compare, a store and a pointer increment. A link in
/// `Simd` mode, a full link and the wrap to the ring's start take the slow
/// path.
pub struct Transmitter<'a> {
    link: &'a Link,
    /// Next free slot, and the end of the current run of free slots.
    at: *mut Slot,
    stop: *mut Slot,
    /// Start of the current run, and the cursor value there.
    from: *mut Slot,
    w: u32,
    /// Free slots in the second run, from the ring's start (0 once in it).
    wrap: usize,
    drops: u64,
}

impl Transmitter<'_> {
    /// Send a packet, or drop and count it when the link is full.
    #[inline(always)]
    pub fn send(&mut self, p: Packet) {
        if self.at == self.stop {
            return self.send_slow(p);
        }
        // SAFETY: `at` is a free slot: it lies in a run of slots that were
        // free when this sender was made (the consumer only makes more
        // room), and only this sender writes the link while it lives
        // (TX_BUSY).
        unsafe {
            (*(*self.at).get()).write(p);
            self.at = self.at.add(1);
        }
    }

    /// Off the fast path: the wrap to the ring's start (inline, so that the
    /// sender's fields stay in registers), a link in Simd mode, or a full
    /// link (out of line).
    #[inline(always)]
    fn send_slow(&mut self, p: Packet) {
        if self.wrap > 0 {
            // SAFETY: at and from point into the same ring, at >= from.
            self.w = self.w.wrapping_add(unsafe { self.at.offset_from(self.from) } as u32);
            let ring = self.link.ring.as_ptr() as *mut Slot;
            self.from = ring;
            self.at = ring;
            // SAFETY: wrap <= ring.len().
            self.stop = unsafe { ring.add(self.wrap) };
            self.wrap = 0;
            // SAFETY: the run from the ring's start has `wrap` > 0 free
            // slots, so `at` is free (as in send).
            unsafe {
                (*(*self.at).get()).write(p);
                self.at = self.at.add(1);
            }
            return;
        }
        // Simd mode keeps at == from == stop: w is the cursor.
        if send_copy(self.link, self.w, p) {
            self.w = self.w.wrapping_add(1);
        } else {
            self.drops += 1;
        }
    }

    /// Free slots left.
    #[inline]
    pub fn room(&self) -> usize {
        let l = self.link;
        if l.copy.get() == CopyMode::Simd {
            return l.ring.len() - self.w.wrapping_sub(l.read.get()) as usize;
        }
        // SAFETY: at and stop point into the same ring, stop >= at.
        unsafe { self.stop.offset_from(self.at) as usize + self.wrap }
    }
}

impl Drop for Transmitter<'_> {
    #[inline]
    fn drop(&mut self) {
        let l = self.link;
        l.busy.set(l.busy.get() & !TX_BUSY);
        // SAFETY: at and from point into the same ring, at >= from.
        l.write.set(self.w.wrapping_add(unsafe { self.at.offset_from(self.from) } as u32));
        l.txdrop.set(l.txdrop.get() + self.drops);
    }
}

/// A send that cannot take the fast path: in Simd mode the link gets a
/// copy at cursor `w` (returns true); otherwise, or when the link is full,
/// the packet is dropped (returns false, for the caller to count).
#[cold]
#[inline(never)]
fn send_copy(l: &Link, w: u32, p: Packet) -> bool {
    if l.copy.get() != CopyMode::Simd || w.wrapping_sub(l.read.get()) as usize == l.ring.len() {
        return false;
    }
    let p = l.copy_packet(p);
    // SAFETY: the link is not full, so slot `w` is empty, and only the
    // caller's sender writes the link while it lives.
    unsafe { slot_put(l.ring.as_ptr(), l.mask, w, p) };
    true
}

#[cold]
#[inline(never)]
fn busy_panic(side: u8) -> ! {
    let what = if side == RX_BUSY {
        "receive on a link while a Drain of it lives"
    } else {
        "transmit on a link while a Transmitter of it lives"
    };
    panic!("{what}")
}

/// The slot where an empty link's cursors rest. After each breath the
/// engine moves an emptied link's cursors back there, so the link keeps
/// using the same few cache lines of its ring; this picks the slot so that
/// those lines fall in a range of L1 sets (a quarter of the 4 KiB a way
/// spans) that rotates from one link to the next, rather than wherever the
/// allocator put the ring, where several links' busy lines may share sets.
fn home_slot(ring: *const Slot, size: usize) -> u32 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COLOUR: AtomicUsize = AtomicUsize::new(0);
    const WAY: usize = 4096;
    let bytes = size * std::mem::size_of::<Slot>();
    if bytes < 2 * WAY {
        return 0;
    }
    let want = COLOUR.fetch_add(1, Ordering::Relaxed) % 4 * (WAY / 4);
    let have = ring as usize % WAY;
    ((want + WAY - have) % WAY / std::mem::size_of::<Slot>()) as u32
}

/// Whether `size` is an acceptable ring size.
pub fn valid_size(size: usize) -> bool {
    size.is_power_of_two() && (2..=MAX_SIZE).contains(&size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet;

    #[test]
    fn fifo_and_counters() {
        let l = Link::new(4);
        assert!(l.is_empty());
        for i in 0..3u8 {
            l.transmit(Packet::from_bytes(&[i; 10]));
        }
        assert_eq!(l.nreadable(), 3);
        assert_eq!(l.front_len(), Some(10));
        assert_eq!(l.receive().unwrap().data()[0], 0);
        assert_eq!(l.receive().unwrap().data()[0], 1);
        let c = l.counters();
        assert_eq!((c.txpackets, c.txbytes, c.rxpackets, c.rxbytes), (3, 30, 2, 20));
        l.receive();
        l.rewind();
        let c = l.counters();
        assert_eq!((c.txpackets, c.txbytes, c.rxpackets, c.rxbytes), (3, 30, 3, 30), "rewind keeps counts");
    }

    #[test]
    fn full_link_drops_and_counts() {
        let before = packet::stats();
        {
            let l = Link::new(2);
            for _ in 0..5 {
                l.transmit(Packet::from_bytes(&[0; 60]));
            }
            assert!(l.is_full());
            assert_eq!(l.counters().txdrop, 3);
            assert_eq!(l.counters().txpackets, 2);
            let mut t = l.transmitter();
            t.send(Packet::new());
            drop(t);
            assert_eq!(l.counters().txdrop, 4);
        }
        assert_eq!(packet::stats().in_use, before.in_use, "dropped and queued packets were freed");
    }

    #[test]
    fn indices_wrap() {
        let l = Link::new(2);
        for i in 0..100_000u32 {
            l.transmit(Packet::from_bytes(&i.to_le_bytes()));
            assert_eq!(l.receive().unwrap().data(), &i.to_le_bytes());
        }
        assert!(l.receive().is_none());
        assert_eq!(l.counters().rxpackets, 100_000);
    }

    #[test]
    fn batch_send_and_drain() {
        let l = Link::new(8);
        {
            let mut t = l.transmitter();
            assert_eq!(t.room(), 8);
            for i in 0..10u8 {
                t.send(Packet::from_bytes(&[i; 3]));
            }
        }
        assert_eq!(l.nreadable(), 8);
        assert_eq!(l.counters().txdrop, 2);
        let firsts: Vec<u8> = l.drain().take(5).map(|p| p.data()[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 3, 4]);
        assert_eq!(l.nreadable(), 3, "the rest stays queued");
        assert_eq!(l.discard(), (3, 9));
        let c = l.counters();
        assert_eq!((c.txpackets, c.rxpackets, c.txbytes, c.rxbytes), (8, 8, 24, 24));
    }

    #[test]
    fn discard_frees_a_pool_grown_over_many_chunks() {
        // Run on a fresh thread: a pool of its own that grows from zero.
        std::thread::spawn(|| {
            let l = Link::new(4096);
            for round in 0..3 {
                let mut t = l.transmitter();
                for _ in 0..4000 {
                    t.send(Packet::new());
                }
                drop(t);
                assert_eq!(packet::stats().in_use, 4000, "round {round}");
                assert_eq!(l.discard().0, 4000);
                assert_eq!(packet::stats().in_use, 0, "round {round}");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn batch_handles_hold_their_side() {
        let l = Link::new(8);
        l.transmit(Packet::new());
        l.transmit(Packet::new());
        let mut d = l.drain();
        let _a = d.next();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.receive()));
        assert!(r.is_err(), "a second consumer is refused, not handed the same slot");
        drop(d);
        assert!(l.receive().is_some());
        let t = l.transmitter();
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.transmit(Packet::new()))).is_err());
        drop(t);
        l.transmit(Packet::new());
    }

    /// A foreign packet holding `bytes` (in a buffer leaked for the test).
    fn lent(owner: &crate::BufferOwner, bytes: &[u8]) -> Packet {
        let buf: &'static mut [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
        // SAFETY: the buffer is leaked: valid for as long as the packet.
        unsafe {
            owner.wrap(crate::packet::ForeignBuffer {
                base: std::ptr::NonNull::new(buf.as_mut_ptr()).unwrap(),
                cap: buf.len() as u32,
                dma: 0,
                start: 0,
                len: buf.len() as u32,
                token: 0,
                fixed_start: false,
            })
        }
    }

    #[test]
    fn simd_mode_hands_on_copies_of_foreign_packets() {
        let owner = crate::BufferOwner::register("link test", None);
        let l = Link::new(8);
        l.set_copy_mode(CopyMode::Simd);
        let p = lent(&owner, b"abcdef");
        let addr = p.data().as_ptr();
        l.transmit(p);
        assert_eq!(owner.returns_pending(), 1, "the original went home at once");
        let q = l.receive().unwrap();
        assert_eq!(q.data(), b"abcdef");
        assert!(!q.is_foreign());
        assert_ne!(q.data().as_ptr(), addr);
        assert_eq!(l.counters().copybytes, 6);
        // A host packet is detached already: it passes as it is.
        let h = Packet::from_bytes(b"xyz");
        let addr = h.data().as_ptr();
        l.transmit(h);
        assert_eq!(l.receive().unwrap().data().as_ptr(), addr);
        assert_eq!(l.counters().copybytes, 6);
    }

    #[test]
    fn resize_keeps_packets_and_counts() {
        let l = Link::new(8);
        for i in 0..6u8 {
            l.transmit(Packet::from_bytes(&[i]));
        }
        l.receive();
        let m = l.resized(4);
        assert_eq!(m.nreadable(), 4);
        let c = m.counters();
        assert_eq!((c.txpackets, c.txdrop, c.rxpackets), (5, 1, 1));
        let got: Vec<u8> = m.drain().map(|p| p.data()[0]).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        let c = m.counters();
        assert_eq!((c.txpackets, c.rxpackets, c.txbytes, c.rxbytes), (5, 5, 5, 5));
        assert!(l.is_empty(), "the old link was emptied");
    }

    /// Counters as a tuple: (txpackets, txbytes, rxpackets, rxbytes, txdrop).
    fn counts(l: &Link) -> (u64, u64, u64, u64, u64) {
        let c = l.counters();
        (c.txpackets, c.txbytes, c.rxpackets, c.rxbytes, c.txdrop)
    }

    /// Every way in and out, with the queue wrapping round the ring's end,
    /// checked against a model after each step.
    #[test]
    fn counters_match_a_model_across_every_path_and_wrap() {
        let before = packet::stats();
        {
            let l = Link::new(8);
            let (mut tx, mut txb, mut rx, mut rxb, mut drop) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut next = 0u8;
            let mut expect: std::collections::VecDeque<u8> = Default::default();
            for round in 0..40usize {
                // Producer: a batch sender or single transmits, overfilling now and then.
                let k = round % 11;
                if round % 2 == 0 {
                    let mut t = l.transmitter();
                    assert_eq!(t.room(), 8 - expect.len());
                    for _ in 0..k {
                        let len = 1 + next as usize % 7;
                        if expect.len() < 8 {
                            expect.push_back(next);
                            tx += 1;
                            txb += len as u64;
                        } else {
                            drop += 1;
                        }
                        t.send(Packet::from_bytes(&vec![next; len]));
                        next = next.wrapping_add(1);
                    }
                } else {
                    for _ in 0..k {
                        let len = 1 + next as usize % 7;
                        if expect.len() < 8 {
                            expect.push_back(next);
                            tx += 1;
                            txb += len as u64;
                        } else {
                            drop += 1;
                        }
                        l.transmit(Packet::from_bytes(&vec![next; len]));
                        next = next.wrapping_add(1);
                    }
                }
                assert_eq!(l.nreadable(), expect.len());
                // Consumer: each way in turn, taking some or all.
                let take = (round * 3) % 9;
                match round % 4 {
                    0 => {
                        for p in l.drain().take(take) {
                            let v = expect.pop_front().unwrap();
                            assert_eq!(p.data()[0], v, "round {round}");
                            rx += 1;
                            rxb += p.len() as u64;
                        }
                    }
                    1 => {
                        for _ in 0..take {
                            let Some(p) = l.receive() else { break };
                            assert_eq!(p.data()[0], expect.pop_front().unwrap(), "round {round}");
                            rx += 1;
                            rxb += p.len() as u64;
                        }
                    }
                    2 => {
                        let seen: Vec<u8> = l.queued().map(|p| p.data()[0]).collect();
                        assert_eq!(seen, expect.iter().copied().collect::<Vec<_>>(), "round {round}");
                    }
                    _ => {
                        let (n, bytes) = l.discard();
                        let gone: u64 = expect.drain(..).map(|v| 1 + v as u64 % 7).sum();
                        assert_eq!(bytes, gone);
                        rx += n;
                        rxb += bytes;
                    }
                }
                assert_eq!(counts(&l), (tx, txb, rx, rxb, drop), "round {round}");
                // The engine's end-of-breath rewind never changes a count.
                l.rewind();
                assert_eq!(counts(&l), (tx, txb, rx, rxb, drop), "round {round}, rewound");
                assert_eq!(l.txpackets(), tx);
            }
        }
        assert_eq!(packet::stats().in_use, before.in_use, "every packet freed");
    }

    #[test]
    fn simd_transmitter_copies_and_drops_when_full() {
        let owner = crate::BufferOwner::register("link test", None);
        let l = Link::new(4);
        l.set_copy_mode(CopyMode::Simd);
        {
            let mut t = l.transmitter();
            assert_eq!(t.room(), 4);
            for _ in 0..6 {
                t.send(lent(&owner, b"xyz"));
            }
            assert_eq!(t.room(), 0);
        }
        let c = l.counters();
        assert_eq!((c.txpackets, c.txdrop, c.txbytes, c.copybytes), (4, 2, 12, 12));
        assert!(l.drain().all(|p| p.data() == b"xyz" && !p.is_foreign()));
        owner.drain_returns(|_| {});
    }

    #[test]
    fn queued_leaves_packets_and_holds_the_receive_side() {
        let l = Link::new(8);
        for i in 0..3u8 {
            l.transmit(Packet::from_bytes(&[i]));
        }
        let q = l.queued();
        assert_eq!(q.len(), 3);
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.discard())).is_err());
        drop(q);
        assert_eq!(l.queued().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(l.nreadable(), 3, "queued takes nothing");
        assert_eq!(l.counters().rxpackets, 0);
    }

    #[test]
    fn a_rewound_link_rests_at_its_home_slot() {
        let l = Link::new(DEFAULT_SIZE);
        assert_eq!(l.read.get(), l.home);
        // Its first lines start at a multiple of a quarter of a 4 KiB way.
        let first = l.ring.as_ptr() as usize + l.home as usize * std::mem::size_of::<Slot>();
        assert_eq!(first % 1024, 0);
        for _ in 0..3 {
            let mut t = l.transmitter();
            for _ in 0..100 {
                t.send(Packet::new());
            }
            drop(t);
            l.discard();
            l.rewind();
            assert_eq!((l.read.get(), l.write.get()), (l.home, l.home));
        }
        assert_eq!(counts(&l), (300, 0, 300, 0, 0));
    }

    /// Each batch path across the end of the ring: the queue starts at slot
    /// 6 of 8 and runs on into slots 0..3.
    #[test]
    fn batches_wrap_round_the_ring() {
        let fill = |l: &Link| {
            // Empty packets up to slot 6, taken away again.
            while l.write.get() & l.mask != 6 {
                l.transmit(Packet::new());
            }
            l.discard();
            let mut t = l.transmitter();
            assert_eq!(t.room(), 8);
            for i in 0..5u8 {
                t.send(Packet::from_bytes(&[i; 2]));
            }
        };
        let l = Link::new(8);
        fill(&l);
        assert_eq!(l.queued().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(l.drain().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(counts(&l), (11, 10, 11, 10, 0));
        fill(&l);
        assert_eq!(l.read.get() & l.mask, 6);
        assert_eq!(l.discard(), (5, 10));
        assert_eq!(counts(&l), (19, 20, 19, 20, 0));
    }

    #[test]
    fn transfer_moves_in_bulk_across_wraps_and_counts_drops() {
        let before = packet::stats();
        {
            let (a, b) = (Link::new(8), Link::new(4));
            // Put a's queue at slots 5..8 and 0..2, b's free slots at 3 and 0..2.
            for _ in 0..5 {
                a.transmit(Packet::new());
            }
            a.discard();
            for _ in 0..3 {
                b.transmit(Packet::new());
            }
            b.discard();
            for i in 0..6u8 {
                a.transmit(Packet::from_bytes(&[i; 3]));
            }
            assert_eq!(a.transfer(&b), 4);
            assert_eq!(counts(&a), (11, 18, 11, 18, 0));
            assert_eq!(counts(&b), (7, 12, 3, 0, 2));
            assert_eq!(b.drain().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
            // Into a link in Simd mode: foreign packets copied, counted.
            let owner = crate::BufferOwner::register("link test", None);
            b.set_copy_mode(CopyMode::Simd);
            a.transmit(lent(&owner, b"abc"));
            assert_eq!(a.transfer(&b), 1);
            assert_eq!(b.counters().copybytes, 3);
            assert_eq!(b.receive().unwrap().data(), b"abc");
            owner.drain_returns(|_| {});
            // Onto itself: the same packets, in the same order.
            a.transmit(Packet::from_bytes(&[1]));
            a.transmit(Packet::from_bytes(&[2]));
            assert_eq!(a.transfer(&a), 2);
            assert_eq!(a.drain().map(|p| p.data()[0]).collect::<Vec<_>>(), vec![1, 2]);
        }
        assert_eq!(packet::stats().in_use, before.in_use, "every packet freed");
    }
}
