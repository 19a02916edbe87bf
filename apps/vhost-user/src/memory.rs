//! GUEST MEMORY
//!
//! The frontend (QEMU, DPDK, our test frontend) shares the guest's RAM as a
//! few regions, each a file descriptor plus where it sits in guest-physical
//! space (gpa) and in the frontend's own address space (uva). We map each
//! region MAP_SHARED and turn guest addresses into host pointers here, and
//! nowhere else: every address a guest gives goes through `translate`, which
//! answers only for ranges lying wholly inside one region.
//!
//! Rings and packet buffers tend to sit in one region, so the last region
//! hit is remembered and checked first; a miss falls back to a binary search
//! over the regions sorted by address.
//!
//! For zero copy, the memory is also registered with the devices that may be
//! handed a guest buffer (`device_memory`, once, on first use): a region in
//! huge pages (hugetlbfs, or a memfd made with MFD_HUGETLB) is locked and
//! given by physical address, page by page, when pagemap tells them; any
//! other region by its address in this process (IOVA = VA), which only a
//! device behind an IOMMU (VFIO, the 82599 model) reaches. The registration
//! is dropped, unmapping it from every device, before the memory itself is
//! unmapped.
//!
//! `DirtyLog` is the live-migration log (SET_LOG_BASE): a bitmap with one
//! bit per 4 KiB page of guest-physical memory, which the frontend reads and
//! clears concurrently, so bits are set with atomic ORs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use snabb_core::memory::{ForeignMemory, ForeignSegment};

/// One region of a SET_MEM_TABLE message (field names as in the vhost-user spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionSpec {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub mmap_offset: u64,
}

/// The most regions a memory may have: VHOST_USER_MAX_RAM_SLOTS of QEMU
/// (SET_MEM_TABLE itself carries at most 8; ADD_MEM_REG may add more).
pub const MAX_REGIONS: usize = 512;

/// Bytes of guest memory per dirty-log bit.
pub const LOG_PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{regions} memory regions but {fds} file descriptors")]
    FdCount { regions: usize, fds: usize },
    #[error("{0} memory regions: at most {MAX_REGIONS}")]
    TooManyRegions(usize),
    #[error("memory region {0}: empty")]
    EmptyRegion(usize),
    #[error("memory region {0}: address + size or mmap offset + size overflows")]
    Overflow(usize),
    #[error("memory regions {0} and {1} overlap")]
    Overlap(usize, usize),
    #[error("mmap of {len} bytes failed: {err}")]
    Mmap { len: u64, err: std::io::Error },
    #[error("dirty log: size {size} + offset {offset} is empty or overflows")]
    BadLog { size: u64, offset: u64 },
    #[error("file of {size} bytes is shorter than the {need} bytes to map (mmap_offset + size)")]
    ShortFile { need: u64, size: u64 },
    #[error("fstat failed: {0}")]
    Stat(std::io::Error),
}

/// One mapped region.
struct Region {
    spec: RegionSpec,
    /// Host address of guest_phys_addr (the mapping's start + mmap_offset).
    host: *mut u8,
    /// The mapping, for munmap.
    map: *mut u8,
    map_len: usize,
    /// The file's page size (st_blksize: 2 MiB or 1 GiB on hugetlbfs).
    page_size: u64,
}

/// A guest's memory: every region mapped. Dropping unmaps.
pub struct GuestMemory {
    /// Sorted by guest_phys_addr.
    regions: Vec<Region>,
    /// The same specs, for `regions()`.
    specs: Vec<RegionSpec>,
    /// Index into `regions` of the last hit (a hint: relaxed is enough).
    last: AtomicUsize,
    /// Unique per GuestMemory made in this process: a queue that translated
    /// its rings against one memory can tell when it is handed another.
    id: u64,
    /// The registration with the devices (see `device_memory`).
    devices: OnceLock<ForeignMemory>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// SAFETY: GuestMemory owns its mappings; the raw pointers are addresses of
// shared memory valid wherever the value lives, with no thread affinity.
unsafe impl Send for GuestMemory {}
// SAFETY: &GuestMemory only hands out pointers; the hint is atomic.
unsafe impl Sync for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory").field("regions", &self.specs).finish()
    }
}

