//! DESCRIPTOR RINGS
//!
//! One receive and one transmit ring per queue, with advanced descriptors
//! (16 bytes; datasheet 7.1.6 and 7.2.3). Each ring keeps the packet whose
//! buffer each descriptor points at, so that a buffer always has exactly
//! one owner: the ring while the device may touch it, the graph after.
//!
//! Receive. `post(p)` puts any packet with room for a whole buffer on the
//! ring: a host packet (`refill` allocates those) or a foreign one, a
//! guest's buffer say, whose memory the lender mapped (`DmaMapper::
//! map_foreign`). `receive(max, f)` hands completed packets to `f` in
//! order, checking each descriptor's DD bit and reading its length after
//! an acquire fence. `flush()` bumps RDT once for everything posted.
//!
//! Transmit. `transmit(link)` fills descriptors from a link, asks for a
//! status report (RS) on every 32nd descriptor, and bumps TDT once per
//! batch. Finished buffers are freed 32 at a time, when the device has set
//! DD on the descriptor that asked for the report.
//!
//! Descriptor words are accessed atomically (plain loads and stores on
//! x86), ordered by fences, so the same code is sound against a DMA engine
//! and against the model's thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use anyhow::{Result, bail};
use snabb_core::Link;
use snabb_core::memory::DmaBuffer;
use snabb_core::packet::{self, Allocator, Packet};

use crate::bar::Registers;
use crate::device::Device;
use crate::regs::*;

/// Descriptors between status reports on a transmit ring.
pub const RS_INTERVAL: u32 = 32;
/// Ring sizes the driver takes: powers of two the 82599 accepts (RDLEN and
/// TDLEN are multiples of 128 bytes, i.e. of 8 descriptors).
pub const MIN_RING: u32 = 64;
pub const MAX_RING: u32 = 32768;
/// The smallest frame sent (an Ethernet header); shorter ones are dropped.
pub const MIN_FRAME: usize = 14;
/// The largest frame the 82599 sends (15.5 KiB).
pub const MAX_FRAME: usize = 15 * 1024 + 512;

pub fn valid_ring_size(n: u32) -> bool {
    n.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&n)
}

/// `n` 16-byte descriptors in DMA memory.
pub struct DescRing {
    mem: DmaBuffer,
    /// `mem`'s first byte, kept at hand for the hot path.
    base: *mut u8,
    mask: u32,
}

// SAFETY: `base` points into `mem`, which the ring owns; moving the ring to
// another thread moves that ownership with it.
unsafe impl Send for DescRing {}

impl DescRing {
    pub fn new(n: u32) -> Result<DescRing> {
        if !valid_ring_size(n) {
            bail!("ring of {n} descriptors: a power of two from {MIN_RING} to {MAX_RING} is needed");
        }
        let mem = DmaBuffer::new(n as usize * 16)?;
        let base = mem.as_ptr();
        Ok(DescRing { mem, base, mask: n - 1 })
    }
    pub fn len(&self) -> u32 {
        self.mask + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn dma(&self) -> u64 {
        self.mem.dma()
    }
    pub fn bytes(&self) -> u32 {
        self.len() * 16
    }

    /// Descriptor `i` (taken modulo the ring size).
    #[inline(always)]
    fn desc(&self, i: u32) -> Desc<'_> {
        // SAFETY: the index is masked into the ring, which lives as long as
        // the returned borrow.
        Desc { at: unsafe { self.base.add((i & self.mask) as usize * 16) }, _ring: std::marker::PhantomData }
    }
}

/// One descriptor. Its words are only ever accessed atomically, by us and
/// by the device, so shared access is sound.
#[derive(Clone, Copy)]
struct Desc<'a> {
    at: *mut u8,
    _ring: std::marker::PhantomData<&'a DescRing>,
}

