//! Every rule of the splitter, one test each, and a property test against a
//! plain model of the 82599's pool selection written from the rules alone.

use std::collections::BTreeMap;
use std::rc::Rc;

use proptest::prelude::*;
use snabb_apps_vmdq_splitter::{PoolArgs, Reason, VmdqSplitter, VmdqSplitterArgs, args::Checked};
use snabb_core::app::Port;
use snabb_core::{App, AppClass, AppContext, Io, Link, MacAddr, Packet, Ports, packet};

/// The splitter with a link on its input and on every pool's output.
struct Rig {
    app: VmdqSplitter,
    input: Rc<Link>,
    outs: BTreeMap<String, Rc<Link>>,
    io: Io,
}

fn ctx() -> AppContext<'static> {
    AppContext { name: "vmdq", class: "VmdqSplitter" }
}

fn rig(args: VmdqSplitterArgs) -> Rig {
    rig_linked(args, &[])
}

/// As `rig`, leaving the pools in `unlinked` without an output link.
fn rig_linked(args: VmdqSplitterArgs, unlinked: &[&str]) -> Rig {
    let names: Vec<String> = args.pools.iter().map(|p| p.name.clone()).collect();
    let app = VmdqSplitter::new(Checked::try_from(args).unwrap(), &ctx()).unwrap();
    let input = Rc::new(Link::new(4096));
    let outs: BTreeMap<String, Rc<Link>> =
        names.into_iter().filter(|n| !unlinked.contains(&n.as_str())).map(|n| (n, Rc::new(Link::new(4096)))).collect();
    let io = Io {
        input: Ports::new(vec![Port { name: "input".into(), link: input.clone() }]),
        output: Ports::new(outs.iter().map(|(n, l)| Port { name: n.clone(), link: l.clone() }).collect()),
    };
    let mut r = Rig { app, input, outs, io };
    r.app.link(&r.io);
    r
}

impl Rig {
    /// Push `frames` through; what each pool received, in order.
    fn run(&mut self, frames: &[Vec<u8>]) -> BTreeMap<String, Vec<Vec<u8>>> {
        for f in frames {
            self.input.transmit(Packet::from_bytes(f));
        }
        self.app.push(&self.io);
        assert!(self.input.is_empty());
        self.outs.iter().map(|(n, l)| (n.clone(), l.drain().map(|p| p.data().to_vec()).collect())).collect()
    }

    /// How many frames each pool received.
    fn counts(&mut self, frames: &[Vec<u8>]) -> BTreeMap<String, usize> {
        self.run(frames).into_iter().map(|(n, v)| (n, v.len())).collect()
    }

    fn counter(&self, name: &str) -> u64 {
        let mut v = None;
        self.app.counters(&mut |k, x| {
            if k == name {
                v = Some(x)
            }
        });
        v.unwrap_or_else(|| panic!("no counter {name}"))
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// An IPv4-typed frame of `len` bytes to `dst`, tagged when `vlan` is set,
/// with a recognisable payload.
fn frame(dst: &str, vlan: Option<u16>, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&mac(dst).0);
    f.extend_from_slice(&SRC);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(0x6000 | v).to_be_bytes()); // priority 3
    }
    f.extend_from_slice(&[0x08, 0x00]);
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f.truncate(len);
    f
}

