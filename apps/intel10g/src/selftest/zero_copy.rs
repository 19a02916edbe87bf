//! ZERO COPY, ON THE MODEL
//!
//! A fake guest (`TestLender`: buffers in a memfd, registered for every
//! device through `memory::ForeignMemory`, lent as foreign packets) lends
//! its receive buffers to a queue, and sends from its memory:
//!
//!   lend_sizes        every buffer size from 1 to 10 KiB, frames of 60 to
//!                     9018 bytes: each lands in a lent buffer byte for byte,
//!                     or, longer than one, is compacted into its first
//!                     buffer or copied, as the buffer's room allows
//!   lend_checksums    the chip's checksum verdicts reach the packets
//!   lend_refusals     buffers the queue cannot take go home, counted
//!   lend_revocation   a lender revokes mid-traffic: every buffer comes back,
//!                     and once its memory is unmapped no DMA faults
//!   lend_mode_switch  Host <-> Lend under traffic (copy mode, supply link):
//!                     frames in order, each once or counted lost, every
//!                     lent buffer back
//!   split_tx          split packets (host head, lent tail) reach the wire
//!                     intact; tails the device cannot reach are copied
//!   prompt_reclaim    a lone lent packet comes home after its transmit

use std::any::Any;
use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use snabb_core::memory::{ForeignMemory, ForeignSegment};
use snabb_core::packet::{self, ForeignBuffer, PartialCsum};
use snabb_core::{App, AppClass, AppContext, Args, BufferOwner, Config, CopyMode, Engine, Io, Link, Packet, PortSpec};
use snabb_model_82599::WireSpec;

use super::{nic, registry};
use crate::bench::{ModelQueue, model_queue_with};
use crate::ring::RxMode;

// ---------------------------------------------------------------------------
// A fake guest's memory.

/// A mapping of a memfd, with the registration that lets devices reach it.
struct Region {
    base: NonNull<u8>,
    len: usize,
    foreign: RefCell<Option<ForeignMemory>>,
}

impl Drop for Region {
    fn drop(&mut self) {
        // Unmapped from the devices before it goes from the process.
        self.foreign.borrow_mut().take();
        // SAFETY: our own mapping, which nothing uses any more: every
        // buffer lent from it is back (this is the owner's keep-alive).
        unsafe { libc::munmap(self.base.as_ptr() as *mut _, self.len) };
    }
}

/// Buffers of given sizes in shared memory (as a vhost-user guest's RAM
/// is), lent as fixed-start foreign packets whose data starts `start`
/// bytes in (where a virtio-net header would go). Device address = virtual
/// address, as with an IOMMU (the model's table).
pub struct TestLender {
    pub owner: BufferOwner,
    region: Rc<Region>,
    offsets: Vec<usize>,
    caps: Vec<u32>,
    start: u32,
    free: Vec<u64>,
}

