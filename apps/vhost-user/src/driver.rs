//! THE DRIVER (GUEST) SIDE (first cut: API only).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::memory::{GuestMemory, RegionSpec};
use crate::virtq::VringAddr;

pub struct DriverMemory {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
}

impl DriverMemory {
    pub fn new(size: usize) -> std::io::Result<DriverMemory> {
        // SAFETY: plain syscalls on a fresh fd that we own from here on.
        unsafe {
            let fd = libc::memfd_create(c"snabb-vhost-guest".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size as i64) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let p = libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, std::os::fd::AsRawFd::as_raw_fd(&fd), 0);
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(DriverMemory { fd, base: p as *mut u8, size })
        }
    }
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    pub fn region(&self) -> RegionSpec {
        RegionSpec { guest_phys_addr: 0, memory_size: self.size as u64, userspace_addr: self.base as u64, mmap_offset: 0 }
    }
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
}

impl Drop for DriverMemory {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size) };
    }
}

pub struct DriverQueue {
    base: u64,
    size: u16,
    ring_gpa: u64,
}

impl DriverQueue {
    pub fn new(mem: &DriverMemory, size: u16, ring_gpa: u64, _data_gpa: u64, _data_len: u64, _features: u64) -> DriverQueue {
        DriverQueue { base: mem.bytes() as u64, size, ring_gpa }
    }
    pub fn addr(&self) -> VringAddr {
        let desc = self.base + self.ring_gpa;
        let avail = desc + 16 * self.size as u64;
        let used = (avail + 6 + 2 * self.size as u64 + 3) & !3;
        VringAddr { flags: 0, desc_user_addr: desc, avail_user_addr: avail, used_user_addr: used, log_guest_addr: 0 }
    }
    pub fn send(&mut self, _frame: &[u8]) -> bool {
        false
    }
    pub fn post_rx(&mut self, _n: usize, _len: u32) -> usize {
        0
    }
    pub fn reap(&mut self, _out: &mut Vec<Vec<u8>>) -> usize {
        0
    }
    pub fn used_idx(&self) -> u16 {
        0
    }
}