/// `f` without its 802.1Q tag.
fn untag(f: &[u8]) -> Vec<u8> {
    [&f[..12], &f[16..]].concat()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

fn two_vms() -> VmdqSplitterArgs {
    VmdqSplitterArgs {
        pools: vec![
            PoolArgs::new("vm1").mac("52:54:00:00:00:01"),
            PoolArgs::new("vm2").mac("52:54:00:00:00:02").mac("52:54:00:00:00:22"),
            PoolArgs::new("host"),
        ],
        ..Default::default()
    }
}

#[test]
fn unicast_goes_to_the_pool_with_the_address() {
    let mut r = rig(two_vms());
    let f1 = frame("52:54:00:00:00:01", None, 64);
    let f2 = frame("52:54:00:00:00:22", None, 1514);
    let got = r.run(&[f1.clone(), f2.clone(), f1.clone()]);
    assert_eq!(got["vm1"], vec![f1.clone(), f1]);
    assert_eq!(got["vm2"], vec![f2]);
    assert!(got["host"].is_empty());
    assert_eq!(r.counter("pool/vm1/packets"), 2);
    assert_eq!(r.counter("pool/vm2/bytes"), 1514);
    assert_eq!(r.counter("rxpackets"), 3);
    assert_eq!(r.counter("rxbytes"), 64 * 2 + 1514);
    assert_eq!(r.counter("replicas"), 0);
}

#[test]
fn unicast_moves_the_buffer_itself() {
    let mut r = rig(two_vms());
    let p = Packet::from_bytes(&frame("52:54:00:00:00:01", None, 64));
    let addr = p.data().as_ptr();
    r.input.transmit(p);
    r.app.push(&r.io);
    assert_eq!(r.outs["vm1"].receive().unwrap().data().as_ptr(), addr, "no copy for one pool");
}

#[test]
fn unknown_unicast_is_dropped_without_a_default_pool() {
    let mut r = rig(two_vms());
    let got = r.counts(&[frame("52:54:00:00:00:77", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 0), ("vm2", 0), ("host", 0)]));
    assert_eq!(r.counter("drop/unknown_unicast"), 1);
    assert_eq!(r.counter("default"), 0);
}

#[test]
fn unknown_unicast_goes_to_the_default_pool() {
    let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..two_vms() });
    let f = frame("52:54:00:00:00:77", None, 60);
    let got = r.run(&[f.clone(), frame("52:54:00:00:00:01", None, 60)]);
    assert_eq!(got["host"], vec![f]);
    assert_eq!(got["vm1"].len(), 1, "known unicast still goes to its pool");
    assert_eq!(r.counter("default"), 1);
    assert_eq!(r.counter("drop/unknown_unicast"), 0);
}

#[test]
fn broadcast_is_replicated_to_every_pool_with_bam() {
    let mut args = two_vms();
    args.pools[1].bam = false;
    args.pools.push(PoolArgs::new("vm3").mac("52:54:00:00:00:03"));
    let mut r = rig(args);
    let f = frame("ff:ff:ff:ff:ff:ff", None, 60);
    let before = packet::stats();
    let got = r.run(&[f.clone(), f.clone()]);
    assert_eq!(got["vm1"], vec![f.clone(), f.clone()]);
    assert_eq!(got["host"], vec![f.clone(), f.clone()]);
    assert_eq!(got["vm3"], vec![f.clone(), f]);
    assert!(got["vm2"].is_empty(), "vm2 has bam: false");
    // Three pools: two copies per frame, the third gets the frame itself.
    assert_eq!(r.counter("replicas"), 4);
    assert_eq!(packet::stats().allocs - before.allocs, 2 + 4, "the two frames, and copies only for the extra pools");
}

#[test]
fn broadcast_that_no_pool_takes_is_dropped() {
    let mut args = two_vms();
    for p in &mut args.pools {
        p.bam = false;
    }
    let mut r = rig(args);
    assert_eq!(r.counts(&[frame("ff:ff:ff:ff:ff:ff", None, 60)]).values().sum::<usize>(), 0);
    assert_eq!(r.counter("drop/no_pool"), 1);
}

#[test]
fn multicast_goes_to_pools_naming_the_group_and_to_mpe_pools() {
    let mut args = two_vms();
    for p in &mut args.pools {
        p.mpe = false;
    }
    args.pools[0].macs.push(mac("01:00:5e:00:00:fb"));
    args.pools[1].macs.push(mac("01:00:5e:00:00:fb"));
    args.pools[2].mpe = true;
    let mut r = rig(args);
    let mdns = frame("01:00:5e:00:00:fb", None, 80);
    let other = frame("33:33:00:00:00:01", None, 80);
    let got = r.counts(&[mdns, other]);
    // mDNS: vm1 and vm2 name it, host has MPE. The other group: host only.
    assert_eq!(got, counts(&[("vm1", 1), ("vm2", 1), ("host", 2)]));
    assert_eq!(r.counter("replicas"), 2);
}

