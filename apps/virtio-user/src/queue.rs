//! THE DRIVER SIDE OF SPLIT VIRTQUEUES, FOR TRAFFIC
//!
//!   TxQueue::new(mem, layout, features)   a transmit ring (frames to the device), all buffers free
//!   TxQueue::reap(stats)                  take back the buffers the device has used
//!   TxQueue::put(p, stats)                copy a frame into a free buffer, staged on the avail ring
//!   RxQueue::new(mem, layout, features)   a receive ring with every buffer posted
//!   RxQueue::receive(tx, max, stats)      frames the device wrote, into host packets, buffers reposted
//!   .publish() -> bool                    store the avail index; true when the device wants a kick
//!
//! What a virtio-net driver does, the way a packet generator wants it: each
//! descriptor owns a fixed buffer (descriptor `i` the slot at
//! `data_gpa + i * stride`), written once with its address when the ring is
//! made, and a packet is one descriptor holding the net header and the frame together
//! (VERSION_1 allows any layout, virtio 1.x 5.1.6). So sending is a copy,
//! a length and an avail entry; receiving a copy and an avail entry; and
//! nothing is allocated but the host packets received.
//!
//! The device runs in another thread or process and is not trusted with
//! our bookkeeping: a used entry that names no buffer we lent, or a length
//! longer than the buffer, is counted and skipped; a used index more than
//! the ring size ahead breaks the queue (the caller drops the connection).
//! The used index is loaded with Acquire before the entries and bytes it
//! covers are read; the avail index is stored with Release after the
//! descriptors and entries; a SeqCst fence separates that store from
//! reading whether the device wants a kick (virtio 1.x 2.7.13.4).
//!
//! We poll and never want interrupts: VRING_AVAIL_F_NO_INTERRUPT is set,
//! and with EVENT_IDX used_event is kept half the index space (0x8000)
//! ahead of our position, rewritten only every 0x2000 entries. The device
//! signals when its used index passes used_event between two of its
//! decisions, and those lie within the ring size of our position, far from
//! 0x8000 ahead. (One behind our position would not do: a device that
//! publishes several batches between two decisions can have made its last
//! decision behind where we have already read.)

use std::sync::atomic::{AtomicU16, Ordering, fence};

use snabb_apps_vhost_user::driver::{DriverMemory, ring_offsets};
use snabb_apps_vhost_user::virtio::{
    NetHdr, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_RING_F_EVENT_IDX, VIRTQ_DESC_F_WRITE, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, complete_checksum,
    has, net_hdr_len,
};
use snabb_apps_vhost_user::virtq::{prefetch, prefetch_write};
use snabb_core::packet::{self, PAYLOAD_SIZE, PartialCsum};
use snabb_core::{Link, Packet};

/// How many packets ahead buffers are fetched into the cache.
const PREFETCH_AHEAD: u16 = 4;

/// What `RxQueue::entry` says of an id that names no buffer.
const NO_ID: u16 = u16::MAX;

/// Entries between rewrites of used_event, and how far ahead of our
/// position it is put (see the module doc).
const USED_EVENT_REFRESH: u16 = 0x2000;
const USED_EVENT_AHEAD: u16 = 0x8000;

/// Counters of the data path, summed over queues and connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the device, and their bytes (net header excluded).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Dropped: every transmit buffer was with the device.
    pub tx_no_descriptors: u64,
    /// Dropped: longer than the MTU allows (or a transmit buffer holds).
    pub tx_oversize: u64,
    /// Partial checksums finished here (the device did not take CSUM).
    pub tx_csum_completed: u64,
    /// Used entries on a transmit ring naming no buffer in flight.
    pub tx_bad_used: u64,
    /// Frames taken from the device, and their bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Dropped: longer than a host packet (merged buffers).
    pub rx_oversize: u64,
    /// Dropped: a used entry with no buffer of ours, a length past its
    /// buffer or short of a header, or num_buffers that makes no sense.
    pub rx_bad_used: u64,
    /// Dropped: NEEDS_CSUM with csum_start/csum_offset outside the frame.
    pub rx_bad_csum: u64,
    /// Received frames that carry a partial checksum on (GUEST_CSUM).
    pub rx_partial_csum: u64,
    /// Partial checksums finished here (the packet could not carry them).
    pub rx_csum_completed: u64,
    /// Queues stopped because the device's used index made no sense.
    pub broken_queues: u64,
}