/// mmap `len` bytes of `fd` from offset 0, read-write, shared.
///
/// The file must hold all `len` bytes: touching a page of a mapping beyond
/// the end of its file raises SIGBUS, which would take the whole switch
/// down on a frontend's say-so. (A frontend could still shrink the file
/// later unless it sealed it with F_SEAL_SHRINK; memfds from QEMU and our
/// frontend are not shrunk, and guarding against that would take a SIGBUS
/// handler.)
fn map_shared(fd: &OwnedFd, len: u64) -> Result<(*mut u8, usize, u64), MemoryError> {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(MemoryError::Stat(std::io::Error::last_os_error()));
    }
    let size = st.st_size.max(0) as u64;
    if size < len {
        return Err(MemoryError::ShortFile { need: len, size });
    }
    // hugetlbfs refuses lengths that are not a whole number of its pages
    // (st_blksize); the file holds whole pages, so rounding up stays in it.
    let blk = st.st_blksize as u64;
    let len = if blk.is_power_of_two() && len.next_multiple_of(blk) <= size { len.next_multiple_of(blk) } else { len };
    let ulen =
        usize::try_from(len).map_err(|_| MemoryError::Mmap { len, err: std::io::ErrorKind::InvalidInput.into() })?;
    // SAFETY: a fresh mapping chosen by the kernel; nothing else is affected.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), ulen, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(MemoryError::Mmap { len, err: std::io::Error::last_os_error() });
    }
    Ok((p as *mut u8, ulen, blk))
}

/// Offset of `addr` in [base, base+size) when [addr, addr+len) lies inside.
#[inline(always)]
fn offset_in(addr: u64, len: usize, base: u64, size: u64) -> Option<u64> {
    let off = addr.wrapping_sub(base);
    // off < size rules out addr < base (it wraps to a huge value); the second
    // test cannot overflow since off < size.
    (off < size && len as u64 <= size - off).then_some(off)
}

impl GuestMemory {
    pub fn empty() -> GuestMemory {
        GuestMemory {
            regions: Vec::new(),
            specs: Vec::new(),
            last: AtomicUsize::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            devices: OnceLock::new(),
        }
    }

    /// Map each region from its fd (the fds are closed once mapped). Rejects
    /// empty, overflowing or overlapping regions (in guest-physical or in
    /// frontend-virtual space) and more than MAX_REGIONS.
    pub fn map(regions: &[RegionSpec], fds: Vec<OwnedFd>) -> Result<GuestMemory, MemoryError> {
        if regions.len() != fds.len() {
            return Err(MemoryError::FdCount { regions: regions.len(), fds: fds.len() });
        }
        if regions.len() > MAX_REGIONS {
            return Err(MemoryError::TooManyRegions(regions.len()));
        }
        for (i, r) in regions.iter().enumerate() {
            if r.memory_size == 0 {
                return Err(MemoryError::EmptyRegion(i));
            }
            let fits = r.guest_phys_addr.checked_add(r.memory_size).is_some()
                && r.userspace_addr.checked_add(r.memory_size).is_some()
                && r.mmap_offset.checked_add(r.memory_size).is_some_and(|n| n <= isize::MAX as u64);
            if !fits {
                return Err(MemoryError::Overflow(i));
            }
        }
        for i in 0..regions.len() {
            for j in i + 1..regions.len() {
                let (a, b) = (&regions[i], &regions[j]);
                let apart = |x: u64, y: u64, n: u64, m: u64| x + n <= y || y + m <= x;
                if !apart(a.guest_phys_addr, b.guest_phys_addr, a.memory_size, b.memory_size)
                    || !apart(a.userspace_addr, b.userspace_addr, a.memory_size, b.memory_size)
                {
                    return Err(MemoryError::Overlap(i, j));
                }
            }
        }
        let mut mem = GuestMemory::empty();
        for (spec, fd) in regions.iter().zip(fds) {
            let len = spec.mmap_offset + spec.memory_size;
            // On failure `mem` drops and unmaps what was mapped so far.
            let (map, map_len, page_size) = map_shared(&fd, len)?;
            // SAFETY: mmap_offset < len, inside the mapping.
            let host = unsafe { map.add(spec.mmap_offset as usize) };
            mem.regions.push(Region { spec: *spec, host, map, map_len, page_size });
            // fd drops here: the mapping keeps the file alive.
        }
        mem.regions.sort_by_key(|r| r.spec.guest_phys_addr);
        mem.specs = mem.regions.iter().map(|r| r.spec).collect();
        Ok(mem)
    }