#[test]
fn multicast_that_no_pool_takes_is_dropped_even_with_a_default_pool() {
    let mut args = VmdqSplitterArgs { default_pool: Some("host".into()), ..two_vms() };
    for p in &mut args.pools {
        p.mpe = false;
    }
    let mut r = rig(args);
    assert_eq!(r.counts(&[frame("33:33:00:00:00:01", None, 60)]).values().sum::<usize>(), 0);
    assert_eq!(r.counter("drop/no_pool"), 1);
    assert_eq!(r.counter("default"), 0);
}

#[test]
fn mta_groups_go_to_rompe_pools_unless_a_pool_names_them() {
    let mut args = two_vms();
    for p in &mut args.pools {
        p.mpe = false;
    }
    args.pools[0].rompe = true;
    args.pools[1].rompe = true;
    args.pools[2].macs.push(mac("01:00:5e:00:00:02"));
    args.mta = vec![mac("01:00:5e:00:00:01"), mac("01:00:5e:00:00:02")];
    let mut r = rig(args);
    let got = r.counts(&[frame("01:00:5e:00:00:01", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 1), ("vm2", 1), ("host", 0)]));
    // A group some pool names (RAH exact match) does not look at the MTA.
    let got = r.counts(&[frame("01:00:5e:00:00:02", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 0), ("vm2", 0), ("host", 1)]));
    assert_eq!(r.counts(&[frame("01:00:5e:00:00:03", None, 60)]).values().sum::<usize>(), 0);
}

#[test]
fn uta_addresses_go_to_rope_pools() {
    let mut args = VmdqSplitterArgs { default_pool: Some("host".into()), ..two_vms() };
    args.pools[0].rope = true;
    args.uta = vec![mac("52:54:00:00:00:55"), mac("52:54:00:00:00:02")];
    let mut r = rig(args);
    let got = r.counts(&[frame("52:54:00:00:00:55", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 1), ("vm2", 0), ("host", 0)]));
    // vm2 names ...:02 itself: the UTA is not consulted.
    let got = r.counts(&[frame("52:54:00:00:00:02", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 0), ("vm2", 1), ("host", 0)]));
    let got = r.counts(&[frame("52:54:00:00:00:56", None, 60)]);
    assert_eq!(got, counts(&[("vm1", 0), ("vm2", 0), ("host", 1)]));
}

/// Tenants on VLANs 100 and 200 and an untagged host: nothing crosses.
fn tenants() -> VmdqSplitterArgs {
    VmdqSplitterArgs {
        pools: vec![
            PoolArgs::new("a1").mac("52:54:00:00:01:01").vlan(100),
            PoolArgs::new("a2").mac("52:54:00:00:01:02").vlan(100),
            // The same address as a1, on the other VLAN: another tenant.
            PoolArgs::new("b1").mac("52:54:00:00:01:01").vlan(200),
            PoolArgs::new("host").mac("52:54:00:00:00:01"),
        ],
        ..Default::default()
    }
}

#[test]
fn vlan_isolation_for_unicast() {
    let mut r = rig(tenants());
    let got = r.counts(&[frame("52:54:00:00:01:01", Some(100), 64)]);
    assert_eq!(got, counts(&[("a1", 1), ("a2", 0), ("b1", 0), ("host", 0)]));
    let got = r.counts(&[frame("52:54:00:00:01:01", Some(200), 64)]);
    assert_eq!(got, counts(&[("a1", 0), ("a2", 0), ("b1", 1), ("host", 0)]));
    // a2's address on VLAN 200, or untagged: not a2's.
    let got = r.counts(&[frame("52:54:00:00:01:02", Some(200), 64), frame("52:54:00:00:01:02", None, 64)]);
    assert_eq!(got.values().sum::<usize>(), 0);
    assert_eq!(r.counter("drop/unknown_unicast"), 2);
    // The host's address tagged: the host pool takes untagged frames only.
    assert_eq!(r.counts(&[frame("52:54:00:00:00:01", Some(100), 64)]).values().sum::<usize>(), 0);
}