impl TestLender {
    /// `register`: whether devices may reach the memory.
    pub fn new(name: &str, caps: &[u32], start: u32, register: bool) -> Result<TestLender> {
        let mut offsets = Vec::with_capacity(caps.len());
        let mut len = 0usize;
        for &c in caps {
            offsets.push(len);
            len += (c as usize).next_multiple_of(64);
        }
        let len = len.max(4096).next_multiple_of(4096);
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: a fresh memfd and a fresh shared mapping of it; the file
        // descriptor is closed once mapped (the mapping keeps the memory).
        let base = unsafe {
            let fd = libc::memfd_create(cname.as_ptr(), 0);
            ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            if libc::ftruncate(fd, len as i64) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("ftruncate: {e}");
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            );
            libc::close(fd);
            ensure!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            NonNull::new(p as *mut u8).unwrap()
        };
        let seg = ForeignSegment { virt: base.as_ptr() as usize, dma: base.as_ptr() as u64, len, physical: false };
        let foreign = RefCell::new(register.then(|| ForeignMemory::register(vec![seg])));
        let region = Rc::new(Region { base, len, foreign });
        let keep: Rc<dyn Any> = region.clone();
        let owner = BufferOwner::register(name, Some(keep));
        let free = (0..caps.len() as u64).rev().collect();
        Ok(TestLender { owner, region, offsets, caps: caps.to_vec(), start, free })
    }

    fn ptr(&self, token: u64) -> *mut u8 {
        // SAFETY: offsets lie inside the region.
        unsafe { self.region.base.as_ptr().add(self.offsets[token as usize]) }
    }

    /// Buffer `token` as a packet of `len` bytes from `start`.
    fn wrap(&self, token: u64, start: u32, len: u32) -> Packet {
        let base = NonNull::new(self.ptr(token)).unwrap();
        let buf = ForeignBuffer {
            base,
            cap: self.caps[token as usize],
            dma: base.as_ptr() as u64,
            start,
            len,
            token,
            fixed_start: true,
        };
        // SAFETY: the buffer lies in the region, which the owner keeps
        // alive (its keep-alive object) until every buffer is back.
        unsafe { self.owner.wrap(buf) }
    }

    /// An empty receive buffer, if one is free.
    pub fn lend(&mut self) -> Option<Packet> {
        let t = self.free.pop()?;
        Some(self.wrap(t, self.start, 0))
    }

    /// Put free buffers on `link`, as many as it takes.
    pub fn supply(&mut self, link: &Link) -> usize {
        let mut n = 0;
        while n < link.nwritable() {
            let Some(p) = self.lend() else { break };
            link.transmit(p);
            n += 1;
        }
        n
    }

    /// Buffers that came home through the return ring are free again.
    pub fn collect(&mut self) {
        let free = &mut self.free;
        self.owner.drain_returns(|t| free.push(t));
    }

    /// A packet holding one of our buffers: its bytes, and the buffer is
    /// free again. Any other packet is handed back.
    pub fn take(&mut self, p: Packet) -> Result<Vec<u8>, Packet> {
        let r = self.owner.reclaim(p)?;
        // SAFETY: the buffer is ours again; start + len lie inside it.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.ptr(r.token).add(r.start as usize), r.len as usize) }.to_vec();
        self.free.push(r.token);
        Ok(bytes)
    }

    /// A packet of our memory holding `bytes` (for transmit).
    pub fn packet_of(&mut self, bytes: &[u8]) -> Option<Packet> {
        let t = self.free.pop()?;
        assert!(bytes.len() <= self.caps[t as usize] as usize);
        // SAFETY: a free buffer (nobody else reads or writes it), at
        // least bytes.len() long.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(t), bytes.len()) };
        Some(self.wrap(t, 0, bytes.len() as u32))
    }

    /// The same as a split packet's tail, after a host head of `head`.
    pub fn split_of(&mut self, head: &[u8], tail: &[u8]) -> Option<Packet> {
        let t = self.free.pop()?;
        // SAFETY: as in packet_of.
        unsafe { std::ptr::copy_nonoverlapping(tail.as_ptr(), self.ptr(t), tail.len()) };
        let base = NonNull::new(self.ptr(t)).unwrap();
        let fb = ForeignBuffer {
            base,
            cap: self.caps[t as usize],
            dma: base.as_ptr() as u64,
            start: 0,
            len: tail.len() as u32,
            token: t,
            fixed_start: false,
        };
        // SAFETY: as in wrap.
        Some(unsafe { self.owner.wrap_tail(Packet::from_bytes(head), fb) })
    }

    /// Let devices reach the memory no more (unmap it from them).
    pub fn unregister(&self) {
        self.region.foreign.borrow_mut().take();
    }
    pub fn outstanding(&self) -> u64 {
        self.owner.outstanding()
    }
    pub fn free_buffers(&self) -> usize {
        self.free.len()
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);
fn unique(what: &str) -> String {
    format!("{what}{}-{}", SERIAL.fetch_add(1, Ordering::Relaxed), std::process::id())
}

/// A numbered frame whose every byte follows from its number and length.
pub fn numbered(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5];
    f.extend_from_slice(&seq.to_be_bytes());
    let n = f.len();
    f.extend(
        (n..len.max(n)).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq.wrapping_mul(7)) as u8 ^ (i >> 8) as u8),
    );
    f.truncate(len);
    f
}

fn seq_of(f: &[u8]) -> Option<u32> {
    (f.len() >= 18).then(|| u32::from_be_bytes(f[14..18].try_into().unwrap()))
}

// ---------------------------------------------------------------------------
// Queue-level tests: one model queue driven directly, the model stepped by hand.

struct Lq {
    q: ModelQueue,
    out: Link,
    supply: Link,
}

impl Lq {
    fn new(ring: u32, mtu: u32) -> Result<Lq> {
        let wire = WireSpec::Pcap { input: None, output: None, repeat: false };
        let q = model_queue_with(ring, 10240, mtu, wire)?;
        Ok(Lq { q, out: Link::new(1024), supply: Link::new(1024) })
    }
    fn pull(&mut self) -> Result<()> {
        self.q.rx.as_mut().context("rx")?.pull(Some(&self.out), Some(&self.supply))
    }
    fn rx(&mut self) -> &mut crate::ring::RxQueue<crate::bar::ModelBar> {
        self.q.rx.as_mut().unwrap()
    }
    fn clean(&self) -> Result<()> {
        let (v, f) = (self.q.model.violations(), self.q.model.faults());
        ensure!(v.is_empty() && f.is_empty(), "model: violations {v:?}, faults {f:?}");
        Ok(())
    }
}

