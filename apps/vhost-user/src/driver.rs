//! THE DRIVER (GUEST) SIDE
//!
//! What a virtio-net driver in a guest does to a split ring, done by a test,
//! a benchmark or the in-repo frontend: guest memory is a memfd mapped
//! MAP_SHARED (gpa 0 is its first byte), rings are laid out in it, and
//! buffers come from a fixed slot per descriptor in a data area (descriptor
//! `i` owns `slot_len` bytes at `data_gpa + i * slot_len`; an indirect chain
//! keeps its table and all its data in its head's slot).
//!
//! Besides the well-behaved operations (send, post_rx, reap) it gives raw
//! access to descriptors and indices, so that tests can play a hostile
//! guest. It trusts the device it talks to only as far as a test needs:
//! used entries that make no sense are counted, not followed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering, fence};

use crate::memory::{GuestMemory, RegionSpec};
use crate::virtio::*;
use crate::virtq::VringAddr;

/// Guest memory made by the test: a memfd of `size` bytes mapped MAP_SHARED.
pub struct DriverMemory {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
    huge: bool,
}

/// The huge page size `new_huge` rounds to (the x86-64 default).
pub const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the mapping is owned and not tied to a thread. Sharing it lets a
// test run the guest in one thread and the device in another, as they run
// for real; bytes written through `write` while the device reads them are
// the race a real guest could make, which the device must survive anyway.
unsafe impl Send for DriverMemory {}
// SAFETY: as above.
unsafe impl Sync for DriverMemory {}

impl std::fmt::Debug for DriverMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverMemory").field("base", &self.base).field("size", &self.size).finish()
    }
}

impl DriverMemory {
    /// Ordinary pages (a memfd of `size` bytes).
    pub fn new(size: usize) -> std::io::Result<DriverMemory> {
        DriverMemory::map(size, false)
    }

    /// Huge pages: a memfd with MFD_HUGETLB, `size` rounded up to 2 MiB,
    /// every page reserved and faulted in by the mapping (MAP_POPULATE),
    /// so that running out of huge pages is this error and never a SIGBUS
    /// later. The caller falls back to [`DriverMemory::new`] on an error.
    pub fn new_huge(size: usize) -> std::io::Result<DriverMemory> {
        DriverMemory::map(size.next_multiple_of(HUGE_PAGE), true)
    }

    fn map(size: usize, huge: bool) -> std::io::Result<DriverMemory> {
        let flags = libc::MFD_CLOEXEC | if huge { libc::MFD_HUGETLB } else { 0 };
        // SAFETY: plain syscalls; the fd is fresh and owned from here on.
        let fd = unsafe {
            let fd = libc::memfd_create(c"snabb-vhost-guest".as_ptr(), flags);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let populate = if huge { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh shared mapping of our fd, chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | populate,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DriverMemory { fd, base: p as *mut u8, size, huge })
    }

    /// Backed by huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// The memfd, to send with SET_MEM_TABLE.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The one region: gpa 0, uva = our mapping's address, mmap_offset 0.
    pub fn region(&self) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.base as u64,
            mmap_offset: 0,
        }
    }

    /// The device-side view (a second mapping of a dup of the fd), for tests without a socket.
    pub fn guest_memory(&self) -> GuestMemory {
        let fd = self.fd.try_clone().expect("dup of the guest memory fd");
        GuestMemory::map(&[self.region()], vec![fd]).expect("mapping the driver's own memory")
    }

    pub fn bytes(&self) -> *mut u8 {
        self.base
    }
    pub fn size(&self) -> usize {
        self.size
    }

    /// The guest's bytes [gpa, gpa+len) (panics outside memory: test code).
    pub fn slice(&self, gpa: u64, len: usize) -> &[u8] {
        assert!(gpa as usize <= self.size && len <= self.size - gpa as usize, "{gpa:#x}+{len} outside guest memory");
        // SAFETY: inside our mapping (checked).
        unsafe { std::slice::from_raw_parts(self.base.add(gpa as usize), len) }
    }

    /// Write `bytes` at `gpa` (panics outside memory: test code).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(
            gpa as usize <= self.size && bytes.len() <= self.size - gpa as usize,
            "{gpa:#x}+{} outside guest memory",
            bytes.len()
        );
        // SAFETY: inside our mapping (checked); the device may read these
        // bytes concurrently only in tests that race on purpose.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(gpa as usize), bytes.len()) };
    }
}