#[test]
fn vlan_isolation_for_broadcast_and_multicast() {
    let mut r = rig(tenants());
    let got = r.counts(&[frame("ff:ff:ff:ff:ff:ff", Some(100), 64), frame("33:33:ff:00:00:01", Some(100), 86)]);
    assert_eq!(got, counts(&[("a1", 2), ("a2", 2), ("b1", 0), ("host", 0)]));
    let got = r.counts(&[frame("ff:ff:ff:ff:ff:ff", Some(200), 64)]);
    assert_eq!(got, counts(&[("a1", 0), ("a2", 0), ("b1", 1), ("host", 0)]));
    let got = r.counts(&[frame("ff:ff:ff:ff:ff:ff", None, 64)]);
    assert_eq!(got, counts(&[("a1", 0), ("a2", 0), ("b1", 0), ("host", 1)]));
    assert_eq!(r.counter("replicas"), 2);
}

#[test]
fn a_vlan_no_pool_has_is_dropped_even_with_a_default_pool() {
    let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..tenants() });
    let got = r.counts(&[
        frame("52:54:00:00:01:01", Some(300), 64),
        frame("ff:ff:ff:ff:ff:ff", Some(300), 64),
        frame("52:54:00:00:00:01", Some(4095), 64),
    ]);
    assert_eq!(got.values().sum::<usize>(), 0);
    assert_eq!(r.counter("drop/vlan"), 3);
    assert_eq!(r.counter("default"), 0);
}

#[test]
fn the_default_pool_takes_unknown_unicast_of_any_vlan_that_passes_the_filter() {
    let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..tenants() });
    let tagged = frame("52:54:00:00:09:09", Some(100), 64);
    let got = r.run(&[tagged.clone(), frame("52:54:00:00:09:09", None, 64)]);
    // As the 82599: the frame keeps its tag, so the host can tell its VLAN.
    assert_eq!(got["host"], vec![tagged, frame("52:54:00:00:09:09", None, 64)]);
    assert_eq!(r.counter("default"), 2);
}

/// The two cases of 82599 datasheet 7.10.3 with a default pool: pools are
/// chosen by MAC address first, then narrowed by VLAN (the specification
/// update's clarification on selecting a pool by VLAN), and a frame left
/// with no pool goes to the default pool (PFVTCTL.DEF_PL) unless
/// DisDefPool; a VLAN the VFTA does not pass drops it before any pool.
#[test]
fn the_default_pool_takes_what_mac_then_vlan_filtering_leaves() {
    let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..tenants() });
    // 1. a2's address, on VLAN 200 (b1's, not a2's): MAC gives {a2}, the
    //    VLAN takes a2 away, nothing is left: the default pool, tag and all.
    let wrong_vlan = frame("52:54:00:00:01:02", Some(200), 64);
    // 2. an address no pool lists, tagged with a VLAN the filter passes: the
    //    default pool.
    let unknown = frame("52:54:00:00:09:09", Some(200), 64);
    // ...but tagged with a VLAN no pool has: dropped by the VLAN filter.
    let foreign = frame("52:54:00:00:01:02", Some(300), 64);
    let got = r.run(&[wrong_vlan.clone(), unknown.clone(), foreign]);
    assert_eq!(got["host"], vec![wrong_vlan, unknown]);
    assert!(got["a2"].is_empty() && got["b1"].is_empty() && got["a1"].is_empty());
    assert_eq!((r.counter("default"), r.counter("drop/vlan")), (2, 1));
    // Without a default pool (DisDefPool) both are dropped as unknown unicast.
    let mut r = rig(tenants());
    let got = r.counts(&[frame("52:54:00:00:01:02", Some(200), 64), frame("52:54:00:00:09:09", Some(200), 64)]);
    assert_eq!(got.values().sum::<usize>(), 0);
    assert_eq!(r.counter("drop/unknown_unicast"), 2);
}