/// Every buffer size the queue can take (1 to 10 KiB, from the first
/// buffer's room), every frame size class from 60 to 9018 bytes: exact
/// bytes, in the lent buffer when the frame fits it (compacted when it took
/// several descriptors), left in the lent buffers as one chain packet when
/// it does not, each buffer but the last full.
pub fn lend_sizes() -> Result<()> {
    for k in 1..=10u32 {
        let bsize = k * 1024;
        // The first buffer a bit larger than BSIZE, as a Linux guest's 1536
        // bytes are against 1 KiB; a virtio-net header's 12 bytes in front.
        let cap = (bsize + 512 + 12).min(10240 + 12);
        let room = (cap - 12) as usize;
        let mut t = Lq::new(256, 9018)?;
        let mut g = TestLender::new(&unique("sizes"), &vec![cap; 300], 12, true)?;
        g.supply(&t.supply);
        t.pull()?;
        ensure!(t.rx().mode() == RxMode::Lend, "{bsize}: the queue lends");
        ensure!(t.rx().buffer_size() == bsize, "buffer size {} for room {room}", t.rx().buffer_size());
        ensure!(t.rx().posted() as usize == t.rx().lent_posted(), "{bsize}: host buffers posted in Lend mode");
        let mut sizes: Vec<usize> = (60..=9018).step_by(211).collect();
        for s in [bsize as usize - 1, bsize as usize, bsize as usize + 1, room - 1, room, room + 1, 9017, 9018] {
            if (60..=9018).contains(&s) {
                sizes.push(s);
            }
        }
        let (mut gathered, mut chained, mut gbytes) = (0u64, 0u64, 0u64);
        for (i, &len) in sizes.iter().enumerate() {
            let f = numbered(i as u32, len);
            t.q.model.inject(f.clone());
            t.q.model.step();
            let mut got = Vec::new();
            t.rx().receive(usize::MAX, |p| got.push(p));
            ensure!(got.len() == 1, "{bsize}/{len}: {} frames received", got.len());
            let p = got.pop().unwrap();
            let lent = p.is_foreign();
            let mut parts = Vec::new();
            p.for_each_chain_part(|_, n| parts.push(n));
            let bytes = match g.take(p) {
                Ok(b) => b,
                Err(p) => p.data().to_vec(),
            };
            ensure!(bytes == f, "{bsize}/{len}: the frame arrived different ({} bytes)", bytes.len());
            if len > bsize as usize && len <= room {
                ensure!(lent, "{bsize}/{len}: fits the first buffer but was copied");
                gathered += 1;
                gbytes += (len - bsize as usize) as u64;
            } else if len > room {
                let b = bsize as usize;
                let want: Vec<usize> = (0..len.div_ceil(b)).map(|k| (len - k * b).min(b)).collect();
                ensure!(lent && parts == want, "{bsize}/{len}: a chain of {parts:?}, not of {want:?}");
                chained += 1;
            } else {
                ensure!(lent, "{bsize}/{len}: not received in place");
            }
            g.collect();
            g.supply(&t.supply);
            t.pull()?;
        }
        let c = t.rx().counters;
        ensure!(
            (c.gathered, c.gathered_bytes, c.chained, c.copied_long) == (gathered, gbytes, chained, 0),
            "{bsize}: gathered {} ({} bytes), chained {}, copied {}; expected {gathered} ({gbytes}), {chained}, 0",
            c.gathered,
            c.gathered_bytes,
            c.chained,
            c.copied_long
        );
        ensure!(c.errors == 0 && c.supply_refused == 0, "{bsize}: {c:?}");
        t.clean()?;
        drop(t);
        g.collect();
        ensure!(g.outstanding() == 0, "{bsize}: {} buffers not back", g.outstanding());
    }
    Ok(())
}

// Frames with real checksums.

fn put_csum(f: &mut [u8], at: usize, from: usize, seed: u64) {
    use snabb_core::checksum::{fold, ones_sum};
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let c = !fold(seed + ones_sum(&f[from..]));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Ethernet + IPv4 + TCP (6) or UDP (17) with `payload` bytes, correct.
fn v4(proto: u8, payload: usize) -> Vec<u8> {
    use snabb_core::checksum::ones_sum;
    let l4len = if proto == 6 { 20 } else { 8 } + payload;
    let total = 20 + l4len;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&[10, 1, 2, 3, 10, 3, 2, 1]);
    f.extend((0..l4len).map(|i| (i * 13 + 5) as u8));
    let seed = ones_sum(&f[26..34]) + proto as u64 + l4len as u64;
    if proto == 6 {
        f[34 + 12] = 0x50;
        put_csum(&mut f, 34 + 16, 34, seed);
    } else {
        f[38..40].copy_from_slice(&(l4len as u16).to_be_bytes());
        put_csum(&mut f, 34 + 6, 34, seed);
    }
    let mut h = f[14..34].to_vec();
    put_csum(&mut h, 10, 0, 0);
    f[14..34].copy_from_slice(&h);
    f
}