/// Where a ring and its buffers lie in our memory.
#[derive(Clone, Copy, Debug)]
pub struct QueueLayout {
    pub size: u16,
    pub ring_gpa: u64,
    pub data_gpa: u64,
    /// Bytes from one buffer to the next.
    pub stride: u32,
    /// Bytes of each buffer the device may use.
    pub buf_len: u32,
}

/// Pointers into one split ring in our memory, checked once when made.
struct Ring {
    base: *mut u8,
    desc: *mut u8,
    avail: *mut u8,
    used: *const u8,
    size: u16,
    mask: u16,
}

impl Ring {
    /// Lay out (and zero) a ring of `layout.size` at `layout.ring_gpa`.
    /// Panics when it does not fit in `mem` (the caller sized `mem` for it).
    fn new(mem: &DriverMemory, l: &QueueLayout) -> Ring {
        let (d, a, u) = ring_offsets(l.size);
        let end = l.ring_gpa + u + 6 + 8 * l.size as u64;
        let data_end = l.data_gpa + l.size as u64 * l.stride as u64;
        assert!(
            l.size.is_power_of_two() && l.ring_gpa.is_multiple_of(64),
            "ring layout: size {} at {:#x}",
            l.size,
            l.ring_gpa
        );
        assert!(end <= mem.size() as u64 && data_end <= mem.size() as u64, "ring layout outside memory");
        let base = mem.bytes();
        // SAFETY: the ring lies inside our mapping (checked above).
        unsafe { std::ptr::write_bytes(base.add(l.ring_gpa as usize), 0, (end - l.ring_gpa) as usize) };
        // SAFETY: offsets inside the ring, inside the mapping.
        unsafe {
            Ring {
                base,
                desc: base.add((l.ring_gpa + d) as usize),
                avail: base.add((l.ring_gpa + a) as usize),
                used: base.add((l.ring_gpa + u) as usize),
                size: l.size,
                mask: l.size - 1,
            }
        }
    }

    /// Frontend virtual addresses of the three parts, for SET_VRING_ADDR.
    fn addrs(&self) -> (u64, u64, u64) {
        (self.desc as u64, self.avail as u64, self.used as u64)
    }

    /// Write descriptor `i` whole (addr, len, flags, next 0).
    #[inline]
    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        // SAFETY: i < size: inside the table (16-aligned, checked in new).
        unsafe {
            let p = self.desc.add(16 * (i & self.mask) as usize);
            std::ptr::write_volatile(p as *mut u64, addr.to_le());
            std::ptr::write_volatile(p.add(8) as *mut u32, len.to_le());
            std::ptr::write_volatile(p.add(12) as *mut u32, (flags as u32).to_le());
        }
    }
    #[inline(always)]
    fn set_desc_len(&self, i: u16, len: u32) {
        // SAFETY: as in write_desc.
        unsafe { std::ptr::write_volatile(self.desc.add(16 * (i & self.mask) as usize + 8) as *mut u32, len.to_le()) }
    }
    #[inline(always)]
    fn write_avail_entry(&self, i: u16, head: u16) {
        // SAFETY: 4 + 2 * (i & mask) + 2 <= 4 + 2 * size: inside the avail ring, 2-aligned.
        unsafe { std::ptr::write_volatile(self.avail.add(4 + 2 * (i & self.mask) as usize) as *mut u16, head.to_le()) }
    }
    #[inline(always)]
    fn avail_flags(&self) -> &AtomicU16 {
        // SAFETY: the avail ring is 2-aligned and inside the mapping.
        unsafe { &*(self.avail as *const AtomicU16) }
    }
    #[inline(always)]
    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*(self.avail.add(2) as *const AtomicU16) }
    }
    #[inline(always)]
    fn used_event(&self) -> &AtomicU16 {
        // SAFETY: after the avail entries, inside the laid-out ring.
        unsafe { &*(self.avail.add(4 + 2 * self.size as usize) as *const AtomicU16) }
    }
    #[inline(always)]
    fn used_flags(&self) -> &AtomicU16 {
        // SAFETY: the used ring is 64-aligned and inside the mapping.
        unsafe { &*(self.used as *const AtomicU16) }
    }
    #[inline(always)]
    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*(self.used.add(2) as *const AtomicU16) }
    }
    #[inline(always)]
    fn avail_event(&self) -> &AtomicU16 {
        // SAFETY: after the used entries, inside the laid-out ring.
        unsafe { &*(self.used.add(4 + 8 * self.size as usize) as *const AtomicU16) }
    }
    /// Used element `i`: (id, len), as the device wrote it.
    #[inline(always)]
    fn used_elem(&self, i: u16) -> (u32, u32) {
        // SAFETY: inside the used ring, 4-aligned; read once each.
        unsafe {
            let p = self.used.add(4 + 8 * (i & self.mask) as usize) as *const u32;
            (u32::from_le(std::ptr::read_volatile(p)), u32::from_le(std::ptr::read_volatile(p.add(1))))
        }
    }
    /// Our memory at `gpa` (inside the mapping: slots are laid out in it).
    #[inline(always)]
    fn at(&self, gpa: u64) -> *mut u8 {
        self.base.wrapping_add(gpa as usize)
    }
}