impl Drop for DriverMemory {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size) };
    }
}

/// Bytes a split ring of `size` takes in DriverQueue's layout (desc, avail
/// with used_event, used with avail_event, the used ring 64-aligned).
pub fn ring_bytes(size: u16) -> u64 {
    let (_, _, used) = ring_offsets(size);
    used + 6 + 8 * size as u64
}

/// Offsets of the descriptor table, the avail ring and the used ring from
/// the start of a ring of `size` in this layout (virtio 1.x 2.7: tables
/// 16-aligned, avail 2, used 4; the used ring gets a line of its own, so
/// that the device's stores to it do not take the driver's avail line).
pub fn ring_offsets(size: u16) -> (u64, u64, u64) {
    let n = size as u64;
    let avail = 16 * n;
    let used = (avail + 6 + 2 * n + 63) & !63;
    (0, avail, used)
}

/// How `send` lays a packet out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLayout {
    /// The net header in a descriptor of its own (the legacy layout).
    pub header_apart: bool,
    /// The frame cut into this many descriptors (at least 1).
    pub pieces: usize,
    /// All descriptors in an indirect table.
    pub indirect: bool,
    /// When not 0: the frame's first this many bytes in one piece, the rest
    /// in another (as Linux sends: headers in the linear part, payload in a
    /// page fragment); `pieces` is then not used.
    pub head_bytes: usize,
}

impl Default for SendLayout {
    fn default() -> Self {
        SendLayout { header_apart: false, pieces: 1, indirect: false, head_bytes: 0 }
    }
}

/// What the driver knows about a chain it made.
#[derive(Clone, Debug)]
struct ChainRec {
    /// Table descriptors the chain holds (to free them).
    descs: Vec<u16>,
    /// The buffers: (gpa, len), in order.
    bufs: Vec<(u64, u32)>,
    /// Device-writable (a receive buffer).
    rx: bool,
}

/// One split ring laid out in DriverMemory by the driver.
pub struct DriverQueue {
    base: *mut u8,
    mem_size: u64,
    size: u16,
    desc_gpa: u64,
    avail_gpa: u64,
    used_gpa: u64,
    data_gpa: u64,
    slot_len: u64,
    features: u64,
    hdr_len: usize,
    free: Vec<u16>,
    chains: Vec<Option<ChainRec>>,
    avail_idx: u16,
    last_used: u16,
    /// How send lays packets out.
    pub layout: SendLayout,
    /// RX buffers posted as this many descriptors each (at least 1).
    pub rx_pieces: usize,
    /// RX buffers posted through an indirect table.
    pub rx_indirect: bool,
    /// Used entries that named no chain of ours, or RX entries too short for
    /// a header, or MRG_RXBUF packets whose num_buffers made no sense.
    pub bad_used: u64,
}

// SAFETY: the base pointer is into a DriverMemory (Send + Sync) that the
// user keeps alive; nothing is tied to a thread.
unsafe impl Send for DriverQueue {}

impl std::fmt::Debug for DriverQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverQueue")
            .field("size", &self.size)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("free", &self.free.len())
            .finish()
    }
}

impl DriverQueue {
    /// Lay out a ring of `size` at `ring_gpa` (16-aligned) with buffers in
    /// [data_gpa, data_gpa + data_len). The rings are zeroed. Panics on a
    /// layout outside memory (test code).
    pub fn new(
        mem: &DriverMemory,
        size: u16,
        ring_gpa: u64,
        data_gpa: u64,
        data_len: u64,
        features: u64,
    ) -> DriverQueue {
        assert!(size.is_power_of_two() && ring_gpa.is_multiple_of(16));
        let (d, a, u) = ring_offsets(size);
        assert!(ring_gpa + ring_bytes(size) <= mem.size() as u64, "ring outside memory");
        assert!(data_gpa + data_len <= mem.size() as u64, "data area outside memory");
        let slot_len = (data_len / size as u64) & !15;
        // SAFETY: inside the mapping (checked above).
        unsafe { std::ptr::write_bytes(mem.bytes().add(ring_gpa as usize), 0, ring_bytes(size) as usize) };
        DriverQueue {
            base: mem.bytes(),
            mem_size: mem.size() as u64,
            size,
            desc_gpa: ring_gpa + d,
            avail_gpa: ring_gpa + a,
            used_gpa: ring_gpa + u,
            data_gpa,
            slot_len,
            features,
            hdr_len: net_hdr_len(features),
            free: (0..size).rev().collect(),
            chains: vec![None; size as usize],
            avail_idx: 0,
            last_used: 0,
            layout: SendLayout::default(),
            rx_pieces: 1,
            rx_indirect: false,
            bad_used: 0,
        }
    }

