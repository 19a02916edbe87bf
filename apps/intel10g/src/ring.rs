//! DESCRIPTOR RINGS
//!
//! One receive and one transmit ring per queue, with advanced descriptors
//! (16 bytes; datasheet 7.1.6 and 7.2.3). Each ring keeps the packet whose
//! buffer each descriptor points at, so that a buffer always has exactly
//! one owner: the ring while the device may touch it, the graph after.
//!
//! Receive. A queue runs in one of two modes:
//!
//!   Host  host buffers of `buffer_size` bytes (`refill` allocates them)
//!   Lend  only buffers a lender supplies (`lend`): a guest's receive
//!         buffers, foreign packets, so that the chip writes each frame
//!         straight into guest memory. SRRCTL.BSIZEPACKET is the first
//!         supplied buffer's room rounded down to whole KiB; no host
//!         buffer is ever posted, so a lender that supplies none gets its
//!         frames dropped by the chip (SRRCTL.Drop_En, counted in QPRDC).
//!
//! `pull(out, supply)` does a breath's work: it gives back every posted
//! buffer whose owner revoked it (`packet::revocations()` is checked once),
//! switches mode when the output link's copy mode or the supply link say
//! so, hands completed frames to `out`, posts supplied buffers (as many as
//! there are free descriptors; the rest wait on their link) or host ones,
//! and bumps RDT once. Every switch and every revocation restarts the queue
//! (`restart`): disable, wait for the chip (4.6.7.1), deliver what it
//! finished, take every buffer off the ring (lent ones go home), set the
//! buffer size, enable.
//!
//! `receive(max, f)` hands up to `max` frames to `f` in order, checking
//! each descriptor's DD bit and reading its length after an acquire fence.
//! A frame longer than a buffer comes over several descriptors (EOP on the
//! last): its later buffers' bytes are copied after the first buffer's when
//! it has room for the whole frame (`gathered`: a Linux guest's 1536-byte
//! buffer with 1 KiB BSIZEPACKET); otherwise, when one lender lent them
//! all, they stay where they are as one chain packet (`chained`:
//! `packet::chain`, the lender closes the gaps), and else the frame is
//! copied into a fresh host packet (`copied_long`); the other buffers go
//! home. A frame whose checksums the
//! chip checked and found good (IPCS without IPE, L4CS without L4E) is
//! marked `csum_verified`.
//!
//! Transmit. `transmit(link)` fills descriptors from a link: one per
//! packet, two for a split packet (its host head, then its foreign tail in
//! place), far below the chip's limit of 40 - WTHRESH per packet. It asks
//! for a status report (RS) on every 32nd descriptor and on the last one
//! of every call, so that a lent buffer comes home within a breath or two
//! of going out (a transmit ring that sits on a guest's buffers starves the
//! guest), and bumps TDT once per batch. `reclaim()` frees the buffers of
//! every finished report; the app calls it every breath.
//!
//! Descriptor words are accessed atomically (plain loads and stores on
//! x86), ordered by fences, so the same code is sound against a DMA engine
//! and against the model's thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use anyhow::{Result, bail};
use snabb_core::memory::DmaBuffer;
use snabb_core::packet::{self, Allocator, PAYLOAD_SIZE, Packet};
use snabb_core::{CopyMode, Link};

use crate::bar::Registers;
use crate::device::Device;
use crate::dma::Reach;
use crate::regs::*;

