//! Decap against packets assembled byte by byte here (not by our Encap),
//! every reject reason, malformed and random input that must never panic,
//! and Encap/Decap round trips in host and fixed-start foreign buffers.

use std::net::IpAddr;
use std::ptr::NonNull;

use proptest::prelude::*;
use snabb_apps_decap::decap::{Matcher, Strip, strip};
use snabb_apps_decap::encap::{Builder, Refuse};
use snabb_apps_decap::{EncapArgs, Reject, Tunnel, example_tunnels};
use snabb_core::Packet;
use snabb_core::ethernet::MacAddr;
use snabb_core::packet::{BufferOwner, ForeignBuffer, PAYLOAD_SIZE};

// ---------------------------------------------------------------------------
// Packets by hand. The checksum here is the plain 16-bit loop of RFC 1071,
// independent of the crate's.

fn csum(parts: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for p in parts {
        for pair in p.chunks(2) {
            s += (pair[0] as u32) << 8 | *pair.get(1).unwrap_or(&0) as u32;
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

const DMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const SMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [&DMAC[..], &SMAC[..], &ethertype.to_be_bytes(), payload].concat()
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    [h, payload.to_vec()].concat()
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    [h, payload.to_vec()].concat()
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    [&sport.to_be_bytes()[..], &dport.to_be_bytes(), &((8 + payload.len()) as u16).to_be_bytes(), &[0, 0], payload]
        .concat()
}

fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    [&[0x08, 0, 0, 0][..], &(vni << 8).to_be_bytes(), inner].concat()
}

fn gre(key: Option<u32>, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![if key.is_some() { 0x20 } else { 0 }, 0, 0x65, 0x58];
    if let Some(k) = key {
        h.extend_from_slice(&k.to_be_bytes());
    }
    [h, inner.to_vec()].concat()
}

fn l2tp(session: u32, cookie: u64, inner: &[u8]) -> Vec<u8> {
    [&session.to_be_bytes()[..], &cookie.to_be_bytes(), inner].concat()
}

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [192, 0, 2, 2];
fn a6() -> [u8; 16] {
    "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
}
fn b6() -> [u8; 16] {
    "2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// An inner frame: a 64-byte Ethernet frame with a recognisable payload.
fn inner() -> Vec<u8> {
    let mut f = eth(0x0800, &(0..50u8).collect::<Vec<_>>());
    f[0] = 0x52;
    f
}

fn matcher(t: &str) -> Matcher {
    let t: Tunnel = snabb_core::config::ron_options().from_str(t).unwrap();
    Matcher::new(&t, true)
}

/// Decapsulate `frame` in a host packet; the inner bytes or the reject.
fn decap(m: &Matcher, frame: &[u8]) -> Result<Vec<u8>, Reject> {
    let s = m.classify(frame)?;
    let mut p = Packet::from_bytes(frame);
    strip(&mut p, s);
    Ok(p.data().to_vec())
}

const VX4: &str = r#"Vxlan(local: "192.0.2.2", remote: "192.0.2.1", vni: 5000)"#;
const VX6: &str = r#"Vxlan(local: "2001:db8::2", remote: "2001:db8::1", vni: 5000)"#;
const GRE4: &str = r#"Gre(local: "192.0.2.2", remote: "192.0.2.1")"#;
const GRE4K: &str = r#"Gre(local: "192.0.2.2", remote: "192.0.2.1", key: 99)"#;
const GRE6K: &str = r#"Gre(local: "2001:db8::2", key: 99)"#;
const L2TP: &str = r#"L2tpv3(local: "2001:db8::2", remote: "2001:db8::1", session: 77, local_cookie: 1, remote_cookie: 0x0102030405060708)"#;

#[test]
fn hand_made_tunnels_decapsulate() {
    let i = inner();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (VX4, eth(0x0800, &ipv4(A4, B4, 17, &udp(40000, 4789, &vxlan(5000, &i))))),
        (VX6, eth(0x86dd, &ipv6(a6(), b6(), 17, &udp(40000, 4789, &vxlan(5000, &i))))),
        (GRE4, eth(0x0800, &ipv4(A4, B4, 47, &gre(None, &i)))),
        (GRE4K, eth(0x0800, &ipv4(A4, B4, 47, &gre(Some(99), &i)))),
        (GRE6K, eth(0x86dd, &ipv6(a6(), b6(), 47, &gre(Some(99), &i)))),
        (L2TP, eth(0x86dd, &ipv6(a6(), b6(), 115, &l2tp(77, 0x0102030405060708, &i)))),
    ];
    for (t, frame) in cases {
        assert_eq!(decap(&matcher(t), &frame), Ok(i.clone()), "{t}");
        // Ethernet padding after the outer datagram is cut off too.
        let padded = [frame.clone(), vec![0; 17]].concat();
        assert_eq!(decap(&matcher(t), &padded), Ok(i.clone()), "{t} padded");
    }
}

#[test]
fn hand_made_tags_strip() {
    let payload: Vec<u8> = (0..46).collect();
    let plain = eth(0x0800, &payload);
    let tagged = eth(0x8100, &[&[0x20, 0x64, 0x08, 0x00][..], &payload].concat()); // pcp 1, vid 100
    assert_eq!(decap(&matcher("Vlan(vid: 100)"), &tagged), Ok(plain.clone()));
    assert_eq!(decap(&matcher("Vlan()"), &tagged), Ok(plain.clone()));
    assert_eq!(decap(&matcher("Vlan(vid: 101)"), &tagged), Err(Reject::WrongId));
    assert_eq!(decap(&matcher("Vlan(vid: 100)"), &plain), Err(Reject::NotTunnel));
    let qinq = eth(0x88a8, &[&[0x00, 0x14, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00][..], &payload].concat());
    assert_eq!(decap(&matcher("QinQ(outer: 20, inner: 100)"), &qinq), Ok(plain.clone()));
    assert_eq!(decap(&matcher("QinQ()"), &qinq), Ok(plain.clone()));
    assert_eq!(decap(&matcher("QinQ(outer: 20, inner: 101)"), &qinq), Err(Reject::WrongId));
    assert_eq!(decap(&matcher("QinQ(outer: 21)"), &qinq), Err(Reject::WrongId));
    assert_eq!(decap(&matcher("QinQ()"), &tagged), Err(Reject::NotTunnel), "a C-tag alone is not QinQ");
    // An S-tag alone, with Vlan(tpid: 0x88a8).
    let stag = eth(0x88a8, &[&[0x00, 0x07, 0x08, 0x00][..], &payload].concat());
    assert_eq!(decap(&matcher("Vlan(vid: 7, tpid: 0x88a8)"), &stag), Ok(plain.clone()));
    assert_eq!(decap(&matcher("Vlan(vid: 7)"), &stag), Err(Reject::NotTunnel));
    assert_eq!(decap(&matcher("Vlan()"), &tagged[..15]), Err(Reject::Truncated));
    assert_eq!(decap(&matcher("QinQ()"), &qinq[..19]), Err(Reject::Truncated));
}

#[test]
fn every_reject_reason() {
    let i = inner();
    let vx4 = |ip: Vec<u8>| eth(0x0800, &ip);
    let good4 = ipv4(A4, B4, 17, &udp(1, 4789, &vxlan(5000, &i)));
    let m = matcher(VX4);
    let cases: Vec<(&str, Vec<u8>, Reject)> = vec![
        ("runt", vec![0; 13], Reject::Truncated),
        ("no IP", eth(0x0800, &[]), Reject::ShortIpHeader),
        ("short IP", vx4(good4[..19].to_vec()), Reject::ShortIpHeader),
        ("cut datagram", vx4(good4[..good4.len() - 1].to_vec()), Reject::IpLength),
        (
            "IHL past the bytes",
            vx4({
                // IHL 15 (60 bytes) in a 40-byte datagram: a length error,
                // not a checksum over bytes that are not there.
                let mut b = good4[..40].to_vec();
                b[0] = 0x4f;
                b[2..4].copy_from_slice(&[0, 40]);
                b
            }),
            Reject::ShortIpHeader,
        ),
        ("IPv6 frame", eth(0x86dd, &good4), Reject::NotTunnel),
        ("ARP", eth(0x0806, &good4), Reject::NotTunnel),
        (
            "version 5",
            vx4({
                let mut b = good4.clone();
                b[0] = 0x55;
                b
            }),
            Reject::BadHeader,
        ),
        (
            "IHL 4",
            vx4({
                let mut b = good4.clone();
                b[0] = 0x44;
                b
            }),
            Reject::ShortIpHeader,
        ),
        (
            "total < IHL",
            vx4({
                let mut b = good4.clone();
                b[2..4].copy_from_slice(&[0, 19]);
                b
            }),
            Reject::IpLength,
        ),
        (
            "checksum",
            vx4({
                let mut b = good4.clone();
                b[8] = 63;
                b
            }),
            Reject::BadChecksum,
        ),
        ("MF", vx4(refix(&good4, |b| b[6] = 0x20)), Reject::Fragment),
        ("offset", vx4(refix(&good4, |b| b[7] = 1)), Reject::Fragment),
        ("TCP", vx4(ipv4(A4, B4, 6, &udp(1, 4789, &vxlan(5000, &i)))), Reject::NotTunnel),
        ("port", vx4(ipv4(A4, B4, 17, &udp(1, 4790, &vxlan(5000, &i)))), Reject::WrongPort),
        ("dst", vx4(ipv4(A4, A4, 17, &udp(1, 4789, &vxlan(5000, &i)))), Reject::WrongAddress),
        ("src", vx4(ipv4(B4, B4, 17, &udp(1, 4789, &vxlan(5000, &i)))), Reject::WrongAddress),
        ("vni", vx4(ipv4(A4, B4, 17, &udp(1, 4789, &vxlan(5001, &i)))), Reject::WrongId),
        (
            "I flag",
            vx4(ipv4(
                A4,
                B4,
                17,
                &udp(1, 4789, &{
                    let mut v = vxlan(5000, &i);
                    v[0] = 0;
                    v
                }),
            )),
            Reject::Flags,
        ),
        (
            "UDP len 7",
            vx4(ipv4(A4, B4, 17, &{
                let mut u = udp(1, 4789, &vxlan(5000, &i));
                u[4..6].copy_from_slice(&[0, 7]);
                u
            })),
            Reject::UdpLength,
        ),
        (
            "UDP len long",
            vx4(ipv4(A4, B4, 17, &{
                let mut u = udp(1, 4789, &vxlan(5000, &i));
                u[5] += 1;
                u
            })),
            Reject::UdpLength,
        ),
        ("UDP no VXLAN", vx4(ipv4(A4, B4, 17, &udp(1, 4789, &[8, 0, 0]))), Reject::Truncated),
        ("inner runt", vx4(ipv4(A4, B4, 17, &udp(1, 4789, &vxlan(5000, &i[..13])))), Reject::Truncated),
        (
            "UDP checksum",
            vx4(ipv4(A4, B4, 17, &{
                let mut u = udp(1, 4789, &vxlan(5000, &i));
                u[6] = 1;
                u
            })),
            Reject::BadChecksum,
        ),
    ];
    for (what, frame, want) in cases {
        assert_eq!(decap(&m, &frame), Err(want), "{what}");
    }

    // GRE and IPv6 specifics.
    let g = matcher(GRE4K);
    let gre4 = |g: Vec<u8>| eth(0x0800, &ipv4(A4, B4, 47, &g));
    assert_eq!(decap(&g, &gre4(gre(None, &i))), Err(Reject::WrongId), "key expected, none sent");
    assert_eq!(decap(&matcher(GRE4), &gre4(gre(Some(99), &i))), Err(Reject::WrongId), "no key expected");
    assert_eq!(decap(&g, &gre4(gre(Some(98), &i))), Err(Reject::WrongId));
    let mut v1 = gre(Some(99), &i);
    v1[1] = 1;
    assert_eq!(decap(&g, &gre4(v1)), Err(Reject::Flags), "GRE version 1 (PPTP)");
    let mut routing = gre(Some(99), &i);
    routing[0] |= 0x40;
    assert_eq!(decap(&g, &gre4(routing)), Err(Reject::Flags));
    let mut ip_in_gre = gre(Some(99), &i);
    ip_in_gre[2..4].copy_from_slice(&[0x08, 0x00]);
    assert_eq!(decap(&g, &gre4(ip_in_gre)), Err(Reject::NotTunnel), "GRE carrying IP, not Ethernet");
    assert_eq!(decap(&g, &gre4(gre(Some(99), &i)[..7].to_vec())), Err(Reject::Truncated), "key cut");
    // A GRE checksum that is wrong, then right.
    let mut with_c = [&[0xa0u8, 0, 0x65, 0x58, 0, 0, 0, 0, 0, 0, 0, 99][..], &i].concat();
    assert_eq!(decap(&g, &gre4(with_c.clone())), Err(Reject::BadChecksum));
    let c = csum(&[&with_c]);
    with_c[4..6].copy_from_slice(&c.to_be_bytes());
    assert_eq!(decap(&g, &gre4(with_c)), Ok(i.clone()));

    let g6 = matcher(GRE6K);
    let gre6 = |next: u8, p: Vec<u8>| eth(0x86dd, &ipv6(a6(), b6(), next, &p));
    assert_eq!(decap(&g6, &gre6(47, gre(Some(99), &i))), Ok(i.clone()), "any remote");
    assert_eq!(decap(&g6, &gre6(44, gre(Some(99), &i))), Err(Reject::Fragment));
    // A destination options header in front of GRE is walked over.
    let opts = [&[47u8, 0, 1, 4, 0, 0, 0, 0][..], &gre(Some(99), &i)].concat();
    assert_eq!(decap(&g6, &gre6(60, opts)), Ok(i.clone()));
    let mut v4in6 = gre6(47, gre(Some(99), &i));
    v4in6[14] = 0x40;
    assert_eq!(decap(&g6, &v4in6), Err(Reject::BadHeader));
    let long = gre6(47, gre(Some(99), &i));
    assert_eq!(decap(&g6, &long[..long.len() - 1]), Err(Reject::IpLength));
    assert_eq!(decap(&g6, &long[..14 + 39]), Err(Reject::ShortIpHeader));
    let wrong_dst = eth(0x86dd, &ipv6(a6(), a6(), 47, &gre(Some(99), &i)));
    assert_eq!(decap(&g6, &wrong_dst), Err(Reject::WrongAddress));

    let l = matcher(L2TP);
    let l2 = |p: Vec<u8>| eth(0x86dd, &ipv6(a6(), b6(), 115, &p));
    assert_eq!(decap(&l, &l2(l2tp(78, 0x0102030405060708, &i))), Err(Reject::WrongId));
    assert_eq!(decap(&l, &l2(l2tp(77, 0x0102030405060709, &i))), Err(Reject::WrongCookie));
    assert_eq!(decap(&l, &l2(l2tp(77, 0x0102030405060708, &i)[..11].to_vec())), Err(Reject::Truncated));
    let from_elsewhere = eth(0x86dd, &ipv6(b6(), b6(), 115, &l2tp(77, 0x0102030405060708, &i)));
    assert_eq!(decap(&l, &from_elsewhere), Err(Reject::WrongAddress));
}

/// IPv4 options are walked over unless the policy refuses them, and then
/// they are counted as such (not as a length or checksum error).
#[test]
fn ip_options_by_policy() {
    use snabb_apps_decap::decap::Policy;
    let i = inner();
    let plain = ipv4(A4, B4, 17, &udp(1, 4789, &vxlan(5000, &i)));
    // The same datagram with four bytes of options (NOP NOP NOP EOL): IHL 6.
    let mut opts = [&plain[..20], &[1, 1, 1, 0], &plain[20..]].concat();
    opts[0] = 0x46;
    let total = opts.len() as u16;
    opts[2..4].copy_from_slice(&total.to_be_bytes());
    let opts = refix_len(&opts, 24);
    let t: Tunnel = snabb_core::config::ron_options().from_str(VX4).unwrap();
    let lax = Matcher::new(&t, true);
    let strict = Matcher::with_policy(&t, Policy { verify_udp_checksum: true, refuse_ip_options: true });
    assert_eq!(decap(&lax, &eth(0x0800, &opts)), Ok(i.clone()));
    assert_eq!(decap(&strict, &eth(0x0800, &opts)), Err(Reject::IpOptions));
    assert_eq!(decap(&strict, &eth(0x0800, &plain)), Ok(i.clone()), "no options: taken");
    // Length errors come before the policy.
    assert_eq!(decap(&strict, &eth(0x0800, &opts[..22])), Err(Reject::ShortIpHeader));
    // Every reason has its own counter name.
    let names: std::collections::BTreeSet<&str> = Reject::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), Reject::ALL.len());
}