    /// Frontend virtual addresses of the rings, for SET_VRING_ADDR.
    pub fn addr(&self) -> VringAddr {
        let b = self.base as u64;
        VringAddr {
            flags: 0,
            desc_user_addr: b + self.desc_gpa,
            avail_user_addr: b + self.avail_gpa,
            used_user_addr: b + self.used_gpa,
            log_guest_addr: self.used_gpa,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }
    pub fn desc_gpa(&self) -> u64 {
        self.desc_gpa
    }
    pub fn avail_gpa(&self) -> u64 {
        self.avail_gpa
    }
    pub fn used_gpa(&self) -> u64 {
        self.used_gpa
    }
    /// The buffer slot of descriptor `i`.
    pub fn slot_gpa(&self, i: u16) -> u64 {
        self.data_gpa + i as u64 * self.slot_len
    }
    pub fn slot_len(&self) -> u64 {
        self.slot_len
    }
    /// Descriptors not in any posted chain.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    /// Chains posted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }

    fn ptr(&self, gpa: u64, len: u64) -> *mut u8 {
        assert!(gpa <= self.mem_size && len <= self.mem_size - gpa, "{gpa:#x}+{len} outside guest memory");
        // SAFETY: inside the mapping (checked).
        unsafe { self.base.add(gpa as usize) }
    }
    fn atomic16(&self, gpa: u64) -> &AtomicU16 {
        let p = self.ptr(gpa, 2);
        assert!((p as usize).is_multiple_of(2));
        // SAFETY: 2 aligned bytes inside the mapping, shared with the device.
        unsafe { &*(p as *const AtomicU16) }
    }
    fn write_bytes(&self, gpa: u64, b: &[u8]) {
        let p = self.ptr(gpa, b.len() as u64);
        // SAFETY: inside the mapping (checked by ptr).
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
    }
    fn read_bytes(&self, gpa: u64, out: &mut Vec<u8>, len: usize) {
        let p = self.ptr(gpa, len as u64);
        // SAFETY: inside the mapping (checked by ptr).
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, len) });
    }

    // ---- raw access, for hostile-guest tests and fuzzing

    /// Write descriptor `i` of the table (or of any table at `table_gpa` with `write_desc_at`).
    pub fn write_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(i < self.size);
        self.write_desc_at(self.desc_gpa + 16 * i as u64, addr, len, flags, next);
    }
    /// Write a descriptor at `gpa` (an indirect table entry, say).
    pub fn write_desc_at(&self, gpa: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.write_bytes(gpa, &b);
    }
    /// Put `head` on the avail ring and publish it, no questions asked.
    pub fn push_avail_raw(&mut self, head: u16) {
        let at = self.avail_gpa + 4 + 2 * (self.avail_idx & (self.size - 1)) as u64;
        self.write_bytes(at, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.atomic16(self.avail_gpa + 2).store(self.avail_idx, Ordering::Release);
    }
    /// Write avail ring entry `i` without publishing.
    pub fn write_avail_entry(&mut self, i: u16, head: u16) {
        let at = self.avail_gpa + 4 + 2 * (i & (self.size - 1)) as u64;
        self.write_bytes(at, &head.to_le_bytes());
    }
    /// Store any avail index (our own bookkeeping follows it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.atomic16(self.avail_gpa + 2).store(idx, Ordering::Release);
    }
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }
    pub fn set_avail_flags(&mut self, flags: u16) {
        self.atomic16(self.avail_gpa).store(flags, Ordering::Release);
    }
    /// EVENT_IDX: interrupt me when the used index passes `idx`.
    pub fn set_used_event(&mut self, idx: u16) {
        self.atomic16(self.avail_gpa + 4 + 2 * self.size as u64).store(idx, Ordering::Release);
    }
    /// EVENT_IDX: the device's avail_event.
    pub fn avail_event(&self) -> u16 {
        self.atomic16(self.used_gpa + 4 + 8 * self.size as u64).load(Ordering::Acquire)
    }
    pub fn used_flags(&self) -> u16 {
        self.atomic16(self.used_gpa).load(Ordering::Acquire)
    }
    /// The used index as the device last stored it.
    pub fn used_idx(&self) -> u16 {
        self.atomic16(self.used_gpa + 2).load(Ordering::Acquire)
    }
    /// Used element `i`: (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used_gpa + 4 + 8 * (i & (self.size - 1)) as u64;
        let mut b = Vec::with_capacity(8);
        self.read_bytes(at, &mut b, 8);
        (u32::from_le_bytes(b[0..4].try_into().unwrap()), u32::from_le_bytes(b[4..8].try_into().unwrap()))
    }
    /// Forget all chains (after raw writes made the bookkeeping meaningless).
    pub fn forget_chains(&mut self) {
        self.free = (0..self.size).rev().collect();
        self.chains.iter_mut().for_each(|c| *c = None);
        self.last_used = self.used_idx();
    }

    // ---- a well-behaved driver

    /// Post a chain made of `bufs` (data written already, flags given) as
    /// table descriptors or through an indirect table in the head's slot.
    fn post_chain(&mut self, pieces: &[(&[u8], u32)], write: bool, indirect: bool) -> Option<u16> {
        let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
        let k = pieces.len().max(1);
        if indirect {
            let head = *self.free.last()?;
            let slot = self.slot_gpa(head);
            let table = 16 * k as u64;
            let data: u64 = pieces.iter().map(|p| p.1 as u64).sum();
            if table + data > self.slot_len {
                return None;
            }
            self.free.pop();
            let mut at = slot + table;
            let mut bufs = Vec::new();
            for (j, (bytes, len)) in pieces.iter().enumerate() {
                self.write_bytes(at, bytes);
                let next = if j + 1 < pieces.len() { VIRTQ_DESC_F_NEXT } else { 0 };
                self.write_desc_at(slot + 16 * j as u64, at, *len, flags | next, (j + 1) as u16);
                bufs.push((at, *len));
                at += *len as u64;
            }
            self.write_desc(head, slot, table as u32, VIRTQ_DESC_F_INDIRECT, 0);
            self.chains[head as usize] = Some(ChainRec { descs: vec![head], bufs, rx: write });
            return Some(head);
        }
        if self.free.len() < k || pieces.iter().any(|p| p.1 as u64 > self.slot_len) {
            return None;
        }
        let ids: Vec<u16> = (0..k).map(|_| self.free.pop().unwrap()).collect();
        let mut bufs = Vec::new();
        for (j, (bytes, len)) in pieces.iter().enumerate() {
            let at = self.slot_gpa(ids[j]);
            self.write_bytes(at, bytes);
            let (next, nf) = if j + 1 < k { (ids[j + 1], VIRTQ_DESC_F_NEXT) } else { (0, 0) };
            self.write_desc(ids[j], at, *len, flags | nf, next);
            bufs.push((at, *len));
        }
        self.chains[ids[0] as usize] = Some(ChainRec { descs: ids.clone(), bufs, rx: write });
        Some(ids[0])
    }

    /// Put `head` on the avail ring without publishing the index.
    fn stage_avail(&mut self, head: u16) {
        let at = self.avail_gpa + 4 + 2 * (self.avail_idx & (self.size - 1)) as u64;
        self.write_bytes(at, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }
    fn publish_avail(&mut self) {
        // Release: the entries and descriptors are visible before the index.
        self.atomic16(self.avail_gpa + 2).store(self.avail_idx, Ordering::Release);
    }

    /// TX side: post one packet (a zero net header + frame) as `layout` says.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_with_header(&NetHdr::default(), frame)
    }

    /// TX side with a given header (NEEDS_CSUM, say).
    pub fn send_with_header(&mut self, hdr: &NetHdr, frame: &[u8]) -> bool {
        let h = hdr.to_bytes();
        let h = &h[..self.hdr_len];
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let n = self.layout.pieces.max(1);
        let step = frame.len().div_ceil(n).max(1);
        let mut parts: Vec<&[u8]> = if self.layout.head_bytes > 0 && self.layout.head_bytes < frame.len() {
            let (a, b) = frame.split_at(self.layout.head_bytes);
            vec![a, b]
        } else {
            frame.chunks(step).collect()
        };
        if parts.is_empty() {
            parts.push(&[]);
        }
        if self.layout.header_apart {
            pieces.push(h.to_vec());
            pieces.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| p.to_vec()));
        } else {
            let mut first = h.to_vec();
            first.extend_from_slice(parts[0]);
            pieces.push(first);
            pieces.extend(parts[1..].iter().map(|p| p.to_vec()));
        }
        let refs: Vec<(&[u8], u32)> = pieces.iter().map(|p| (p.as_slice(), p.len() as u32)).collect();
        let Some(head) = self.post_chain(&refs, false, self.layout.indirect) else { return false };
        self.stage_avail(head);
        self.publish_avail();
        true
    }

    /// RX side: post `n` receive buffers of `len` bytes each (split into
    /// `rx_pieces` descriptors, through an indirect table if `rx_indirect`).
    /// Returns how many were posted.
    pub fn post_rx(&mut self, n: usize, len: u32) -> usize {
        let k = self.rx_pieces.max(1);
        let piece = len.div_ceil(k as u32);
        let mut lens = Vec::new();
        let mut left = len;
        for _ in 0..k {
            let l = piece.min(left);
            lens.push(l);
            left -= l;
        }
        let mut posted = 0;
        for _ in 0..n {
            let pieces: Vec<(&[u8], u32)> = lens.iter().map(|&l| (&[][..], l)).collect();
            let Some(head) = self.post_chain(&pieces, true, self.rx_indirect) else { break };
            self.stage_avail(head);
            posted += 1;
        }
        self.publish_avail();
        posted
    }

    /// Reap used entries: for RX the received frames (net header stripped,
    /// MRG_RXBUF merged), for TX nothing (the descriptors are freed).
    /// Returns the used entries reaped.
    pub fn reap(&mut self, out: &mut Vec<Vec<u8>>) -> usize {
        let mut full = Vec::new();
        let n = self.reap_with_headers(&mut full);
        out.extend(full.into_iter().map(|(_, f)| f));
        n
    }

    /// Take a used entry's chain; None (counted) if it names none of ours.
    fn take_chain(&mut self, id: u32) -> Option<ChainRec> {
        let c = self.chains.get_mut(id as usize).and_then(|c| c.take());
        if let Some(c) = &c {
            self.free.extend(c.descs.iter().rev());
        } else {
            self.bad_used += 1;
        }
        c
    }

    /// Copy the first `len` bytes written into a chain's buffers.
    fn gather_written(&self, c: &ChainRec, len: u32, out: &mut Vec<u8>) {
        let mut left = len as u64;
        for &(gpa, l) in &c.bufs {
            let n = left.min(l as u64);
            self.read_bytes(gpa, out, n as usize);
            left -= n;
        }
    }

    /// Like reap, with each RX frame's net header.
    pub fn reap_with_headers(&mut self, out: &mut Vec<(NetHdr, Vec<u8>)>) -> usize {
        let used = self.used_idx();
        fence(Ordering::Acquire);
        let mrg = has(self.features, VIRTIO_NET_F_MRG_RXBUF);
        let mut reaped = 0;
        while self.last_used != used {
            let (id, len) = self.used_elem(self.last_used);
            let is_rx = self.chains.get(id as usize).and_then(|c| c.as_ref()).is_some_and(|c| c.rx);
            if !is_rx {
                self.last_used = self.last_used.wrapping_add(1);
                reaped += 1;
                self.take_chain(id);
                continue;
            }
            // RX: the first buffer of a packet carries the header.
            let c = self.chains[id as usize].clone().unwrap();
            let mut bytes = Vec::new();
            self.gather_written(&c, len, &mut bytes);
            if bytes.len() < self.hdr_len {
                self.last_used = self.last_used.wrapping_add(1);
                reaped += 1;
                self.take_chain(id);
                self.bad_used += 1;
                continue;
            }
            let hdr = NetHdr::parse(&bytes[..self.hdr_len]);
            let nbufs = if mrg { hdr.num_buffers } else { 1 };
            if nbufs == 0 || nbufs > self.size {
                self.last_used = self.last_used.wrapping_add(1);
                reaped += 1;
                self.take_chain(id);
                self.bad_used += 1;
                continue;
            }
            if used.wrapping_sub(self.last_used) < nbufs {
                break; // the rest of the packet is not there yet
            }
            self.take_chain(id);
            for j in 1..nbufs {
                let (id, len) = self.used_elem(self.last_used.wrapping_add(j));
                if let Some(c) = self.take_chain(id) {
                    self.gather_written(&c, len, &mut bytes);
                }
            }
            self.last_used = self.last_used.wrapping_add(nbufs);
            reaped += nbufs as usize;
            out.push((hdr, bytes.split_off(self.hdr_len)));
        }
        reaped
    }
}