/// The same over IPv6.
fn v6(proto: u8, payload: usize) -> Vec<u8> {
    use snabb_core::checksum::ones_sum;
    let l4len = if proto == 6 { 20 } else { 8 } + payload;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, (l4len >> 8) as u8, l4len as u8, proto, 64]);
    f.extend((0..32).map(|i| 0x20 + i as u8));
    f.extend((0..l4len).map(|i| (i * 11 + 1) as u8));
    let seed = ones_sum(&f[22..54]) + proto as u64 + l4len as u64;
    if proto == 6 {
        f[54 + 12] = 0x50;
        put_csum(&mut f, 54 + 16, 54, seed);
    } else {
        f[58..60].copy_from_slice(&(l4len as u16).to_be_bytes());
        put_csum(&mut f, 54 + 6, 54, seed);
    }
    f
}

/// The chip's checksum verdicts reach the packets, in host buffers and
/// lent ones, for frames in one buffer and over several: verified when it
/// checked IP and TCP/UDP and found them good; not when either is bad, a
/// UDP datagram has no checksum, or nothing was checked (fragments, ARP).
pub fn lend_checksums() -> Result<()> {
    let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("TCP/IPv4", v4(6, 100), true),
        ("UDP/IPv4", v4(17, 1000), true),
        ("TCP/IPv6", v6(6, 60), true),
        ("UDP/IPv6", v6(17, 3000), true),
        ("long TCP/IPv4", v4(6, 5000), true),
    ];
    let mut f = v4(6, 100);
    f[100] ^= 1;
    cases.push(("bad TCP", f, false));
    let mut f = v4(17, 2500);
    f[14 + 8] ^= 1; // TTL: the IP header checksum
    cases.push(("bad IPv4 header", f, false));
    let mut f = v6(17, 100);
    f[90] ^= 0x10;
    cases.push(("bad UDP/IPv6", f, false));
    let mut f = v4(17, 100);
    f[40..42].copy_from_slice(&[0, 0]);
    cases.push(("UDP without checksum", f, false));
    let mut f = v4(6, 100);
    f[20] |= 0x20; // MF: a fragment
    let mut h = f[14..34].to_vec();
    put_csum(&mut h, 10, 0, 0);
    f[14..34].copy_from_slice(&h);
    cases.push(("fragment", f, false));
    cases.push(("not IP", numbered(1, 200), false));
    for lend in [false, true] {
        let mut t = Lq::new(256, 9018)?;
        let mut g = TestLender::new(&unique("csum"), &vec![2048; 256], 0, true)?;
        if lend {
            g.supply(&t.supply);
        }
        t.pull()?;
        let want_mode = if lend { RxMode::Lend } else { RxMode::Host };
        ensure!(t.rx().mode() == want_mode, "mode {:?}", t.rx().mode());
        for (name, f, verified) in &cases {
            t.q.model.inject(f.clone());
            t.q.model.step();
            let mut got = Vec::new();
            t.rx().receive(usize::MAX, |p| got.push(p));
            let p = got.pop().with_context(|| format!("{name}: nothing received"))?;
            ensure!(p.csum_verified() == *verified, "{name} (lend {lend}): verified {}", p.csum_verified());
            let bytes = match g.take(p) {
                Ok(b) => b,
                Err(p) => p.data().to_vec(),
            };
            ensure!(bytes == *f, "{name}: the frame arrived different");
            g.collect();
            if lend {
                g.supply(&t.supply);
            }
            t.pull()?;
        }
        let c = t.rx().counters;
        let good = cases.iter().filter(|c| c.2).count() as u64;
        ensure!(c.csum_verified == good, "lend {lend}: {} verified, expected {good}", c.csum_verified);
        // Bad: the TCP and the IPv4 header ones. L4E on UDP is left
        // unverified without counting, as the 82599 erratum needs.
        ensure!(c.csum_bad == 2, "lend {lend}: {} counted bad, expected 2", c.csum_bad);
        t.clean()?;
    }
    Ok(())
}

