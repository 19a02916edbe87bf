//! snabb-rs driver for the Intel 82599 10 GbE controller.
//!
//! | module     | what                                                              |
//! |------------|-------------------------------------------------------------------|
//! | `app`      | the `Intel10g` app: arguments, sharing a port between instances   |
//! | `device`   | one port: the datasheet's init sequence, modes, pools, statistics |
//! | `ring`     | receive and transmit descriptor rings: the hot path               |
//! | `regs`     | register offsets and bits, under the datasheet's names            |
//! | `bar`      | register access: real MMIO, or the software model                 |
//! | `dma`      | how the device reaches memory: model table, VFIO, physical        |
//! | `pci`      | finding, unbinding and mapping a device through sysfs             |
//! | `vfio`     | the same through VFIO (untested on hardware)                      |
//! | `selftest` | checks on the model, or on two cabled real ports                  |
//! | `bench`    | driver cycles per packet, without the model's own cost            |

pub mod app;
pub mod bar;
pub mod bench;
pub mod device;
pub mod dma;
pub mod pci;
pub mod regs;
pub mod ring;
pub mod selftest;
pub mod vfio;

pub use app::{Intel10g, Intel10gArgs, Intel10gConfig};
pub use device::{HwStats, Mode};
pub use ring::RxMode;

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<Intel10g>("Intel10g", "Intel 82599 10 GbE port: one queue pair (single, RSS queue or VMDq pool)");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("Intel10g", selftest::selftest)]
}

/// A registry with this crate's classes and the basic apps, for tests.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    snabb_apps_basic::register(&mut r);
    register(&mut r);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_selftest_passes() {
        for (name, t) in super::selftests() {
            t().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