#[test]
fn untagged_frames_reach_pools_with_aupe_only() {
    let mut args = tenants();
    args.pools[1].aupe = Some(true); // a2: VLAN 100 and untagged
    args.pools[3].aupe = Some(false); // host: nothing untagged
    let mut r = rig(args);
    let got = r.counts(&[frame("ff:ff:ff:ff:ff:ff", None, 64), frame("52:54:00:00:01:02", None, 64)]);
    assert_eq!(got, counts(&[("a1", 0), ("a2", 2), ("b1", 0), ("host", 0)]));
    assert_eq!(r.counts(&[frame("52:54:00:00:00:01", None, 64)]).values().sum::<usize>(), 0);
}

#[test]
fn priority_tagged_frames_count_as_untagged() {
    let mut r = rig(tenants());
    let f = frame("52:54:00:00:00:01", Some(0), 64);
    let got = r.run(std::slice::from_ref(&f));
    assert_eq!(got["host"], vec![f], "VLAN 0 is priority only; the tag stays");
}

#[test]
fn the_tag_is_stripped_for_pools_that_ask() {
    let mut args = tenants();
    args.pools[0].strip_vlan = true; // a1 strips, a2 does not
    let mut r = rig(args);
    let u = frame("52:54:00:00:01:01", Some(100), 64);
    let b = frame("ff:ff:ff:ff:ff:ff", Some(100), 128);
    let got = r.run(&[u.clone(), b.clone()]);
    assert_eq!(got["a1"], vec![untag(&u), untag(&b)]);
    assert_eq!(got["a2"], vec![b.clone()], "a2's copy keeps its tag");
    assert_eq!(r.counter("pool/a1/bytes"), 60 + 124);
    assert_eq!(r.counter("pool/a2/bytes"), 128);
}

#[test]
fn the_tag_is_stripped_from_foreign_and_fixed_start_buffers_too() {
    use snabb_core::{BufferOwner, ForeignBuffer};
    use std::ptr::NonNull;
    let mut args = tenants();
    args.pools[0].strip_vlan = true;
    let mut r = rig(args);
    let f = frame("52:54:00:00:01:01", Some(100), 64);
    let mut buf = vec![0u8; 2048];
    buf[..64].copy_from_slice(&f);
    let owner = BufferOwner::register("guest", None);
    for fixed_start in [false, true] {
        // SAFETY: `buf` outlives the packet, which is consumed below.
        let p = unsafe {
            owner.wrap(ForeignBuffer {
                base: NonNull::new(buf.as_mut_ptr()).unwrap(),
                cap: 2048,
                dma: 0,
                start: 0,
                len: 64,
                token: 1,
                fixed_start,
            })
        };
        r.input.transmit(p);
        r.app.push(&r.io);
        let q = r.outs["a1"].receive().unwrap();
        assert_eq!(q.data(), &untag(&f)[..]);
        assert!(q.is_foreign());
        drop(q);
        buf[..64].copy_from_slice(&f);
    }
}

#[test]
fn runts_are_dropped_and_counted() {
    let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..two_vms() });
    let tagged = frame("52:54:00:00:00:01", Some(5), 64);
    let got = r.counts(&[vec![], vec![0xff; 13], tagged[..17].to_vec(), frame("52:54:00:00:00:01", None, 14)]);
    assert_eq!(got["vm1"], 1, "a bare 14-byte header is a frame");
    assert_eq!(r.counter("drop/runt"), 3);
}

#[test]
fn frames_for_an_unlinked_pool_are_counted_and_never_copied() {
    let mut r = rig_linked(two_vms(), &["vm2"]);
    let before = packet::stats();
    let got = r.counts(&[frame("52:54:00:00:00:02", None, 64), frame("ff:ff:ff:ff:ff:ff", None, 64)]);
    assert_eq!(got, counts(&[("vm1", 1), ("host", 1)]));
    assert_eq!(r.counter("drop/unlinked"), 2);
    assert_eq!(r.counter("replicas"), 1, "one copy for two linked pools");
    assert_eq!(packet::stats().allocs - before.allocs, 2 + 1, "the two frames and one copy");
}