/// Supplied buffers the queue cannot take go home at once, counted: a
/// revoked owner's, ones too small for the buffer size, not empty, out of
/// the device's reach; and all of them while the output copies (Simd).
pub fn lend_refusals() -> Result<()> {
    let mut t = Lq::new(128, 1514)?;
    let mut tiny = TestLender::new(&unique("tiny"), &[1000], 0, true)?;
    let mut far = TestLender::new(&unique("far"), &[4096; 4], 0, false)?;
    let mut first = TestLender::new(&unique("first"), &[3000], 0, true)?;
    let mut small = TestLender::new(&unique("small"), &[1500], 0, true)?;
    let mut g = TestLender::new(&unique("refuse"), &vec![2048; 64], 0, true)?;
    // Too small for even 1 KiB, out of reach: refused; a 3000-byte buffer
    // switches the queue to Lend with 2 KiB buffers.
    t.supply.transmit(tiny.lend().unwrap());
    t.supply.transmit(far.lend().unwrap());
    t.supply.transmit(first.lend().unwrap());
    t.pull()?;
    ensure!(t.rx().mode() == RxMode::Lend, "a 3000-byte buffer makes the queue lend");
    ensure!(t.rx().buffer_size() == 2048, "BSIZE {}", t.rx().buffer_size());
    ensure!(t.rx().counters.supply_refused == 2, "refused {}", t.rx().counters.supply_refused);
    ensure!(t.rx().posted() == 1 && t.rx().lent_posted() == 1, "no host buffer is posted in Lend mode");
    // Smaller than the buffer size, out of reach, not empty; then good ones.
    t.supply.transmit(small.lend().unwrap());
    t.supply.transmit(far.lend().unwrap());
    let mut full = g.lend().unwrap();
    full.set_len(10);
    t.supply.transmit(full);
    g.supply(&t.supply);
    t.pull()?;
    let c = t.rx().counters;
    ensure!(c.supply_refused == 5, "refused {}", c.supply_refused);
    ensure!(c.lent == 1 + 63 && t.rx().posted() == 64, "lent {}, posted {}", c.lent, t.rx().posted());
    for l in [&mut tiny, &mut far, &mut small] {
        l.collect();
        ensure!(l.outstanding() == 0, "refused buffers came home");
    }
    // More than the ring takes wait on the link.
    let mut more = TestLender::new(&unique("more"), &vec![2048; 100], 0, true)?;
    more.supply(&t.supply);
    t.pull()?;
    ensure!(t.rx().posted() == t.rx().capacity(), "the ring is full");
    let waiting = t.supply.nreadable() as u64;
    ensure!(waiting == 100 - (127 - 64), "the rest wait on the supply link: {waiting}");
    // An owner revokes: its posted buffers come off the ring (with a
    // restart, so everyone's do), those still waiting are refused.
    let before = t.rx().counters;
    more.owner.revoke();
    t.pull()?;
    let c = t.rx().counters;
    ensure!(c.revoked - before.revoked == 63, "{} revoked buffers given back", c.revoked - before.revoked);
    ensure!(c.supply_refused - before.supply_refused == waiting, "revoked buffers on the link refused");
    ensure!(t.rx().mode() == RxMode::Lend && t.rx().posted() == 0, "still lending, ring empty");
    more.collect();
    ensure!(more.outstanding() == 0, "{} of the revoked owner's buffers still out", more.outstanding());
    // The output copies: lending stops, supplied buffers go home.
    g.collect();
    g.supply(&t.supply);
    t.pull()?;
    ensure!(t.rx().posted() == 64, "the live lender lends again");
    t.out.set_copy_mode(CopyMode::Simd);
    g.supply(&t.supply);
    t.pull()?;
    ensure!(t.rx().mode() == RxMode::Host, "a Simd output stops the lending");
    ensure!(t.supply.is_empty() && t.rx().lent_posted() == 0, "and what is supplied goes home");
    t.clean()?;
    drop(t);
    for l in [&mut g, &mut first] {
        l.collect();
        ensure!(l.outstanding() == 0, "every buffer back");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Transmit.

/// Split packets (a host head, the rest in a lent buffer) go out as two
/// descriptors and reach the wire intact; a tail the device cannot reach is
/// copied; a partial checksum is finished without flattening.
pub fn split_tx() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("wire.pcap");
    let wire = WireSpec::Pcap { input: None, output: Some(file.clone()), repeat: false };
    let mut q = model_queue_with(256, 10240, 9018, wire)?;
    let mut g = TestLender::new(&unique("tx"), &vec![10240; 64], 0, true)?;
    let mut far = TestLender::new(&unique("txfar"), &[10240; 8], 0, false)?;
    let link = Link::new(256);
    let mut want = Vec::new();
    let flattened = packet::stats().flattened;
    for (i, (len, head)) in [(60, 14), (1514, 34), (9018, 54), (300, 0), (2000, 60)].into_iter().enumerate() {
        let f = numbered(i as u32, len);
        link.transmit(g.split_of(&f[..head], &f[head..]).unwrap());
        want.push(f);
    }
    let f = numbered(10, 700);
    link.transmit(far.split_of(&f[..40], &f[40..]).unwrap());
    want.push(f);
    let f = numbered(11, 1200);
    link.transmit(g.packet_of(&f).unwrap());
    want.push(f);
    // UDP/IPv4 with a partial checksum: its field is in the head.
    let mut f = v4(17, 1400);
    let done = f.clone();
    let seed = {
        use snabb_core::checksum::{fold, ones_sum};
        fold(ones_sum(&f[26..34]) + 17 + 1408)
    };
    f[40..42].copy_from_slice(&seed.to_be_bytes());
    let mut p = g.split_of(&f[..42], &f[42..]).unwrap();
    ensure!(p.set_partial_csum(Some(PartialCsum { start: 34, offset: 6 })));
    link.transmit(p);
    want.push(done);
    let tx = q.tx.as_mut().context("tx")?;
    let n = tx.transmit(&link)?;
    ensure!(n == want.len(), "{n} sent of {}", want.len());
    let c = tx.counters;
    ensure!(c.split == 5, "{} split packets as two descriptors", c.split);
    ensure!(c.copied == 1, "{} copied: the unreachable tail only", c.copied);
    ensure!(c.foreign == 7, "{} sent from lent memory in place", c.foreign);
    ensure!(packet::stats().flattened == flattened, "a split packet was flattened");
    q.model.step();
    q.tx.as_mut().unwrap().reclaim();
    g.collect();
    far.collect();
    ensure!(g.outstanding() == 0 && far.outstanding() == 0, "every lent buffer home after the transmit");
    let v = q.model.violations();
    ensure!(v.is_empty() && q.model.faults().is_empty(), "model: {v:?} {:?}", q.model.faults());
    let mut r = snabb_apps_basic::pcap::PcapFileReader::new(std::fs::File::open(&file)?)?;
    for (i, w) in want.iter().enumerate() {
        let rec = r.next_record()?.with_context(|| format!("frame {i} not on the wire"))?;
        ensure!(
            rec.data.len() >= w.len() && rec.data[..w.len()] == w[..],
            "frame {i} ({} bytes) differs on the wire",
            w.len()
        );
    }
    Ok(())
}

/// A lone lent packet comes home as soon as the chip has sent it: the
/// driver asks for a status report on the last descriptor of every batch,
/// not only every 32nd.
pub fn prompt_reclaim() -> Result<()> {
    let mut q = model_queue_with(1024, 10240, 1514, WireSpec::Pcap { input: None, output: None, repeat: false })?;
    let mut g = TestLender::new(&unique("reclaim"), &[2048; 4], 0, true)?;
    let link = Link::new(64);
    for round in 0..3u32 {
        link.transmit(g.packet_of(&numbered(round, 60)).unwrap());
        let tx = q.tx.as_mut().context("tx")?;
        ensure!(tx.transmit(&link)? == 1, "sent");
        q.model.step();
        let freed = q.tx.as_mut().unwrap().reclaim();
        g.collect();
        ensure!(freed == 1 && g.outstanding() == 0, "round {round}: the buffer is still on the ring");
    }
    let tx = q.tx.as_mut().unwrap();
    ensure!(tx.in_flight() == 0, "{} descriptors in flight", tx.in_flight());
    Ok(())
}

// ---------------------------------------------------------------------------
// Engine-level tests: a guest app on a queue's `supply` and `output`.

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GuestArgs {
    pub buffers: usize,
    pub size: u32,
    pub start: u32,
}

/// A guest behind a vhost-user port, as the NIC sees it: supplies its
/// buffers on `supply` while its input link does not copy, takes frames
/// from `input` (its own buffers back, or copies), checks each one's bytes
/// and order.
pub struct Guest {
    pub lender: TestLender,
    args: GuestArgs,
    pub good: u64,
    pub bad: u64,
    pub in_place: u64,
    pub last_seq: Option<u32>,
    pub first_bad: Option<String>,
    /// Supplies buffers (the test turns it off).
    pub supplying: bool,
}

impl Guest {
    /// A new lender in place of the old one (a guest that reconnected).
    pub fn renew(&mut self) -> Result<()> {
        self.lender =
            TestLender::new(&unique("guest"), &vec![self.args.size; self.args.buffers], self.args.start, true)?;
        Ok(())
    }
}

impl AppClass for Guest {
    type Args = GuestArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &["supply"]);
    fn new(args: GuestArgs, _: &AppContext) -> Result<Guest> {
        let lender = TestLender::new(&unique("guest"), &vec![args.size; args.buffers], args.start, true)?;
        Ok(Guest { lender, args, good: 0, bad: 0, in_place: 0, last_seq: None, first_bad: None, supplying: true })
    }
}