impl<'a> Desc<'a> {
    #[inline(always)]
    fn w32(self, off: usize) -> &'a AtomicU32 {
        // SAFETY: off is 8 or 12: inside the 16-byte descriptor, 4-byte
        // aligned (rings are 4 KiB aligned), valid while the ring ('a) is.
        unsafe { AtomicU32::from_ptr(self.at.add(off) as *mut u32) }
    }
    #[inline(always)]
    fn w64(self, off: usize) -> &'a AtomicU64 {
        // SAFETY: off is 0 or 8, 8-byte aligned; as for w32.
        unsafe { AtomicU64::from_ptr(self.at.add(off) as *mut u64) }
    }

    /// Receive, read format: the buffer's address, no header buffer (which
    /// also clears the write-back's DD bit).
    #[inline(always)]
    fn rx_post(self, addr: u64) {
        self.w64(0).store(addr, Ordering::Relaxed);
        self.w64(8).store(0, Ordering::Relaxed);
    }
    /// Receive, write-back format: status and errors.
    #[inline(always)]
    fn rx_status(self) -> u32 {
        self.w32(8).load(Ordering::Relaxed)
    }
    /// Receive, write-back format: length (low half) and VLAN tag (high).
    #[inline(always)]
    fn rx_length_vlan(self) -> u32 {
        self.w32(12).load(Ordering::Relaxed)
    }
    /// Transmit, advanced data descriptor.
    #[inline(always)]
    fn tx_write(self, addr: u64, cmd_type_len: u32, olinfo: u32) {
        self.w64(0).store(addr, Ordering::Relaxed);
        self.w32(8).store(cmd_type_len, Ordering::Relaxed);
        self.w32(12).store(olinfo, Ordering::Relaxed);
    }
    /// Transmit, write-back: the DD bit.
    #[inline(always)]
    fn tx_done(self) -> bool {
        self.w32(12).load(Ordering::Relaxed) & TXD_STAT_DD != 0
    }
}

/// Software counters of a receive ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Descriptors written back with an error, without EOP, or with an
    /// impossible length: their packets are dropped.
    pub errors: u64,
}

/// Software counters of a transmit ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets refused (too short or too long, no device address).
    pub dropped: u64,
    /// Foreign packets copied to host buffers (their memory is not mapped).
    pub copied: u64,
}

pub struct RxQueue<R: Registers> {
    dev: Arc<Device<R>>,
    pub queue: u32,
    ring: DescRing,
    slots: Box<[Option<Packet>]>,
    /// Oldest posted descriptor: the next to complete.
    next: u32,
    /// Where the next buffer is posted.
    tail: u32,
    /// RDT as last written.
    written: u32,
    /// Buffers on the ring.
    posted: u32,
    bsize: u32,
    rdt: u32,
    /// Inside a frame that spans descriptors: drop until its EOP.
    discarding: bool,
    pub counters: RxCounters,
}

impl<R: Registers> RxQueue<R> {
    pub(crate) fn new(dev: Arc<Device<R>>, queue: u32, ring: DescRing, bsize: u32) -> RxQueue<R> {
        let n = ring.len();
        RxQueue {
            dev,
            queue,
            ring,
            slots: (0..n).map(|_| None).collect(),
            next: 0,
            tail: 0,
            written: 0,
            posted: 0,
            bsize,
            rdt: rdt(queue),
            discarding: false,
            counters: RxCounters::default(),
        }
    }

    pub fn ring(&self) -> &DescRing {
        &self.ring
    }
    /// The buffer size the queue was set up with (SRRCTL.BSIZEPACKET).
    pub fn buffer_size(&self) -> u32 {
        self.bsize
    }
    /// Buffers the ring can hold (one descriptor always stays empty, so that
    /// a full ring and an empty one look different to the device).
    pub fn capacity(&self) -> u32 {
        self.ring.mask
    }
    pub fn posted(&self) -> u32 {
        self.posted
    }

    #[inline(always)]
    fn put(&mut self, p: Packet) {
        let t = self.tail;
        self.ring.desc(t).rx_post(p.dma_addr());
        self.slots[(t & self.ring.mask) as usize] = Some(p);
        self.tail = (t + 1) & self.ring.mask;
        self.posted += 1;
    }

