//! The pools' transmit side: frames a pool sends (on the input named after
//! it) go to the other local pools and to the wire as the 82599's internal
//! switch sends them.

use std::collections::BTreeMap;
use std::rc::Rc;

use snabb_apps_vmdq_splitter::{PoolArgs, VmdqSplitter, VmdqSplitterArgs, args::Checked};
use snabb_core::app::Port;
use snabb_core::{App, AppClass, AppContext, Io, Link, MacAddr, Packet, Ports, packet};

/// Pools vm1, vm2 on VLAN 10 and vm3 on VLAN 20, tags stripped; the wire.
fn tenants(vm_to_vm: bool) -> VmdqSplitterArgs {
    let pool =
        |name: &str, mac: &str, vid: u16| PoolArgs { strip_vlan: true, ..PoolArgs::new(name).mac(mac).vlan(vid) };
    VmdqSplitterArgs {
        pools: vec![
            pool("vm1", "52:54:00:00:00:01", 10),
            pool("vm2", "52:54:00:00:00:02", 10),
            pool("vm3", "52:54:00:00:00:03", 20),
        ],
        wire: Some("wire".into()),
        vm_to_vm,
        ..Default::default()
    }
}

struct Rig {
    app: VmdqSplitter,
    /// Inputs by name: each pool's transmit queue, and `rx` (from the wire).
    ins: BTreeMap<String, Rc<Link>>,
    outs: BTreeMap<String, Rc<Link>>,
    io: Io,
}

fn rig(args: VmdqSplitterArgs) -> Rig {
    let app =
        VmdqSplitter::new(Checked::try_from(args).unwrap(), &AppContext { name: "s", class: "VmdqSplitter" }).unwrap();
    let names = ["vm1", "vm2", "vm3"];
    let mk = |extra: &str| -> BTreeMap<String, Rc<Link>> {
        names.iter().copied().chain([extra]).map(|n| (n.to_string(), Rc::new(Link::new(1024)))).collect()
    };
    let (ins, outs) = (mk("rx"), mk("wire"));
    let ports = |m: &BTreeMap<String, Rc<Link>>| {
        Ports::new(m.iter().map(|(n, l)| Port { name: n.clone(), link: l.clone() }).collect())
    };
    let io = Io { input: ports(&ins), output: ports(&outs) };
    let mut r = Rig { app, ins, outs, io };
    r.app.link(&r.io);
    r
}

