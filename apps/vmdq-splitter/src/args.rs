//! The splitter's arguments: pools and the flags of each, named after the
//! 82599 registers that hold the same setting in hardware, so that one pool
//! table can be given to the NIC or to this app.
//!
//! ```ron
//! (
//!     pools: [
//!         (name: "vm1", macs: ["52:54:00:00:00:01"], vlan: Some(100), strip_vlan: true),
//!         (name: "vm2", macs: ["52:54:00:00:00:02"], mpe: false),
//!         (name: "host", bam: true),
//!     ],
//!     default_pool: Some("host"),
//! )
//! ```

use serde::{Deserialize, Serialize};
use snabb_core::MacAddr;

use crate::filters::Filters;

/// Most pools there can be: the 82599 has 64, and the pool bitmaps are u64s.
pub const MAX_POOLS: usize = 64;

/// One pool: an output port of the splitter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolArgs {
    /// The pool's output port.
    pub name: String,
    /// Addresses the pool takes (RAL/RAH, with this pool's bit in MPSAR).
    /// Unicast addresses, or multicast groups to take whatever MPE says.
    #[serde(default)]
    pub macs: Vec<MacAddr>,
    /// The pool's VLAN (PFVLVF, with this pool's bit in PFVLVFB): frames
    /// tagged with it come here, frames tagged with another VLAN never do.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// VMOLR.AUPE: accept untagged frames. Default: true when the pool has
    /// no VLAN, false when it has one.
    #[serde(default)]
    pub aupe: Option<bool>,
    /// VMOLR.BAM: accept broadcast.
    #[serde(default = "yes")]
    pub bam: bool,
    /// VMOLR.MPE: accept every multicast frame (multicast promiscuous), as
    /// IPv6 neighbour discovery needs unless the groups are listed in `macs`.
    #[serde(default = "yes")]
    pub mpe: bool,
    /// VMOLR.ROMPE: accept multicast to the groups in the splitter's `mta`.
    #[serde(default)]
    pub rompe: bool,
    /// VMOLR.ROPE: accept unicast to the addresses in the splitter's `uta`.
    #[serde(default)]
    pub rope: bool,
    /// RXDCTL.VME: strip the pool's VLAN tag from the frames it receives.
    #[serde(default, alias = "vme")]
    pub strip_vlan: bool,
}

fn yes() -> bool {
    true
}

impl PoolArgs {
    /// A pool with the defaults: broadcast and multicast accepted, and
    /// untagged frames too unless a VLAN is set.
    pub fn new(name: &str) -> PoolArgs {
        PoolArgs {
            name: name.to_string(),
            macs: Vec::new(),
            vlan: None,
            aupe: None,
            bam: true,
            mpe: true,
            rompe: false,
            rope: false,
            strip_vlan: false,
        }
    }

    pub fn mac(mut self, mac: &str) -> PoolArgs {
        self.macs.push(mac.parse().expect("MAC address"));
        self
    }

    pub fn vlan(mut self, vid: u16) -> PoolArgs {
        self.vlan = Some(vid);
        self
    }

    /// Whether the pool accepts untagged frames (AUPE, or its default).
    pub fn accepts_untagged(&self) -> bool {
        self.aupe.unwrap_or(self.vlan.is_none())
    }
}

/// The pools, and the settings the 82599 keeps for all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmdqSplitterArgs {
    /// At most 64; each pool's `name` is its output port.
    pub pools: Vec<PoolArgs>,
    /// PFVTCTL.DEF_PL: the pool that takes unicast frames no pool matched.
    /// None (the default) is PFVTCTL.DisDefPool: they are dropped.
    #[serde(default)]
    pub default_pool: Option<String>,
    /// The Multicast Table Array: groups taken by the pools with `rompe`.
    /// The NIC keeps a hash of these, and so may also take a few groups not
    /// listed; the splitter matches them exactly.
    #[serde(default)]
    pub mta: Vec<MacAddr>,
    /// The Unicast Table Array: addresses taken by the pools with `rope`
    /// when no pool has them in `macs` (exact here, hashed in the NIC).
    #[serde(default)]
    pub uta: Vec<MacAddr>,
    /// The output that stands for the wire (the NIC's transmit side). Set,
    /// it makes the pools send as well as receive: an input named after a
    /// pool carries what that pool sends, and such frames leave on this
    /// output (and, with `vm_to_vm`, reach the other local pools).
    #[serde(default)]
    pub wire: Option<String>,
    /// PFDTXGSWC.LBE: frames a pool sends reach the other local pools that
    /// take them, as frames from the wire would; unicast to a local address
    /// stays inside, the rest also goes out on `wire`. Default: on.
    #[serde(default = "yes")]
    pub vm_to_vm: bool,
}

impl Default for VmdqSplitterArgs {
    fn default() -> Self {
        VmdqSplitterArgs {
            pools: Vec::new(),
            default_pool: None,
            mta: Vec::new(),
            uta: Vec::new(),
            wire: None,
            vm_to_vm: true,
        }
    }
}

/// Arguments as the engine parses them: checked while parsing, so that
/// `snabb-rs config check` already reports a MAC in two pools or a bad
/// VLAN id, with the line and column.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "VmdqSplitterArgs", into = "VmdqSplitterArgs")]
pub struct Checked(pub VmdqSplitterArgs);

impl TryFrom<VmdqSplitterArgs> for Checked {
    type Error = String;
    fn try_from(a: VmdqSplitterArgs) -> Result<Checked, String> {
        Filters::build(&a)?;
        Ok(Checked(a))
    }
}

impl From<Checked> for VmdqSplitterArgs {
    fn from(c: Checked) -> VmdqSplitterArgs {
        c.0
    }
}
