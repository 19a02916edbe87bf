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
//! Memory that is not snabb-rs's own (a guest's buffers, lent as foreign
//! packets) is mapped by its lender with [`DmaMapper::map_foreign`]; the
//! transmit ring sends a foreign packet in place only when its range is
//! mapped, and copies it to a host buffer otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use snabb_core::memory::{self, Backing};
use snabb_model_82599::Model82599;

use crate::vfio::Vfio;

pub enum DmaPath {
    Model(Arc<Model82599>),
    Vfio(Arc<Vfio>),
    Physical,
}

pub struct DmaMapper {
    path: DmaPath,
    /// `memory::generation()` when every chunk was last mapped (u64::MAX: never).
    seen: AtomicU64,
    /// Chunks mapped so far (device address).
    mapped: Mutex<Vec<u64>>,
    /// Foreign ranges mapped by their lenders (device address, length).
    foreign: Mutex<Vec<(u64, u64)>>,
    /// Non-zero while a foreign range is mapped (a fast "none" check).
    nforeign: AtomicU64,
}

impl DmaMapper {
    pub fn new(path: DmaPath) -> Result<DmaMapper> {
        let m = DmaMapper {
            path,
            seen: AtomicU64::new(u64::MAX),
            mapped: Mutex::new(Vec::new()),
            foreign: Mutex::new(Vec::new()),
            nforeign: AtomicU64::new(0),
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

    /// Let the device reach a lender's memory (guest memory, say) at device
    /// address `dma`.
    ///
    /// # Safety
    /// `virt .. virt + len` must stay valid for device reads and writes for
    /// as long as the device lives (it may still DMA into ranges that
    /// software has forgotten).
    pub unsafe fn map_foreign(&self, virt: *mut u8, dma: u64, len: usize) -> Result<()> {
        match &self.path {
            // SAFETY: the caller's contract is the model's.
            DmaPath::Model(m) => unsafe { m.iommu().map(dma, virt, len) }.map_err(anyhow::Error::msg)?,
            DmaPath::Vfio(v) => v.map_dma(virt as usize, dma, len)?,
            DmaPath::Physical => {}
        }
        self.foreign.lock().unwrap().push((dma, len as u64));
        self.nforeign.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether `dma .. dma + len` lies in memory a lender mapped.
    pub fn covers_foreign(&self, dma: u64, len: usize) -> bool {
        if self.nforeign.load(Ordering::Acquire) == 0 || dma == 0 {
            return false;
        }
        let end = dma.saturating_add(len as u64);
        self.foreign.lock().unwrap().iter().any(|&(a, l)| dma >= a && end <= a + l)
    }
}