impl App for Guest {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        self.lender.collect();
        let zero = io.input.get("input").is_some_and(|l| l.copy_mode() == CopyMode::Zero);
        if self.supplying
            && zero
            && !self.lender.owner.is_revoked()
            && let Some(s) = io.output.get("supply")
        {
            self.lender.supply(s);
        }
    }
    fn push(&mut self, io: &Io) {
        let Some(l) = io.input.get("input") else { return };
        for p in l.drain() {
            let (bytes, lent) = match self.lender.take(p) {
                Ok(b) => (b, true),
                Err(p) => (p.data().to_vec(), false),
            };
            let ok = seq_of(&bytes).is_some_and(|s| {
                let ok = bytes == numbered(s, bytes.len()) && self.last_seq.is_none_or(|l| s > l);
                self.last_seq = Some(s);
                ok
            });
            if ok {
                self.good += 1;
                self.in_place += lent as u64;
            } else {
                self.bad += 1;
                self.first_bad
                    .get_or_insert_with(|| format!("{} bytes: {:02x?}", bytes.len(), &bytes[..bytes.len().min(24)]));
            }
        }
    }
}

fn guest_registry() -> snabb_core::Registry {
    let mut r = registry();
    r.register::<Guest>("Intel10gGuest", "a fake guest lending receive buffers (intel10g selftests)");
    r
}

