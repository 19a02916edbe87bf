//! REGISTER ACCESS
//!
//! The driver reaches the chip through one small trait: read or write a
//! 32-bit register at a byte offset in BAR0. Two implementations:
//!
//!   Mmio      a mapping of a real BAR0 (sysfs `resource0` or a VFIO
//!             region): volatile loads and stores
//!   ModelBar  the software 82599 (`snabb-model-82599`)
//!
//! Everything above is generic over the trait and monomorphised, so the
//! hot path's tail write is a single volatile store on hardware.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use snabb_model_82599::Model82599;

/// 32-bit register access by BAR0 offset.
pub trait Registers: Send + Sync + 'static {
    fn read(&self, reg: u32) -> u32;
    fn write(&self, reg: u32, value: u32);

    fn set(&self, reg: u32, bits: u32) {
        self.write(reg, self.read(reg) | bits)
    }
    fn clear(&self, reg: u32, bits: u32) {
        self.write(reg, self.read(reg) & !bits)
    }
    /// Wait until `reg & mask == want`, polling, for at most `timeout`.
    /// The error names `what` and the register's last value.
    fn wait(&self, reg: u32, mask: u32, want: u32, timeout: Duration, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let v = self.read(reg);
            if v & mask == want {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{what}: not done after {} ms (register {reg:#07x} = {v:#010x})", timeout.as_millis());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// What keeps a BAR mapping alive.
enum Backing {
    /// A mapping of a sysfs `resource0`, and the file, locked so that no
    /// other process initialises the port under us.
    Memmap(#[allow(dead_code)] memmap2::MmapRaw, #[allow(dead_code)] Option<std::fs::File>),
    /// A mapping made with mmap(2) (VFIO): unmapped on drop.
    Raw,
}

/// A mapped BAR0 of real hardware.
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the mapping is device memory that any thread may access; the
// registers themselves arbitrate concurrent accesses, as they do between
// the cores of any multi-queue driver.
unsafe impl Send for Mmio {}
// SAFETY: as above; Mmio has no interior state besides the mapping.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// A BAR mapped through memmap2 (sysfs `resource0`), with the file
    /// it came from (kept open: it holds the lock).
    pub fn from_memmap(map: memmap2::MmapRaw, file: Option<std::fs::File>) -> Result<Mmio> {
        let len = map.len();
        let Some(base) = NonNull::new(map.as_mut_ptr()) else { bail!("empty BAR mapping") };
        if len < 0x20000 {
            bail!("BAR0 is {len} bytes; an 82599's is 128 KiB");
        }
        Ok(Mmio { base, len, backing: Backing::Memmap(map, file) })
    }

    /// A BAR mapped with mmap(2), unmapped when dropped.
    ///
    /// # Safety
    /// `base .. base + len` must be a mapping of device memory that nothing
    /// else unmaps.
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> Mmio {
        Mmio { base, len, backing: Backing::Raw }
    }

    #[inline(always)]
    fn check(&self, reg: u32) {
        // A constant offset in practice: the branch is free; it keeps a
        // wrong offset from touching memory outside the BAR.
        if reg as usize + 4 > self.len || !reg.is_multiple_of(4) {
            out_of_bar(reg, self.len);
        }
    }
}

#[cold]
#[inline(never)]
fn out_of_bar(reg: u32, len: usize) -> ! {
    panic!("register offset {reg:#x} outside the {len}-byte BAR")
}

impl Registers for Mmio {
    #[inline(always)]
    fn read(&self, reg: u32) -> u32 {
        self.check(reg);
        // SAFETY: in bounds and aligned (checked); device memory mapped for
        // the life of self.
        unsafe { self.base.as_ptr().add(reg as usize).cast::<u32>().read_volatile() }
    }
    #[inline(always)]
    fn write(&self, reg: u32, value: u32) {
        self.check(reg);
        // SAFETY: as for read.
        unsafe { self.base.as_ptr().add(reg as usize).cast::<u32>().write_volatile(value) }
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        if let Backing::Raw = self.backing {
            // SAFETY: from_raw's contract: our mapping, unmapped only here.
            unsafe { libc::munmap(self.base.as_ptr() as *mut _, self.len) };
        }
    }
}

/// The software 82599 as a BAR.
pub struct ModelBar(pub Arc<Model82599>);

impl Registers for ModelBar {
    #[inline]
    fn read(&self, reg: u32) -> u32 {
        self.0.read(reg)
    }
    #[inline]
    fn write(&self, reg: u32, value: u32) {
        self.0.write(reg, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_reads_and_writes_and_refuses_out_of_bounds() {
        let map = memmap2::MmapOptions::new().len(0x20000).map_anon().unwrap();
        let raw = memmap2::MmapRaw::from(map);
        let bar = Mmio::from_memmap(raw, None).unwrap();
        bar.write(0x1018, 7);
        bar.set(0x1018, 0x100);
        assert_eq!(bar.read(0x1018), 0x107);
        bar.clear(0x1018, 1);
        assert_eq!(bar.read(0x1018), 0x106);
        assert!(bar.wait(0x1018, 0x100, 0x100, Duration::from_millis(1), "x").is_ok());
        let e = bar.wait(0x1018, 1, 1, Duration::from_millis(1), "queue start").unwrap_err().to_string();
        assert!(e.contains("queue start") && e.contains("0x00000106"), "{e}");
        let r = std::panic::catch_unwind(|| bar.read(0x20000));
        assert!(r.is_err());
        let small = memmap2::MmapRaw::from(memmap2::MmapOptions::new().len(4096).map_anon().unwrap());
        assert!(Mmio::from_memmap(small, None).is_err());
    }
}