/// The IPv4 header of `ip` (`hlen` bytes) with its checksum made right.
fn refix_len(ip: &[u8], hlen: usize) -> Vec<u8> {
    let mut b = ip.to_vec();
    b[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&[&b[..hlen]]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b
}

/// `f` edits the IPv4 header, whose checksum is then made right again.
fn refix(ip: &[u8], f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = ip.to_vec();
    f(&mut b);
    b[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&[&b[..20]]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b
}

// ---------------------------------------------------------------------------
// Fixed-start buffers: stripping moves the bytes, the start stays.

struct Lent {
    owner: BufferOwner,
    buf: Box<[u8; PAYLOAD_SIZE + 512]>,
}

impl Lent {
    fn new() -> Lent {
        Lent { owner: BufferOwner::register("handmade", None), buf: Box::new([0; PAYLOAD_SIZE + 512]) }
    }
    /// `bytes` in the buffer at offset 64, start fixed.
    fn wrap(&mut self, bytes: &[u8]) -> Packet {
        self.buf[64..64 + bytes.len()].copy_from_slice(bytes);
        // SAFETY: the buffer outlives every packet of these tests (each is
        // dropped before the next wrap and before `self`).
        unsafe {
            self.owner.wrap(ForeignBuffer {
                base: NonNull::new(self.buf.as_mut_ptr()).unwrap(),
                cap: (PAYLOAD_SIZE + 512) as u32,
                dma: 0,
                start: 64,
                len: bytes.len() as u32,
                token: 1,
                fixed_start: true,
            })
        }
    }
}

#[test]
fn fixed_start_buffers_move_their_bytes() {
    let mut lent = Lent::new();
    let i = inner();
    for (t, frame) in [
        (VX4, eth(0x0800, &ipv4(A4, B4, 17, &udp(40000, 4789, &vxlan(5000, &i))))),
        ("Vlan(vid: 100)", eth(0x8100, &[&[0x00, 0x64][..], &i[12..]].concat())),
    ] {
        let m = matcher(t);
        let mut p = lent.wrap(&frame);
        let at = p.data().as_ptr();
        let s = m.classify(p.data()).unwrap();
        strip(&mut p, s);
        assert_eq!(p.data().as_ptr(), at, "{t}: the start did not move");
        let want = if t.starts_with("Vlan") { [&DMAC[..], &SMAC, &i[12..]].concat() } else { i.clone() };
        assert_eq!(p.data(), &want[..], "{t}");
        assert!(p.is_foreign());
    }
}

// ---------------------------------------------------------------------------
// Round trips and robustness on random input.

const LMAC: MacAddr = MacAddr([0x02, 0, 0, 0, 1, 1]);
const RMAC: MacAddr = MacAddr([0x02, 0, 0, 0, 2, 2]);

fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 14..200), prop::collection::vec(any::<u8>(), 14..PAYLOAD_SIZE - 80),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(debug_assertions) { 200 } else { 2000 }))]

    /// Encap then Decap (the other end) gives back the frame, for every
    /// tunnel, in a host buffer and in a fixed-start foreign one.
    #[test]
    fn round_trip(frame in frame_strategy(), which in 0..10usize, fixed: bool) {
        let t = &example_tunnels()[which];
        let mut b = Builder::new(&EncapArgs::new(t.clone(), LMAC, RMAC)).unwrap();
        let m = Matcher::new(&t.reversed(), true);
        let mut lent = Lent::new();
        let mut p = if fixed { lent.wrap(&frame) } else { Packet::from_bytes(&frame) };
        b.encapsulate(&mut p).unwrap();
        prop_assert_eq!(p.len(), frame.len() + b.overhead());
        let s = m.classify(p.data());
        prop_assert!(s.is_ok(), "{}: {:?}", t.kind(), s);
        prop_assert_eq!(s, m.general(p.data()));
        strip(&mut p, s.unwrap());
        prop_assert_eq!(p.data(), &frame[..]);
    }

    /// Any bytes at all: classify answers, and a strip it allows stays
    /// inside the packet.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), which in 0..10usize) {
        let m = Matcher::new(&example_tunnels()[which].reversed(), true);
        prop_assert_eq!(m.classify(&bytes), m.general(&bytes), "the fast path agrees with the general one");
        if let Ok(s) = m.classify(&bytes) {
            let mut p = Packet::from_bytes(&bytes);
            strip(&mut p, s);
            prop_assert!(p.len() >= 14);
        }
    }

    /// Valid packets with one byte changed or cut short: the same.
    #[test]
    fn damaged_packets_never_panic(which in 0..10usize, at in 0..120usize, value: u8, cut in 0..140usize) {
        let t = &example_tunnels()[which];
        let mut b = Builder::new(&EncapArgs::new(t.clone(), LMAC, RMAC)).unwrap();
        let mut p = Packet::from_bytes(&inner());
        b.encapsulate(&mut p).unwrap();
        let mut bytes = p.data().to_vec();
        if at < bytes.len() {
            bytes[at] = value;
        }
        bytes.truncate(cut.max(1));
        let m = Matcher::new(&t.reversed(), true);
        prop_assert_eq!(m.classify(&bytes), m.general(&bytes), "the fast path agrees with the general one");
        if let Ok(s) = m.classify(&bytes) {
            let Strip::Outer { start, len } = s else {
                let mut q = Packet::from_bytes(&bytes);
                strip(&mut q, s);
                return Ok(());
            };
            prop_assert!(start + len <= bytes.len());
        }
    }
}