#[test]
fn every_packet_is_delivered_or_freed() {
    let before = packet::stats();
    {
        let mut r = rig(VmdqSplitterArgs { default_pool: Some("host".into()), ..tenants() });
        let frames: Vec<Vec<u8>> = (0..3000)
            .map(|i| match i % 6 {
                0 => frame("ff:ff:ff:ff:ff:ff", Some(100), 64),
                1 => frame("52:54:00:00:01:01", Some(200), 64),
                2 => frame("52:54:00:00:01:01", Some(300), 64),
                3 => vec![1; 10],
                4 => frame("33:33:00:00:00:01", None, 64),
                _ => frame("52:54:00:00:77:77", None, 64),
            })
            .collect();
        let got = r.counts(&frames);
        assert_eq!(got, counts(&[("a1", 500), ("a2", 500), ("b1", 500), ("host", 1000)]));
        assert_eq!(r.counter("drop/vlan") + r.counter("drop/runt"), 1000);
    }
    assert_eq!(packet::stats().in_use, before.in_use);
}

#[test]
fn a_full_pool_link_drops_and_counts_there() {
    let mut r = rig(two_vms());
    let frames: Vec<Vec<u8>> = (0..5000).map(|_| frame("52:54:00:00:00:01", None, 60)).collect();
    for chunk in frames.chunks(2500) {
        for f in chunk {
            r.input.transmit(Packet::from_bytes(f));
        }
        r.app.push(&r.io);
    }
    let c = r.outs["vm1"].counters();
    assert_eq!((c.txpackets, c.txdrop), (4096, 904));
    assert_eq!(r.counter("pool/vm1/packets"), 5000, "the splitter chose vm1 for all of them");
}

#[test]
fn reconfiguring_keeps_the_counters_of_pools_that_stay() {
    let mut r = rig(two_vms());
    r.counts(&[frame("52:54:00:00:00:01", None, 60)]);
    let mut args = two_vms();
    args.pools[0].macs = vec![mac("52:54:00:00:00:11")];
    args.pools.remove(1);
    r.app.reconfigure(Checked::try_from(args).unwrap(), &ctx()).unwrap();
    let got = r.counts(&[frame("52:54:00:00:00:11", None, 60), frame("52:54:00:00:00:01", None, 60)]);
    assert_eq!(got["vm1"], 1);
    assert_eq!(r.counter("pool/vm1/packets"), 2);
    assert_eq!(r.counter("drop/unknown_unicast"), 1);
    // vm2 is gone: its output port is not a pool any more.
    assert_eq!(got["vm2"], 0);
}

fn config_error(args: VmdqSplitterArgs) -> String {
    let text = ron::to_string(&args).unwrap();
    let e = ron::from_str::<Checked>(&text).unwrap_err().to_string();
    // The app refuses it the same way.
    assert!(VmdqSplitter::new(Checked(args), &ctx()).is_err());
    e
}