impl Rig {
    /// Send `frames` on input `from`; what each output got.
    fn send(&mut self, from: &str, frames: &[Vec<u8>]) -> BTreeMap<String, Vec<Vec<u8>>> {
        for f in frames {
            self.ins[from].transmit(Packet::from_bytes(f));
        }
        self.app.push(&self.io);
        self.outs
            .iter()
            .map(|(n, l)| (n.clone(), l.drain().map(|p| p.data().to_vec()).collect::<Vec<_>>()))
            .filter(|(_, v)| !v.is_empty())
            .collect()
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

fn mac(s: &str) -> [u8; 6] {
    s.parse::<MacAddr>().unwrap().0
}

/// A frame from vm1's address to `dst`, untagged unless `vlan`.
fn frame(dst: &str, vlan: Option<u16>, len: usize) -> Vec<u8> {
    let mut f = mac(dst).to_vec();
    f.extend_from_slice(&mac("52:54:00:00:00:01"));
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

fn tag(f: &[u8], vid: u16) -> Vec<u8> {
    [&f[..12], &[0x81, 0x00], &vid.to_be_bytes()[..], &f[12..]].concat()
}

fn got(pairs: &[(&str, Vec<Vec<u8>>)]) -> BTreeMap<String, Vec<Vec<u8>>> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
}

#[test]
fn unicast_to_a_local_pool_stays_inside() {
    let mut r = rig(tenants(true));
    let f = frame("52:54:00:00:00:02", None, 100);
    assert_eq!(
        r.send("vm1", std::slice::from_ref(&f)),
        got(&[("vm2", vec![f])]),
        "tagged for the lookup, stripped for vm2"
    );
    assert_eq!((r.counter("looped"), r.counter("wire/packets")), (1, 0));
    assert_eq!(r.counter("pool/vm1/sent_packets"), 1);
    assert_eq!(r.counter("pool/vm2/packets"), 1);
}

#[test]
fn unicast_to_another_vlans_pool_goes_out_tagged() {
    let mut r = rig(tenants(true));
    let f = frame("52:54:00:00:00:03", None, 100);
    assert_eq!(r.send("vm1", std::slice::from_ref(&f)), got(&[("wire", vec![tag(&f, 10)])]));
}

#[test]
fn unknown_unicast_goes_out_never_to_a_default_pool() {
    let mut args = tenants(true);
    args.pools.push(PoolArgs::new("host"));
    args.default_pool = Some("host".into());
    let mut r = rig(args);
    let f = frame("02:aa:00:00:00:01", None, 64);
    assert_eq!(r.send("vm1", std::slice::from_ref(&f)), got(&[("wire", vec![tag(&f, 10)])]));
    // From the wire the default pool does take it (the `host` pool has no link here).
    assert_eq!(r.send("rx", &[tag(&f, 10)]), got(&[]));
    assert_eq!(r.counter("default"), 1);
}

#[test]
fn broadcast_reaches_its_vlan_and_the_wire_but_not_its_sender() {
    let mut r = rig(tenants(true));
    let f = frame("ff:ff:ff:ff:ff:ff", None, 60);
    assert_eq!(r.send("vm1", std::slice::from_ref(&f)), got(&[("vm2", vec![f.clone()]), ("wire", vec![tag(&f, 10)])]));
    assert_eq!(r.counter("replicas"), 1);
    // vm3, on VLAN 20, broadcasts to the wire only.
    let mut g = f.clone();
    g[6..12].copy_from_slice(&mac("52:54:00:00:00:03"));
    assert_eq!(r.send("vm3", &[g.clone()]), got(&[("wire", vec![tag(&g, 20)])]));
    assert_eq!(r.counter("looped"), 1);
}

#[test]
fn frames_from_the_wire_are_split_as_before() {
    let mut r = rig(tenants(true));
    let f = tag(&frame("ff:ff:ff:ff:ff:ff", None, 60), 10);
    let plain = frame("ff:ff:ff:ff:ff:ff", None, 60);
    assert_eq!(r.send("rx", &[f]), got(&[("vm1", vec![plain.clone()]), ("vm2", vec![plain])]));
    assert_eq!(r.counter("wire/packets"), 0);
}

#[test]
fn without_vm_to_vm_everything_goes_out() {
    let mut r = rig(tenants(false));
    let f = frame("52:54:00:00:00:02", None, 100);
    let b = frame("ff:ff:ff:ff:ff:ff", None, 60);
    assert_eq!(r.send("vm1", &[f.clone(), b.clone()]), got(&[("wire", vec![tag(&f, 10), tag(&b, 10)])]));
    assert_eq!(r.counter("looped"), 0);
}

#[test]
fn a_pool_that_keeps_its_tag_sends_what_it_tags() {
    let mut args = tenants(true);
    args.pools[1].strip_vlan = false; // vm2 sees and sends its tags
    let mut r = rig(args);
    let f = frame("52:54:00:00:00:01", Some(10), 80);
    let mut from2 = f.clone();
    from2[6..12].copy_from_slice(&mac("52:54:00:00:00:02"));
    let plain = [&from2[..12], &from2[16..]].concat();
    assert_eq!(r.send("vm2", &[from2.clone()]), got(&[("vm1", vec![plain])]));
    // Untagged from vm2: no pool takes untagged frames; out it goes, untouched.
    let u = frame("52:54:00:00:00:01", None, 80);
    assert_eq!(r.send("vm2", std::slice::from_ref(&u)), got(&[("wire", vec![u])]));
}

#[test]
fn runts_and_an_unlinked_wire_are_counted_and_nothing_leaks() {
    let before = packet::stats().in_use;
    {
        let mut args = tenants(true);
        args.wire = Some("uplink".into()); // no output of that name: unlinked
        let mut r = rig(args);
        let out = r.send("vm1", &[vec![1, 2, 3], frame("02:aa:00:00:00:01", None, 64)]);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(r.counter("drop/runt"), 1);
        assert_eq!(r.counter("drop/unlinked"), 1);
        // Leftovers on the outputs go with the rig.
        r.send("vm1", &vec![frame("ff:ff:ff:ff:ff:ff", None, 64); 10]);
    }
    assert_eq!(packet::stats().in_use, before);
}

#[test]
fn the_wire_cannot_be_a_pool() {
    let mut args = tenants(true);
    args.wire = Some("vm2".into());
    let e = Checked::try_from(args).unwrap_err();
    assert!(e.contains("wire `vm2` is also a pool's name"), "{e}");
}

/// A guest's long frame lent as a split packet (its first 128 bytes copied
/// into a host head, the rest left in the guest's buffer), as a `VhostUser`
/// port with a `Zero` output sends it.
fn lent(owner: &snabb_core::BufferOwner, tail: &mut [u8], head: &[u8]) -> Packet {
    let fb = packet::ForeignBuffer {
        base: std::ptr::NonNull::new(tail.as_mut_ptr()).unwrap(),
        cap: tail.len() as u32,
        dma: 0x10_0000,
        start: 0,
        len: tail.len() as u32,
        token: 1,
        fixed_start: false,
    };
    // SAFETY: `tail` outlives every packet made of it in the test.
    unsafe { owner.wrap_tail(Packet::from_bytes(head), fb) }
}

#[test]
fn a_lent_frame_crosses_to_another_pool_still_lent() {
    // vm1 to vm2 (the tag of VLAN 10 put on for the lookup, then stripped
    // for vm2): the headers are read and edited in the head; the tail is
    // not copied on the way (the port it reaches copies it once, into its
    // guest's buffers).
    let mut r = rig(tenants(true));
    let f = frame("52:54:00:00:00:02", None, 1500);
    let owner = snabb_core::BufferOwner::register("guest", None);
    let mut tail = f[128..].to_vec();
    r.ins["vm1"].transmit(lent(&owner, &mut tail, &f[..128]));
    r.app.push(&r.io);
    let p = r.outs["vm2"].receive().expect("vm2 got the frame");
    assert!(p.is_split(), "the splitter flattened a lent frame (copied its tail)");
    assert_eq!(p.head().len(), 128);
    assert_eq!(p.clone().data(), &f[..]);
    assert_eq!(owner.outstanding(), 1);
    drop(p);
    // Out to the wire tagged (vm3's VLAN has no such address): still lent.
    let g = frame("52:54:00:00:00:09", None, 1000);
    let mut tail = g[128..].to_vec();
    r.ins["vm1"].transmit(lent(&owner, &mut tail, &g[..128]));
    r.app.push(&r.io);
    let p = r.outs["wire"].receive().expect("the wire got the frame");
    assert!(p.is_split());
    assert_eq!(p.clone().data(), &tag(&g, 10)[..]);
    drop(p);
    owner.drain_returns(drop);
    assert_eq!(owner.outstanding(), 0);
}
