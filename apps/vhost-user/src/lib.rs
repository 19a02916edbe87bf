//! VHOST-USER: the switch side of virtio-net, for QEMU guests and DPDK.

// Data path (guest memory, split virtqueues, the virtio-net header).
pub mod memory;
pub mod virtio;
pub mod virtq;
pub mod driver;

// Control path (the vhost-user protocol, the device, the app).
pub mod protocol;
pub mod channel;
pub mod device;
pub mod app;
pub mod frontend;

pub use app::{VhostUser, VhostUserArgs, register, selftests};
