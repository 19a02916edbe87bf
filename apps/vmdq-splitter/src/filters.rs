//! FILTERS: the pool table compiled into what the splitter reads per packet.
//!
//! The 82599 chooses the pools of a received frame in two steps (datasheet
//! §7.10.3): the destination MAC gives a set of pools, then the VLAN narrows
//! it. With PFVTCTL.Rpl_En set, which the splitter always behaves as:
//!
//!   * broadcast: every pool with VMOLR.BAM;
//!   * multicast: the pools with the group in their MAC filters (RAH and
//!     MPSAR), or, when none has it, the pools with ROMPE if the group is in
//!     the MTA; plus every pool with MPE;
//!   * unicast: the pools with the address in their MAC filters, or, when
//!     none has it, the pools with ROPE if it is in the UTA;
//!   * then the VLAN: a frame tagged with a VLAN that no pool has fails the
//!     VLAN filter (VFTA) and is dropped; a tagged frame stays only with the
//!     pools of its VLAN (PFVLVF, PFVLVFB), an untagged one (or one tagged
//!     with VLAN 0, priority only) only with the pools with AUPE;
//!   * a unicast frame left with no pool goes to the default pool
//!     (PFVTCTL.DEF_PL), or is dropped (PFVTCTL.DisDefPool); a broadcast or
//!     multicast frame left with no pool is dropped.
//!
//! All of this is worked out here, once per config, for every address some
//! pool names: the result goes in a [`MacTable`] keyed by (MAC, VLAN), so
//! that most frames cost one lookup. Frames whose key is not in the table
//! (unlisted multicast, unknown unicast, a foreign VLAN) take [`Filters::miss`],
//! which applies the same rules with a few ANDs of pool bitmaps.

use std::collections::{BTreeMap, BTreeSet};

use snabb_core::MacAddr;

use crate::args::{MAX_POOLS, VmdqSplitterArgs};
use crate::table::{MacTable, Route, key};

/// Why the splitter dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Shorter than an Ethernet header (or than a tagged one).
    Runt,
    /// Tagged with a VLAN no pool has (the VFTA drops it).
    Vlan,
    /// Unicast that no pool takes, and there is no default pool.
    UnknownUnicast,
    /// Broadcast or multicast that no pool takes.
    NoPool,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Reason::Runt, Reason::Vlan, Reason::UnknownUnicast, Reason::NoPool];

    /// The counter of frames dropped for this reason.
    pub fn counter(self) -> &'static str {
        match self {
            Reason::Runt => "drop/runt",
            Reason::Vlan => "drop/vlan",
            Reason::UnknownUnicast => "drop/unknown_unicast",
            Reason::NoPool => "drop/no_pool",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Runt => "runt",
            Reason::Vlan => "vlan",
            Reason::UnknownUnicast => "unknown_unicast",
            Reason::NoPool => "no_pool",
        }
    }
}

/// What happens to a frame the table does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver(Route),
    /// Unicast that no pool took, to the default pool.
    Default(Route),
    Drop(Reason),
}

pub struct Filters {
    /// (MAC, VLAN) -> route, for every address a pool names and broadcast.
    pub table: MacTable,
    /// MAC -> the pools with ROPE, for UTA addresses no pool names.
    uta: MacTable,
    /// Pools by VLAN id: [0] the pools with AUPE, [v] the pools of VLAN v.
    vlan_pools: Box<[u64]>,
    mpe: u64,
    pub(crate) strip: u64,
    default_pool: u64,
    /// Each pool's VLAN (0: none), by pool number: the tag a pool that
    /// strips it gets back on what it sends (PFVMVIR).
    pub(crate) pool_vlans: Vec<u16>,
    /// The wire's output, when the pools also send.
    pub wire: Option<String>,
    pub(crate) vm_to_vm: bool,
    /// Pool names, by pool number.
    pub names: Vec<String>,
    /// What an 82599 could not hold (more MAC or VLAN filters than it has):
    /// the software splitter takes it, but the same config would not fit
    /// the NIC.
    pub warnings: Vec<String>,
}

/// RAL/RAH pairs of the 82599; number 0 is usually the port's own address.
const HW_MAC_FILTERS: usize = 128;
/// PFVLVF entries of the 82599.
const HW_VLAN_FILTERS: usize = 64;

