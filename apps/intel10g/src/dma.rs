//! HOW THE DEVICE REACHES MEMORY
//!
//! Descriptors carry device addresses (`Packet::dma_addr()`,
//! `DmaBuffer::dma()`). Which addresses a device can use depends on how it
//! is attached:
//!
//!   Model     the model's translation table: every chunk is mapped into
//!             it, as an IOMMU would be programmed
//!   Vfio      the IOMMU: every chunk mapped at its device address (its
//!             virtual address, or a huge page's physical address)
//!   Physical  no IOMMU: addresses are physical, so every chunk must be a
//!             huge page (its physical address is known and contiguous)
//!
//! New chunks appear while the graph runs (the packet freelist grows); the
//! rings check `memory::generation()` once per batch, before a tail write
//! hands the device anything from a new chunk, and map what is new.
//!
//! Memory that is not snabb-rs's own (a guest's RAM, whose buffers are
//! lent as foreign packets) reaches the device through the core's registry:
//! a `DmaMapper` is a [`DmaDomain`], added with `memory::add_domain` when
//! its device opens, and every `memory::ForeignMemory` a lender registers
//! is mapped into it (the model's table, `VFIO_IOMMU_MAP_DMA`; without an
//! IOMMU only physically addressed segments are accepted), and unmapped
//! when the lender lets it go (`VFIO_IOMMU_UNMAP_DMA`). The rings ask
//! whether a foreign buffer lies in mapped memory through a [`Reach`], a
//! copy of the mapped ranges refreshed when `memory::foreign_generation()`
//! moves, so that the hot path takes no lock: a receive ring posts a lent
//! buffer only when the device reaches all of it, and a transmit ring sends
//! one in place only then (otherwise it copies it to a host buffer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use snabb_core::memory::{self, Backing, DmaDomain, ForeignSegment};
use snabb_model_82599::Model82599;

use crate::vfio::Vfio;

pub enum DmaPath {
    Model(Arc<Model82599>),
    Vfio(Arc<Vfio>),
    Physical,
}

pub struct DmaMapper {
    name: String,
    path: DmaPath,
    /// `memory::generation()` when every chunk was last mapped (u64::MAX: never).
    seen: AtomicU64,
    /// Chunks mapped so far (device address).
    mapped: Mutex<Vec<u64>>,
    /// Foreign segments mapped for their lenders (device address, length).
    foreign: Mutex<Vec<(u64, u64)>>,
}

impl DmaMapper {
    /// A mapper for the device called `name` (for log lines).
    pub fn new(path: DmaPath, name: &str) -> Result<DmaMapper> {
        let m = DmaMapper {
            name: name.to_string(),
            path,
            seen: AtomicU64::new(u64::MAX),
            mapped: Mutex::new(Vec::new()),
            foreign: Mutex::new(Vec::new()),
        };
        m.sync()?;
        Ok(m)
    }

    pub fn path(&self) -> &DmaPath {
        &self.path
    }

    /// Make sure every chunk is reachable; cheap when nothing changed.
    #[inline(always)]
    pub fn check(&self) -> Result<()> {
        if memory::generation() != self.seen.load(Ordering::Relaxed) { self.sync() } else { Ok(()) }
    }

    #[cold]
    pub fn sync(&self) -> Result<()> {
        let generation = memory::generation();
        let mut mapped = self.mapped.lock().unwrap();
        for c in memory::chunks() {
            if mapped.contains(&c.dma) {
                continue;
            }
            match &self.path {
                DmaPath::Model(m) => {
                    // SAFETY: chunks are never unmapped (memory.rs), so the
                    // range stays valid as long as the model may use it.
                    unsafe { m.iommu().map(c.dma, c.virt as *mut u8, c.len) }.map_err(anyhow::Error::msg)?;
                }
                DmaPath::Vfio(v) => v.map_dma(c.virt, c.dma, c.len)?,
                DmaPath::Physical => {
                    if c.backing != Backing::Huge {
                        bail!(
                            "packet memory at {:#x} is not a huge page: without VFIO the 82599 needs physical \
                             addresses (reserve huge pages: echo 1024 > /proc/sys/vm/nr_hugepages)",
                            c.virt
                        );
                    }
                }
            }
            mapped.push(c.dma);
        }
        self.seen.store(generation, Ordering::Relaxed);
        Ok(())
    }

    /// The foreign ranges mapped now, sorted by device address.
    fn foreign_ranges(&self, into: &mut Vec<(u64, u64)>) {
        into.clear();
        into.extend_from_slice(&self.foreign.lock().unwrap());
        into.sort_unstable();
    }
}