/// A model port with a queue `p` lending to guest `g`.
fn guest_config(port: &str, supply: bool, guest: &str) -> Result<Config> {
    let mut c = Config::new();
    c.app_args("p", "Intel10g", Args::from_ron(&format!("(pci: \"{port}\", wire: Pcap(), mtu: 9018, rx_ring: 256)"))?)
        .app_args("g", "Intel10gGuest", Args::from_ron(guest)?)
        .link("p.output -> g.input");
    if supply {
        c.link("g.supply -> p.supply");
    }
    Ok(c)
}

/// What became of the frames injected so far: (checked by the guest,
/// counted lost somewhere, bad).
fn tally(e: &mut Engine) -> Result<(u64, u64, u64)> {
    let hw = nic(e, "p")?.hw_stats();
    let c = e.app_counters("p");
    let get = |n: &str| c.get(n).copied().unwrap_or(0);
    let link = e.link_counters("p.output -> g.input").map_or(0, |l| l.txdrop);
    let lost = hw.rx_drop() + hw.rx_missed + hw.rx_errors + get("rxerrors") + get("rx_restart_drop") + link;
    let g = e.app::<Guest>("g").context("guest")?;
    Ok((g.good, lost, g.bad))
}

fn settle(e: &mut Engine, n: u64) -> Result<(u64, u64, u64)> {
    for _ in 0..2000 {
        e.run_for(Duration::from_millis(2));
        let t = tally(e)?;
        if t.0 + t.1 + t.2 >= n {
            e.run_for(Duration::from_millis(10));
            return tally(e);
        }
    }
    let t = tally(e)?;
    bail!("after 4 s, {} checked, {} lost, {} bad of {n}", t.0, t.1, t.2)
}

fn sizes(i: u32) -> usize {
    [60, 1514, 64, 9018, 1500, 200, 4000, 60][i as usize % 8]
}