/// Descriptors between status reports on a transmit ring (at most).
pub const RS_INTERVAL: u32 = 32;
/// Ring sizes the driver takes: powers of two the 82599 accepts (RDLEN and
/// TDLEN are multiples of 128 bytes, i.e. of 8 descriptors).
pub const MIN_RING: u32 = 64;
pub const MAX_RING: u32 = 32768;
/// The smallest frame sent (an Ethernet header); shorter ones are dropped.
pub const MIN_FRAME: usize = 14;
/// The largest frame the 82599 sends (15.5 KiB).
pub const MAX_FRAME: usize = 15 * 1024 + 512;
/// TXDCTL.WTHRESH as the driver programs it.
pub const TX_WTHRESH: u32 = 0;
/// Data descriptors per packet the 82599 takes at most: 40 - WTHRESH
/// (DPDK's ixgbe_prep_pkts). The driver uses two at most.
pub const TX_MAX_DESC_PER_PACKET: u32 = 40 - TX_WTHRESH;
const _: () = assert!(TX_MAX_DESC_PER_PACKET >= 2);
/// The smallest receive buffer size (SRRCTL.BSIZEPACKET counts KiB).
pub const MIN_BSIZE: u32 = 1024;

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
        // SAFETY: off is 0, 8 or 12: inside the 16-byte descriptor, 4-byte
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
    /// Receive, write-back format: RSS type and packet type (dword 0).
    #[inline(always)]
    fn rx_pkt_info(self) -> u32 {
        self.w32(0).load(Ordering::Relaxed)
    }
    /// Transmit, advanced data descriptor.
    #[inline(always)]
    fn tx_write(self, addr: u64, cmd_type_len: u32, olinfo: u32) {
        self.w64(0).store(addr, Ordering::Relaxed);
        self.w32(8).store(cmd_type_len, Ordering::Relaxed);
        self.w32(12).store(olinfo, Ordering::Relaxed);
    }
    /// Transmit: ask for a status report on a descriptor already written.
    #[inline(always)]
    fn tx_set_rs(self) {
        let w = self.w32(8);
        w.store(w.load(Ordering::Relaxed) | TXD_DCMD_RS, Ordering::Relaxed);
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
    /// Frames the chip marked bad (CRC, length, symbol, size errors), or
    /// written back with an impossible length: dropped.
    pub errors: u64,
    /// Frames whose IP and TCP/UDP checksums the chip verified.
    pub csum_verified: u64,
    /// Frames with a bad IPv4 header or TCP/UDP checksum (delivered, not
    /// marked verified).
    pub csum_bad: u64,
    /// Frames over several descriptors whose later buffers were copied into
    /// the first (it had room for the whole frame), and the bytes copied.
    pub gathered: u64,
    pub gathered_bytes: u64,
    /// Frames over several descriptors copied into a fresh host packet,
    /// and their bytes.
    pub copied_long: u64,
    pub copied_long_bytes: u64,
    /// Frames over several lent buffers of one lender handed on as one
    /// chain packet, where they lie (`packet::chain`), and their buffers.
    pub chained: u64,
    pub chained_buffers: u64,
    /// Supplied buffers posted, and refused (revoked, too small, out of
    /// the device's reach, not empty, or supplied while the queue does not
    /// lend): a refused buffer goes straight home.
    pub lent: u64,
    pub supply_refused: u64,
    /// Queue restarts (mode switches and revocations).
    pub restarts: u64,
    /// Completed frames a restart did not hand on: no room on the output,
    /// or in a buffer its owner revoked (it goes home).
    pub restart_drops: u64,
    /// Posted buffers given back because their owner revoked them.
    pub revoked: u64,
}

/// Software counters of a transmit ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets refused (too short or too long, no device address).
    pub dropped: u64,
    /// Foreign packets (or split packets' tails) copied to host buffers:
    /// the device cannot reach their memory.
    pub copied: u64,
    /// Split packets sent as two descriptors (host head, foreign tail).
    pub split: u64,
    /// Packets sent from foreign memory in place (whole, or a split's tail).
    pub foreign: u64,
}

