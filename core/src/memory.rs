//! DMA-CAPABLE MEMORY
//!
//! Memory comes in 2 MiB chunks. A chunk is one huge page when the kernel
//! has huge pages to give (`vm.nr_hugepages`), so it is physically contiguous
//! and its physical address, read from `/proc/self/pagemap`, can go straight
//! into a NIC descriptor. Otherwise a chunk is ordinary, 2 MiB-aligned
//! anonymous memory: a device can then reach it only through an IOMMU mapping
//! (VFIO, with IOVA = virtual address) or through the 82599 model.
//!
//!   alloc_chunk() -> Chunk        a fresh or recycled 2 MiB chunk
//!   Region::new(len)              whole chunks at consecutive addresses (an AF_XDP UMEM)
//!   chunks()                      every chunk this process has (for IOMMUs)
//!   generation()                  bumps when a chunk is added
//!   DmaBuffer::new(len)           a block for rings and tables, freed on drop
//!   dma_to_virt(addr) / virt_to_dma(ptr)   slow-path lookups
//!
//! Someone else's memory (a guest's RAM, lent for zero copy) is made
//! reachable the same way, through a registry that sits between lenders
//! and devices:
//!
//!   add_domain(d)                 a device's view of memory (its IOMMU, the
//!                                 model's table, or plain physical addressing)
//!   ForeignMemory::register(segs) map a lender's memory into every domain;
//!                                 dropping it unmaps it from every domain
//!   ForeignMemory::dma(virt, len) the device address of a range, when every
//!                                 domain reaches it
//!
//! A lender drops its `ForeignMemory` only when no buffer in it is lent any
//! more (it keeps it alive with its `BufferOwner`), so a device is never
//! left with a descriptor into memory that is unmapped from its IOMMU.
//!
//! Chunks are never unmapped: a device may still be writing to one after
//! software has forgotten it, and a NIC's stray DMA into live memory is a far
//! smaller evil than into memory the kernel gave to someone else.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

/// Size of one chunk: one x86-64 huge page.
pub const CHUNK_SIZE: usize = 2 << 20;

/// What backs a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A 2 MiB huge page; `dma` is its physical address.
    Huge,
    /// Ordinary memory; `dma` is its virtual address (IOVA = VA).
    Ordinary,
}

/// One 2 MiB chunk of memory that a device may read and write.
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    /// Virtual address of the first byte.
    pub virt: usize,
    /// Address a device uses for the first byte (see [`Backing`]).
    pub dma: u64,
    pub len: usize,
    pub backing: Backing,
}

impl Chunk {
    pub fn contains_virt(&self, virt: usize) -> bool {
        virt >= self.virt && virt < self.virt + self.len
    }
    pub fn contains_dma(&self, dma: u64) -> bool {
        dma >= self.dma && dma < self.dma + self.len as u64
    }
}

static CHUNKS: Mutex<Vec<Chunk>> = Mutex::new(Vec::new());
static SPARE: Mutex<Vec<Chunk>> = Mutex::new(Vec::new());
static GENERATION: AtomicU64 = AtomicU64::new(0);
static LOG_BACKING: Once = Once::new();

/// Every chunk mapped so far, in the order they were made.
pub fn chunks() -> Vec<Chunk> {
    CHUNKS.lock().unwrap().clone()
}

/// Changes whenever a chunk is added, so that an IOMMU user can map new
/// chunks without scanning the list every breath.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The device address of a byte in any chunk.
pub fn virt_to_dma(virt: *const u8) -> Option<u64> {
    let v = virt as usize;
    CHUNKS.lock().unwrap().iter().find(|c| c.contains_virt(v)).map(|c| c.dma + (v - c.virt) as u64)
}

/// The virtual address of a device address in any chunk.
pub fn dma_to_virt(dma: u64) -> Option<*mut u8> {
    CHUNKS.lock().unwrap().iter().find(|c| c.contains_dma(dma)).map(|c| (c.virt + (dma - c.dma) as usize) as *mut u8)
}