impl Filters {
    /// Check the pool table and compile it. Errors name the pool at fault.
    pub fn build(a: &VmdqSplitterArgs) -> Result<Filters, String> {
        let n = a.pools.len();
        if n == 0 {
            return Err("no pools: give at least one".into());
        }
        if n > MAX_POOLS {
            return Err(format!("{n} pools: at most {MAX_POOLS} (as the 82599's VMDq)"));
        }
        let bit = |i: usize| 1u64 << i;
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut vlan_pools = vec![0u64; 4096].into_boxed_slice();
        let (mut bam, mut mpe, mut rompe, mut rope, mut strip) = (0u64, 0u64, 0u64, 0u64, 0u64);
        // Unicast address -> (pool, VLAN classes it takes: 0 = untagged).
        let mut unicast: BTreeMap<MacAddr, Vec<(usize, Vec<u16>)>> = BTreeMap::new();
        // Every address a pool names -> the pools naming it (MPSAR).
        let mut exact: BTreeMap<MacAddr, u64> = BTreeMap::new();
        for (i, p) in a.pools.iter().enumerate() {
            let name = p.name.as_str();
            if !snabb_core::config::valid_name(name) {
                return Err(format!("pool name `{name}`: letters, digits, `_`, `-` only (it is an output port)"));
            }
            if names.insert(name, i).is_some() {
                return Err(format!("pool `{name}` defined twice"));
            }
            if let Some(v) = p.vlan.filter(|v| !(1..=4094).contains(v)) {
                return Err(format!(
                    "pool `{name}`: VLAN {v}: must be 1 to 4094 (0 marks priority-tagged frames, 4095 is reserved)"
                ));
            }
            if p.strip_vlan && p.vlan.is_none() {
                return Err(format!("pool `{name}`: strip_vlan needs the pool's vlan"));
            }
            let mut classes = Vec::new();
            if let Some(v) = p.vlan {
                vlan_pools[v as usize] |= bit(i);
                classes.push(v);
            }
            if p.accepts_untagged() {
                vlan_pools[0] |= bit(i);
                classes.push(0);
            }
            if classes.is_empty() && a.default_pool.as_deref() != Some(name) {
                log::warn!("pool `{name}` has no VLAN and does not accept untagged frames (aupe): it gets nothing");
            }
            let flag = |on: bool| if on { bit(i) } else { 0 };
            bam |= flag(p.bam);
            mpe |= flag(p.mpe);
            rompe |= flag(p.rompe);
            rope |= flag(p.rope);
            strip |= flag(p.strip_vlan);
            let mut seen = BTreeSet::new();
            for &m in &p.macs {
                if m.is_broadcast() {
                    return Err(format!(
                        "pool `{name}`: {m} cannot be a pool address: broadcast goes to the pools with bam"
                    ));
                }
                if !seen.insert(m) {
                    return Err(format!("pool `{name}`: MAC {m} listed twice"));
                }
                *exact.entry(m).or_default() |= bit(i);
                if m.is_unicast() {
                    unicast.entry(m).or_default().push((i, classes.clone()));
                }
            }
        }
        // A unicast address belongs to one pool per VLAN (a multicast group
        // may have many: it is replicated).
        for (m, owners) in &unicast {
            for (x, (i, ci)) in owners.iter().enumerate() {
                for (j, cj) in &owners[x + 1..] {
                    if let Some(c) = ci.iter().find(|c| cj.contains(c)) {
                        let on = if *c == 0 { "untagged frames".to_string() } else { format!("VLAN {c}") };
                        return Err(format!(
                            "MAC {m} is in pools `{}` and `{}`, which both take {on}: a unicast address belongs to one pool per VLAN",
                            a.pools[*i].name, a.pools[*j].name
                        ));
                    }
                }
            }
        }
        let mut mta = BTreeSet::new();
        for &m in &a.mta {
            if !m.is_multicast() || m.is_broadcast() {
                return Err(format!("mta: {m} is not a multicast group address"));
            }
            mta.insert(m);
        }
        let mut uta = BTreeSet::new();
        for &m in &a.uta {
            if !m.is_unicast() {
                return Err(format!("uta: {m} is not a unicast address"));
            }
            uta.insert(m);
        }
        if let Some(w) = &a.wire {
            if !snabb_core::config::valid_name(w) {
                return Err(format!("wire `{w}`: letters, digits, `_`, `-` only (it is an output port)"));
            }
            if names.contains_key(w.as_str()) {
                return Err(format!("wire `{w}` is also a pool's name: one output cannot be both"));
            }
        }
        let default_pool = match &a.default_pool {
            None => 0,
            Some(d) => match names.get(d.as_str()) {
                Some(&i) => bit(i),
                None => return Err(format!("default_pool `{d}` is not one of the pools")),
            },
        };

        let vids: Vec<u16> =
            std::iter::once(0).chain((1..4096u16).filter(|&v| vlan_pools[v as usize] != 0 && v != 0)).collect();
        let route = |pools: u64, vid: u16| Route { pools, strip: if vid != 0 { strip & pools } else { 0 } };
        let mut table = MacTable::with_capacity(exact.len() + mta.len() + vids.len());
        for &vid in &vids {
            table.insert(key(&MacAddr::BROADCAST.0, vid), route(bam & vlan_pools[vid as usize], vid));
        }
        let groups = exact.keys().filter(|m| m.is_multicast()).chain(mta.iter()).collect::<BTreeSet<_>>();
        for m in groups {
            let named = exact.get(m).copied().unwrap_or(0);
            let pools = if named != 0 {
                named
            } else if mta.contains(m) {
                rompe
            } else {
                0
            };
            for &vid in &vids {
                let vlan = vlan_pools[vid as usize];
                let got = (pools | mpe) & vlan;
                // Only what differs from the rule for unlisted groups.
                if got != mpe & vlan {
                    table.insert(key(&m.0, vid), route(got, vid));
                }
            }
        }
        for (m, &pools) in exact.iter().filter(|(m, _)| m.is_unicast()) {
            for &vid in &vids {
                let got = pools & vlan_pools[vid as usize];
                if got != 0 {
                    table.insert(key(&m.0, vid), route(got, vid));
                }
            }
        }
        let mut uta_table = MacTable::with_capacity(uta.len());
        for m in uta.iter().filter(|m| !exact.contains_key(m)) {
            uta_table.insert(key(&m.0, 0), Route { pools: rope, strip: 0 });
        }

        let mut warnings = Vec::new();
        let macs = exact.len() + 1;
        if macs > HW_MAC_FILTERS {
            warnings.push(format!("{} MAC filters (with the port's own): an 82599 has {HW_MAC_FILTERS}", macs));
        }
        if vids.len() - 1 > HW_VLAN_FILTERS {
            warnings.push(format!("{} VLANs: an 82599 has {HW_VLAN_FILTERS} VLAN pool filters", vids.len() - 1));
        }
        Ok(Filters {
            table,
            uta: uta_table,
            vlan_pools,
            mpe,
            strip,
            default_pool,
            pool_vlans: a.pools.iter().map(|p| p.vlan.unwrap_or(0)).collect(),
            wire: a.wire.clone(),
            vm_to_vm: a.vm_to_vm,
            names: a.pools.iter().map(|p| p.name.clone()).collect(),
            warnings,
        })
    }

