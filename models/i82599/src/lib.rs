//! A register-level software model of the Intel 82599 10 GbE controller.
//!
//! There is no 82599 on the machines snabb-rs is developed on, so its
//! driver is proven against this model, through the very code path real
//! hardware uses: the driver writes and reads 32-bit registers, fills
//! descriptor rings in DMA memory and bumps tails; the model's engine
//! thread reads the descriptors, moves frames between host memory and a
//! wire, and writes descriptors back, as the datasheet says the chip does.
//!
//! | module      | what                                                          |
//! |-------------|---------------------------------------------------------------|
//! | `regs`      | the register map: offsets, access types, reset values, bits   |
//! | `port`      | one port: register semantics, checks, the engine thread       |
//! | `filter`    | receive filtering: MAC, VLAN, VMDq pools, RSS                 |
//! | `csum`      | receive checksum offload: IPv4 header, TCP and UDP            |
//! | `dma`       | the translation table every DMA goes through                  |
//! | `wire`      | what a port is cabled to: another port, pcap, an interface   |
//! | `registry`  | ports by name (`model:0`), for configs                        |
//!
//! What the model checks (each failure is a [`Violation`] the test sees):
//! registers written during a reset or in a state that forbids it (ring
//! registers of an enabled queue, MTQC with the arbiter on), rings that are
//! not 128-byte aligned or not a multiple of 128 bytes long, buffer sizes
//! the chip cannot take, descriptor types it does not know, tails beyond
//! the ring, CRC stripping set differently in HLREG0 and RDRXCTL, queues
//! enabled before the EEPROM and DMA are ready, DCA_RXCTRL bit 12 left set,
//! and more (see `port.rs`). A DMA to an address nobody mapped is a
//! [`DmaFault`], and the access is not made.
//!
//! What it does not model: interrupts, flow control and DCB, RSC, header
//! split and legacy descriptors, transmit offloads (checksums, TSO, VLAN
//! insertion from context descriptors), the fragment checksum and the RSS
//! hash in the receive write-back, Flow Director, mirroring, anti-spoofing,
//! the PHY beyond link up/down, and line rate (frames move as fast as the
//! engine thread does).

pub mod csum;
pub mod dma;
pub mod filter;
pub mod port;
pub mod registry;
pub mod regs;
pub mod wire;

pub use dma::{DmaFault, Iommu};
pub use port::{Model82599, ModelConfig, ModelStats, Violation};
pub use wire::WireSpec;