#[test]
fn configuration_errors_are_clear() {
    let mut a = two_vms();
    a.pools[2].macs.push(mac("52:54:00:00:00:01"));
    assert!(
        config_error(a).contains("MAC 52:54:00:00:00:01 is in pools `vm1` and `host`, which both take untagged frames")
    );

    let mut a = tenants();
    a.pools[2].vlan = Some(100);
    assert!(config_error(a).contains("is in pools `a1` and `b1`, which both take VLAN 100"));

    for v in [0u16, 4095, 5000] {
        let mut a = two_vms();
        a.pools[0].vlan = Some(v);
        assert!(config_error(a).contains(&format!("pool `vm1`: VLAN {v}: must be 1 to 4094")));
    }

    let a =
        VmdqSplitterArgs { pools: (0..65).map(|i| PoolArgs::new(&format!("p{i}"))).collect(), ..Default::default() };
    assert!(config_error(a).contains("65 pools: at most 64"));
    assert!(config_error(VmdqSplitterArgs::default()).contains("no pools"));

    let mut a = two_vms();
    a.pools[1].name = "vm1".into();
    assert!(config_error(a).contains("pool `vm1` defined twice"));
    let mut a = two_vms();
    a.pools[1].name = "vm 2".into();
    assert!(config_error(a).contains("pool name `vm 2`"));
    let a = VmdqSplitterArgs { default_pool: Some("nobody".into()), ..two_vms() };
    assert!(config_error(a).contains("default_pool `nobody` is not one of the pools"));
    let mut a = two_vms();
    a.pools[0].strip_vlan = true;
    assert!(config_error(a).contains("strip_vlan needs the pool's vlan"));
    let mut a = two_vms();
    a.pools[0].macs.push(MacAddr::BROADCAST);
    assert!(config_error(a).contains("broadcast goes to the pools with bam"));
    let mut a = two_vms();
    a.pools[0].macs.push(mac("52:54:00:00:00:01"));
    assert!(config_error(a).contains("listed twice"));
    let a = VmdqSplitterArgs { mta: vec![mac("52:54:00:00:00:01")], ..two_vms() };
    assert!(config_error(a).contains("not a multicast group"));
    let a = VmdqSplitterArgs { uta: vec![mac("01:00:5e:00:00:01")], ..two_vms() };
    assert!(config_error(a).contains("not a unicast address"));

    // Multicast groups may be in several pools: they are replicated.
    let mut a = two_vms();
    a.pools[0].macs.push(mac("01:00:5e:00:00:01"));
    a.pools[1].macs.push(mac("01:00:5e:00:00:01"));
    assert!(Checked::try_from(a).is_ok());
    // Unknown fields are refused, and `vme` is the datasheet's name for strip_vlan.
    assert!(
        ron::from_str::<Checked>("(pools: [(name: \"x\", colour: 1)])").unwrap_err().to_string().contains("colour")
    );
    let c: Checked = ron::from_str("(pools: [(name: \"x\", vlan: Some(7), vme: true)])").unwrap();
    assert!(c.0.pools[0].strip_vlan);
}

// ---------------------------------------------------------------------------
// The property test: the splitter against a model of the rules.

/// What the 82599 does with a frame to `dst` tagged `tag` (None: untagged),
/// written straight from the rules, pool by pool: the pools in order, each
/// with whether its copy loses the tag; or why the frame is dropped.
fn model(a: &VmdqSplitterArgs, dst: MacAddr, tag: Option<u16>) -> Result<Vec<(usize, bool)>, Reason> {
    let vid = tag.unwrap_or(0);
    if vid != 0 && !a.pools.iter().any(|p| p.vlan == Some(vid)) {
        return Err(Reason::Vlan);
    }
    let in_vlan = |p: &PoolArgs| {
        if vid != 0 { p.vlan == Some(vid) } else { p.accepts_untagged() }
    };
    let named: Vec<bool> = a.pools.iter().map(|p| p.macs.contains(&dst)).collect();
    let any_named = named.contains(&true);
    let by_mac = |i: usize, p: &PoolArgs| {
        if dst.is_broadcast() {
            p.bam
        } else if dst.is_multicast() {
            p.mpe || if any_named { named[i] } else { p.rompe && a.mta.contains(&dst) }
        } else if any_named {
            named[i]
        } else {
            p.rope && a.uta.contains(&dst)
        }
    };
    let strip = |p: &PoolArgs| p.strip_vlan && vid != 0 && p.vlan == Some(vid);
    let chosen: Vec<(usize, bool)> =
        a.pools.iter().enumerate().filter(|(i, p)| by_mac(*i, p) && in_vlan(p)).map(|(i, p)| (i, strip(p))).collect();
    if !chosen.is_empty() {
        return Ok(chosen);
    }
    if dst.is_multicast() {
        return Err(Reason::NoPool);
    }
    match &a.default_pool {
        Some(d) => {
            let i = a.pools.iter().position(|p| &p.name == d).unwrap();
            Ok(vec![(i, strip(&a.pools[i]))])
        }
        None => Err(Reason::UnknownUnicast),
    }
}

const UNIVERSE: [&str; 8] = [
    "52:54:00:00:00:01",
    "52:54:00:00:00:02",
    "52:54:00:00:00:03",
    "02:00:00:00:00:01",
    "01:00:5e:00:00:01",
    "01:00:5e:00:00:02",
    "33:33:00:00:00:01",
    "ff:ff:ff:ff:ff:ff",
];