    /// Host pointer for [gpa, gpa+len) if it lies wholly inside one region.
    #[inline]
    pub fn translate(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        let last = self.last.load(Ordering::Relaxed);
        if let Some(r) = self.regions.get(last)
            && let Some(off) = offset_in(gpa, len, r.spec.guest_phys_addr, r.spec.memory_size)
        {
            // SAFETY: off < memory_size: inside the mapping.
            return NonNull::new(unsafe { r.host.add(off as usize) });
        }
        self.translate_slow(gpa, len)
    }

    #[cold]
    fn translate_slow(&self, gpa: u64, len: usize) -> Option<NonNull<u8>> {
        // The last region starting at or below gpa is the only candidate.
        let i = self.regions.partition_point(|r| r.spec.guest_phys_addr <= gpa).checked_sub(1)?;
        let r = &self.regions[i];
        let off = offset_in(gpa, len, r.spec.guest_phys_addr, r.spec.memory_size)?;
        self.last.store(i, Ordering::Relaxed);
        // SAFETY: off < memory_size: inside the mapping.
        NonNull::new(unsafe { r.host.add(off as usize) })
    }

    /// The first part of [gpa, gpa+len): a host pointer to gpa and how many
    /// bytes from there lie in gpa's region (at most `len`, at least 1 unless
    /// `len` is 0). A buffer that crosses into a neighbouring region is
    /// walked piece by piece this way.
    #[inline]
    pub fn translate_prefix(&self, gpa: u64, len: u64) -> Option<(NonNull<u8>, u64)> {
        let last = self.last.load(Ordering::Relaxed);
        let r = match self.regions.get(last) {
            Some(r) if gpa.wrapping_sub(r.spec.guest_phys_addr) < r.spec.memory_size => r,
            _ => {
                let i = self.regions.partition_point(|r| r.spec.guest_phys_addr <= gpa).checked_sub(1)?;
                self.last.store(i, Ordering::Relaxed);
                &self.regions[i]
            }
        };
        let off = gpa.wrapping_sub(r.spec.guest_phys_addr);
        if off >= r.spec.memory_size {
            return None;
        }
        let n = len.min(r.spec.memory_size - off);
        // SAFETY: off < memory_size: inside the mapping.
        Some((NonNull::new(unsafe { r.host.add(off as usize) })?, n))
    }

    /// Identity of this memory (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Host pointer for [uva, uva+len) of the frontend's address space (ring
    /// addresses come this way). Not on the hot path: a linear scan.
    pub fn translate_uva(&self, uva: u64, len: usize) -> Option<NonNull<u8>> {
        self.regions.iter().find_map(|r| {
            let off = offset_in(uva, len, r.spec.userspace_addr, r.spec.memory_size)?;
            // SAFETY: off < memory_size: inside the mapping.
            NonNull::new(unsafe { r.host.add(off as usize) })
        })
    }