/// The shared part of both directions: avail publishing and kick decision.
struct Driver {
    ring: Ring,
    l: QueueLayout,
    hdr_len: usize,
    event_idx: bool,
    /// Our avail index (entries staged up to here).
    avail: u16,
    /// The avail index at the last publish (the kick decision's "old").
    published: u16,
    /// Next used entry to look at.
    last_used: u16,
    /// Where last_used was when used_event was last written.
    used_event_at: u16,
    broken: bool,
}

// SAFETY: the pointers are into a DriverMemory the owner keeps alive and
// does not move; nothing is tied to a thread.
unsafe impl Send for Driver {}

impl Driver {
    fn new(mem: &DriverMemory, l: &QueueLayout, features: u64) -> Driver {
        let ring = Ring::new(mem, l);
        ring.avail_flags().store(VRING_AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        let event_idx = has(features, VIRTIO_RING_F_EVENT_IDX);
        if event_idx {
            ring.used_event().store(USED_EVENT_AHEAD, Ordering::Relaxed);
        }
        Driver {
            ring,
            l: *l,
            hdr_len: net_hdr_len(features),
            event_idx,
            avail: 0,
            published: 0,
            last_used: 0,
            used_event_at: 0,
            broken: false,
        }
    }

    /// The used index, Acquire, checked: None (and broken) when the device
    /// claims more entries than the ring has lent.
    #[inline(always)]
    fn used(&mut self, stats: &mut Stats) -> Option<u16> {
        let used = self.ring.used_idx().load(Ordering::Acquire);
        if used.wrapping_sub(self.last_used) > self.published.wrapping_sub(self.last_used) {
            self.break_queue(stats);
            return None;
        }
        Some(used)
    }

    #[cold]
    fn break_queue(&mut self, stats: &mut Stats) {
        if !self.broken {
            self.broken = true;
            stats.broken_queues += 1;
            log::warn!("virtio-user: the device's used index ran ahead of the buffers lent; queue stopped");
        }
    }

    /// Store the avail index; true when the device asked for a kick.
    #[inline]
    fn publish(&mut self) -> bool {
        if self.event_idx && self.last_used.wrapping_sub(self.used_event_at) >= USED_EVENT_REFRESH {
            self.used_event_at = self.last_used;
            self.ring.used_event().store(self.last_used.wrapping_add(USED_EVENT_AHEAD), Ordering::Relaxed);
        }
        let (old, new) = (self.published, self.avail);
        if old == new {
            return false;
        }
        self.ring.avail_idx().store(new, Ordering::Release);
        self.published = new;
        // The store above before the device's suppression is read
        // (virtio 1.x 2.7.13.4: "a memory barrier").
        fence(Ordering::SeqCst);
        if self.event_idx {
            let e = self.ring.avail_event().load(Ordering::Relaxed);
            // vring_need_event: the device's event index lies in (old, new].
            new.wrapping_sub(e).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.ring.used_flags().load(Ordering::Relaxed) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    fn slot(&self, id: u16) -> u64 {
        self.l.data_gpa + id as u64 * self.l.stride as u64
    }
}

/// A transmit ring: frames to the device.
pub struct TxQueue {
    d: Driver,
    /// Free descriptors, a FIFO: a device that uses them in order gets
    /// them back in order, lap after lap (`free[free_head..free_tail]`,
    /// indices masked).
    free: Box<[u16]>,
    free_head: u16,
    free_tail: u16,
    /// Lent to the device (to check its used entries).
    lent: Box<[bool]>,
    csum: bool,
    /// The longest frame sent (MTU + 18, or what a buffer holds).
    max_frame: usize,
}

impl TxQueue {
    pub fn new(mem: &DriverMemory, l: &QueueLayout, features: u64, max_frame: usize) -> TxQueue {
        let d = Driver::new(mem, l, features);
        for i in 0..l.size {
            d.ring.write_desc(i, d.slot(i), 0, 0);
        }
        let max_frame = max_frame.min(l.buf_len as usize - d.hdr_len);
        TxQueue {
            free: (0..l.size).collect(),
            free_head: 0,
            free_tail: l.size,
            lent: vec![false; l.size as usize].into_boxed_slice(),
            csum: has(features, VIRTIO_NET_F_CSUM),
            max_frame,
            d,
        }
    }

    pub fn addrs(&self) -> (u64, u64, u64) {
        self.d.ring.addrs()
    }
    pub fn broken(&self) -> bool {
        self.d.broken
    }
    /// Descriptors with the device now.
    pub fn in_flight(&self) -> usize {
        self.d.l.size as usize - self.free_tail.wrapping_sub(self.free_head) as usize
    }

    /// Take back what the device has used.
    #[inline]
    pub fn reap(&mut self, stats: &mut Stats) {
        let Some(used) = self.d.used(stats) else { return };
        let mask = self.d.ring.mask;
        while self.d.last_used != used {
            let (id, _) = self.d.ring.used_elem(self.d.last_used);
            self.d.last_used = self.d.last_used.wrapping_add(1);
            match self.lent.get_mut(id as usize) {
                Some(l) if *l => {
                    *l = false;
                    self.free[(self.free_tail & mask) as usize] = id as u16;
                    self.free_tail = self.free_tail.wrapping_add(1);
                }
                _ => stats.tx_bad_used += 1,
            }
        }
    }

    /// Copy `p` (net header first) into a free buffer and stage it; the
    /// packet is freed either way.
    #[inline]
    pub fn put(&mut self, mut p: Packet, stats: &mut Stats) {
        let len = p.len();
        if len > self.max_frame {
            stats.tx_oversize += 1;
            return;
        }
        if self.free_head == self.free_tail {
            stats.tx_no_descriptors += 1;
            return;
        }
        let mut hdr = NetHdr::default();
        if let Some(c) = p.partial_csum() {
            if self.csum {
                hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                hdr.csum_start = c.start;
                hdr.csum_offset = c.offset;
            } else {
                p.finish_partial_csum();
                stats.tx_csum_completed += 1;
            }
        }
        let mask = self.d.ring.mask;
        let id = self.free[(self.free_head & mask) as usize];
        self.free_head = self.free_head.wrapping_add(1);
        // The buffer a few sends from now: the device read it last, and a
        // store would wait for the line to come back; ask for it now.
        if self.free_tail.wrapping_sub(self.free_head) > PREFETCH_AHEAD {
            let ahead = self.free[(self.free_head.wrapping_add(PREFETCH_AHEAD) & mask) as usize];
            prefetch_write(self.d.ring.at(self.d.slot(ahead)));
        }
        self.lent[id as usize] = true;
        let hl = self.d.hdr_len;
        let at = self.d.ring.at(self.d.slot(id));
        // SAFETY: the slot holds buf_len >= hdr_len + max_frame >= hdr_len +
        // len bytes of our mapping, and is not lent to the device.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.to_bytes().as_ptr(), at, hl);
            snabb_core::copy::copy(std::slice::from_raw_parts_mut(at.add(hl), len), p.data());
        }
        self.d.ring.set_desc_len(id, (hl + len) as u32);
        self.d.ring.write_avail_entry(self.d.avail, id);
        self.d.avail = self.d.avail.wrapping_add(1);
        stats.tx_packets += 1;
        stats.tx_bytes += len as u64;
    }

    /// Every packet on `input` (up to the free descriptors; the rest are
    /// dropped and counted), then publish. True when the device wants a kick.
    #[inline]
    pub fn send_all(&mut self, input: &Link, stats: &mut Stats) -> bool {
        self.reap(stats);
        for p in input.drain() {
            self.put(p, stats);
        }
        self.publish()
    }

    #[inline]
    pub fn publish(&mut self) -> bool {
        self.d.publish()
    }
}

/// A receive ring: frames from the device, every buffer posted.
pub struct RxQueue {
    d: Driver,
    mrg: bool,
    guest_csum: bool,
}

impl RxQueue {
    pub fn new(mem: &DriverMemory, l: &QueueLayout, features: u64) -> RxQueue {
        let mut d = Driver::new(mem, l, features);
        for i in 0..l.size {
            d.ring.write_desc(i, d.slot(i), l.buf_len, VIRTQ_DESC_F_WRITE);
            d.ring.write_avail_entry(i, i);
        }
        d.avail = l.size;
        d.publish();
        RxQueue { d, mrg: has(features, VIRTIO_NET_F_MRG_RXBUF), guest_csum: has(features, VIRTIO_NET_F_GUEST_CSUM) }
    }

    pub fn addrs(&self) -> (u64, u64, u64) {
        self.d.ring.addrs()
    }
    pub fn broken(&self) -> bool {
        self.d.broken
    }

    /// Give buffer `id` back to the device (staged; published by `publish`).
    /// A used entry that named no buffer of ours gives nothing back: which
    /// buffer the device kept is unknown, and posting one twice would
    /// confuse it further. The ring has one buffer fewer from then on.
    #[inline(always)]
    fn repost(&mut self, id: u16) {
        if id == NO_ID {
            return;
        }
        self.d.ring.write_avail_entry(self.d.avail, id);
        self.d.avail = self.d.avail.wrapping_add(1);
    }

    /// Used entry `i`, checked: (id, len) with id a buffer of ours (else
    /// NO_ID) and len within it (else None).
    #[inline(always)]
    fn entry(&self, i: u16) -> (u16, Option<u32>) {
        let (id, len) = self.d.ring.used_elem(i);
        if id >= self.d.l.size as u32 {
            return (NO_ID, None);
        }
        (id as u16, (len <= self.d.l.buf_len).then_some(len))
    }

    /// Frames the device has written, up to `max`, as host packets handed
    /// to `out`; their buffers go back on the avail ring. Returns frames taken.
    #[inline]
    pub fn receive(&mut self, max: usize, stats: &mut Stats, out: impl FnMut(Packet)) -> usize {
        self.frames::<true>(max, stats, out)
    }

    /// Frames the device has written, counted and dropped without their
    /// bytes being read or copied (a VM with nowhere to put them, or a
    /// benchmark's sink, as testpmd's rxonly); their buffers go back.
    #[inline]
    pub fn discard(&mut self, stats: &mut Stats) -> usize {
        self.frames::<false>(usize::MAX, stats, drop)
    }

    #[inline(always)]
    fn frames<const COPY: bool>(&mut self, max: usize, stats: &mut Stats, mut out: impl FnMut(Packet)) -> usize {
        let Some(used) = self.d.used(stats) else { return 0 };
        let pending = used.wrapping_sub(self.d.last_used) as usize;
        if pending == 0 || max == 0 {
            return 0;
        }
        let hl = self.d.hdr_len;
        let mut alloc = COPY.then(|| packet::Allocator::new(pending.min(max)));
        let mut got = 0;
        // The device wrote the frames on another CPU: fetch the first few
        // now, and each later one a few frames ahead of its turn.
        if COPY || self.mrg {
            for k in 0..(pending as u16).min(PREFETCH_AHEAD) {
                self.prefetch_frame(self.d.last_used.wrapping_add(k));
            }
        }
        while self.d.last_used != used && got < max {
            let first = self.d.last_used;
            if (COPY || self.mrg) && used.wrapping_sub(first) > PREFETCH_AHEAD {
                self.prefetch_frame(first.wrapping_add(PREFETCH_AHEAD));
            }
            let (id, len) = self.entry(first);
            let Some(len) = len.filter(|&l| l as usize >= hl) else {
                self.bad_entry(id, stats);
                continue;
            };
            let at = self.d.ring.at(self.d.slot(id));
            // Without mergeable buffers and without copying, nothing in the
            // buffer needs reading.
            let hdr = if COPY || self.mrg {
                // SAFETY: len <= buf_len: inside the buffer, which the device
                // has handed back; it may still scribble on it (a bad device),
                // which changes bytes, never where we read.
                NetHdr::parse(unsafe { std::slice::from_raw_parts(at, hl) })
            } else {
                NetHdr::default()
            };
            let nbufs = if self.mrg { hdr.num_buffers } else { 1 };
            // More buffers than are lent can never arrive.
            if nbufs == 0 || nbufs > self.d.published.wrapping_sub(first) {
                self.bad_entry(id, stats);
                continue;
            }
            if used.wrapping_sub(first) < nbufs {
                break; // the rest of this frame is not there yet
            }
            let mut total = len as usize - hl;
            let mut ok = total <= PAYLOAD_SIZE;
            let mut p = None;
            if COPY && ok {
                // SAFETY: as above.
                let frame = unsafe { std::slice::from_raw_parts(at.add(hl), total) };
                p = alloc.as_mut().map(|a| a.from_bytes(frame));
            }
            let mut bad = false;
            self.repost(id);
            self.d.last_used = first.wrapping_add(1);
            for _ in 1..nbufs {
                let (id, len) = self.entry(self.d.last_used);
                self.d.last_used = self.d.last_used.wrapping_add(1);
                self.repost(id);
                let Some(len) = len else {
                    bad = true;
                    continue;
                };
                total += len as usize;
                ok &= total <= PAYLOAD_SIZE;
                if let (true, Some(p)) = (COPY && ok && !bad, &mut p) {
                    // SAFETY: as above, for this buffer.
                    p.append(unsafe { std::slice::from_raw_parts(self.d.ring.at(self.d.slot(id)), len as usize) });
                }
            }
            if bad {
                stats.rx_bad_used += 1;
                continue;
            }
            if !ok {
                // Longer than a packet: every buffer of the frame went back.
                stats.rx_oversize += 1;
                continue;
            }
            if COPY {
                let Some(mut p) = p else { continue };
                if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && self.guest_csum {
                    let c = PartialCsum { start: hdr.csum_start, offset: hdr.csum_offset };
                    if c.start as usize + c.offset as usize + 2 > p.len() {
                        stats.rx_bad_csum += 1;
                        continue;
                    }
                    stats.rx_partial_csum += 1;
                    if !p.set_partial_csum(Some(c)) {
                        complete_checksum(p.data_mut(), c.start, c.offset);
                        stats.rx_csum_completed += 1;
                    }
                }
                out(p);
            }
            stats.rx_packets += 1;
            stats.rx_bytes += total as u64;
            got += 1;
        }
        got
    }

    /// Start fetching the first line of the buffer used entry `i` names
    /// (only a hint: a bad id is masked into our buffers).
    #[inline(always)]
    fn prefetch_frame(&self, i: u16) {
        let (id, _) = self.d.ring.used_elem(i);
        prefetch(self.d.ring.at(self.d.slot(id as u16 & self.d.ring.mask)));
    }

    #[cold]
    fn bad_entry(&mut self, id: u16, stats: &mut Stats) {
        stats.rx_bad_used += 1;
        self.repost(id);
        self.d.last_used = self.d.last_used.wrapping_add(1);
    }

    #[inline]
    pub fn publish(&mut self) -> bool {
        self.d.publish()
    }
}

#[cfg(test)]
mod tests {
    //! The device played by hand: used entries written into our memory,
    //! well-formed and not.
    use super::*;
    use snabb_apps_vhost_user::virtio::{VIRTIO_F_VERSION_1, bit};

    const SIZE: u16 = 8;
    const BUF: u32 = 256;

    fn layout() -> QueueLayout {
        QueueLayout { size: SIZE, ring_gpa: 0, data_gpa: 4096, stride: 320, buf_len: BUF }
    }

    /// The device's side of a ring in `mem`: writes used entries, reads avail.
    struct Dev<'a> {
        mem: &'a DriverMemory,
        used: u64,
        avail: u64,
        idx: u16,
    }

    impl<'a> Dev<'a> {
        fn new(mem: &'a DriverMemory) -> Dev<'a> {
            let (_, a, u) = ring_offsets(SIZE);
            Dev { mem, used: u, avail: a, idx: 0 }
        }
        fn avail_idx(&self) -> u16 {
            u16::from_le_bytes(self.mem.slice(self.avail + 2, 2).try_into().unwrap())
        }
        fn avail_entry(&self, i: u16) -> u16 {
            u16::from_le_bytes(self.mem.slice(self.avail + 4 + 2 * (i % SIZE) as u64, 2).try_into().unwrap())
        }
        /// Write a used entry and publish it.
        fn used(&mut self, id: u32, len: u32) {
            let at = self.used + 4 + 8 * (self.idx % SIZE) as u64;
            self.mem.write(at, &id.to_le_bytes());
            self.mem.write(at + 4, &len.to_le_bytes());
            self.idx = self.idx.wrapping_add(1);
            self.mem.write(self.used + 2, &self.idx.to_le_bytes());
        }
        fn set_used_idx(&mut self, idx: u16) {
            self.idx = idx;
            self.mem.write(self.used + 2, &idx.to_le_bytes());
        }
        /// A received frame in buffer `id`: the header (num_buffers) and bytes.
        fn fill(&self, id: u16, num_buffers: u16, frame: &[u8]) -> u32 {
            let at = 4096 + id as u64 * 320;
            let hdr = NetHdr { num_buffers, ..Default::default() }.to_bytes();
            self.mem.write(at, &hdr);
            self.mem.write(at + 12, frame);
            12 + frame.len() as u32
        }
    }

    fn features() -> u64 {
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)
    }

    fn receive(q: &mut RxQueue, stats: &mut Stats) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        q.receive(usize::MAX, stats, |p| got.push(p.data().to_vec()));
        q.publish();
        got
    }