    /// Post a buffer the caller owns (host or foreign). It comes back as a
    /// received packet, or when the queue stops. Refused (and handed back)
    /// when the ring is full, when it has room for less than a whole
    /// buffer, or when the device cannot reach it.
    pub fn post(&mut self, p: Packet) -> Result<(), Packet> {
        let ok = self.posted < self.capacity()
            && p.capacity() >= self.bsize as usize
            && p.dma_addr() != 0
            && (!p.is_foreign() || self.dev.dma.covers_foreign(p.dma_addr(), self.bsize as usize));
        if !ok {
            return Err(p);
        }
        self.put(p);
        Ok(())
    }

    /// Fill every empty descriptor with a fresh host buffer.
    #[inline]
    pub fn refill(&mut self) {
        let want = self.capacity() - self.posted;
        if want == 0 {
            return;
        }
        let mut a = Allocator::new(want as usize);
        let (ring, slots) = (&self.ring, &mut self.slots[..]);
        let mask = ring.mask;
        let mut t = self.tail;
        for _ in 0..want {
            let p = a.allocate();
            ring.desc(t).rx_post(p.dma_addr());
            // The slot is empty (it is past the last posted one): no drop.
            std::mem::forget(slots[(t & mask) as usize].replace(p));
            t = (t + 1) & mask;
        }
        self.tail = t;
        self.posted += want;
    }

    /// Tell the device about everything posted: one RDT write.
    #[inline]
    pub fn flush(&mut self) -> Result<()> {
        if self.tail != self.written {
            // New buffers may lie in a chunk the device cannot reach yet.
            self.dev.dma.check()?;
            fence(Ordering::Release);
            self.dev.regs.write(self.rdt, self.tail);
            self.written = self.tail;
        }
        Ok(())
    }

    /// Hand up to `max` received packets to `deliver`, oldest first.
    #[inline]
    pub fn receive(&mut self, max: usize, mut deliver: impl FnMut(Packet)) -> usize {
        let (ring, slots) = (&self.ring, &mut self.slots[..]);
        let mask = ring.mask;
        let limit = max.min(self.posted as usize) as u32;
        let (mut bytes, mut delivered, mut errors) = (0u64, 0u64, 0u64);
        let mut discarding = self.discarding;
        let mut i = self.next;
        let mut k = 0;
        while k < limit {
            let d = ring.desc(i);
            let status = d.rx_status();
            if status & RXD_STAT_DD == 0 {
                break;
            }
            // The length and the data were written before DD.
            fence(Ordering::Acquire);
            let len = (d.rx_length_vlan() & 0xffff) as usize;
            let slot = slots[(i & mask) as usize].take();
            i = (i + 1) & mask;
            k += 1;
            let Some(mut p) = slot else {
                errors += 1;
                continue;
            };
            let whole = status & RXD_STAT_EOP != 0 && !discarding;
            discarding = status & RXD_STAT_EOP == 0;
            if !whole || status & RXD_ERR_FRAME != 0 || len == 0 || len > p.capacity() {
                errors += 1;
                continue; // p is dropped: its buffer goes home
            }
            p.set_len(len);
            bytes += len as u64;
            delivered += 1;
            deliver(p);
        }
        self.discarding = discarding;
        self.next = i;
        self.posted -= k;
        self.counters.packets += delivered;
        self.counters.bytes += bytes;
        self.counters.errors += errors;
        k as usize
    }

    /// Take every buffer off the ring. Only once the device has stopped the
    /// queue (RXDCTL.ENABLE reads clear): it must not write into them after.
    pub(crate) fn release_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            s.take();
        }
        self.posted = 0;
        self.next = self.tail;
    }

    /// The device may still write into the buffers: keep their memory out
    /// of use for good rather than free it.
    pub(crate) fn abandon_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(p) = s.take() {
                std::mem::forget(p);
            }
        }
        self.posted = 0;
    }
}

pub struct TxQueue<R: Registers> {
    dev: Arc<Device<R>>,
    pub queue: u32,
    ring: DescRing,
    slots: Box<[Option<Packet>]>,
    /// Where the next packet goes.
    tail: u32,
    /// Oldest descriptor not yet reclaimed (a multiple of RS_INTERVAL).
    clean: u32,
    tdt: u32,
    pub counters: TxCounters,
}

