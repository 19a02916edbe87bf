//! SPLIT VIRTQUEUE, DEVICE SIDE (first cut: API only; the data path follows).

use snabb_core::{Link, Packet};

use crate::memory::{DirtyLog, GuestMemory};

/// SET_VRING_ADDR's payload (frontend virtual addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringAddr {
    /// VHOST_VRING_F_LOG = 1: log used-ring writes at log_guest_addr.
    pub flags: u32,
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
    pub log_guest_addr: u64,
}

/// Counters of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub packets: u64,
    pub bytes: u64,
    pub no_buffer: u64,
    pub bad_descriptor: u64,
    pub too_short: u64,
    pub too_long: u64,
    pub bad_index: u64,
    pub broken: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtqError {
    #[error("queue size {0}: must be a power of two in 1..=32768")]
    BadSize(u16),
    #[error("{ring} ring at {addr:#x}: misaligned or not wholly inside guest memory")]
    BadRing { ring: &'static str, addr: u64 },
}

pub struct Virtqueue {
    size: u16,
    next_avail: u16,
    stats: QueueStats,
    broken: Option<&'static str>,
}

impl Virtqueue {
    pub fn start(size: u16, _addr: &VringAddr, base: u16, _features: u64, _mem: &GuestMemory) -> Result<Virtqueue, VirtqError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(VirtqError::BadSize(size));
        }
        Ok(Virtqueue { size, next_avail: base, stats: QueueStats::default(), broken: None })
    }
    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }
    pub fn receive_from_guest(&mut self, _mem: &GuestMemory, _log: Option<&DirtyLog>, _max: usize, _out: impl FnMut(Packet)) -> usize {
        0
    }
    pub fn transmit_to_guest(&mut self, _mem: &GuestMemory, _log: Option<&DirtyLog>, _input: &Link) -> usize {
        0
    }
    pub fn take_signal(&mut self) -> bool {
        false
    }
    pub fn suppress_kicks(&mut self) {}
}
