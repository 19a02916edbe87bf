//! VFIO: THE DEVICE BEHIND AN IOMMU
//!
//! With VFIO the device sees memory only through an IOMMU, through ranges
//! the driver maps. snabb-rs maps each DMA chunk at its device address
//! (IOVA = the virtual address for ordinary memory, the physical address
//! for a huge page; an overlap of the two is refused), so a packet's `dma_addr()` works on
//! every path, and maps new chunks as they appear (`memory::generation()`).
//! A lender's memory (guest RAM) is mapped the same way when it registers
//! (`VFIO_IOMMU_MAP_DMA`) and unmapped when it lets go
//! (`VFIO_IOMMU_UNMAP_DMA`): only then does a stray DMA into it fault in
//! the IOMMU rather than reach the pages.
//!
//!   container  /dev/vfio/vfio, type-1 IOMMU
//!   group      `/dev/vfio/<N>` (the device's IOMMU group), set to the container
//!   device     a file descriptor with regions: BAR0 (index 0), config (7)
//!
//! NOT TESTED ON HARDWARE: the machines snabb-rs is developed on have no
//! /dev/vfio. The ioctl numbers and structure layouts are checked by unit
//! tests against the kernel's `linux/vfio.h`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use crate::bar::Mmio;
use crate::pci::PciDevice;