impl<R: Registers> TxQueue<R> {
    pub(crate) fn new(dev: Arc<Device<R>>, queue: u32, ring: DescRing) -> TxQueue<R> {
        let n = ring.len();
        TxQueue {
            dev,
            queue,
            ring,
            slots: (0..n).map(|_| None).collect(),
            tail: 0,
            clean: 0,
            tdt: tdt(queue),
            counters: TxCounters::default(),
        }
    }

    pub fn ring(&self) -> &DescRing {
        &self.ring
    }
    /// Descriptors handed to the device and not yet reclaimed.
    pub fn in_flight(&self) -> u32 {
        self.tail.wrapping_sub(self.clean) & self.ring.mask
    }
    /// Packets the ring can take now.
    pub fn room(&self) -> u32 {
        self.ring.mask - self.in_flight()
    }

    /// Free the buffers of every finished group of RS_INTERVAL descriptors.
    #[inline]
    pub fn reclaim(&mut self) -> usize {
        let mask = self.ring.mask;
        let mut freed = 0;
        while self.in_flight() >= RS_INTERVAL {
            let last = (self.clean + RS_INTERVAL - 1) & mask;
            if !self.ring.desc(last).tx_done() {
                break;
            }
            fence(Ordering::Acquire);
            // Every descriptor of a finished group carries a packet.
            let from = self.clean as usize;
            let slots = &mut self.slots[from..from + RS_INTERVAL as usize];
            let mut k = 0;
            packet::free_batch(RS_INTERVAL as usize, || {
                let p = slots[k].take().expect("a sent descriptor holds its packet");
                k += 1;
                p
            });
            self.clean = (self.clean + RS_INTERVAL) & mask;
            freed += RS_INTERVAL as usize;
        }
        freed
    }

    /// Send what waits on `input`, as much as the ring takes: one TDT write.
    #[inline]
    pub fn transmit(&mut self, input: &Link) -> Result<usize> {
        self.reclaim();
        let room = self.room() as usize;
        if room == 0 || input.is_empty() {
            return Ok(0);
        }
        let (ring, slots, dma) = (&self.ring, &mut self.slots[..], &self.dev.dma);
        let mask = ring.mask;
        let mut t = self.tail;
        let (mut sent, mut bytes, mut dropped, mut copied) = (0u32, 0u64, 0u64, 0u64);
        for p in input.drain().take(room) {
            let len = p.len();
            if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
                dropped += 1;
                continue;
            }
            let mut p = if p.is_foreign() && !dma.covers_foreign(p.dma_addr(), len) {
                copied += 1;
                p.copy_to_host()
            } else {
                p
            };
            // A partial checksum from a guest is finished here, in
            // software (the 82599 could, given a context descriptor).
            if p.partial_csum().is_some() {
                p.finish_partial_csum();
            }
            let addr = p.dma_addr();
            if addr == 0 {
                dropped += 1;
                continue;
            }
            let rs = if (t + 1).is_multiple_of(RS_INTERVAL) { TXD_DCMD_RS } else { 0 };
            let cmd = len as u32 | TXD_DTYP_DATA | TXD_DCMD_DEXT | TXD_DCMD_IFCS | TXD_DCMD_EOP | rs;
            ring.desc(t).tx_write(addr, cmd, (len as u32) << TXD_PAYLEN_SHIFT);
            // Past the in-flight window the slot is empty: no drop.
            std::mem::forget(slots[(t & mask) as usize].replace(p));
            t = (t + 1) & mask;
            sent += 1;
            bytes += len as u64;
        }
        self.counters.dropped += dropped;
        self.counters.copied += copied;
        if sent > 0 {
            self.tail = t;
            self.dev.dma.check()?;
            fence(Ordering::Release);
            self.dev.regs.write(self.tdt, t);
            self.counters.packets += sent as u64;
            self.counters.bytes += bytes;
        }
        Ok(sent as usize)
    }

    /// Whether the device has sent everything handed to it (TDH = TDT).
    pub(crate) fn drained(&self) -> bool {
        self.dev.regs.read(tdh(self.queue)) == self.tail
    }

    pub(crate) fn release_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            s.take();
        }
        self.clean = self.tail;
    }

    pub(crate) fn abandon_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(p) = s.take() {
                std::mem::forget(p);
            }
        }
        self.clean = self.tail;
    }
}