impl DmaDomain for DmaMapper {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn map_foreign(&self, seg: &ForeignSegment) -> std::result::Result<(), String> {
        match &self.path {
            // SAFETY: a device writes into foreign memory only through a
            // descriptor holding a foreign packet, whose lender vouched
            // (`BufferOwner::wrap`) that its memory stays valid until the
            // packet is back; the lender unregisters (and so unmaps) the
            // segment only once none of its buffers is posted.
            DmaPath::Model(m) => unsafe { m.iommu().map(seg.dma, seg.virt as *mut u8, seg.len)? },
            DmaPath::Vfio(v) => v.map_dma(seg.virt, seg.dma, seg.len).map_err(|e| format!("{e:#}"))?,
            DmaPath::Physical if !seg.physical => {
                return Err("no IOMMU: the device reaches only physically addressed (huge page) memory".into());
            }
            DmaPath::Physical => {}
        }
        self.foreign.lock().unwrap().push((seg.dma, seg.len as u64));
        Ok(())
    }

    fn unmap_foreign(&self, seg: &ForeignSegment) {
        let mut foreign = self.foreign.lock().unwrap();
        let Some(i) = foreign.iter().position(|&(d, l)| d == seg.dma && l == seg.len as u64) else {
            return; // it was never mapped here
        };
        foreign.swap_remove(i);
        drop(foreign);
        match &self.path {
            DmaPath::Model(m) => {
                m.iommu().unmap(seg.dma);
            }
            DmaPath::Vfio(v) => {
                if let Err(e) = v.unmap_dma(seg.dma, seg.len) {
                    log::error!("{}: {e:#}", self.name);
                }
            }
            DmaPath::Physical => {}
        }
    }
}

/// A ring's copy of the foreign ranges its device reaches, refreshed once
/// per batch when `memory::foreign_generation()` moves (no lock per packet).
pub struct Reach {
    generation: u64,
    ranges: Vec<(u64, u64)>,
}

impl Default for Reach {
    fn default() -> Reach {
        Reach { generation: u64::MAX, ranges: Vec::new() }
    }
}

impl Reach {
    /// Bring the copy up to date; one atomic load when nothing changed.
    #[inline(always)]
    pub fn refresh(&mut self, m: &DmaMapper) {
        let g = memory::foreign_generation();
        if g != self.generation {
            self.reload(m, g);
        }
    }

    #[cold]
    #[inline(never)]
    fn reload(&mut self, m: &DmaMapper, g: u64) {
        // The generation was read first: the ranges are at least as new.
        m.foreign_ranges(&mut self.ranges);
        self.generation = g;
    }

    /// Whether `dma .. dma + len` lies in one foreign range the device
    /// reaches (as of the last refresh).
    #[inline(always)]
    pub fn covers(&self, dma: u64, len: usize) -> bool {
        if self.ranges.is_empty() || dma == 0 {
            return false;
        }
        let i = self.ranges.partition_point(|r| r.0 <= dma);
        let Some(&(start, n)) = i.checked_sub(1).and_then(|i| self.ranges.get(i)) else { return false };
        dma.checked_add(len as u64).is_some_and(|end| end <= start + n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(virt: usize, len: usize, physical: bool) -> ForeignSegment {
        ForeignSegment { virt, dma: if physical { 0x4000_0000 } else { virt as u64 }, len, physical }
    }

    #[test]
    fn the_model_path_maps_foreign_memory_and_reach_follows_the_generation() {
        let model = Model82599::new(&format!("dma-{}", std::process::id()), Default::default());
        let m = Arc::new(DmaMapper::new(DmaPath::Model(model.clone()), "model:dma").unwrap());
        let d: Arc<dyn DmaDomain> = m.clone();
        memory::add_domain(&d);
        let mut mem = vec![0u8; 8192];
        let s = seg(mem.as_mut_ptr() as usize, 4096, false);
        let mut reach = Reach::default();
        reach.refresh(&m);
        assert!(!reach.covers(s.dma, 64));
        let fm = memory::ForeignMemory::register(vec![s]);
        assert!(model.iommu().is_mapped(s.dma, 4096), "mapped into the model's table");
        reach.refresh(&m);
        assert!(reach.covers(s.dma, 4096) && reach.covers(s.dma + 4000, 96));
        assert!(!reach.covers(s.dma + 4000, 97), "runs off the segment");
        assert!(!reach.covers(s.dma - 1, 2));
        drop(fm);
        assert!(!model.iommu().is_mapped(s.dma, 1), "unmapped when the lender lets go");
        reach.refresh(&m);
        assert!(!reach.covers(s.dma, 64));
        drop(mem);
    }

    #[test]
    fn the_physical_path_takes_only_physical_segments() {
        let m = DmaMapper {
            name: "physical".into(),
            path: DmaPath::Physical,
            seen: AtomicU64::new(0),
            mapped: Mutex::default(),
            foreign: Mutex::default(),
        };
        assert!(m.map_foreign(&seg(0x7000_0000_0000, 4096, false)).unwrap_err().contains("no IOMMU"));
        let p = seg(0x7000_0000_0000, 2 << 20, true);
        m.map_foreign(&p).unwrap();
        let mut reach = Reach::default();
        reach.reload(&m, 1);
        assert!(reach.covers(p.dma + 100, 1000));
        m.unmap_foreign(&p);
        reach.reload(&m, 2);
        assert!(!reach.covers(p.dma + 100, 1000));
    }
}