/// Whether huge pages are refused by configuration (`SNABB_RS_NO_HUGEPAGES=1`).
fn hugepages_disabled() -> bool {
    std::env::var("SNABB_RS_NO_HUGEPAGES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A 2 MiB chunk, recycled from an exited thread's pool when one is spare.
pub fn alloc_chunk() -> io::Result<Chunk> {
    if let Some(c) = SPARE.lock().unwrap().pop() {
        return Ok(c);
    }
    Ok(map_chunks(1)?[0])
}

/// `n` fresh chunks at consecutive virtual addresses, registered.
fn map_chunks(n: usize) -> io::Result<Vec<Chunk>> {
    let chunks = match (!hugepages_disabled()).then(|| map_huge(n)).flatten() {
        Some(c) => c,
        None => map_ordinary(n)?,
    };
    LOG_BACKING.call_once(|| match chunks[0].backing {
        Backing::Huge => log::info!("packet memory: 2 MiB huge pages, physical addresses from /proc/self/pagemap"),
        Backing::Ordinary => log::info!(
            "packet memory: ordinary pages (no huge pages available{}); device addresses are \
             virtual (IOVA = VA): a real NIC needs VFIO",
            if hugepages_disabled() { ", SNABB_RS_NO_HUGEPAGES is set" } else { "" }
        ),
    });
    CHUNKS.lock().unwrap().extend_from_slice(&chunks);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    Ok(chunks)
}

/// Give a chunk back for reuse; its contents are zeroed first.
pub(crate) fn recycle_chunk(c: Chunk) {
    // SAFETY: the chunk is ours (mapped by alloc_chunk, never unmapped) and the
    // caller has checked that nothing refers to its contents any more.
    unsafe { std::ptr::write_bytes(c.virt as *mut u8, 0, c.len) };
    SPARE.lock().unwrap().push(c);
}

fn map_huge(n: usize) -> Option<Vec<Chunk>> {
    let len = n * CHUNK_SIZE;
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: p is a mapping of len bytes made just above.
    unsafe {
        // Locked so the kernel never moves the pages under a device.
        libc::mlock(p, len);
    }
    let mut chunks = Vec::with_capacity(n);
    for i in 0..n {
        let virt = p as usize + i * CHUNK_SIZE;
        // SAFETY: virt is inside the mapping made above.
        unsafe { std::ptr::write_volatile(virt as *mut u8, 0) };
        match physical_address(virt) {
            Some(phys) => chunks.push(Chunk { virt, dma: phys, len: CHUNK_SIZE, backing: Backing::Huge }),
            None => {
                // No PFNs without CAP_SYS_ADMIN: such a page is no better than
                // ordinary memory, and ordinary memory is cheaper to get.
                // SAFETY: unmapping the mapping made above, never shared.
                unsafe { libc::munmap(p, len) };
                return None;
            }
        }
    }
    Some(chunks)
}

fn map_ordinary(n: usize) -> io::Result<Vec<Chunk>> {
    // Map a chunk more than needed and trim, to get 2 MiB alignment.
    let want = n * CHUNK_SIZE;
    let len = want + CHUNK_SIZE;
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = (start + CHUNK_SIZE - 1) & !(CHUNK_SIZE - 1);
    // SAFETY: trimming the unaligned head and tail of our own mapping.
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let tail = start + len - (aligned + want);
        if tail > 0 {
            libc::munmap((aligned + want) as *mut libc::c_void, tail);
        }
        // Ask for transparent huge pages: fewer TLB misses on the hot path.
        libc::madvise(aligned as *mut libc::c_void, want, libc::MADV_HUGEPAGE);
    }
    Ok((0..n)
        .map(|i| {
            let virt = aligned + i * CHUNK_SIZE;
            Chunk { virt, dma: virt as u64, len: CHUNK_SIZE, backing: Backing::Ordinary }
        })
        .collect())
}

/// Physical address of a resident page from `/proc/self/pagemap` (needs
/// CAP_SYS_ADMIN: without it the kernel reports no page frame numbers).
pub fn physical_address(virt: usize) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, (virt / 4096 * 8) as u64).ok()?;
    let e = u64::from_ne_bytes(entry);
    let present = e >> 63 == 1;
    let pfn = e & ((1 << 55) - 1);
    (present && pfn != 0).then(|| pfn * 4096 + (virt % 4096) as u64)
}