// linux/vfio.h: _IO(VFIO_TYPE, VFIO_BASE + n), VFIO_TYPE = ';', VFIO_BASE = 100.
const fn vfio_io(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
pub(crate) const VFIO_GET_API_VERSION: u64 = vfio_io(0);
pub(crate) const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
pub(crate) const VFIO_SET_IOMMU: u64 = vfio_io(2);
pub(crate) const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
pub(crate) const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
pub(crate) const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
pub(crate) const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
pub(crate) const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

#[repr(C)]
#[derive(Default)]
pub(crate) struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its flexible tail (no flags:
/// no dirty bitmap).
#[repr(C)]
#[derive(Default)]
pub(crate) struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// An 82599 opened through VFIO.
pub struct Vfio {
    container: OwnedFd,
    _group: OwnedFd,
    device: OwnedFd,
    /// IOVA ranges mapped so far (start, length).
    mapped: Mutex<Vec<(u64, u64)>>,
}

fn ioctl(fd: &impl AsRawFd, req: u64, arg: libc::c_ulong, what: &str) -> Result<i32> {
    // SAFETY: each caller passes either an integer or a pointer to a live,
    // correctly laid out structure for `req`, as linux/vfio.h defines it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

impl Vfio {
    /// Whether this machine offers VFIO at all.
    pub fn available() -> bool {
        Path::new("/dev/vfio/vfio").exists()
    }

    /// Open `dev` through VFIO: it must be bound to `vfio-pci` and alone in
    /// a viable IOMMU group.
    pub fn open(dev: &PciDevice) -> Result<Vfio> {
        if !Self::available() {
            bail!("no /dev/vfio/vfio (load vfio-pci and enable the IOMMU)");
        }
        let group_no = dev.iommu_group().with_context(|| format!("{} has no IOMMU group", dev.addr))?;
        if dev.driver().as_deref() != Some("vfio-pci") {
            bail!(
                "{} is bound to {:?}, not vfio-pci (echo {} > /sys/bus/pci/drivers/vfio-pci/new_id)",
                dev.addr,
                dev.driver(),
                format_args!("{:04x} {:04x}", dev.vendor, dev.device)
            );
        }
        let open = |p: &str| -> Result<OwnedFd> {
            let f: File = OpenOptions::new().read(true).write(true).open(p).with_context(|| p.to_string())?;
            Ok(f.into())
        };
        let container = open("/dev/vfio/vfio")?;
        if ioctl(&container, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")? != VFIO_API_VERSION {
            bail!("unknown VFIO API version");
        }
        if ioctl(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU, "VFIO_CHECK_EXTENSION")? != 1 {
            bail!("the VFIO container has no type-1 IOMMU");
        }
        let group = open(&format!("/dev/vfio/{group_no}"))?;
        let mut status = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        ioctl(&group, VFIO_GROUP_GET_STATUS, &mut status as *mut _ as libc::c_ulong, "VFIO_GROUP_GET_STATUS")?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            bail!("IOMMU group {group_no} is not viable: bind every device in it to vfio-pci");
        }
        let cfd = container.as_raw_fd();
        ioctl(&group, VFIO_GROUP_SET_CONTAINER, &cfd as *const _ as libc::c_ulong, "VFIO_GROUP_SET_CONTAINER")?;
        ioctl(&container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU, "VFIO_SET_IOMMU")?;
        let name = std::ffi::CString::new(dev.addr.clone())?;
        let dfd = ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as libc::c_ulong, "VFIO_GROUP_GET_DEVICE_FD")?;
        // SAFETY: the ioctl returned a new file descriptor that we now own.
        let device = unsafe { OwnedFd::from_raw_fd(dfd) };
        Ok(Vfio { container, _group: group, device, mapped: Mutex::new(Vec::new()) })
    }

    fn region(&self, index: u32) -> Result<RegionInfo> {
        let mut info = RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index, ..Default::default() };
        ioctl(
            &self.device,
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info as *mut _ as libc::c_ulong,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(info)
    }

    /// Map BAR0.
    pub fn map_bar0(&self) -> Result<Mmio> {
        let r = self.region(VFIO_PCI_BAR0_REGION_INDEX)?;
        // SAFETY: a fresh shared mapping of the device's region.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                r.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mapping BAR0 through VFIO: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the mapping was just made, is r.size bytes and is ours.
        Ok(unsafe { Mmio::from_raw(NonNull::new(p as *mut u8).unwrap(), r.size as usize) })
    }

    /// Switch bus mastering on or off through the config region.
    pub fn set_bus_master(&self, on: bool) -> Result<()> {
        let r = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut cmd = [0u8; 2];
        // SAFETY: reading 2 bytes into a live local from our device fd.
        if unsafe { libc::pread(self.device.as_raw_fd(), cmd.as_mut_ptr() as *mut _, 2, r.offset as i64 + 4) } != 2 {
            bail!("reading the PCI command register: {}", std::io::Error::last_os_error());
        }
        let mut v = u16::from_le_bytes(cmd);
        if on {
            v |= 1 << 2;
        } else {
            v &= !(1 << 2);
        }
        let b = v.to_le_bytes();
        // SAFETY: writing 2 bytes from a live local to our device fd.
        if unsafe { libc::pwrite(self.device.as_raw_fd(), b.as_ptr() as *const _, 2, r.offset as i64 + 4) } != 2 {
            bail!("writing the PCI command register: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Let the device reach `size` bytes at `vaddr` through `iova`.
    pub fn map_dma(&self, vaddr: usize, iova: u64, size: usize) -> Result<()> {
        let mut mapped = self.mapped.lock().unwrap();
        if mapped.iter().any(|&(a, l)| a == iova && l == size as u64) {
            return Ok(());
        }
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: size as u64,
        };
        ioctl(&self.container, VFIO_IOMMU_MAP_DMA, &m as *const _ as libc::c_ulong, "VFIO_IOMMU_MAP_DMA")?;
        mapped.push((iova, size as u64));
        Ok(())
    }

    /// Take back a range [`Vfio::map_dma`] mapped: from then on a DMA into
    /// it faults in the IOMMU instead of reaching the pages.
    pub fn unmap_dma(&self, iova: u64, size: usize) -> Result<()> {
        let mut mapped = self.mapped.lock().unwrap();
        let Some(i) = mapped.iter().position(|&(a, l)| a == iova && l == size as u64) else {
            return Ok(());
        };
        let mut u = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size: size as u64 };
        ioctl(&self.container, VFIO_IOMMU_UNMAP_DMA, &mut u as *mut _ as libc::c_ulong, "VFIO_IOMMU_UNMAP_DMA")?;
        mapped.swap_remove(i);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_layouts_match_linux_vfio_h() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
        assert_eq!(std::mem::offset_of!(DmaUnmap, iova), 8);
        assert_eq!(std::mem::size_of::<GroupStatus>(), 8);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::offset_of!(DmaMap, vaddr), 8);
        assert_eq!(std::mem::offset_of!(RegionInfo, size), 16);
    }

    #[test]
    fn refused_cleanly_without_vfio() {
        if Vfio::available() {
            return;
        }
        let dev =
            PciDevice { addr: "0000:01:00.0".into(), path: "/nonexistent".into(), vendor: 0x8086, device: 0x10fb };
        let e = Vfio::open(&dev).err().unwrap().to_string();
        assert!(e.contains("/dev/vfio"), "{e}");
    }
}