    #[test]
    fn rx_posts_everything_and_reposts_what_it_takes() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut q = RxQueue::new(&mem, &layout(), features());
        let mut d = Dev::new(&mem);
        assert_eq!(d.avail_idx(), SIZE);
        let mut s = Stats::default();
        let len = d.fill(3, 1, &[7; 100]);
        d.used(3, len);
        // A frame in two buffers (MRG_RXBUF).
        let len = d.fill(5, 2, &[1; 200]);
        d.used(5, len);
        d.mem.write(4096 + 6 * 320, &[2; 50]);
        d.used(6, 50);
        assert_eq!(receive(&mut q, &mut s), vec![vec![7; 100], [vec![1; 200], vec![2; 50]].concat()]);
        assert_eq!((s.rx_packets, s.rx_bytes, s.rx_bad_used), (2, 350, 0));
        assert_eq!(d.avail_idx(), SIZE + 3);
        assert_eq!([d.avail_entry(SIZE), d.avail_entry(SIZE + 1), d.avail_entry(SIZE + 2)], [3, 5, 6]);
    }

    #[test]
    fn rx_waits_for_the_rest_of_a_merged_frame() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut q = RxQueue::new(&mem, &layout(), features());
        let mut d = Dev::new(&mem);
        let mut s = Stats::default();
        let len = d.fill(0, 2, &[1; 10]);
        d.used(0, len);
        assert!(receive(&mut q, &mut s).is_empty());
        d.mem.write(4096 + 320, &[2; 10]);
        d.used(1, 10);
        assert_eq!(receive(&mut q, &mut s), vec![[vec![1; 10], vec![2; 10]].concat()]);
    }

    #[test]
    fn rx_bad_used_entries_are_counted_not_followed() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut q = RxQueue::new(&mem, &layout(), features());
        let mut d = Dev::new(&mem);
        let mut s = Stats::default();
        d.used(SIZE as u32, 100); // no such buffer: nothing reposted
        d.used(1, BUF + 1); // longer than the buffer
        d.used(2, 5); // shorter than a header
        let len = d.fill(3, 0, &[0; 20]); // num_buffers 0
        d.used(3, len);
        let len = d.fill(4, 20, &[0; 20]); // more buffers than lent
        d.used(4, len);
        let len = d.fill(5, 1, &[9; 20]);
        d.used(5, len);
        assert_eq!(receive(&mut q, &mut s), vec![vec![9; 20]]);
        assert_eq!(s.rx_bad_used, 5);
        // Four bad buffers and the good one back; the unknown one not.
        assert_eq!(d.avail_idx(), SIZE + 5);
        assert!(!q.broken());
    }

    #[test]
    fn rx_used_index_past_the_buffers_lent_breaks_the_queue() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut q = RxQueue::new(&mem, &layout(), features());
        let mut d = Dev::new(&mem);
        let mut s = Stats::default();
        d.set_used_idx(SIZE + 1);
        assert!(receive(&mut q, &mut s).is_empty());
        assert!(q.broken());
        assert_eq!(s.broken_queues, 1);
    }

    #[test]
    fn rx_a_frame_longer_than_a_packet_is_dropped() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut l = layout();
        l.buf_len = 6000;
        l.stride = 6016;
        let mut q = RxQueue::new(&mem, &l, features());
        let mut d = Dev::new(&mem);
        let mut s = Stats::default();
        // Two full buffers: 12 KiB, more than a packet holds.
        d.used(0, 6000);
        d.mem.write(4096 + 10, &2u16.to_le_bytes()); // num_buffers of buffer 0's header
        d.used(1, 6000);
        assert!(receive(&mut q, &mut s).is_empty());
        assert_eq!((s.rx_oversize, s.rx_bad_used), (1, 0));
        assert_eq!(d.avail_idx(), SIZE + 2);
    }

    #[test]
    fn tx_takes_back_only_what_it_lent() {
        let mem = DriverMemory::new(1 << 20).unwrap();
        let mut l = layout();
        l.buf_len = 12 + 200;
        let mut q = TxQueue::new(&mem, &l, features(), PAYLOAD_SIZE);
        let mut d = Dev::new(&mem);
        let mut s = Stats::default();
        for i in 0..SIZE as usize + 2 {
            q.put(Packet::from_bytes(&[i as u8; 60]), &mut s);
        }
        q.publish();
        assert_eq!((s.tx_packets, s.tx_no_descriptors), (SIZE as u64, 2));
        assert_eq!(d.avail_idx(), SIZE);
        // Frames are in their buffers behind a zero header.
        let head = d.avail_entry(0);
        assert_eq!(mem.slice(4096 + head as u64 * 320, 12 + 60), [vec![0; 12], vec![0; 60]].concat());
        q.put(Packet::from_bytes(&[0; 201]), &mut s);
        assert_eq!(s.tx_oversize, 1);
        d.used(3, 0);
        d.used(3, 0); // twice: not lent any more
        d.used(99, 0);
        q.reap(&mut s);
        assert_eq!((s.tx_bad_used, q.in_flight()), (2, SIZE as usize - 1));
        q.put(Packet::from_bytes(&[1; 60]), &mut s);
        q.publish();
        assert_eq!((d.avail_idx(), d.avail_entry(SIZE)), (SIZE + 1, 3));
    }
}