// ---------------------------------------------------------------------------
// Foreign memory: a lender's memory (guest RAM) made reachable by devices.

/// A stretch of foreign memory that is contiguous for a device: `len` bytes
/// at `virt` in this process, at device address `dma`. `physical` when
/// `dma` is the physical address (a locked huge page, from pagemap);
/// otherwise `dma` is the virtual address (IOVA = VA), which only a device
/// behind an IOMMU (VFIO, the model's table) can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignSegment {
    pub virt: usize,
    pub dma: u64,
    pub len: usize,
    pub physical: bool,
}

/// A device's view of memory: whatever must be programmed before the device
/// may be handed an address in foreign memory.
pub trait DmaDomain: Send + Sync {
    /// For log lines ("0000:01:00.0", "model:0").
    fn name(&self) -> String;
    /// Let the device reach `seg` at `seg.dma`; an error when it cannot
    /// (no IOMMU and the segment is not physical, an IOMMU that refuses).
    fn map_foreign(&self, seg: &ForeignSegment) -> Result<(), String>;
    /// Take `seg` away again. Called only once no descriptor points into
    /// it (see [`ForeignMemory`]).
    fn unmap_foreign(&self, seg: &ForeignSegment);
}

struct ForeignInner {
    /// Sorted by `virt`, not overlapping.
    segs: Vec<ForeignSegment>,
    /// Per segment: every domain mapped it (false once one could not).
    ok: Vec<AtomicBool>,
}

struct Registry {
    domains: Vec<Weak<dyn DmaDomain>>,
    foreign: Vec<Weak<ForeignInner>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { domains: Vec::new(), foreign: Vec::new() });

/// Bumped on every change to what devices reach (a domain or a foreign
/// memory added or gone), so that a device that caches the answers of
/// [`ForeignMemory::dma`] or its own look-ups knows to drop them.
static FOREIGN_GENERATION: AtomicU64 = AtomicU64::new(1);

pub fn foreign_generation() -> u64 {
    FOREIGN_GENERATION.load(Ordering::Acquire)
}

fn map_into(d: &dyn DmaDomain, f: &ForeignInner) {
    for (seg, ok) in f.segs.iter().zip(&f.ok) {
        if !ok.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = d.map_foreign(seg) {
            log::debug!("{}: foreign memory at {:#x} (+{:#x}) not reachable: {e}", d.name(), seg.virt, seg.len);
            ok.store(false, Ordering::Relaxed);
        }
    }
}

