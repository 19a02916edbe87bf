//! DMA THROUGH A TRANSLATION TABLE
//!
//! The model reaches host memory the way a device behind an IOMMU does:
//! only through ranges that were mapped (device address -> process memory).
//! A driver maps its DMA memory before it hands the device an address in
//! it, exactly as it would with VFIO. Every access the model makes is
//! checked against the table first: an address outside every mapping, or
//! an access that runs off the end of one, is a [`DmaFault`] the test can
//! see, and the access is not made. The model never touches memory it was
//! not given.
//!
//! Descriptor words are read and written with atomic operations, packet
//! data with plain copies ordered by the descriptor words (release on the
//! writer's side, acquire on the reader's), as real DMA is ordered by the
//! descriptor protocol.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A DMA the model refused to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// What the device was reaching ("RX descriptor", "TX buffer", ...).
    pub what: &'static str,
    pub queue: Option<u16>,
    pub write: bool,
    pub addr: u64,
    pub len: usize,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA fault: {}: {} of {} bytes at {:#x} (not mapped)",
            self.what,
            if self.write { "write" } else { "read" },
            self.len,
            self.addr
        )?;
        if let Some(q) = self.queue {
            write!(f, ", queue {q}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    iova: u64,
    len: u64,
    virt: usize,
}

/// The device's view of memory: device address ranges mapped to process
/// memory, sorted by device address, never overlapping.
#[derive(Default)]
pub struct Iommu {
    maps: RwLock<Vec<Mapping>>,
}

impl Iommu {
    /// Let the device reach `len` bytes at `virt` through device address
    /// `iova`. Mapping a range that is already mapped the same way is a
    /// no-op; overlapping a different mapping is refused.
    ///
    /// # Safety
    /// `virt .. virt + len` must stay valid for reads and writes until it is
    /// unmapped or the model is dropped: the model's engine thread reads and
    /// writes it whenever the driver's descriptors tell it to.
    pub unsafe fn map(&self, iova: u64, virt: *mut u8, len: usize) -> Result<(), String> {
        let m = Mapping { iova, len: len as u64, virt: virt as usize };
        if len == 0 || iova.checked_add(m.len).is_none() {
            return Err(format!("bad mapping of {len} bytes at {iova:#x}"));
        }
        let mut maps = self.maps.write().unwrap();
        let at = maps.partition_point(|x| x.iova < iova);
        for x in maps.iter().skip(at.saturating_sub(1)).take(2) {
            if x.iova == m.iova && x.len == m.len && x.virt == m.virt {
                return Ok(());
            }
            if x.iova < iova + m.len && iova < x.iova + x.len {
                return Err(format!(
                    "mapping {:#x}+{:#x} overlaps existing mapping {:#x}+{:#x}",
                    iova, m.len, x.iova, x.len
                ));
            }
        }
        maps.insert(at, m);
        Ok(())
    }

    /// Remove the mapping that starts at `iova`.
    pub fn unmap(&self, iova: u64) -> bool {
        let mut maps = self.maps.write().unwrap();
        match maps.iter().position(|m| m.iova == iova) {
            Some(i) => {
                maps.remove(i);
                true
            }
            None => false,
        }
    }

    /// Number of mappings (for tests and reports).
    pub fn len(&self) -> usize {
        self.maps.read().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `iova .. iova + len` lies inside one mapping.
    pub fn is_mapped(&self, iova: u64, len: usize) -> bool {
        self.translate(iova, len).is_some()
    }

    /// Process address of `iova`, when `len` bytes from it lie inside one
    /// mapping.
    pub(crate) fn translate(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let maps = self.maps.read().unwrap();
        let at = maps.partition_point(|x| x.iova <= iova);
        let m = maps.get(at.checked_sub(1)?)?;
        let end = iova.checked_add(len as u64)?;
        (end <= m.iova + m.len).then(|| (m.virt + (iova - m.iova) as usize) as *mut u8)
    }
}

/// A checked window on mapped memory, made by [`Dma::window`]: the only
/// way the model's engines touch host memory.
pub(crate) struct Window {
    ptr: *mut u8,
    len: usize,
}

impl Window {
    /// Copy bytes into the window at `off`. Panics past its end (a model bug).
    pub fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: the window lies inside a mapping, which the mapper vouched
        // is valid memory (Iommu::map); bounds were checked just above.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) }
    }
    /// Copy bytes out of the window from `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.len);
        // SAFETY: as for write.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) }
    }
    fn atomic32(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.len && (self.ptr as usize + off).is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked); the memory is mapped and
        // valid; the driver on the other side uses atomic accesses too.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off) as *mut u32) }
    }
    fn atomic64(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.len && (self.ptr as usize + off).is_multiple_of(8));
        // SAFETY: as for atomic32.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off) as *mut u64) }
    }
    pub fn load32(&self, off: usize) -> u32 {
        self.atomic32(off).load(Ordering::Acquire)
    }
    pub fn load64(&self, off: usize) -> u64 {
        self.atomic64(off).load(Ordering::Acquire)
    }
    pub fn store32(&self, off: usize, v: u32) {
        self.atomic32(off).store(v, Ordering::Release)
    }
}

/// The translation table together with the record of faults.
pub(crate) struct Dma<'a> {
    pub iommu: &'a Iommu,
    pub faults: &'a std::sync::Mutex<Vec<DmaFault>>,
    pub quiet: bool,
}

impl Dma<'_> {
    /// A window of `len` bytes at device address `addr`, or a recorded fault.
    pub fn window(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        what: &'static str,
        queue: Option<u16>,
    ) -> Result<Window, ()> {
        match self.iommu.translate(addr, len) {
            Some(ptr) => Ok(Window { ptr, len }),
            None => {
                let f = DmaFault { what, queue, write, addr, len };
                if self.quiet {
                    log::debug!("82599 model: {f}");
                } else {
                    log::error!("82599 model: {f}");
                }
                self.faults.lock().unwrap().push(f);
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_is_bounded_by_mappings() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        let io = Iommu::default();
        // SAFETY: the vectors outlive the table in this test.
        unsafe {
            io.map(0x10000, a.as_mut_ptr(), 4096).unwrap();
            io.map(0x20000, b.as_mut_ptr(), 4096).unwrap();
            io.map(0x10000, a.as_mut_ptr(), 4096).unwrap();
            assert!(io.map(0x10800, b.as_mut_ptr(), 4096).is_err(), "overlap refused");
        }
        assert_eq!(io.translate(0x10000, 4096), Some(a.as_mut_ptr()));
        assert_eq!(io.translate(0x20010, 16), Some(b.as_mut_ptr().wrapping_add(16)));
        assert!(io.translate(0x10ff0, 32).is_none(), "runs off the end");
        assert!(io.translate(0xfff0, 16).is_none(), "before the first");
        assert!(io.translate(0x30000, 1).is_none());
        assert!(io.translate(u64::MAX, 2).is_none());
        assert!(io.unmap(0x10000));
        assert!(io.translate(0x10000, 1).is_none());
    }
}