    /// The guest-physical address of a frontend virtual address (the dirty
    /// log is indexed by gpa; SET_VRING_ADDR's log address aside, rings are
    /// known by uva).
    pub fn uva_to_gpa(&self, uva: u64, len: usize) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = offset_in(uva, len, r.spec.userspace_addr, r.spec.memory_size)?;
            Some(r.spec.guest_phys_addr + off)
        })
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.specs
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// This memory as devices see it: registered with every device's DMA
    /// domain on first use, unregistered when the memory goes. A buffer can
    /// be lent to a device when `device_memory().dma(ptr, len)` answers.
    pub fn device_memory(&self) -> &ForeignMemory {
        self.devices.get_or_init(|| ForeignMemory::register(self.segments()))
    }

    /// Whether the memory was registered with the devices.
    pub fn has_device_memory(&self) -> bool {
        self.devices.get().is_some()
    }

    /// The regions as device segments: huge-page regions by physical
    /// address (locked first, so the pages stay put) when every page has
    /// one, anything else by virtual address.
    fn segments(&self) -> Vec<ForeignSegment> {
        let mut out = Vec::new();
        for r in &self.regions {
            let (virt, len) = (r.host as usize, r.spec.memory_size as usize);
            match physical_pages(r) {
                Some(pages) => out.extend(pages),
                None => out.push(ForeignSegment { virt, dma: virt as u64, len, physical: false }),
            }
        }
        out
    }
}

/// A huge-page region's pages by physical address, physically contiguous
/// neighbours merged; None for ordinary pages, or when a page has no
/// physical address to give (no CAP_SYS_ADMIN, not resident).
fn physical_pages(r: &Region) -> Option<Vec<ForeignSegment>> {
    const HUGE: u64 = 2 << 20;
    if r.page_size < HUGE || !r.page_size.is_power_of_two() {
        return None;
    }
    let (start, end) = (r.host as usize, r.host as usize + r.spec.memory_size as usize);
    let ps = r.page_size as usize;
    let first_page = start & !(ps - 1);
    // SAFETY: locking pages of our own mapping (whole pages inside it:
    // the mapping of a hugetlbfs file is made of whole pages).
    if unsafe { libc::mlock(first_page as *const libc::c_void, end.next_multiple_of(ps) - first_page) } != 0 {
        log::debug!("vhost-user: mlock of guest memory failed: {}", std::io::Error::last_os_error());
        return None;
    }
    let mut segs: Vec<ForeignSegment> = Vec::new();
    let mut page = first_page;
    while page < end {
        let pa = snabb_core::memory::physical_address(page)?;
        let (from, to) = (page.max(start), (page + ps).min(end));
        let dma = pa + (from - page) as u64;
        match segs.last_mut() {
            Some(last) if last.virt + last.len == from && last.dma + last.len as u64 == dma => last.len += to - from,
            _ => segs.push(ForeignSegment { virt: from, dma, len: to - from, physical: true }),
        }
        page += ps;
    }
    Some(segs)
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // Devices let go of the memory before it is unmapped.
        drop(self.devices.take());
        for r in &self.regions {
            // SAFETY: our own mapping, unmapped once; nothing borrows it past
            // the GuestMemory (pointers from translate are used under &self).
            unsafe { libc::munmap(r.map as *mut libc::c_void, r.map_len) };
        }
    }
}

/// Live-migration dirty log (SET_LOG_BASE): one bit per 4 KiB page of
/// guest-physical memory, set atomically.
pub struct DirtyLog {
    map: *mut u8,
    map_len: usize,
    /// The bitmap: `bits` bytes from map + mmap_offset.
    log: *const AtomicU8,
    bytes: u64,
    /// Pages marked beyond the end of the bitmap (a guest address the log
    /// does not cover: the frontend sized it wrongly).
    beyond: AtomicU64,
}

// SAFETY: the mapping is owned; bits are set with atomics.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("bytes", &self.bytes).field("beyond", &self.beyond()).finish()
    }
}

impl DirtyLog {
    /// Map the log; `mmap_size`/`mmap_offset` as in the VhostUserLog payload
    /// (the bitmap is `mmap_size` bytes from `mmap_offset` in the fd).
    pub fn map(fd: OwnedFd, mmap_size: u64, mmap_offset: u64) -> Result<DirtyLog, MemoryError> {
        let bad = MemoryError::BadLog { size: mmap_size, offset: mmap_offset };
        let Some(len) = mmap_size.checked_add(mmap_offset).filter(|&n| mmap_size > 0 && n <= isize::MAX as u64) else {
            return Err(bad);
        };
        let (map, map_len, _) = map_shared(&fd, len)?;
        // SAFETY: mmap_offset < len, inside the mapping.
        let log = unsafe { map.add(mmap_offset as usize) } as *const AtomicU8;
        Ok(DirtyLog { map, map_len, log, bytes: mmap_size, beyond: AtomicU64::new(0) })
    }