    /// The rules for a frame whose (MAC, VLAN) key is not in the table.
    /// `mac` is the key's MAC part; `vid` is 0 for untagged frames.
    #[inline]
    pub fn miss(&self, mac: u64, vid: u16) -> Verdict {
        let vlan = self.vlan_pools[vid as usize & 0xfff];
        if vid != 0 && vlan == 0 {
            return Verdict::Drop(Reason::Vlan);
        }
        let strip = if vid != 0 { self.strip & vlan } else { 0 };
        // The group bit is the first byte's lowest bit: the key's bit 0.
        if mac & 1 != 0 {
            let pools = self.mpe & vlan;
            return if pools == 0 {
                Verdict::Drop(Reason::NoPool)
            } else {
                Verdict::Deliver(Route { pools, strip: strip & pools })
            };
        }
        if let Some(r) = if self.uta.is_empty() { None } else { self.uta.get(mac) } {
            let pools = r.pools & vlan;
            if pools != 0 {
                return Verdict::Deliver(Route { pools, strip: strip & pools });
            }
        }
        if self.default_pool != 0 {
            Verdict::Default(Route { pools: self.default_pool, strip: strip & self.default_pool })
        } else {
            Verdict::Drop(Reason::UnknownUnicast)
        }
    }

    /// Where a frame goes, by its destination and VLAN (0: untagged): the
    /// table, then the rules. For tests and tools; the splitter inlines this.
    pub fn classify(&self, dst: &MacAddr, vid: u16) -> Verdict {
        let k = key(&dst.0, vid);
        match self.table.get(k) {
            Some(r) if r.pools == 0 => Verdict::Drop(Reason::NoPool),
            Some(r) => Verdict::Deliver(r),
            None => self.miss(k & crate::table::MAC_BITS, vid),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
