//! VIRTIO-USER: the frontend side of virtio-net over vhost-user, as an app.
//!
//! A `VirtioUser` app is what QEMU is to a vhost-user switch port: it owns
//! the "guest" memory, sets the device up over the socket, and drives the
//! rings as a virtio-net driver would, so that snabb-rs can play VMs for a
//! vhost-user switch (its own `VhostUser`, DPDK's vhost PMD, OVS-DPDK),
//! chain switches, and drive benchmarks without QEMU. It reuses the
//! vhost-user crate's protocol, channel, memory and layout code.

pub mod app;
pub mod queue;
pub mod setup;

pub use app::{Checked, VirtioUser, VirtioUserArgs};

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<VirtioUser>(
        "VirtioUser",
        "a virtio-net driver on a vhost-user socket (plays a VM): `input` is sent, `output` received",
    );
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("VirtioUser", selftest::selftest)]
}

pub mod selftest;