/// Add a device's view of memory: every foreign memory registered now is
/// mapped into it (segments it cannot reach are no longer lent to anyone),
/// and every one registered later will be. The registry keeps a weak
/// reference: a domain that is dropped is forgotten.
pub fn add_domain(d: &Arc<dyn DmaDomain>) {
    let mut r = REGISTRY.lock().unwrap();
    r.domains.retain(|w| w.strong_count() > 0);
    r.foreign.retain(|w| w.strong_count() > 0);
    for f in r.foreign.iter().filter_map(Weak::upgrade) {
        map_into(d.as_ref(), &f);
    }
    r.domains.push(Arc::downgrade(d));
    FOREIGN_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// A lender's memory, registered with every device's domain while this
/// value lives. Dropping it unmaps it from each of them: drop it only when
/// no buffer in it is posted to a device any more.
pub struct ForeignMemory {
    inner: Arc<ForeignInner>,
}

impl ForeignMemory {
    /// Register `segs` (they must not overlap) and map them into every
    /// domain there is.
    pub fn register(mut segs: Vec<ForeignSegment>) -> ForeignMemory {
        segs.sort_by_key(|s| s.virt);
        let ok = segs.iter().map(|_| AtomicBool::new(true)).collect();
        let inner = Arc::new(ForeignInner { segs, ok });
        let mut r = REGISTRY.lock().unwrap();
        r.domains.retain(|w| w.strong_count() > 0);
        r.foreign.retain(|w| w.strong_count() > 0);
        for d in r.domains.iter().filter_map(Weak::upgrade) {
            map_into(d.as_ref(), &inner);
        }
        r.foreign.push(Arc::downgrade(&inner));
        FOREIGN_GENERATION.fetch_add(1, Ordering::AcqRel);
        ForeignMemory { inner }
    }

    /// The device address of `virt .. virt + len`, when the range lies in
    /// one segment that every domain reaches. (Inlined: a lender asks once
    /// per buffer, and the call's Option comes back through memory.)
    #[inline]
    pub fn dma(&self, virt: usize, len: usize) -> Option<u64> {
        let segs = &self.inner.segs;
        let i = segs.partition_point(|s| s.virt <= virt).checked_sub(1)?;
        let s = &segs[i];
        let off = virt - s.virt;
        (off < s.len && len <= s.len - off && self.inner.ok[i].load(Ordering::Relaxed)).then(|| s.dma + off as u64)
    }

    /// Segments no domain could be denied (for reports): (reachable, all).
    pub fn reachable(&self) -> (usize, usize) {
        (self.inner.ok.iter().filter(|o| o.load(Ordering::Relaxed)).count(), self.inner.segs.len())
    }

    pub fn segments(&self) -> &[ForeignSegment] {
        &self.inner.segs
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        let mut r = REGISTRY.lock().unwrap();
        r.domains.retain(|w| w.strong_count() > 0);
        let me = Arc::as_ptr(&self.inner);
        r.foreign.retain(|w| w.strong_count() > 0 && w.as_ptr() != me);
        for d in r.domains.iter().filter_map(Weak::upgrade) {
            for seg in &self.inner.segs {
                d.unmap_foreign(seg);
            }
        }
        FOREIGN_GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ForeignMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ok, all) = self.reachable();
        write!(f, "ForeignMemory({ok} of {all} segments reachable)")
    }
}

// ---------------------------------------------------------------------------
// Blocks for rings and tables: power-of-two size classes from 4 KiB up to a
// whole chunk, split from chunks on demand, returned on drop.

const MIN_BLOCK: usize = 4096;

/// Free blocks by size class: (address, device address, what backs it).
type FreeBlocks = BTreeMap<usize, Vec<(usize, u64, Backing)>>;

static BLOCKS: Mutex<FreeBlocks> = Mutex::new(BTreeMap::new());

/// A zeroed block of DMA memory, 4 KiB-aligned (aligned to its size class),
/// physically contiguous when backed by a huge page.
pub struct DmaBuffer {
    virt: usize,
    dma: u64,
    len: usize,
    class: usize,
    backing: Backing,
}

// SAFETY: the block is plain memory owned by this value alone.
unsafe impl Send for DmaBuffer {}

impl DmaBuffer {
    pub fn new(len: usize) -> io::Result<DmaBuffer> {
        if len == 0 || len > CHUNK_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("DMA block of {len} bytes: must be 1..={CHUNK_SIZE}"),
            ));
        }
        let class = len.next_power_of_two().max(MIN_BLOCK);
        let mut blocks = BLOCKS.lock().unwrap();
        let (virt, dma, backing) = match blocks.get_mut(&class).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                let c = alloc_chunk()?;
                let list = blocks.entry(class).or_default();
                for off in (class..CHUNK_SIZE).step_by(class).rev() {
                    list.push((c.virt + off, c.dma + off as u64, c.backing));
                }
                (c.virt, c.dma, c.backing)
            }
        };
        // SAFETY: the block lies inside one of our chunks and is not handed
        // to anyone else until this DmaBuffer is dropped.
        unsafe { std::ptr::write_bytes(virt as *mut u8, 0, class) };
        Ok(DmaBuffer { virt, dma, len, class, backing })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.virt as *mut u8
    }
    /// Device address of the first byte.
    pub fn dma(&self) -> u64 {
        self.dma
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn backing(&self) -> Backing {
        self.backing
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        BLOCKS.lock().unwrap().entry(self.class).or_default().push((self.virt, self.dma, self.backing));
    }
}

// ---------------------------------------------------------------------------
// Regions: whole chunks at consecutive virtual addresses, for a device that
// takes one area of memory and addresses buffers by their offset in it (an
// AF_XDP UMEM). Each 2 MiB of a region is also a chunk of its own, listed by
// `chunks()`, so a buffer in it has a device address like any other.