#[test]
fn encap_refuses_what_does_not_fit() {
    let t = example_tunnels()[3].clone();
    let mut b = Builder::new(&EncapArgs::new(t, LMAC, RMAC)).unwrap();
    let mut runt = Packet::from_bytes(&[0; 13]);
    assert_eq!(b.encapsulate(&mut runt), Err(Refuse::Truncated));
    let mut big = Packet::from_bytes(&vec![0; PAYLOAD_SIZE - b.overhead() + 1]);
    assert_eq!(b.encapsulate(&mut big), Err(Refuse::TooLong));
    let mut fits = Packet::from_bytes(&vec![0; PAYLOAD_SIZE - b.overhead()]);
    assert_eq!(b.encapsulate(&mut fits), Ok(()));
    assert_eq!(fits.len(), PAYLOAD_SIZE);
    // IP tunnels need both MAC addresses.
    let mut a = EncapArgs::new(example_tunnels()[3].clone(), LMAC, RMAC);
    a.remote_mac = None;
    assert!(Builder::new(&a).unwrap_err().to_string().contains("remote_mac"));
}

#[test]
fn encap_writes_lengths_and_checksums() {
    // VXLAN over IPv4 by hand: the template plus the fields per packet.
    let t = Tunnel::Vxlan { local: IpAddr::from(A4), remote: Some(IpAddr::from(B4)), vni: 5000, port: 4789 };
    let mut a = EncapArgs::new(t, LMAC, RMAC);
    a.src_port = Some(40000);
    a.udp_checksum = Some(true);
    let mut b = Builder::new(&a).unwrap();
    let i = inner();
    for n in 1..=3u16 {
        let mut p = Packet::from_bytes(&i);
        b.encapsulate(&mut p).unwrap();
        let d = p.data();
        let mut want = [&RMAC.0[..], &LMAC.0, &[0x08, 0x00]].concat();
        let ip_len = (20 + 8 + 8 + i.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&ip_len.to_be_bytes());
        ip.extend_from_slice(&n.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&A4);
        ip.extend_from_slice(&B4);
        let c = csum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        want.extend_from_slice(&ip);
        let mut u = udp(40000, 4789, &vxlan(5000, &i));
        let pseudo = [&A4[..], &B4, &[0, 17], &((u.len()) as u16).to_be_bytes()].concat();
        let c = csum(&[&pseudo, &u]);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        want.extend_from_slice(&u);
        assert_eq!(d, &want[..], "packet {n}");
    }
}
