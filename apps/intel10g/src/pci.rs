//! PCI DEVICES THROUGH SYSFS
//!
//! Find a device by address under /sys/bus/pci/devices, check that it is an
//! 82599, take it from its kernel driver, switch on bus mastering and map
//! BAR0 (`resource0`). This is the way without an IOMMU: descriptors then
//! carry physical addresses, which only huge-page memory can give.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bar::Mmio;

pub const INTEL: u16 = 0x8086;

/// 82599 physical functions (the ixgbe driver's list), by device id.
pub const DEVICES_82599: &[(u16, &str)] = &[
    (0x10F7, "82599 KX4"),
    (0x1514, "82599 KX4 Mezzanine"),
    (0x1517, "82599 KR"),
    (0x10F8, "82599 combined backplane"),
    (0x10F9, "82599 CX4"),
    (0x10FB, "82599 SFP+"),
    (0x152A, "82599 backplane FCoE"),
    (0x1529, "82599 SFP+ FCoE"),
    (0x1507, "82599 SFP+ EM"),
    (0x154D, "82599 SFP+ SF2 (X520)"),
    (0x154A, "82599 SFP+ SF QP"),
    (0x1558, "82599 QSFP+ SF QP"),
    (0x1557, "82599EN SFP+"),
    (0x10FC, "82599 XAUI LOM"),
    (0x151C, "82599 T3 LOM"),
];

/// 82599 ports with an SFP+ cage (their link is 10 Gb/s serial, SFI).
pub const SFP_DEVICES: &[u16] = &[0x10FB, 0x1529, 0x1507, 0x154D, 0x154A, 0x1558, 0x1557];

/// The name of an 82599 device id, if it is one.
pub fn model_name(vendor: u16, device: u16) -> Option<&'static str> {
    if vendor != INTEL {
        return None;
    }
    DEVICES_82599.iter().find(|(d, _)| *d == device).map(|(_, n)| *n)
}

/// `0000:01:00.0` for `01:00.0` or `0000:01:00.0`; an error otherwise.
pub fn canonical_address(addr: &str) -> Result<String> {
    let full = if addr.matches(':').count() == 1 { format!("0000:{addr}") } else { addr.to_string() };
    let ok = {
        let b = full.as_bytes();
        b.len() == 12
            && b[4] == b':'
            && b[7] == b':'
            && b[10] == b'.'
            && full.chars().enumerate().all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
    };
    if !ok {
        bail!("`{addr}` is not a PCI address (like 0000:01:00.0), nor `model:NAME` for a model port");
    }
    Ok(full.to_ascii_lowercase())
}

/// A PCI function in sysfs.
pub struct PciDevice {
    pub addr: String,
    pub path: PathBuf,
    pub vendor: u16,
    pub device: u16,
}

fn read_hex(path: &Path) -> Result<u16> {
    let s = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .with_context(|| format!("{}: `{}`", path.display(), s.trim()))
}

impl PciDevice {
    /// The device at `addr`, which must be an 82599.
    pub fn open(addr: &str) -> Result<PciDevice> {
        Self::open_in(Path::new("/sys/bus/pci/devices"), addr)
    }

    pub(crate) fn open_in(root: &Path, addr: &str) -> Result<PciDevice> {
        let addr = canonical_address(addr)?;
        let path = root.join(&addr);
        if !path.exists() {
            bail!("no PCI device {addr} ({} does not exist)", path.display());
        }
        let vendor = read_hex(&path.join("vendor"))?;
        let device = read_hex(&path.join("device"))?;
        if model_name(vendor, device).is_none() {
            bail!("PCI device {addr} is {vendor:04x}:{device:04x}, not an Intel 82599 (8086:10fb and its family)");
        }
        Ok(PciDevice { addr, path, vendor, device })
    }

    /// The kernel driver bound to the device, if any.
    pub fn driver(&self) -> Option<String> {
        fs::read_link(self.path.join("driver")).ok()?.file_name()?.to_str().map(str::to_string)
    }

    /// Take the device from its kernel driver (ixgbe, say).
    pub fn unbind(&self) -> Result<()> {
        if let Some(d) = self.driver() {
            log::info!("intel10g: unbinding {} from the `{d}` driver", self.addr);
            fs::write(self.path.join("driver/unbind"), &self.addr)
                .with_context(|| format!("unbinding {} from {d}", self.addr))?;
        }
        Ok(())
    }

    /// The IOMMU group, when the kernel has one for the device.
    pub fn iommu_group(&self) -> Option<u32> {
        fs::read_link(self.path.join("iommu_group")).ok()?.file_name()?.to_str()?.parse().ok()
    }

    /// Switch bus mastering (the Command register's bit 2) on or off, so
    /// the device may (or may no longer) DMA.
    pub fn set_bus_master(&self, on: bool) -> Result<()> {
        let path = self.path.join("config");
        let mut f =
            fs::OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("{}", path.display()))?;
        let mut cmd = [0u8; 2];
        f.seek(SeekFrom::Start(4))?;
        f.read_exact(&mut cmd)?;
        let mut v = u16::from_le_bytes(cmd);
        if on {
            v |= 1 << 2;
        } else {
            v &= !(1 << 2);
        }
        f.seek(SeekFrom::Start(4))?;
        f.write_all(&v.to_le_bytes())?;
        Ok(())
    }

    /// Map BAR0 (`resource0`).
    pub fn map_bar0(&self) -> Result<Mmio> {
        let path = self.path.join("resource0");
        let f =
            fs::OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("{}", path.display()))?;
        // Just after an unbind the kernel may still be letting go of the
        // BAR (mmap says EINVAL): try again for a while.
        let mut tries = 0;
        loop {
            match memmap2::MmapOptions::new().map_raw(&f) {
                Ok(m) => return Mmio::from_memmap(m, Some(f)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("mapping {}", path.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(canonical_address("01:00.0").unwrap(), "0000:01:00.0");
        assert_eq!(canonical_address("0000:AF:00.1").unwrap(), "0000:af:00.1");
        for bad in ["", "01:00", "0000:01:00:0", "zz:00.0", "model:0", "00000:01:00.0"] {
            assert!(canonical_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_and_checks_devices_in_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let mk = |addr: &str, vendor: &str, device: &str| {
            let d = root.path().join(addr);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), vendor).unwrap();
            fs::write(d.join("device"), device).unwrap();
        };
        mk("0000:01:00.0", "0x8086\n", "0x10fb\n");
        mk("0000:02:00.0", "0x8086\n", "0x1521\n");
        let d = PciDevice::open_in(root.path(), "01:00.0").unwrap();
        assert_eq!((d.vendor, d.device), (0x8086, 0x10fb));
        assert_eq!(d.driver(), None);
        let e = PciDevice::open_in(root.path(), "02:00.0").err().unwrap().to_string();
        assert!(e.contains("not an Intel 82599"), "{e}");
        let e = PciDevice::open_in(root.path(), "03:00.0").err().unwrap().to_string();
        assert!(e.contains("no PCI device"), "{e}");
    }
}
