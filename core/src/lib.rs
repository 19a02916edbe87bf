//! snabb-rs core: packets, links, apps, the engine, RON configs, counters in
//! shared memory, timers and DMA memory.
//!
//! See `docs/ARCHITECTURE.md` for how the pieces fit together.

pub mod app;
pub mod checksum;
pub mod config;
pub mod copy;
pub mod engine;
pub mod ethernet;
pub mod handoff;
pub mod interlink;
pub mod link;
pub mod memory;
pub mod packet;
pub mod pcap;
pub mod selftest;
pub mod shm;
pub mod timer;
pub mod worker;

pub use app::{App, AppClass, AppContext, Io, PortSpec, Ports, Registry};
pub use config::{Args, Config, ConfigError, LinkSettings, LinkSpec};
pub use engine::{Engine, Limit, ShmOptions};
pub use ethernet::MacAddr;
pub use link::{CopyMode, Link, LinkCounters};
pub use packet::{BufferOwner, ForeignBuffer, Packet};

/// How many packets an app should bring in per breath: a tenth of a link,
/// as in Snabb, so that one breath can never overfill a default link.
pub const PULL_NPACKETS: usize = link::DEFAULT_SIZE / 10;