/// How long a region given back waits before it is handed out again: a
/// kernel that held it (an AF_XDP socket, a zero-copy NIC queue) lets go of
/// it from a work queue after the socket is closed, not at once.
const REGION_QUARANTINE: Duration = Duration::from_secs(1);

static SPARE_REGIONS: Mutex<Vec<(Vec<Chunk>, Instant)>> = Mutex::new(Vec::new());

/// Whole 2 MiB chunks at consecutive virtual addresses, zeroed, in huge
/// pages when the kernel has enough of them. Never unmapped: when dropped it
/// is kept for the next region of the same size.
pub struct Region {
    chunks: Vec<Chunk>,
}

impl Region {
    /// A region of at least `len` bytes (whole chunks).
    pub fn new(len: usize) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a region of 0 bytes"));
        }
        let n = len.div_ceil(CHUNK_SIZE);
        let reused = {
            let mut spare = SPARE_REGIONS.lock().unwrap();
            let now = Instant::now();
            spare
                .iter()
                .position(|(c, at)| c.len() == n && now.duration_since(*at) >= REGION_QUARANTINE)
                .map(|i| spare.swap_remove(i).0)
        };
        let chunks = match reused {
            Some(c) => {
                // SAFETY: the region is ours (mapped by map_chunks, never
                // unmapped) and its last user dropped it.
                unsafe { std::ptr::write_bytes(c[0].virt as *mut u8, 0, n * CHUNK_SIZE) };
                c
            }
            None => map_chunks(n)?,
        };
        Ok(Region { chunks })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.chunks[0].virt as *mut u8
    }
    pub fn len(&self) -> usize {
        self.chunks.len() * CHUNK_SIZE
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn backing(&self) -> Backing {
        self.chunks[0].backing
    }
    /// The device address of the byte at `offset` (below `len()`).
    #[inline]
    pub fn dma(&self, offset: usize) -> u64 {
        let c = &self.chunks[offset / CHUNK_SIZE];
        c.dma + (offset % CHUNK_SIZE) as u64
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        SPARE_REGIONS.lock().unwrap().push((std::mem::take(&mut self.chunks), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_is_aligned_and_registered() {
        let c = alloc_chunk().unwrap();
        assert_eq!(c.virt % CHUNK_SIZE, 0);
        assert_eq!(c.len, CHUNK_SIZE);
        let p = (c.virt + 100) as *const u8;
        assert_eq!(virt_to_dma(p), Some(c.dma + 100));
        assert_eq!(dma_to_virt(c.dma + 100), Some(p as *mut u8));
        if c.backing == Backing::Huge {
            assert_eq!(c.dma % CHUNK_SIZE as u64, 0, "a huge page is physically aligned");
        }
    }

    #[test]
    fn dma_buffers_do_not_overlap_and_are_reused() {
        let a = DmaBuffer::new(5000).unwrap();
        let b = DmaBuffer::new(8192).unwrap();
        assert_eq!(a.as_ptr() as usize % 8192, 0);
        assert!(a.as_ptr() != b.as_ptr());
        let ap = a.as_ptr();
        // SAFETY: writing inside our own block.
        unsafe { ap.write(7) };
        drop(a);
        let c = DmaBuffer::new(6000).unwrap();
        assert_eq!(c.as_ptr(), ap, "freed block of the same class is reused");
        // SAFETY: reading inside our own block.
        assert_eq!(unsafe { c.as_ptr().read() }, 0, "blocks come zeroed");
        assert!(DmaBuffer::new(CHUNK_SIZE + 1).is_err());
        assert!(DmaBuffer::new(0).is_err());
    }
    /// A domain that records what it was asked, refusing non-physical
    /// segments when `physical_only`.
    struct TestDomain {
        physical_only: bool,
        mapped: Mutex<Vec<u64>>,
    }
    impl DmaDomain for TestDomain {
        fn name(&self) -> String {
            "test".into()
        }
        fn map_foreign(&self, seg: &ForeignSegment) -> Result<(), String> {
            if self.physical_only && !seg.physical {
                return Err("no IOMMU".into());
            }
            self.mapped.lock().unwrap().push(seg.dma);
            Ok(())
        }
        fn unmap_foreign(&self, seg: &ForeignSegment) {
            self.mapped.lock().unwrap().retain(|&d| d != seg.dma);
        }
    }

    #[test]
    fn foreign_memory_is_mapped_into_every_domain_and_unmapped_on_drop() {
        let iommu = Arc::new(TestDomain { physical_only: false, mapped: Mutex::new(vec![]) });
        let d: Arc<dyn DmaDomain> = iommu.clone();
        add_domain(&d);
        let g0 = foreign_generation();
        let va = ForeignSegment { virt: 0x7000_0000_0000, dma: 0x7000_0000_0000, len: 0x10_0000, physical: false };
        let pa = ForeignSegment { virt: 0x7000_0020_0000, dma: 0x4000_0000, len: 0x20_0000, physical: true };
        let m = ForeignMemory::register(vec![pa, va]);
        assert!(foreign_generation() > g0);
        assert!(iommu.mapped.lock().unwrap().contains(&va.dma) && iommu.mapped.lock().unwrap().contains(&pa.dma));
        assert_eq!(m.dma(va.virt + 0x100, 2048), Some(va.dma + 0x100));
        assert_eq!(m.dma(pa.virt + 0x1000, 2048), Some(pa.dma + 0x1000));
        assert_eq!(m.dma(va.virt + 0xff800, 4096), None, "runs off its segment");
        assert_eq!(m.dma(0x1000, 1), None);
        // A device without an IOMMU reaches only the physical segment: the
        // other is lent to nobody from then on.
        let raw = Arc::new(TestDomain { physical_only: true, mapped: Mutex::new(vec![]) });
        let rd: Arc<dyn DmaDomain> = raw.clone();
        add_domain(&rd);
        assert_eq!(*raw.mapped.lock().unwrap(), vec![pa.dma]);
        assert_eq!(m.dma(va.virt, 64), None);
        assert_eq!(m.dma(pa.virt, 64), Some(pa.dma));
        assert_eq!(m.reachable(), (1, 2));
        drop(m);
        assert!(!iommu.mapped.lock().unwrap().contains(&va.dma), "unmapped when the lender lets go");
        assert!(raw.mapped.lock().unwrap().is_empty());
        // A domain that is gone is not called any more.
        drop((d, iommu));
        let m2 = ForeignMemory::register(vec![va]);
        assert_eq!(m2.dma(va.virt, 64), None, "the raw domain still refuses it");
        drop((rd, raw));
        let m3 = ForeignMemory::register(vec![va]);
        assert_eq!(m3.dma(va.virt, 64), Some(va.dma), "no domain left to refuse it");
    }

    #[test]
    fn regions_are_contiguous_chunks_and_reused_after_quarantine() {
        let r = Region::new(CHUNK_SIZE + 1).unwrap();
        assert_eq!(r.len(), 2 * CHUNK_SIZE);
        assert_eq!(r.as_ptr() as usize % CHUNK_SIZE, 0);
        let second = (r.as_ptr() as usize + CHUNK_SIZE + 8) as *const u8;
        assert_eq!(virt_to_dma(second), Some(r.dma(CHUNK_SIZE + 8)), "each 2 MiB is a chunk");
        // SAFETY: writing inside our own region.
        unsafe { r.as_ptr().add(5).write(9) };
        let p = r.as_ptr();
        drop(r);
        let fresh = Region::new(2 * CHUNK_SIZE).unwrap();
        assert_ne!(fresh.as_ptr(), p, "a region just given back is not handed out again at once");
        std::thread::sleep(REGION_QUARANTINE);
        let again = Region::new(2 * CHUNK_SIZE).unwrap();
        assert_eq!(again.as_ptr(), p, "a region given back a while ago is reused");
        // SAFETY: reading inside our own region.
        assert_eq!(unsafe { again.as_ptr().add(5).read() }, 0, "regions come zeroed");
        assert!(Region::new(0).is_err());
    }
}