/// How a receive queue gets its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxMode {
    /// Host buffers from the freelist.
    Host,
    /// Only buffers supplied by lenders (`RxQueue::lend`).
    Lend,
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
    /// SRRCTL.BSIZEPACKET now, in bytes.
    bsize: u32,
    /// The buffer size in Host mode (the app's `buffer_size`).
    host_bsize: u32,
    mode: RxMode,
    rdt: u32,
    /// Inside a frame that could not be taken whole: drop until its EOP.
    discarding: bool,
    /// `packet::revocations()` when last looked at.
    revocations: u64,
    reach: Reach,
    /// The chip would not stop the queue: it is left alone, with its
    /// buffers kept out of use.
    broken: bool,
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
            host_bsize: bsize,
            mode: RxMode::Host,
            rdt: rdt(queue),
            discarding: false,
            revocations: packet::revocations(),
            reach: Reach::default(),
            broken: false,
            counters: RxCounters::default(),
        }
    }

    pub fn ring(&self) -> &DescRing {
        &self.ring
    }
    /// The buffer size the queue runs with (SRRCTL.BSIZEPACKET).
    pub fn buffer_size(&self) -> u32 {
        self.bsize
    }
    pub fn mode(&self) -> RxMode {
        self.mode
    }
    /// Buffers the ring can hold (one descriptor always stays empty, so that
    /// a full ring and an empty one look different to the device).
    pub fn capacity(&self) -> u32 {
        self.ring.mask
    }
    pub fn posted(&self) -> u32 {
        self.posted
    }
    /// Lent (foreign) buffers on the ring now.
    pub fn lent_posted(&self) -> usize {
        self.slots.iter().flatten().filter(|p| p.is_foreign()).count()
    }

    #[inline(always)]
    fn put(&mut self, p: Packet) {
        let t = self.tail;
        self.ring.desc(t).rx_post(p.dma_addr());
        self.slots[(t & self.ring.mask) as usize] = Some(p);
        self.tail = (t + 1) & self.ring.mask;
        self.posted += 1;
    }

    /// Whether the device can take `p` as a receive buffer of the queue's
    /// size: room for a whole buffer, an even device address (the 82599
    /// uses bit 0 of a buffer address otherwise, as Snabb notes), and for
    /// a lent buffer, memory the device reaches.
    #[inline(always)]
    fn takes(&self, p: &Packet) -> bool {
        let a = p.dma_addr();
        p.capacity() >= self.bsize as usize
            && a != 0
            && a & 1 == 0
            && !p.is_split()
            && (!p.is_foreign() || self.reach.covers(a, self.bsize as usize))
    }

    /// Post a buffer the caller owns (host or foreign). It comes back as a
    /// received packet, or when the queue stops. Refused (and handed back)
    /// when the ring is full, or when the device cannot take it (see
    /// `takes`).
    pub fn post(&mut self, p: Packet) -> Result<(), Packet> {
        self.reach.refresh(&self.dev.dma);
        if self.posted >= self.capacity() || !self.takes(&p) {
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

    /// A breath of the receive side: revocations, mode, frames to `out`,
    /// buffers from `supply` (or host ones), one RDT write. The queue lends
    /// while `supply` is connected and `out` hands buffers on as they are
    /// (copy mode Zero): a Simd link would copy every frame anyway.
    pub fn pull(&mut self, out: Option<&Link>, supply: Option<&Link>) -> Result<()> {
        if self.broken {
            return Ok(());
        }
        let lend_ok = supply.is_some() && out.is_some_and(|o| o.copy_mode() == CopyMode::Zero);
        let r = packet::revocations();
        if r != self.revocations {
            self.revocations = r;
            self.on_revocation(out, supply, lend_ok)?;
        }
        if self.mode == RxMode::Lend && !lend_ok {
            self.restart(RxMode::Host, self.host_bsize, out)?;
        }
        if let Some(o) = out {
            let n = o.nwritable();
            if n > 0 {
                let mut tx = o.transmitter();
                self.receive(n, |p| tx.send(p));
            }
        }
        if let Some(s) = supply {
            self.lend(s, out, lend_ok)?;
        }
        if self.mode == RxMode::Host {
            self.refill();
        }
        self.flush()
    }

    /// Post what waits on `supply` (the push side of a breath: buffers a
    /// lender supplied since the pull go on the ring at once).
    pub fn push(&mut self, out: Option<&Link>, supply: &Link) -> Result<()> {
        if self.broken || supply.is_empty() {
            return Ok(());
        }
        let lend_ok = out.is_some_and(|o| o.copy_mode() == CopyMode::Zero);
        self.lend(supply, out, lend_ok)?;
        self.flush()
    }

    /// Refuse a supplied buffer: it goes straight home.
    #[inline(always)]
    fn refuse(&mut self, p: Packet) {
        self.counters.supply_refused += 1;
        drop(p);
    }

    /// A supplied buffer as the contract wants it: an empty foreign buffer
    /// of an owner that has not revoked it.
    #[inline(always)]
    fn proper(p: &Packet) -> bool {
        p.is_foreign() && !p.is_split() && p.is_empty() && !p.is_revoked()
    }

    /// Take supplied buffers: in Lend mode as many as there are free
    /// descriptors; in Host mode the first proper one switches the queue to
    /// Lend (when `lend_ok`), with the buffer size it allows.
    fn lend(&mut self, supply: &Link, out: Option<&Link>, lend_ok: bool) -> Result<()> {
        if supply.is_empty() {
            return Ok(());
        }
        if !lend_ok {
            // Nobody wants lent buffers here: send them home at once
            // rather than keep them from their guest on a link.
            for p in supply.drain() {
                self.refuse(p);
            }
            return Ok(());
        }
        self.reach.refresh(&self.dev.dma);
        if self.mode == RxMode::Host {
            while let Some(p) = supply.receive() {
                let cap = p.capacity() as u32;
                let bsize = (cap / 1024 * 1024).min(self.host_bsize);
                if !Self::proper(&p) || bsize < MIN_BSIZE {
                    self.refuse(p);
                    continue;
                }
                let a = p.dma_addr();
                if a == 0 || a & 1 != 0 || !self.reach.covers(a, bsize as usize) {
                    self.refuse(p);
                    continue;
                }
                self.restart(RxMode::Lend, bsize, out)?;
                self.put(p);
                self.counters.lent += 1;
                break;
            }
            if self.mode == RxMode::Host {
                return Ok(());
            }
        }
        let free = (self.capacity() - self.posted) as usize;
        if free == 0 {
            return Ok(());
        }
        let mut it = supply.drain().take(free);
        for p in &mut it {
            if Self::proper(&p) && self.takes(&p) {
                self.put(p);
                self.counters.lent += 1;
            } else {
                self.refuse(p);
            }
        }
        Ok(())
    }

    /// An owner revoked its buffers (or went): give back every posted one
    /// of it, with a restart; lend no more when no lender is left.
    #[cold]
    fn on_revocation(&mut self, out: Option<&Link>, supply: Option<&Link>, lend_ok: bool) -> Result<()> {
        let revoked = self.slots.iter().flatten().filter(|p| p.is_revoked()).count() as u64;
        let live = |p: &Packet| p.is_foreign() && !p.is_revoked();
        let lender_left = self.slots.iter().flatten().any(live) || supply.is_some_and(|s| s.queued().any(live));
        let next = if self.mode == RxMode::Lend && lend_ok && lender_left { RxMode::Lend } else { RxMode::Host };
        if revoked > 0 || next != self.mode {
            self.counters.revoked += revoked;
            let bsize = if next == RxMode::Lend { self.bsize } else { self.host_bsize };
            self.restart(next, bsize, out)?;
        }
        Ok(())
    }

    /// Restart the queue in `mode` with `bsize`-byte buffers: stop it,
    /// hand the frames it finished to `out` (those in revoked buffers go
    /// home instead), take every buffer off the ring, start it again empty.
    pub fn restart(&mut self, mode: RxMode, bsize: u32, out: Option<&Link>) -> Result<()> {
        let dev = self.dev.clone();
        if let Err(e) = dev.rx_disable(self.queue) {
            // The chip may still write into the buffers: keep them out of
            // use for good (a lent one then never goes home, and its
            // lender never unmaps its memory) and leave the queue alone.
            self.abandon_buffers();
            self.broken = true;
            return Err(e);
        }
        let room = out.map_or(0, |o| o.nwritable());
        match out {
            Some(o) if room > 0 => {
                let mut tx = o.transmitter();
                self.receive_from(room, true, |p| tx.send(p));
            }
            _ => {}
        }
        // What is left finished or not, and goes (home) with its buffers.
        let mut i = self.next;
        for _ in 0..self.posted {
            let s = self.ring.desc(i).rx_status();
            if s & RXD_STAT_DD != 0 && s & RXD_STAT_EOP != 0 {
                self.counters.restart_drops += 1;
            }
            i = (i + 1) & self.ring.mask;
        }
        self.release_buffers();
        self.next = 0;
        self.tail = 0;
        self.written = 0;
        self.discarding = false;
        self.counters.restarts += 1;
        if let Err(e) = dev.rx_enable(self.queue, bsize) {
            self.broken = true;
            return Err(e);
        }
        self.mode = mode;
        self.bsize = bsize;
        Ok(())
    }

    /// Hand up to `max` received frames to `deliver`, oldest first.
    /// Returns how many.
    #[inline]
    pub fn receive(&mut self, max: usize, deliver: impl FnMut(Packet)) -> usize {
        self.receive_from(max, false, deliver)
    }

    #[inline(always)]
    fn receive_from(&mut self, max: usize, drop_revoked: bool, mut deliver: impl FnMut(Packet)) -> usize {
        let mask = self.ring.mask;
        let (mut bytes, mut delivered, mut errors, mut revoked) = (0u64, 0usize, 0u64, 0u64);
        let mut i = self.next;
        let mut left = self.posted;
        if self.discarding
            && left > 0
            && let Long::Took(n, _) = self.long_frame(i, left, drop_revoked)
        {
            // The rest of a frame given up on, as far as it is done. It
            // cannot start again below: only a full ring starts it, and
            // that is every descriptor posted.
            i = (i + n) & mask;
            left -= n;
        }
        loop {
            // Frames in one descriptor each, with the ring's parts in
            // locals; a frame over several leaves the loop.
            let mut long = false;
            {
                let (ring, slots, counters) = (&self.ring, &mut self.slots[..], &mut self.counters);
                // A descriptor a turn, a frame at most each.
                let budget = (max - delivered).min(left as usize) as u32;
                let stop = left - budget;
                while left > stop {
                    let d = ring.desc(i);
                    let status = d.rx_status();
                    if status & RXD_STAT_DD == 0 {
                        break;
                    }
                    if status & RXD_STAT_EOP == 0 {
                        long = true;
                        break;
                    }
                    // The length and the data were written before DD.
                    fence(Ordering::Acquire);
                    let len = (d.rx_length_vlan() & 0xffff) as usize;
                    let slot = slots[(i & mask) as usize].take();
                    i = (i + 1) & mask;
                    left -= 1;
                    let Some(mut p) = slot else {
                        errors += 1;
                        continue;
                    };
                    if status & RXD_ERR_FRAME != 0 || len == 0 || len > p.capacity() {
                        errors += 1;
                        continue; // p is dropped: its buffer goes home
                    }
                    if drop_revoked && p.is_revoked() {
                        revoked += 1;
                        continue;
                    }
                    p.set_len(len);
                    if status & (RXD_STAT_IPCS | RXD_STAT_L4CS) != 0 {
                        checksum(counters, &mut p, status, d);
                    }
                    bytes += len as u64;
                    delivered += 1;
                    deliver(p);
                }
            }
            if !long || delivered >= max {
                break;
            }
            // Off the fast path.
            match self.long_frame(i, left, drop_revoked) {
                Long::Wait => break,
                Long::Took(n, got) => {
                    i = (i + n) & mask;
                    left -= n;
                    if let Some(p) = got {
                        bytes += p.len() as u64;
                        delivered += 1;
                        deliver(p);
                    }
                }
            }
        }
        self.posted = left;
        self.next = i;
        self.counters.packets += delivered as u64;
        self.counters.bytes += bytes;
        self.counters.errors += errors;
        self.counters.restart_drops += revoked;
        delivered
    }

    /// The descriptors from `i` hold the start of a frame without its EOP,
    /// or the rest of a frame being dropped. Take the whole frame when
    /// every descriptor of it is done: a packet, or None when it is bad.
    #[cold]
    #[inline(never)]
    fn long_frame(&mut self, i: u32, left: u32, drop_revoked: bool) -> Long {
        let mask = self.ring.mask;
        let mut n = 0;
        let mut eop = None;
        while n < left {
            let s = self.ring.desc(i + n).rx_status();
            if s & RXD_STAT_DD == 0 {
                break;
            }
            n += 1;
            if s & RXD_STAT_EOP != 0 {
                eop = Some(s);
                break;
            }
        }
        fence(Ordering::Acquire);
        if self.discarding {
            // The rest of a frame given up on, as far as it is done.
            for k in 0..n {
                self.slots[((i + k) & mask) as usize].take();
            }
            self.discarding = eop.is_none();
            return Long::Took(n, None);
        }
        let Some(status) = eop else {
            if n == left && left == self.capacity() {
                // The ring is full of the start of one frame and cannot
                // take the rest: drop it, and the rest when it comes.
                for k in 0..n {
                    self.slots[((i + k) & mask) as usize].take();
                }
                self.counters.errors += 1;
                self.discarding = true;
                return Long::Took(n, None);
            }
            return Long::Wait;
        };
        let mut parts: [Option<Packet>; 16] = Default::default();
        let mut lens = [0usize; 16];
        let mut ok = n as usize <= parts.len();
        for k in 0..n {
            let p = self.slots[((i + k) & mask) as usize].take();
            if (k as usize) < parts.len() {
                lens[k as usize] = (self.ring.desc(i + k).rx_length_vlan() & 0xffff) as usize;
                parts[k as usize] = p;
            }
        }
        let n_parts = (n as usize).min(parts.len());
        let total: usize = lens[..n_parts].iter().sum();
        for k in 0..n_parts {
            let fits = parts[k].as_ref().is_some_and(|p| lens[k] <= p.capacity() && (k + 1 == n_parts || lens[k] > 0));
            ok &= fits && lens[k] <= self.bsize as usize;
        }
        ok &= status & RXD_ERR_FRAME == 0 && total > 0 && total <= PAYLOAD_SIZE;
        if !ok {
            self.counters.errors += 1;
            return Long::Took(n, None);
        }
        if drop_revoked && parts[0].as_ref().is_some_and(|p| p.is_revoked()) {
            self.counters.restart_drops += 1;
            return Long::Took(n, None);
        }
        for k in 0..n_parts {
            parts[k].as_mut().unwrap().set_len(lens[k]);
        }
        let len0 = lens[0];
        let chained =
            if parts[0].as_ref().unwrap().capacity() < total { packet::chain(&mut parts[..n_parts]) } else { None };
        let mut first = parts[0].take();
        let mut p = if let Some(c) = chained {
            // Lent buffers of one lender, left where the chip wrote them:
            // the lender closes the gaps (a guest's header sits in the
            // first buffer only).
            self.counters.chained += 1;
            self.counters.chained_buffers += n_parts as u64;
            c
        } else if first.as_ref().unwrap().capacity() >= total {
            let mut first = first.take().unwrap();
            // Into the first buffer, after its own bytes.
            first.set_len(total);
            let dst = first.data_mut();
            let mut at = len0;
            for k in 1..n_parts {
                let q = parts[k].take().unwrap();
                snabb_core::copy::copy(&mut dst[at..at + lens[k]], q.data());
                at += lens[k];
            }
            self.counters.gathered += 1;
            self.counters.gathered_bytes += (total - len0) as u64;
            first
        } else {
            let first = first.take().unwrap();
            let mut h = Packet::new();
            h.set_len(total);
            let dst = h.data_mut();
            snabb_core::copy::copy(&mut dst[..len0], first.data());
            let mut at = len0;
            for k in 1..n_parts {
                let q = parts[k].take().unwrap();
                snabb_core::copy::copy(&mut dst[at..at + lens[k]], q.data());
                at += lens[k];
            }
            self.counters.copied_long += 1;
            self.counters.copied_long_bytes += total as u64;
            h
        };
        // The other buffers go home here, as they are dropped.
        if status & (RXD_STAT_IPCS | RXD_STAT_L4CS) != 0 {
            checksum(&mut self.counters, &mut p, status, self.ring.desc(i + n - 1));
        }
        Long::Took(n, Some(p))
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

    /// The queue goes on on another thread: mark its buffers for the trip
    /// (`Packet::prepare_to_travel`).
    pub(crate) fn prepare_to_travel(&self) {
        self.slots.iter().flatten().for_each(Packet::prepare_to_travel);
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

/// The chip's checksum verdicts (Linux's ixgbe_rx_checksum): a bad IPv4
/// header checksum, or L4E, leave the frame unverified; L4E on a UDP frame
/// may be the 82599 erratum for a datagram without a checksum (0), so it is
/// not counted as bad.
#[inline(always)]
fn checksum(c: &mut RxCounters, p: &mut Packet, status: u32, d: Desc<'_>) {
    if status & RXD_STAT_IPCS != 0 && status & RXD_ERR_IPE != 0 {
        c.csum_bad += 1;
        return;
    }
    if status & RXD_STAT_L4CS == 0 {
        return;
    }
    if status & RXD_ERR_L4E != 0 {
        if d.rx_pkt_info() & RXD_PKTTYPE_UDP == 0 {
            c.csum_bad += 1;
        }
        return;
    }
    p.set_csum_verified(true);
    c.csum_verified += 1;
}

/// What a frame over several descriptors came to.
enum Long {
    /// Not all its descriptors are done yet.
    Wait,
    /// Its descriptors (how many) and the frame, or None when it was bad.
    Took(u32, Option<Packet>),
}

pub struct TxQueue<R: Registers> {
    dev: Arc<Device<R>>,
    pub queue: u32,
    ring: DescRing,
    /// The packet of each descriptor, on the packet's last (EOP) one.
    slots: Box<[Option<Packet>]>,
    /// Where the next packet goes.
    tail: u32,
    /// Oldest descriptor not yet reclaimed.
    clean: u32,
    /// Descriptors that asked for a status report (RS), oldest first, with
    /// the packets up to each: a ring of `rs_len` entries from `rs_head`.
    rs: Box<[(u32, u32)]>,
    rs_head: u32,
    rs_len: u32,
    /// Descriptors and packets written since the last RS.
    since_rs: u32,
    packets_since_rs: u32,
    tdt: u32,
    reach: Reach,
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
            rs: vec![(0, 0); n as usize].into_boxed_slice(),
            rs_head: 0,
            rs_len: 0,
            since_rs: 0,
            packets_since_rs: 0,
            tdt: tdt(queue),
            reach: Reach::default(),
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
    /// Descriptors the ring can take now.
    pub fn room(&self) -> u32 {
        self.ring.mask - self.in_flight()
    }

    /// Free the buffers of every descriptor up to the last finished status
    /// report. Cheap when there is nothing to do (one load).
    #[inline]
    pub fn reclaim(&mut self) -> usize {
        let mask = self.ring.mask;
        let mut freed = 0;
        while self.rs_len > 0 {
            let (last, packets) = self.rs[self.rs_head as usize];
            if !self.ring.desc(last).tx_done() {
                break;
            }
            fence(Ordering::Acquire);
            // Each packet is on its last descriptor; a split packet's first
            // one holds nothing.
            let slots = &mut self.slots[..];
            let mut k = self.clean;
            packet::free_batch(packets as usize, || {
                loop {
                    let s = slots[(k & mask) as usize].take();
                    k = k.wrapping_add(1);
                    if let Some(p) = s {
                        return p;
                    }
                }
            });
            freed += packets as usize;
            self.clean = (last + 1) & mask;
            self.rs_head = (self.rs_head + 1) & mask;
            self.rs_len -= 1;
        }
        freed
    }

    /// Send what waits on `input`, as much as the ring takes: one TDT write.
    #[inline]
    pub fn transmit(&mut self, input: &Link) -> Result<usize> {
        self.reclaim();
        if input.is_empty() || self.room() < 2 {
            return Ok(0);
        }
        self.reach.refresh(&self.dev.dma);
        let mask = self.ring.mask;
        let mut room = self.room();
        let mut t = self.tail;
        let (mut sent, mut bytes, mut dropped) = (0u32, 0u64, 0u64);
        let (mut since, mut packets) = (self.since_rs, self.packets_since_rs);
        // The EOP descriptor of the last packet, and whether it asked for
        // a report already.
        let (mut last, mut last_rs) = (u32::MAX, false);
        let mut it = input.drain();
        // A packet takes two descriptors at most.
        while room >= 2 {
            let Some(mut p) = it.next() else { break };
            let len = p.len();
            if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
                dropped += 1;
                continue;
            }
            let cmd = TXD_DTYP_DATA | TXD_DCMD_DEXT | TXD_DCMD_IFCS | TXD_DCMD_EOP;
            let olinfo = (len as u32) << TXD_PAYLEN_SHIFT;
            let ndesc = if !p.is_foreign() {
                // A partial checksum from a guest is finished here, in
                // software (the 82599 could, given a context descriptor).
                if p.partial_csum().is_some() {
                    p.finish_partial_csum();
                }
                self.ring.desc(t).tx_write(p.dma_addr(), cmd | len as u32, olinfo);
                1
            } else {
                match self.write_foreign(&mut p, t, cmd, olinfo) {
                    Some(n) => n,
                    None => {
                        dropped += 1;
                        continue;
                    }
                }
            };
            let eop = (t + ndesc - 1) & mask;
            // Past the in-flight window the slots are empty: no drop.
            std::mem::forget(self.slots[eop as usize].replace(p));
            since += ndesc;
            packets += 1;
            last_rs = since >= RS_INTERVAL;
            if last_rs {
                self.ring.desc(eop).tx_set_rs();
                self.rs[((self.rs_head + self.rs_len) & mask) as usize] = (eop, packets);
                self.rs_len += 1;
                (since, packets) = (0, 0);
            }
            last = eop;
            t = (eop + 1) & mask;
            room -= ndesc;
            sent += 1;
            bytes += len as u64;
        }
        drop(it);
        self.counters.dropped += dropped;
        if sent > 0 {
            // A report on the last packet of every batch: a lone packet
            // (a guest's lent buffer, say) comes home without waiting for
            // 31 more behind it.
            if !last_rs {
                self.ring.desc(last).tx_set_rs();
                self.rs[((self.rs_head + self.rs_len) & mask) as usize] = (last, packets);
                self.rs_len += 1;
                (since, packets) = (0, 0);
            }
            self.tail = t;
            self.dev.dma.check()?;
            fence(Ordering::Release);
            self.dev.regs.write(self.tdt, t);
            self.counters.packets += sent as u64;
            self.counters.bytes += bytes;
        }
        (self.since_rs, self.packets_since_rs) = (since, packets);
        Ok(sent as usize)
    }

    /// Write the descriptors of a foreign or split packet from `t` on:
    /// in place when the device reaches its memory, else from a host copy
    /// (`p` becomes the copy). Returns how many descriptors, or None when
    /// the packet cannot be sent.
    #[inline(never)]
    fn write_foreign(&mut self, p: &mut Packet, t: u32, cmd: u32, olinfo: u32) -> Option<u32> {
        // A chain (a frame over several of a guest's receive buffers, sent
        // back out) goes from a host copy: rare, and its descriptors would
        // count against the chip's limit per packet.
        let reachable = !p.is_chain()
            && match p.tail() {
                Some(tail) => tail.dma != 0 && self.reach.covers(tail.dma, tail.bytes.len()),
                None => self.reach.covers(p.dma_addr(), p.len()),
            };
        if !reachable {
            self.counters.copied += 1;
            *p = p.copy_to_host();
        }
        // A split packet's is finished in its head when its field lies
        // there, without flattening it.
        if p.partial_csum().is_some() {
            p.finish_partial_csum();
        }
        let mask = self.ring.mask;
        let len = p.len() as u32;
        match p.tail() {
            Some(tail) if !p.head().is_empty() => {
                let head_dma = p.dma_addr();
                if head_dma == 0 {
                    return None;
                }
                let head_len = p.head().len() as u32;
                self.ring.desc(t).tx_write(head_dma, (cmd & !TXD_DCMD_EOP) | head_len, olinfo);
                self.ring.desc((t + 1) & mask).tx_write(tail.dma, cmd | tail.bytes.len() as u32, 0);
                self.counters.split += 1;
                self.counters.foreign += 1;
                Some(2)
            }
            tail => {
                // Unsplit, or a split packet with an empty head: one buffer.
                let addr = tail.map_or(p.dma_addr(), |t| t.dma);
                if addr == 0 {
                    return None;
                }
                self.counters.foreign += p.is_foreign() as u64;
                self.ring.desc(t).tx_write(addr, cmd | len, olinfo);
                Some(1)
            }
        }
    }

    /// Whether the device has sent everything handed to it (TDH = TDT).
    pub(crate) fn drained(&self) -> bool {
        self.dev.regs.read(tdh(self.queue)) == self.tail
    }

    /// The queue goes on on another thread: mark the packets it still
    /// sends for the trip (`Packet::prepare_to_travel`).
    pub(crate) fn prepare_to_travel(&self) {
        self.slots.iter().flatten().for_each(Packet::prepare_to_travel);
    }

    pub(crate) fn release_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            s.take();
        }
        self.clean = self.tail;
        self.rs_len = 0;
        self.since_rs = 0;
        self.packets_since_rs = 0;
    }

    pub(crate) fn abandon_buffers(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(p) = s.take() {
                std::mem::forget(p);
            }
        }
        self.clean = self.tail;
        self.rs_len = 0;
        self.since_rs = 0;
        self.packets_since_rs = 0;
    }
}