/// A guest revokes its buffers while frames arrive: every buffer comes back
/// at once (the queue restarts in Host mode), its memory is unmapped, and
/// the frames after that land in host buffers with no DMA fault. A new
/// lender then takes the queue back to Lend.
pub fn lend_revocation() -> Result<()> {
    let port = format!("model:{}", unique("rev"));
    let mut e = Engine::new(guest_registry());
    e.configure(&guest_config(&port, true, "(buffers: 200, size: 2060, start: 12)")?)?;
    super::wait_links(&mut e, &["p"])?;
    let model = nic(&mut e, "p")?.model().context("model")?;
    let mut seq = 0u32;
    let mut inject = |e: &mut Engine, n: u32| {
        for _ in 0..n {
            model.inject(numbered(seq, sizes(seq)));
            seq += 1;
        }
        e.run_for(Duration::from_millis(1));
    };
    for _ in 0..20 {
        inject(&mut e, 25);
    }
    ensure!(nic(&mut e, "p")?.rx_mode() == Some((RxMode::Lend, 2048)), "lending: {:?}", nic(&mut e, "p")?.rx_mode());
    let posted_before = e.app_counters("p")["rx_lent"];
    ensure!(posted_before > 0, "buffers were lent");
    // Revoke in the middle of the traffic.
    e.app_mut::<Guest>("g").unwrap().lender.owner.revoke();
    inject(&mut e, 10);
    ensure!(nic(&mut e, "p")?.rx_mode().map(|m| m.0) == Some(RxMode::Host), "back to host buffers");
    ensure!(e.app_counters("p")["rx_revoked"] > 0, "posted buffers were given back");
    e.run_for(Duration::from_millis(5));
    {
        let g = e.app_mut::<Guest>("g").unwrap();
        g.lender.collect();
        ensure!(g.lender.outstanding() == 0, "{} buffers still out after the revocation", g.lender.outstanding());
        // Its memory goes: anything still posted would now fault.
        g.lender.unregister();
    }
    for _ in 0..10 {
        inject(&mut e, 25);
    }
    let f = model.faults();
    ensure!(f.is_empty(), "DMA faults after the revocation: {f:?}");
    // A new lender: lending again.
    e.app_mut::<Guest>("g").unwrap().renew()?;
    for _ in 0..10 {
        inject(&mut e, 25);
    }
    ensure!(nic(&mut e, "p")?.rx_mode() == Some((RxMode::Lend, 2048)), "lending again");
    let (good, lost, bad) = settle(&mut e, seq as u64)?;
    let first_bad = e.app::<Guest>("g").unwrap().first_bad.clone();
    ensure!(bad == 0, "{bad} frames damaged or out of order, first: {first_bad:?}");
    ensure!(good + lost == seq as u64, "{good} checked + {lost} lost != {seq} sent");
    ensure!(good > seq as u64 / 2, "only {good} of {seq} arrived");
    let v = model.violations();
    ensure!(v.is_empty() && model.faults().is_empty(), "model: {v:?} {:?}", model.faults());
    Ok(())
}

/// Host <-> Lend under traffic: the output link's copy mode flips, the
/// supply link goes and comes back. Every frame arrives once and in order
/// or is counted lost, and every lent buffer comes back.
pub fn lend_mode_switch() -> Result<()> {
    let port = format!("model:{}", unique("switch"));
    let guest = "(buffers: 300, size: 1536, start: 12)";
    let mut e = Engine::new(guest_registry());
    e.configure(&guest_config(&port, true, guest)?)?;
    super::wait_links(&mut e, &["p"])?;
    let model = nic(&mut e, "p")?.model().context("model")?;
    let mut seq = 0u32;
    let mut modes = std::collections::BTreeSet::new();
    for round in 0..60u32 {
        for _ in 0..20 {
            model.inject(numbered(seq, sizes(seq)));
            seq += 1;
        }
        e.run_for(Duration::from_millis(1));
        modes.insert(format!("{:?}", nic(&mut e, "p")?.rx_mode()));
        match round % 12 {
            3 => e.link("p.output -> g.input").context("link")?.set_copy_mode(CopyMode::Simd),
            6 => e.link("p.output -> g.input").context("link")?.set_copy_mode(CopyMode::Zero),
            8 => e.configure(&guest_config(&port, false, guest)?)?,
            10 => e.configure(&guest_config(&port, true, guest)?)?,
            _ => {}
        }
    }
    let (good, lost, bad) = settle(&mut e, seq as u64)?;
    let g = e.app::<Guest>("g").unwrap();
    ensure!(bad == 0, "{bad} frames damaged, duplicated or out of order, first: {:?}", g.first_bad);
    ensure!(good + lost == seq as u64, "{good} checked + {lost} lost != {seq} sent");
    ensure!(g.in_place > 0 && g.in_place < good, "{} of {good} in lent buffers: both modes ran", g.in_place);
    let c = e.app_counters("p");
    ensure!(c["rx_restarts"] >= 10, "{} restarts", c["rx_restarts"]);
    ensure!(c["rx_restart_drop"] == 0, "{} frames the chip finished were lost at a restart", c["rx_restart_drop"]);
    ensure!(modes.contains("Some((Host, 10240))") && modes.contains("Some((Lend, 1024))"), "modes seen: {modes:?}");
    // Stop the port: every buffer it held goes home.
    let mut only_guest = Config::new();
    only_guest.app_args("g", "Intel10gGuest", Args::from_ron(guest)?);
    e.configure(&only_guest)?;
    let g = e.app_mut::<Guest>("g").unwrap();
    g.lender.collect();
    ensure!(g.lender.outstanding() == 0, "{} lent buffers never came back", g.lender.outstanding());
    ensure!(g.lender.free_buffers() == 300, "{} of 300 buffers free", g.lender.free_buffers());
    let v = model.violations();
    ensure!(v.is_empty() && model.faults().is_empty(), "model: {v:?} {:?}", model.faults());
    Ok(())
}