    /// Mark [gpa, gpa+len) dirty. Pages beyond the log's size are ignored
    /// and counted.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE_SIZE;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            if byte >= self.bytes {
                self.beyond.fetch_add(last - page + 1, Ordering::Relaxed);
                return;
            }
            // All the pages of this range that fall in this byte of the bitmap.
            let lo = (page % 8) as u32;
            let hi = if last / 8 == byte { (last % 8) as u32 } else { 7 };
            let mask = ((0xffu32 >> (7 - hi)) & (0xffu32 << lo)) as u8;
            // SAFETY: byte < bytes: inside the bitmap.
            unsafe { (*self.log.add(byte as usize)).fetch_or(mask, Ordering::Relaxed) };
            page = (byte + 1).saturating_mul(8);
        }
    }

    /// Whether the page holding `gpa` is marked (for tests).
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE_SIZE;
        if page / 8 >= self.bytes {
            return false;
        }
        // SAFETY: inside the bitmap.
        let b = unsafe { (*self.log.add((page / 8) as usize)).load(Ordering::Relaxed) };
        b & (1 << (page % 8)) != 0
    }

    /// Bytes of bitmap (it covers 8 * 4 KiB of guest memory per byte).
    pub fn size(&self) -> u64 {
        self.bytes
    }

    /// Pages marked beyond the bitmap and so not logged.
    pub fn beyond(&self) -> u64 {
        self.beyond.load(Ordering::Relaxed)
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(size: u64) -> OwnedFd {
        // SAFETY: plain syscalls; the fd is fresh and owned from here on.
        unsafe {
            let fd = libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size as i64), 0);
            OwnedFd::from_raw_fd(fd)
        }
    }

    fn spec(gpa: u64, size: u64, uva: u64, off: u64) -> RegionSpec {
        RegionSpec { guest_phys_addr: gpa, memory_size: size, userspace_addr: uva, mmap_offset: off }
    }

    #[test]
    fn translate_bounds() {
        let second = memfd(0x3000);
        let probe = second.try_clone().unwrap();
        let m = GuestMemory::map(
            &[spec(0x10000, 0x4000, 0x7000_0000, 0), spec(0x100000, 0x2000, 0x8000_0000, 0x1000)],
            vec![memfd(0x4000), second],
        )
        .unwrap();
        assert!(m.translate(0x10000, 0x4000).is_some());
        assert!(m.translate(0x10000, 0x4001).is_none());
        assert!(m.translate(0xffff, 1).is_none());
        assert!(m.translate(0x13fff, 1).is_some());
        assert!(m.translate(0x14000, 0).is_none());
        assert!(m.translate(0x101000, 0x1000).is_some());
        assert!(m.translate(0x101000, 0x1001).is_none());
        assert!(m.translate(u64::MAX, 2).is_none());
        assert!(m.translate(0x10000, usize::MAX).is_none());
        // Crossing from one region into a gap.
        assert!(m.translate(0x13000, 0x2000).is_none());
        assert_eq!(m.uva_to_gpa(0x8000_0010, 4), Some(0x100010));
        // Same bytes through gpa and uva.
        let a = m.translate(0x100008, 8).unwrap();
        let b = m.translate_uva(0x8000_0008, 8).unwrap();
        assert_eq!(a, b);
        // mmap_offset respected: gpa 0x100008 is byte 0x1008 of the file.
        // SAFETY: inside the region.
        unsafe { a.as_ptr().write(0xab) };
        let mut b = [0u8; 1];
        // SAFETY: reading one byte of our memfd into our buffer.
        assert_eq!(unsafe { libc::pread(probe.as_raw_fd(), b.as_mut_ptr().cast(), 1, 0x1008) }, 1);
        assert_eq!(b[0], 0xab);
        assert_eq!(m.regions().len(), 2);
        assert_eq!(m.translate_prefix(0x13ff0, 0x100).map(|x| x.1), Some(0x10));
        assert_eq!(m.translate_prefix(0x101000, 0x100).map(|x| x.1), Some(0x100));
        assert!(m.translate_prefix(0x14000, 1).is_none());
    }

    #[test]
    fn adjacent_regions_split() {
        let m = GuestMemory::map(
            &[spec(0, 0x1000, 0x10_0000, 0), spec(0x1000, 0x1000, 0x20_0000, 0)],
            vec![memfd(0x1000), memfd(0x1000)],
        )
        .unwrap();
        assert!(m.translate(0xff0, 0x20).is_none());
        let (_, n) = m.translate_prefix(0xff0, 0x20).unwrap();
        assert_eq!(n, 0x10);
        let (_, n) = m.translate_prefix(0x1000, 0x10).unwrap();
        assert_eq!(n, 0x10);
    }

    #[test]
    fn rejects_bad_tables() {
        let e = GuestMemory::map(
            &[spec(0, 0x1000, 0, 0), spec(0x800, 0x1000, 0x10000, 0)],
            vec![memfd(0x1000), memfd(0x1000)],
        );
        assert!(matches!(e, Err(MemoryError::Overlap(0, 1))));
        let e = GuestMemory::map(
            &[spec(0, 0x1000, 0, 0), spec(0x1000, 0x1000, 0x800, 0)],
            vec![memfd(0x1000), memfd(0x1000)],
        );
        assert!(matches!(e, Err(MemoryError::Overlap(0, 1))));
        let e = GuestMemory::map(&[spec(0, 0, 0, 0)], vec![memfd(0x1000)]);
        assert!(matches!(e, Err(MemoryError::EmptyRegion(0))));
        let e = GuestMemory::map(&[spec(u64::MAX - 10, 0x1000, 0, 0)], vec![memfd(0x1000)]);
        assert!(matches!(e, Err(MemoryError::Overflow(0))));
        let e = GuestMemory::map(&[spec(0, 0x1000, 0, 0)], vec![]);
        assert!(matches!(e, Err(MemoryError::FdCount { .. })));
        // A file shorter than the region (SIGBUS if mapped and touched).
        let e = GuestMemory::map(&[spec(0, 1 << 30, 0, 0)], vec![memfd(0x1000)]);
        assert!(matches!(e, Err(MemoryError::ShortFile { .. })));
        let e = GuestMemory::map(&[spec(0, 0x1000, 0, 0x1000)], vec![memfd(0x1000)]);
        assert!(matches!(e, Err(MemoryError::ShortFile { .. })));
        assert!(GuestMemory::map(&[spec(0, 0x1000, 0, 0x1000)], vec![memfd(0x2000)]).is_ok());
        assert!(matches!(DirtyLog::map(memfd(0x1000), 0x1000, 8), Err(MemoryError::ShortFile { .. })));
    }

    #[test]
    fn dirty_log_bits() {
        let log = DirtyLog::map(memfd(0x2000), 16, 0x1000).unwrap();
        log.mark(0, 1);
        assert!(log.is_dirty(0));
        assert!(!log.is_dirty(4096));
        log.mark(4096 * 7 + 4095, 2); // pages 7 and 8: across a byte
        assert!(log.is_dirty(4096 * 7) && log.is_dirty(4096 * 8) && !log.is_dirty(4096 * 9));
        log.mark(4096 * 20, 4096 * 30); // pages 20..=49
        assert!((20..50).all(|p| log.is_dirty(p * 4096)));
        assert!(!log.is_dirty(50 * 4096) && !log.is_dirty(19 * 4096));
        log.mark(4096 * 127, 4096 * 3); // 127 logged, 128 and 129 beyond
        assert!(log.is_dirty(127 * 4096));
        assert_eq!(log.beyond(), 2);
        log.mark(u64::MAX - 5, 100);
        assert_eq!(log.beyond(), 3);
    }
}
