//! The software VMDq splitter: what the Intel 82599 does in hardware when
//! it sorts received frames into pools by MAC address and VLAN, done by an
//! app, so that the same pool table can be served by the NIC or by software.
//!
//! | class          | ports                               | does                                   |
//! |----------------|-------------------------------------|----------------------------------------|
//! | `VmdqSplitter` | in: any; out: one per pool, `wire`  | frames to the pools that take them     |
//!
//! Each pool has MAC addresses, an optional VLAN, and the 82599's per-pool
//! flags (VMOLR.AUPE, BAM, MPE, ROMPE, ROPE; RXDCTL.VME to strip the tag).
//! Unicast goes to the pool that has the address on the frame's VLAN;
//! broadcast and multicast go to every pool that takes them; unknown unicast
//! goes to the default pool or is dropped. The rules, with their register
//! names, are in [`filters`]; the arguments in [`args`].
//!
//! With `wire: Some("...")` the pools send too, as on the NIC: an input
//! named after a pool carries what that pool sends; it gets the pool's tag
//! back if the pool strips it, reaches the other local pools that take it
//! (`vm_to_vm`, PFDTXGSWC.LBE; never its sender, never the default pool),
//! and leaves on the `wire` output unless it is unicast to a local pool's
//! address. Inputs with other names carry frames from the wire.
//!
//! Counters (under `apps/<name>/` in shared memory):
//!
//! | counter                    | what                                              |
//! |----------------------------|---------------------------------------------------|
//! | `rxpackets`, `rxbytes`     | frames taken from the input                       |
//! | `pool/<pool>/packets`      | frames handed to the pool's link (copies included)|
//! | `pool/<pool>/bytes`        | their bytes, after any tag was stripped           |
//! | `default`                  | unicast frames no pool took, to the default pool  |
//! | `replicas`                 | copies made for broadcast and multicast           |
//! | `drop/runt`                | shorter than an Ethernet (or 802.1Q) header       |
//! | `drop/vlan`                | tagged with a VLAN no pool has                    |
//! | `drop/unknown_unicast`     | unicast no pool took, and no default pool         |
//! | `drop/no_pool`             | broadcast or multicast no pool took               |
//! | `drop/unlinked`            | for a pool (or the wire) whose output has no link |
//! | `pool/<pool>/sent_packets`, `sent_bytes` | frames the pool sent (with `wire`)  |
//! | `wire/packets`, `wire/bytes` | frames out on the wire (with `wire`)            |
//! | `looped`                   | frames a pool sent that reached another pool      |
//!
//! A frame dropped because a pool's link is full counts in that link's
//! `txdrop`, as everywhere in snabb-rs.

pub mod args;
pub mod filters;
pub mod splitter;
pub mod table;

pub use args::{MAX_POOLS, PoolArgs, VmdqSplitterArgs};
pub use filters::{Filters, Reason, Verdict};
pub use splitter::VmdqSplitter;

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<VmdqSplitter>("VmdqSplitter", "frames to pools by MAC and VLAN, as the 82599's VMDq does");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("VmdqSplitter", selftest)]
}

/// Three pools behind one splitter, fed by generated traffic: unicast to
/// each, broadcast replicated, a foreign VLAN dropped, unknown unicast to
/// the default pool, and every packet accounted for.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    use snabb_core::{Args, Config, Engine, Limit, packet};

    let before = packet::stats();
    {
        let mut r = Registry::new();
        snabb_apps_basic::register(&mut r);
        register(&mut r);
        let args = VmdqSplitterArgs {
            pools: vec![
                PoolArgs::new("a").mac("02:00:00:00:00:0a").vlan(10),
                PoolArgs { strip_vlan: true, ..PoolArgs::new("b").mac("02:00:00:00:00:0b").vlan(10) },
                PoolArgs::new("c").mac("02:00:00:00:00:0c"),
            ],
            default_pool: Some("c".into()),
            ..Default::default()
        };
        let src = |dst: &str, vlan: Option<u16>| {
            let v = vlan.map_or(String::new(), |v| format!(", vlan: {v}"));
            Args::from_ron(&format!("(count: 100, size: 64, dst: \"{dst}\"{v})"))
        };
        let mut c = Config::new();
        c.app("vmdq", "VmdqSplitter", &args)
            .app_args("to_a", "Source", src("02:00:00:00:00:0a", Some(10))?)
            .app_args("to_b", "Source", src("02:00:00:00:00:0b", Some(10))?)
            .app_args("to_c", "Source", src("02:00:00:00:00:0c", None)?)
            .app_args("bcast10", "Source", src("ff:ff:ff:ff:ff:ff", Some(10))?)
            .app_args("vlan99", "Source", src("02:00:00:00:00:0a", Some(99))?)
            .app_args("unknown", "Source", src("02:00:00:00:00:ee", None)?)
            .app("sink", "Sink", &());
        for s in ["to_a", "to_b", "to_c", "bcast10", "vlan99", "unknown"] {
            c.link(&format!("{s}.output -> vmdq.{s}"));
        }
        for p in ["a", "b", "c"] {
            c.link(&format!("vmdq.{p} -> sink.{p}"));
        }
        let mut e = Engine::new(r);
        e.configure(&c)?;
        e.run(Limit::Breaths(10));
        let tx = |p: &str| e.link_counters(&format!("vmdq.{p} -> sink.{p}")).unwrap();
        // a: its unicast and the VLAN 10 broadcast; b: the same, stripped.
        ensure!(tx("a").txpackets == 200 && tx("a").txbytes == 200 * 64, "pool a: {:?}", tx("a"));
        ensure!(tx("b").txpackets == 200 && tx("b").txbytes == 200 * 60, "pool b: {:?}", tx("b"));
        // c: its unicast and the unknown unicast (default pool); no VLAN 10.
        ensure!(tx("c").txpackets == 200, "pool c: {:?}", tx("c"));
        let n = e.app_counters("vmdq");
        ensure!(n["rxpackets"] == 600, "{n:?}");
        ensure!(n["drop/vlan"] == 100 && n["default"] == 100 && n["replicas"] == 100, "{n:?}");
        ensure!(n["pool/b/bytes"] == 200 * 60, "{n:?}");
        // Bad pool tables are refused, naming the fault.
        let mut bad = args.clone();
        bad.pools[2].macs.push("02:00:00:00:00:0a".parse().unwrap());
        bad.pools[0].aupe = Some(true);
        let mut c = Config::new();
        c.app("vmdq", "VmdqSplitter", &bad);
        let err = e.registry().check(&c).unwrap_err().to_string();
        ensure!(err.contains("02:00:00:00:00:0a is in pools `a` and `c`"), "{err}");
    }
    let after = packet::stats();
    ensure!(after.in_use == before.in_use, "{} packets leaked", after.in_use - before.in_use);
    Ok(())
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