fn arb_pool() -> impl Strategy<Value = PoolArgs> {
    (
        proptest::collection::vec(0..7usize, 0..3),
        prop_oneof![Just(None), Just(Some(10u16)), Just(Some(20u16))],
        proptest::option::of(any::<bool>()),
        any::<[bool; 5]>(),
    )
        .prop_map(|(macs, vlan, aupe, [bam, mpe, rompe, rope, strip])| {
            let mut macs: Vec<MacAddr> = macs.into_iter().map(|i| mac(UNIVERSE[i])).collect();
            macs.sort();
            macs.dedup();
            PoolArgs {
                name: String::new(),
                macs,
                vlan,
                aupe,
                bam,
                mpe,
                rompe,
                rope,
                strip_vlan: strip && vlan.is_some(),
            }
        })
}

fn arb_args() -> impl Strategy<Value = VmdqSplitterArgs> {
    (
        proptest::collection::vec(arb_pool(), 1..7),
        proptest::option::of(0..7usize),
        proptest::collection::vec(4..7usize, 0..3),
        proptest::collection::vec(0..4usize, 0..3),
    )
        .prop_map(|(mut pools, default, mta, uta)| {
            for (i, p) in pools.iter_mut().enumerate() {
                p.name = format!("p{i}");
            }
            // A unicast address may be in two pools only on different VLANs.
            let classes = |p: &PoolArgs| {
                let mut c: Vec<u16> = p.vlan.into_iter().collect();
                if p.accepts_untagged() {
                    c.push(0);
                }
                c
            };
            for i in 1..pools.len() {
                let (earlier, rest) = pools.split_at_mut(i);
                let p = &mut rest[0];
                let mine = classes(p);
                p.macs.retain(|m| {
                    m.is_multicast()
                        || !earlier.iter().any(|q| q.macs.contains(m) && classes(q).iter().any(|c| mine.contains(c)))
                });
            }
            let default_pool = default.filter(|&d| d < pools.len()).map(|d| format!("p{d}"));
            VmdqSplitterArgs {
                pools,
                default_pool,
                mta: mta.into_iter().map(|i| mac(UNIVERSE[i])).collect(),
                uta: uta.into_iter().map(|i| mac(UNIVERSE[i])).collect(),
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_splitter_agrees_with_the_model(
        args in arb_args(),
        frames in proptest::collection::vec((0..9usize, prop_oneof![Just(None), Just(Some(0u16)), Just(Some(10u16)), Just(Some(20u16)), Just(Some(30u16))]), 1..40),
    ) {
        // Tables the splitter refuses (a unicast address twice on a VLAN) are
        // checked by configuration_errors_are_clear.
        prop_assume!(Checked::try_from(args.clone()).is_ok());
        let before = packet::stats();
        let mut r = rig(args.clone());
        let frames: Vec<(MacAddr, Option<u16>, Vec<u8>)> = frames.iter().enumerate().map(|(n, &(d, tag))| {
            let dst = if d < UNIVERSE.len() { UNIVERSE[d] } else { "52:54:00:00:00:99" };
            let mut f = frame(dst, tag, 64 + n);
            f[20] = n as u8; // each frame distinct
            (mac(dst), tag, f)
        }).collect();
        let mut want: BTreeMap<String, Vec<Vec<u8>>> = args.pools.iter().map(|p| (p.name.clone(), vec![])).collect();
        let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
        for (dst, tag, f) in &frames {
            match model(&args, *dst, *tag) {
                Ok(pools) => for (i, strip) in pools {
                    want.get_mut(&args.pools[i].name).unwrap().push(if strip { untag(f) } else { f.clone() });
                },
                Err(why) => *drops.entry(why.name()).or_default() += 1,
            }
        }
        let got = r.run(&frames.iter().map(|(_, _, f)| f.clone()).collect::<Vec<_>>());
        prop_assert_eq!(got, want);
        for why in Reason::ALL {
            prop_assert_eq!(r.counter(&format!("drop/{}", why.name())), drops.get(why.name()).copied().unwrap_or(0), "{}", why.name());
        }
        drop(r);
        prop_assert_eq!(packet::stats().in_use, before.in_use);
    }
}
