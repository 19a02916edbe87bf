//! VHOST-USER: the switch side of virtio-net, for QEMU guests and DPDK.

// Data path (guest memory, split virtqueues, the virtio-net header).
pub mod driver;
pub mod memory;
pub mod virtio;
pub mod virtq;

// Control path (the vhost-user protocol, the device, the app).
pub mod app;
pub mod channel;
pub mod device;
pub mod frontend;
pub mod protocol;

pub use app::{VhostUser, VhostUserArgs, register, selftests};
