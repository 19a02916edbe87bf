//! The data path without a socket: a DriverQueue plays the guest, a
//! Virtqueue the device, over one memfd mapped twice.

use snabb_apps_vhost_user::driver::{DriverMemory, DriverQueue, SendLayout};
use snabb_apps_vhost_user::memory::{DirtyLog, GuestMemory, RegionSpec};
use snabb_apps_vhost_user::virtio::*;
use snabb_apps_vhost_user::virtq::{QueueStats, Virtqueue, VringAddr};
use snabb_core::packet::{self, PartialCsum};
use snabb_core::{Link, Packet};
use std::os::fd::{FromRawFd, OwnedFd};

const MEM: usize = 32 << 20;
const QSIZE: u16 = 256;

/// Guest memory with a TX ring (guest -> switch) and an RX ring (switch -> guest).
struct Rig {
    mem: DriverMemory,
    gm: GuestMemory,
    tx: DriverQueue,
    rx: DriverQueue,
    vtx: Virtqueue,
    vrx: Virtqueue,
}

fn rig(features: u64) -> Rig {
    rig_sized(features, QSIZE)
}

fn rig_sized(features: u64, size: u16) -> Rig {
    let mem = DriverMemory::new(MEM).unwrap();
    let tx = DriverQueue::new(&mem, size, 0x1000, 0x20_0000, 12 << 20, features);
    let rx = DriverQueue::new(&mem, size, 0x10_0000, 0x100_0000, 12 << 20, features);
    let gm = mem.guest_memory();
    let vtx = Virtqueue::start(size, &tx.addr(), 0, features, &gm).unwrap();
    let vrx = Virtqueue::start(size, &rx.addr(), 0, features, &gm).unwrap();
    Rig { mem, gm, tx, rx, vtx, vrx }
}

impl Rig {
    /// Everything the guest sent, as host packets' bytes.
    fn pull(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        self.vtx.receive_from_guest(&self.gm, None, usize::MAX, None, |p: Packet| got.push(p.data().to_vec()));
        let mut none = Vec::new();
        self.tx.reap(&mut none);
        assert!(none.is_empty());
        got
    }

    /// Push `frames` towards the guest; returns what the guest reaped.
    fn push(&mut self, frames: &[Vec<u8>]) -> Vec<(NetHdr, Vec<u8>)> {
        let link = Link::new(1024);
        for f in frames {
            link.transmit(Packet::from_bytes(f));
        }
        self.vrx.transmit_to_guest(&self.gm, None, &link);
        let mut out = Vec::new();
        self.rx.reap_with_headers(&mut out);
        out
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

const SIZES: &[usize] =
    &[0, 1, 13, 14, 60, 61, 64, 127, 128, 129, 1500, 1514, 2048, 4000, 4097, 8192, 9000, 9216, 10240];

fn feature_sets() -> Vec<(&'static str, u64)> {
    let v1 = bit(VIRTIO_F_VERSION_1);
    vec![
        ("legacy", 0),
        ("version_1", v1),
        ("mrg_rxbuf", v1 | bit(VIRTIO_NET_F_MRG_RXBUF)),
        ("legacy+mrg", bit(VIRTIO_NET_F_MRG_RXBUF)),
        ("indirect", v1 | bit(VIRTIO_RING_F_INDIRECT_DESC)),
        ("all", v1 | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX)),
    ]
}

fn assert_no_leak() {
    assert_eq!(packet::stats().in_use, 0, "host packets leaked: {:?}", packet::stats());
}

#[test]
fn guest_to_switch_all_sizes_and_layouts() {
    for (name, features) in feature_sets() {
        let indirect = has(features, VIRTIO_RING_F_INDIRECT_DESC);
        let mut layouts = vec![
            SendLayout::default(),
            SendLayout { header_apart: true, pieces: 1, indirect: false, head_bytes: 0 },
            SendLayout { header_apart: false, pieces: 3, indirect: false, head_bytes: 0 },
            SendLayout { header_apart: true, pieces: 7, indirect: false, head_bytes: 0 },
        ];
        if indirect {
            layouts.push(SendLayout { header_apart: false, pieces: 1, indirect: true, head_bytes: 0 });
            layouts.push(SendLayout { header_apart: true, pieces: 5, indirect: true, head_bytes: 0 });
        }
        let mut r = rig(features);
        for layout in layouts {
            r.tx.layout = layout;
            let frames: Vec<Vec<u8>> = SIZES.iter().map(|&n| frame(n, n as u8)).collect();
            for f in &frames {
                assert!(r.tx.send(f), "{name} {layout:?}: send {}", f.len());
            }
            let got = r.pull();
            assert_eq!(got.len(), frames.len(), "{name} {layout:?}");
            for (g, f) in got.iter().zip(&frames) {
                assert!(g == f, "{name} {layout:?}: frame of {} bytes came out as {} bytes", f.len(), g.len());
            }
        }
        let s = r.vtx.stats();
        assert_eq!(s.bad_descriptor + s.too_short + s.too_long, 0, "{name}: {s:?}");
        assert_eq!(r.tx.in_flight(), 0);
        assert_eq!(r.vtx.next_avail(), r.tx.avail_idx());
        assert_eq!(r.vtx.used_idx(), r.tx.avail_idx());
    }
    assert_no_leak();
}

#[test]
fn switch_to_guest_all_sizes_and_layouts() {
    for (name, features) in feature_sets() {
        let mrg = has(features, VIRTIO_NET_F_MRG_RXBUF);
        let indirect = has(features, VIRTIO_RING_F_INDIRECT_DESC);
        let mut layouts = vec![(1, false), (3, false)];
        if indirect {
            layouts.push((1, true));
            layouts.push((4, true));
        }
        for (pieces, ind) in layouts {
            let mut r = rig(features);
            r.rx.rx_pieces = pieces;
            r.rx.rx_indirect = ind;
            // Merging guests post page-sized buffers; others post buffers for the largest packet.
            let buf = if mrg { 2048 } else { 10240 + 12 };
            assert_eq!(r.rx.post_rx(80, buf), 80);
            let frames: Vec<Vec<u8>> = SIZES.iter().map(|&n| frame(n, 7 + n as u8)).collect();
            let got = r.push(&frames);
            assert_eq!(got.len(), frames.len(), "{name} pieces {pieces} indirect {ind}: {:?}", r.vrx.stats());
            for ((h, g), f) in got.iter().zip(&frames) {
                assert!(g == f, "{name}: frame of {} bytes came out as {} bytes", f.len(), g.len());
                let hlen = net_hdr_len(features);
                let expect = if mrg {
                    (hlen + f.len()).div_ceil(buf as usize) as u16
                } else if hlen == 12 {
                    1
                } else {
                    0
                };
                assert_eq!(h.num_buffers, expect, "{name}: num_buffers for {} bytes", f.len());
                assert_eq!(h.flags, 0);
            }
            let s = r.vrx.stats().clone();
            assert_eq!(s.packets, frames.len() as u64);
            assert_eq!(s.no_room + s.bad_descriptor + s.no_buffer, 0, "{name}: {s:?}");
            assert_eq!(r.rx.bad_used, 0);
        }
    }
    assert_no_leak();
}

#[test]
fn mrg_rxbuf_merges_small_buffers() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut r = rig(features);
    r.rx.post_rx(40, 512);
    let got = r.push(&[frame(9000, 1), frame(60, 2)]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0.num_buffers, (9000 + 12usize).div_ceil(512) as u16);
    assert_eq!(got[0].1, frame(9000, 1));
    assert_eq!(got[1].0.num_buffers, 1);
    assert_eq!(got[1].1, frame(60, 2));
}

#[test]
fn mrg_rxbuf_waits_for_enough_buffers() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut r = rig(features);
    r.rx.post_rx(2, 1024);
    let link = Link::new(16);
    link.transmit(Packet::from_bytes(&frame(3000, 3)));
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 0);
    assert_eq!(link.nreadable(), 1, "the packet waits on the link");
    assert_eq!(r.vrx.stats().no_buffer, 1);
    assert_eq!(r.vrx.next_avail(), 0, "no buffer consumed");
    r.rx.post_rx(2, 1024);
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 1);
    let mut out = Vec::new();
    r.rx.reap(&mut out);
    assert_eq!(out, vec![frame(3000, 3)]);
    drop(link);
    assert_no_leak();
}

#[test]
fn mrg_rxbuf_packet_larger_than_the_ring_is_dropped() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut r = rig_sized(features, 4);
    r.rx.post_rx(4, 256);
    let got = r.push(&[frame(2000, 1), frame(100, 2)]);
    assert_eq!(r.vrx.stats().no_room, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(100, 2));
    assert_no_leak();
}

#[test]
fn without_mrg_a_packet_too_big_for_the_buffer_is_dropped_not_truncated() {
    let features = bit(VIRTIO_F_VERSION_1);
    let mut r = rig(features);
    r.rx.post_rx(1, 1500);
    let got = r.push(&[frame(1500, 1), frame(1488, 2)]);
    assert_eq!(r.vrx.stats().no_room, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(1488, 2));
    assert_no_leak();
}

#[test]
fn no_buffers_leaves_packets_on_the_link() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    let link = Link::new(16);
    for i in 0..5 {
        link.transmit(Packet::from_bytes(&frame(100, i)));
    }
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 0);
    assert_eq!(link.nreadable(), 5);
    r.rx.post_rx(3, 2048);
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 3);
    assert_eq!(link.nreadable(), 2);
    let mut out = Vec::new();
    r.rx.reap(&mut out);
    assert_eq!(out, (0..3).map(|i| frame(100, i)).collect::<Vec<_>>());
    drop(link);
    assert_no_leak();
}

#[test]
fn guest_frames_too_long_or_short_are_counted_drops() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    assert!(r.tx.send(&frame(packet::PAYLOAD_SIZE + 1, 0)));
    assert!(r.tx.send(&frame(60, 1)));
    // A chain of 5 bytes: shorter than the header.
    let slot = r.tx.slot_gpa(200);
    r.tx.write_desc(200, slot, 5, 0, 0);
    r.tx.push_avail_raw(200);
    let got = r.pull();
    assert_eq!(got, vec![frame(60, 1)]);
    let s = r.vtx.stats();
    assert_eq!((s.too_long, s.too_short), (1, 1));
    assert_eq!(r.tx.used_idx(), 3, "every chain goes back");
    assert_no_leak();
}

// ---- checksum completion

/// An IPv4/UDP frame whose checksum field holds the pseudo-header sum, as a
/// guest with NEEDS_CSUM leaves it; and the fully correct checksum.
fn udp_frame(payload: usize) -> (Vec<u8>, u16) {
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    let ip_len = (20 + 8 + payload) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[23] = 17; // UDP
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let udp_len = (8 + payload) as u16;
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&5678u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for i in 0..payload {
        f[42 + i] = (i * 13 + 5) as u8;
    }
    // Reference: one's-complement over pseudo header + UDP, word by word.
    let mut words: Vec<u8> = Vec::new();
    words.extend_from_slice(&f[26..34]);
    words.extend_from_slice(&[0, 17]);
    words.extend_from_slice(&udp_len.to_be_bytes());
    words.extend_from_slice(&f[34..]);
    let sum_of = |b: &[u8]| {
        let mut s: u32 = 0;
        for c in b.chunks(2) {
            s += ((c[0] as u32) << 8) | *c.get(1).unwrap_or(&0) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    let full = !sum_of(&words);
    // The guest's partial: the pseudo-header sum, not complemented.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    f[40..42].copy_from_slice(&sum_of(&pseudo).to_be_bytes());
    (f, full)
}

/// A guest's NEEDS_CSUM travels with the host packet (the switch does not
/// sum the frame); a guest with GUEST_CSUM receives it as it came, with the
/// same header fields; one without gets the checksum finished. A request
/// the packet cannot carry is finished at once; offsets outside the frame
/// are a counted drop.
#[test]
fn needs_csum_travels_with_the_packet() {
    for guest_csum in [false, true] {
        let mut features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_CSUM);
        if guest_csum {
            features |= bit(VIRTIO_NET_F_GUEST_CSUM);
        }
        let mut r = rig(features);
        let hdr = NetHdr { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..NetHdr::default() };
        let (mut sent, mut finished) = (Vec::new(), Vec::new());
        for payload in [0, 1, 18, 19, 1000, 1472, 8000] {
            let (f, full) = udp_frame(payload);
            assert!(r.tx.send_with_header(&hdr, &f));
            let mut e = f.clone();
            e[40..42].copy_from_slice(&full.to_be_bytes());
            sent.push(f);
            finished.push(e);
        }
        // csum_start past what a packet record holds (1024): finished on the way in.
        let (mut far, _) = udp_frame(1500);
        far[1100..1102].copy_from_slice(&[0x12, 0x34]);
        let far_hdr =
            NetHdr { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 1090, csum_offset: 10, ..NetHdr::default() };
        assert!(r.tx.send_with_header(&far_hdr, &far));
        let mut far_done = far.clone();
        assert!(complete_checksum(&mut far_done, 1090, 10));
        // Offsets outside the frame: dropped, counted.
        let bad =
            NetHdr { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start: 60, csum_offset: 0xffff, ..NetHdr::default() };
        assert!(r.tx.send_with_header(&bad, &frame(100, 0)));

        let link = Link::new(64);
        r.vtx.receive_from_guest(&r.gm, None, usize::MAX, None, |p: Packet| link.transmit(p));
        r.tx.reap(&mut Vec::new());
        assert_eq!(r.vtx.stats().bad_csum, 1);
        assert_eq!(r.vtx.stats().csum_completed, 1, "only the far one is summed on the way in");
        let mut pkts: Vec<Packet> = std::iter::from_fn(|| link.receive()).collect();
        assert_eq!(pkts.len(), sent.len() + 1);
        let far_pkt = pkts.pop().unwrap();
        assert_eq!(far_pkt.partial_csum(), None);
        assert_eq!(far_pkt.data(), &far_done[..]);
        for (p, f) in pkts.iter().zip(&sent) {
            assert_eq!(p.partial_csum(), Some(PartialCsum { start: 34, offset: 6 }));
            assert_eq!(p.data(), &f[..], "the frame crosses the switch unsummed");
        }

        // Towards a guest.
        assert_eq!(r.rx.post_rx(sent.len(), 9000), sent.len());
        for p in pkts {
            link.transmit(p);
        }
        assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), sent.len());
        let mut got = Vec::new();
        r.rx.reap_with_headers(&mut got);
        assert_eq!(got.len(), sent.len());
        for (i, (h, g)) in got.iter().enumerate() {
            if guest_csum {
                assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM, "frame {i}");
                assert_eq!((h.csum_start, h.csum_offset), (34, 6), "frame {i}");
                assert_eq!(g, &sent[i], "frame {i}: handed on as it came");
            } else {
                assert_eq!(h.flags, 0, "frame {i}");
                assert_eq!(g, &finished[i], "frame {i}: checksum finished");
            }
        }
        let done = if guest_csum { 0 } else { sent.len() as u64 };
        assert_eq!(r.vrx.stats().csum_completed, done);
        drop(link);
    }
    assert_no_leak();
}

// ---- interrupts and kicks

#[test]
fn signals_without_event_idx() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    assert!(!r.vtx.take_signal(), "nothing used yet");
    r.tx.send(&frame(60, 0));
    r.pull();
    assert!(r.vtx.take_signal());
    assert!(!r.vtx.take_signal(), "nothing new since");
    r.tx.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT);
    r.tx.send(&frame(60, 0));
    r.pull();
    assert!(!r.vtx.take_signal(), "the guest asked for no interrupts");
    r.tx.set_avail_flags(0);
    r.tx.send(&frame(60, 0));
    r.pull();
    assert!(r.vtx.take_signal());
    assert_no_leak();
}

#[test]
fn signals_with_event_idx() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
    let mut r = rig(features);
    // Interrupt when used passes 4 (i.e. when entry 4 is used: used idx 5).
    r.tx.set_used_event(4);
    let send = |r: &mut Rig, n| {
        for _ in 0..n {
            r.tx.send(&frame(60, 0));
        }
        r.pull();
    };
    send(&mut r, 1);
    assert!(r.vtx.take_signal(), "the first decision always signals");
    send(&mut r, 2); // used 3
    assert!(!r.vtx.take_signal());
    send(&mut r, 1); // used 4
    assert!(!r.vtx.take_signal());
    send(&mut r, 1); // used 5: crosses 4
    assert!(r.vtx.take_signal());
    send(&mut r, 3); // used 8: 4 is behind us
    assert!(!r.vtx.take_signal());
    r.tx.set_used_event(8);
    send(&mut r, 10); // used 18: crosses 8 within the batch
    assert!(r.vtx.take_signal());
    assert!(!r.vtx.take_signal());
    // An event a little ahead, passed within one batch.
    r.tx.set_used_event(18 + 2);
    send(&mut r, 3);
    assert!(r.vtx.take_signal());
    assert_no_leak();
}

#[test]
fn event_idx_across_index_wrap() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
    let mut r = rig_sized(features, 8);
    let mut sent = 0u32;
    r.tx.set_used_event(0xffff);
    while sent < 65534 {
        for _ in 0..6 {
            r.tx.send(&frame(14, 0));
        }
        r.pull();
        sent += 6;
        r.vtx.take_signal();
    }
    r.tx.set_used_event(r.vtx.used_idx().wrapping_add(3));
    for _ in 0..3 {
        r.tx.send(&frame(14, 0));
    }
    r.pull();
    assert!(!r.vtx.take_signal());
    r.tx.send(&frame(14, 0));
    r.pull();
    assert!(r.vtx.take_signal());
    assert_eq!(r.vtx.stats().packets as u32, sent + 4);
    assert_no_leak();
}

#[test]
fn kicks_suppressed() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    r.vtx.suppress_kicks();
    assert_eq!(r.tx.used_flags() & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);

    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
    let mut r = rig(features);
    r.vtx.suppress_kicks();
    assert_eq!(r.tx.avail_event(), 0xffff);
    for _ in 0..5 {
        r.tx.send(&frame(60, 0));
    }
    r.pull();
    // Not rewritten on every call (the driver reads it on every refill),
    // and still out of the driver's reach: vring_need_event(0xffff, 5, 0)
    // is false.
    assert_eq!(r.tx.avail_event(), 0xffff);
    // Rewritten, one behind our position, once we have moved 0x2000 on.
    while r.vtx.next_avail() < 0x2000 {
        for _ in 0..QSIZE / 2 {
            assert!(r.tx.send(&frame(60, 0)));
        }
        assert_eq!(r.pull().len(), QSIZE as usize / 2);
    }
    assert_eq!(r.tx.avail_event(), r.vtx.next_avail().wrapping_sub(1));
    assert_no_leak();
}

// ---- hostile guests

/// A guest TX chain written by hand at descriptor `head`; returns the stats after the device walked it.
fn tx_hostile(features: u64, setup: impl FnOnce(&mut DriverQueue, &DriverMemory)) -> (QueueStats, Vec<Vec<u8>>, u16) {
    let mut r = rig(features);
    setup(&mut r.tx, &r.mem);
    let got = r.pull();
    let s = r.vtx.stats().clone();
    let used = r.tx.used_idx();
    drop(r);
    assert_no_leak();
    (s, got, used)
}

fn ind() -> u64 {
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC)
}

#[test]
fn hostile_tx_descriptors_are_counted_drops() {
    let v1 = bit(VIRTIO_F_VERSION_1);
    type Setup = Box<dyn Fn(&mut DriverQueue, &DriverMemory)>;
    let cases: Vec<(&str, u64, Setup)> = vec![
        (
            "outside memory",
            v1,
            Box::new(|q, _| {
                q.write_desc(0, MEM as u64 - 10, 100, 0, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "far outside",
            v1,
            Box::new(|q, _| {
                q.write_desc(0, 1 << 60, 100, 0, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "addr + len overflows",
            v1,
            Box::new(|q, _| {
                q.write_desc(0, u64::MAX - 50, 100, 0, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "loop to itself",
            v1,
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc(0, a, 100, VIRTQ_DESC_F_NEXT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "loop of two",
            v1,
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc(0, a, 100, VIRTQ_DESC_F_NEXT, 1);
                q.write_desc(1, a, 100, VIRTQ_DESC_F_NEXT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "next beyond the table",
            v1,
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc(0, a, 100, VIRTQ_DESC_F_NEXT, QSIZE);
                q.push_avail_raw(0);
            }),
        ),
        (
            "writable buffer to read",
            v1,
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc(0, a, 100, VIRTQ_DESC_F_WRITE, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect not negotiated",
            v1,
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 100, 0, 0);
                q.write_desc(0, a, 16, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "nested indirect",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 16, VIRTQ_DESC_F_INDIRECT, 0);
                q.write_desc_at(a + 64, a + 128, 100, 0, 0);
                q.write_desc(0, a, 16, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect table length not a multiple of 16",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 100, 0, 0);
                q.write_desc(0, a, 17, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "empty indirect table",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc(0, a, 0, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect table outside memory",
            ind(),
            Box::new(|q, _| {
                q.write_desc(0, MEM as u64 - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect with next",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 100, 0, 0);
                q.write_desc(0, a, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
                q.write_desc(1, a, 100, 0, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "loop inside an indirect table",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 10, VIRTQ_DESC_F_NEXT, 1);
                q.write_desc_at(a + 16, a + 64, 10, VIRTQ_DESC_F_NEXT, 0);
                q.write_desc(0, a, 32, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect table longer than MAX_CHAIN",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                let n = 300u16;
                for j in 0..n {
                    let flags = if j + 1 < n { VIRTQ_DESC_F_NEXT } else { 0 };
                    q.write_desc_at(a + 16 * j as u64, a + 8192, 1, flags, j + 1);
                }
                q.write_desc(0, a, 16 * n as u32, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
        (
            "indirect chain next beyond its table",
            ind(),
            Box::new(|q, _| {
                let a = q.slot_gpa(0);
                q.write_desc_at(a, a + 64, 20, VIRTQ_DESC_F_NEXT, 2);
                q.write_desc(0, a, 32, VIRTQ_DESC_F_INDIRECT, 0);
                q.push_avail_raw(0);
            }),
        ),
    ];
    for (name, features, setup) in cases {
        let (s, got, used) = tx_hostile(features, |q, m| setup(q, m));
        assert!(got.is_empty(), "{name}");
        assert_eq!(s.bad_descriptor, 1, "{name}: {s:?}");
        assert_eq!(s.broken, 0, "{name}");
        assert_eq!(used, 1, "{name}: the chain goes back on the used ring");
    }
}

#[test]
fn over_long_chain_in_the_table() {
    // A well-formed chain of 300 descriptors in a 512 ring: longer than MAX_CHAIN.
    let mut r = rig_sized(bit(VIRTIO_F_VERSION_1), 512);
    let a = r.tx.slot_gpa(0);
    for j in 0..300u16 {
        let flags = if j + 1 < 300 { VIRTQ_DESC_F_NEXT } else { 0 };
        r.tx.write_desc(j, a, 1, flags, j + 1);
    }
    r.tx.push_avail_raw(0);
    assert!(r.pull().is_empty());
    assert_eq!(r.vtx.stats().bad_descriptor, 1);
    // 200 descriptors of 1 byte (12 header + 188 frame bytes): fine.
    for j in 0..200u16 {
        let flags = if j + 1 < 200 { VIRTQ_DESC_F_NEXT } else { 0 };
        r.tx.write_desc(j, a + j as u64, 1, flags, j + 1);
    }
    r.mem.write(a, &frame(200, 0));
    r.tx.push_avail_raw(0);
    let got = r.pull();
    assert_eq!(got, vec![frame(200, 0)[12..].to_vec()]);
}

#[test]
fn zero_length_descriptors() {
    let v1 = bit(VIRTIO_F_VERSION_1);
    // TX: an empty chain is too short for a header.
    let (s, got, used) = tx_hostile(v1, |q, _| {
        q.write_desc(0, q.slot_gpa(0), 0, 0, 0);
        q.push_avail_raw(0);
    });
    assert!(got.is_empty());
    assert_eq!((s.too_short, used), (1, 1));
    // TX: zero-length pieces between good ones are skipped.
    let (s, got, _) = tx_hostile(v1, |q, m| {
        let a = q.slot_gpa(0);
        m.write(a, &[0u8; 12]);
        m.write(a + 12, &frame(50, 9));
        q.write_desc(0, 0, 0, VIRTQ_DESC_F_NEXT, 1);
        q.write_desc(1, a, 12, VIRTQ_DESC_F_NEXT, 2);
        q.write_desc(2, a, 0, VIRTQ_DESC_F_NEXT, 3);
        q.write_desc(3, a + 12, 50, 0, 0);
        q.push_avail_raw(0);
    });
    assert_eq!(got, vec![frame(50, 9)], "{s:?}");
    assert_eq!(s.bad_descriptor, 0);
    // RX: a zero-length receive buffer is given back empty, the next one used.
    let mut r = rig(v1);
    r.rx.write_desc(0, r.rx.slot_gpa(0), 0, VIRTQ_DESC_F_WRITE, 0);
    r.rx.push_avail_raw(0);
    r.rx.write_desc(1, r.rx.slot_gpa(1), 2048, VIRTQ_DESC_F_WRITE, 0);
    r.rx.push_avail_raw(1);
    let link = Link::new(4);
    link.transmit(Packet::from_bytes(&frame(100, 1)));
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 1);
    assert_eq!(r.rx.used_elem(0), (0, 0));
    assert_eq!(r.rx.used_elem(1), (1, 112));
    assert_eq!(r.vrx.stats().bad_descriptor, 1);
    drop(link);
    assert_no_leak();
}

#[test]
fn hostile_rx_descriptors_are_counted() {
    let v1 = bit(VIRTIO_F_VERSION_1);
    for (name, bad) in [
        ("outside memory", (MEM as u64 - 100, 2048u32, VIRTQ_DESC_F_WRITE)),
        ("overflow", (u64::MAX - 10, 2048, VIRTQ_DESC_F_WRITE)),
        ("read-only receive buffer", (0x100_0000, 2048, 0)),
        ("smaller than the header", (0x100_0000, 4, VIRTQ_DESC_F_WRITE)),
    ] {
        for mrg in [false, true] {
            let f = if mrg { v1 | bit(VIRTIO_NET_F_MRG_RXBUF) } else { v1 };
            let mut r = rig(f);
            // The hostile chain at the last descriptor, a good one (descriptor 0) behind it.
            let last = QSIZE - 1;
            r.rx.write_desc(last, bad.0, bad.1, bad.2, 0);
            r.rx.push_avail_raw(last);
            assert_eq!(r.rx.post_rx(1, 2048), 1);
            let got = r.push(&[frame(100, 5)]);
            assert_eq!(got.len(), 1, "{name} mrg {mrg}");
            assert_eq!(got[0].1, frame(100, 5));
            assert_eq!(r.vrx.stats().bad_descriptor, 1, "{name} mrg {mrg}");
            assert_eq!(r.rx.used_elem(0), (last as u32, 0), "{name}: the bad chain comes back empty");
        }
    }
    // MRG: a bad chain after a good one that is too small: both come back empty, the packet is dropped.
    let mut r = rig(v1 | bit(VIRTIO_NET_F_MRG_RXBUF));
    r.rx.write_desc(0, r.rx.slot_gpa(0), 100, VIRTQ_DESC_F_WRITE, 0);
    r.rx.push_avail_raw(0);
    r.rx.write_desc(1, MEM as u64, 100, VIRTQ_DESC_F_WRITE, 0);
    r.rx.push_avail_raw(1);
    let link = Link::new(4);
    link.transmit(Packet::from_bytes(&frame(1000, 1)));
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 0);
    assert!(link.is_empty());
    assert_eq!(r.rx.used_idx(), 2);
    assert_eq!((r.rx.used_elem(0), r.rx.used_elem(1)), ((0, 0), (1, 0)));
    drop(link);
    assert_no_leak();
}

#[test]
fn bad_avail_index_breaks_the_queue() {
    for dir in ["tx", "rx"] {
        let mut r = rig(bit(VIRTIO_F_VERSION_1));
        let q = if dir == "tx" { &mut r.tx } else { &mut r.rx };
        q.set_avail_idx(QSIZE + 1);
        let link = Link::new(4);
        link.transmit(Packet::from_bytes(&frame(60, 0)));
        let n = if dir == "tx" {
            r.vtx.receive_from_guest(&r.gm, None, 64, None, |_| panic!("no packet from a broken queue"))
        } else {
            r.vrx.transmit_to_guest(&r.gm, None, &link)
        };
        assert_eq!(n, 0);
        let v = if dir == "tx" { &mut r.vtx } else { &mut r.vrx };
        assert!(v.broken().is_some(), "{dir}");
        assert_eq!((v.stats().bad_index, v.stats().broken), (1, 1));
        assert!(!v.take_signal());
        // Stays stopped even when the index comes back.
        let q = if dir == "tx" { &mut r.tx } else { &mut r.rx };
        q.set_avail_idx(1);
        let v = if dir == "tx" { &mut r.vtx } else { &mut r.vrx };
        assert_eq!(v.receive_from_guest(&r.gm, None, 64, None, |_| ()), 0);
        drop(link);
    }
    // An index exactly `size` ahead is legal (a full ring).
    let mut r = rig_sized(bit(VIRTIO_F_VERSION_1), 8);
    for _ in 0..8 {
        assert!(r.tx.send(&frame(60, 0)));
    }
    assert_eq!(r.pull().len(), 8);
    assert!(r.vtx.broken().is_none());
    assert_no_leak();
}

#[test]
fn head_beyond_the_table_breaks_the_queue() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    r.tx.push_avail_raw(QSIZE);
    assert!(r.pull().is_empty());
    assert!(r.vtx.broken().is_some());
    assert_no_leak();
}

#[test]
fn transmit_keeps_order_and_stops_at_a_head_beyond_the_table() {
    // The frames before a bad head go out, in order, with their used
    // entries; a bad chain among them is given back empty in its place;
    // the queue stops at the bad head and takes nothing after it. 40
    // chains: more than one batch of anything the queue does in batches.
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    let mut sent = Vec::new();
    for k in 0..40u8 {
        if k == 17 {
            // A chain outside memory: dropped and counted, the rest go on.
            r.tx.write_desc(QSIZE - 1, MEM as u64 - 10, 100, 0, 0);
            r.tx.push_avail_raw(QSIZE - 1);
        } else {
            let f = frame(60 + k as usize, k);
            assert!(r.tx.send(&f));
            sent.push(f);
        }
    }
    r.tx.push_avail_raw(QSIZE + 3);
    let f = frame(80, 99);
    assert!(r.tx.send(&f), "a frame after the bad head");
    let got = r.pull();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "every frame before the bad head, in order");
    let s = r.vtx.stats().clone();
    assert_eq!(s.bad_descriptor, 2, "{s:?}");
    assert!(r.vtx.broken().is_some());
    assert_eq!(r.tx.used_idx(), 40, "every chain before the bad head used, none after");
    drop(r);
    assert_no_leak();
}

#[test]
fn rings_outside_memory_are_refused() {
    let mem = DriverMemory::new(1 << 20).unwrap();
    let gm = mem.guest_memory();
    let q = DriverQueue::new(&mem, 256, 0x1000, 0x10000, 0x80000, 0);
    let good = q.addr();
    assert!(Virtqueue::start(256, &good, 0, 0, &gm).is_ok());
    assert!(Virtqueue::start(0, &good, 0, 0, &gm).is_err());
    assert!(Virtqueue::start(100, &good, 0, 0, &gm).is_err());
    let base = mem.bytes() as u64;
    for bad in [
        VringAddr { desc_user_addr: good.desc_user_addr + 8, ..good },
        VringAddr { avail_user_addr: good.avail_user_addr + 1, ..good },
        VringAddr { used_user_addr: good.used_user_addr + 2, ..good },
        VringAddr { used_user_addr: base + (1 << 20) - 100, ..good },
        VringAddr { desc_user_addr: 0, ..good },
        VringAddr { avail_user_addr: u64::MAX - 1, ..good },
    ] {
        assert!(Virtqueue::start(256, &bad, 0, 0, &gm).is_err(), "{bad:?}");
    }
    assert!(Virtqueue::start(256, &good, 0, 0, &GuestMemory::empty()).is_err());
    assert!(Virtqueue::start(256, &good, 0, bit(VIRTIO_F_RING_PACKED), &gm).is_err());
}

// ---- memory

fn memfd(size: usize) -> OwnedFd {
    // SAFETY: plain syscalls; the fd is fresh and owned from here on.
    unsafe {
        let fd = libc::memfd_create(c"log".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, size as i64), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn buffer_across_two_regions_is_split() {
    // One memfd shown to the device as two regions adjacent in gpa.
    let mem = DriverMemory::new(MEM).unwrap();
    let half = (MEM / 2) as u64;
    let base = mem.bytes() as u64;
    let specs = [
        RegionSpec { guest_phys_addr: 0, memory_size: half, userspace_addr: base, mmap_offset: 0 },
        RegionSpec { guest_phys_addr: half, memory_size: half, userspace_addr: base + half, mmap_offset: half },
    ];
    let fds = vec![mem.fd().try_clone_to_owned().unwrap(), mem.fd().try_clone_to_owned().unwrap()];
    let gm = GuestMemory::map(&specs, fds).unwrap();
    let f = bit(VIRTIO_F_VERSION_1);
    let mut tx = DriverQueue::new(&mem, 16, 0x1000, 0x10_0000, 0x10_0000, f);
    let mut vtx = Virtqueue::start(16, &tx.addr(), 0, f, &gm).unwrap();
    let at = half - 100;
    let mut bytes = vec![0u8; 12]; // a zero net header, then the frame
    bytes.extend(frame(1000, 3));
    mem.write(at, &bytes);
    tx.write_desc(0, at, bytes.len() as u32, 0, 0);
    tx.push_avail_raw(0);
    let mut got = Vec::new();
    vtx.receive_from_guest(&gm, None, 16, None, |p| got.push(p.data().to_vec()));
    assert_eq!(got, vec![bytes[12..].to_vec()], "{:?}", vtx.stats());
    assert_eq!(vtx.stats().split_buffers, 1);

    let mut rx = DriverQueue::new(&mem, 16, 0x8000, 0x20_0000, 0x10_0000, f);
    let mut vrx = Virtqueue::start(16, &rx.addr(), 0, f, &gm).unwrap();
    rx.write_desc(0, at, 2048, VIRTQ_DESC_F_WRITE, 0);
    rx.push_avail_raw(0);
    let link = Link::new(4);
    link.transmit(Packet::from_bytes(&frame(1500, 4)));
    assert_eq!(vrx.transmit_to_guest(&gm, None, &link), 1);
    assert_eq!(&mem.slice(at + 12, 1500), &frame(1500, 4).as_slice());
    assert_eq!(vrx.stats().split_buffers, 1);
    drop(link);
    assert_no_leak();
}

#[test]
fn new_memory_table_remaps_running_rings() {
    let mut r = rig(bit(VIRTIO_F_VERSION_1));
    r.tx.send(&frame(60, 1));
    assert_eq!(r.pull().len(), 1);
    // The frontend sends the same memory again (QEMU on hotplug): a new GuestMemory.
    r.gm = r.mem.guest_memory();
    r.tx.send(&frame(60, 2));
    assert_eq!(r.pull(), vec![frame(60, 2)]);
    assert!(r.vtx.broken().is_none());
    // Memory that no longer holds the rings stops the queue.
    let other = DriverMemory::new(4096).unwrap();
    r.gm = other.guest_memory();
    assert!(r.pull().is_empty());
    assert!(r.vtx.broken().is_some());
    assert_no_leak();
}

#[test]
fn dirty_log_marks_written_pages() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_EVENT_IDX);
    let mem = DriverMemory::new(MEM).unwrap();
    let gm = mem.guest_memory();
    let mut rx = DriverQueue::new(&mem, 64, 0x10_0000, 0x100_0000, 64 * 8192, features);
    let mut tx = DriverQueue::new(&mem, 64, 0x20_0000, 0x180_0000, 64 * 8192, features);
    let bitmap = (MEM / 4096 / 8) as u64;
    let log = DirtyLog::map(memfd(4096 + bitmap as usize), bitmap, 4096).unwrap();
    let logged = |q: &DriverQueue| VringAddr { flags: VHOST_VRING_F_LOG, ..q.addr() };
    let mut vrx = Virtqueue::start(64, &logged(&rx), 0, features, &gm).unwrap();
    let mut vtx = Virtqueue::start(64, &logged(&tx), 0, features, &gm).unwrap();
    vrx.suppress_kicks_logged(Some(&log));

    rx.post_rx(8, 4096);
    let link = Link::new(8);
    link.transmit(Packet::from_bytes(&frame(9000, 1))); // 3 buffers
    link.transmit(Packet::from_bytes(&frame(100, 2))); // 1 buffer
    assert_eq!(vrx.transmit_to_guest(&gm, Some(&log), &link), 2);
    for i in 0..4u16 {
        assert!(log.is_dirty(rx.slot_gpa(i)), "buffer {i}");
    }
    // Buffer 3 holds 112 bytes: only its first page.
    assert!(!log.is_dirty(rx.slot_gpa(3) + 4096));
    assert!(!log.is_dirty(rx.slot_gpa(4)), "an unused buffer");
    assert!(log.is_dirty(rx.used_gpa()), "used ring");
    assert!(!log.is_dirty(rx.desc_gpa() - 4096));
    assert!(!log.is_dirty(tx.used_gpa()), "nothing written to the other ring yet");

    // TX writes only its used ring.
    tx.send(&frame(500, 3));
    vtx.receive_from_guest(&gm, Some(&log), 64, None, drop);
    assert!(log.is_dirty(tx.used_gpa()));
    assert!(!log.is_dirty(tx.slot_gpa(0)), "the device only read that buffer");
    assert_eq!(log.beyond(), 0);

    // Without VHOST_VRING_F_LOG the used ring is not logged; buffers still are.
    let mut rx2 = DriverQueue::new(&mem, 64, 0x30_0000, 0x140_0000, 64 * 8192, features);
    let mut vrx2 = Virtqueue::start(64, &rx2.addr(), 0, features, &gm).unwrap();
    rx2.post_rx(1, 4096);
    link.transmit(Packet::from_bytes(&frame(100, 4)));
    assert_eq!(vrx2.transmit_to_guest(&gm, Some(&log), &link), 1);
    assert!(log.is_dirty(rx2.slot_gpa(0)));
    assert!(!log.is_dirty(rx2.used_gpa()));
    drop(link);
    assert_no_leak();
}

#[test]
fn ring_wraps_many_times() {
    for features in [bit(VIRTIO_F_VERSION_1), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)] {
        let mut r = rig_sized(features, 16);
        let mut n = 0u32;
        for round in 0..3000u32 {
            let k = (round % 7 + 1) as usize;
            let frames: Vec<Vec<u8>> =
                (0..k).map(|i| frame(60 + (round as usize * 13 + i) % 1400, round as u8)).collect();
            for f in &frames {
                assert!(r.tx.send(f));
            }
            let got = r.pull();
            assert_eq!(got, frames);
            r.rx.post_rx(k, 2048);
            let back = r.push(&frames);
            assert_eq!(back.into_iter().map(|x| x.1).collect::<Vec<_>>(), frames);
            n += k as u32;
        }
        assert_eq!(r.vtx.stats().packets, n as u64);
        assert_eq!(r.vrx.stats().packets, n as u64);
        assert_eq!(r.vtx.next_avail(), n as u16);
    }
    assert_no_leak();
}

#[test]
fn too_many_pieces_for_one_packet() {
    // MRG_RXBUF chains of 200 one-byte buffers each (indirect): a packet
    // needing more than MAX_SEGS pieces is dropped, a smaller one fits.
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_INDIRECT_DESC);
    let mut r = rig(features);
    r.rx.rx_indirect = true;
    r.rx.rx_pieces = 200;
    assert_eq!(r.rx.post_rx(20, 200), 20);
    let got = r.push(&[frame(3000, 1), frame(1000, 2)]);
    assert_eq!(r.vrx.stats().no_room, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(1000, 2));
    assert_eq!(got[0].0.num_buffers, 6);
    assert_no_leak();
}

/// Net headers and used entries are compared before they are stored (a
/// line left alone stays in the driver's cache). Buffers and a used ring
/// holding almost what the device will write, one byte off in turn, must
/// still end up holding exactly that.
#[test]
fn stale_headers_and_used_entries_are_rewritten() {
    for (name, features) in feature_sets() {
        let hlen = net_hdr_len(features);
        let frames: Vec<Vec<u8>> = (0..64).map(|i| frame(60 + i, i as u8)).collect();
        for flip in 0..=hlen {
            let mut r = rig(features);
            assert_eq!(r.rx.post_rx(frames.len(), 2048), frames.len());
            // Chains come off the free list in order: chain i is descriptor
            // i, its buffer slot i, and it is used entry i.
            for (i, f) in frames.iter().enumerate() {
                let mut hdr = NetHdr { num_buffers: if hlen == 12 { 1 } else { 0 }, ..NetHdr::default() }.to_bytes();
                if flip < hlen && i % 2 == 0 {
                    hdr[flip] ^= 0x40;
                }
                r.mem.write(r.rx.slot_gpa(i as u16), &hdr[..hlen]);
                let len = (hlen + f.len()) as u32 + (i % 3 == 1) as u32;
                let id = i as u32 + (i % 5 == 2) as u32;
                let mut elem = id.to_le_bytes().to_vec();
                elem.extend_from_slice(&len.to_le_bytes());
                r.mem.write(r.rx.used_gpa() + 4 + 8 * i as u64, &elem);
            }
            let got = r.push(&frames);
            assert_eq!(got.len(), frames.len(), "{name} flip {flip}");
            for (i, ((h, g), f)) in got.iter().zip(&frames).enumerate() {
                assert!(g == f, "{name} flip {flip}: frame {i}");
                assert_eq!(h.num_buffers, if hlen == 12 { 1 } else { 0 }, "{name} flip {flip}: frame {i}");
                assert_eq!((h.flags, h.gso_type, h.hdr_len, h.gso_size), (0, 0, 0, 0), "{name} flip {flip}: frame {i}");
                assert_eq!((h.csum_start, h.csum_offset), (0, 0), "{name} flip {flip}: frame {i}");
            }
            assert_eq!(r.rx.bad_used, 0, "{name} flip {flip}");
        }
    }
    assert_no_leak();
}

/// `transmit_to_guest_upto` stops after `max` packets (a device with
/// several RX queues gives each a burst in turn) and leaves the rest on
/// the link; what it delivered is on the used ring when it returns.
#[test]
fn transmit_upto_stops_after_max() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut r = rig(features);
    assert_eq!(r.rx.post_rx(200, 2048), 200);
    let link = Link::new(1024);
    for i in 0..200 {
        link.transmit(Packet::from_bytes(&frame(64, i as u8)));
    }
    assert_eq!(r.vrx.transmit_to_guest_upto(&r.gm, None, &link, 40, |_| false), 40);
    assert_eq!(r.rx.used_idx(), 40);
    assert_eq!(link.nreadable(), 160);
    assert_eq!(r.vrx.transmit_to_guest(&r.gm, None, &link), 160);
    assert_eq!(r.rx.used_idx(), 200);
    let mut out = Vec::new();
    r.rx.reap(&mut out);
    let want: Vec<Vec<u8>> = (0..200).map(|i| frame(64, i as u8)).collect();
    assert_eq!(out, want);
    drop(link);
    assert_no_leak();
}

/// Buffers for a batch of packets are gathered before any is copied. Bad
/// chains and dropped packets inside and across batches must still leave
/// the used ring in the order the guest offered its chains (we offer
/// IN_ORDER), with the right lengths, and every delivered frame whole.
#[test]
fn batches_keep_ring_order_across_drops_and_bad_chains() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let hlen = net_hdr_len(features) as u32;
    let mut r = rig(features);
    // 120 chains: every 7th (from the 4th) points outside memory, the rest
    // are 2048-byte buffers taken in order from descriptor 0 up.
    let mut offered = Vec::new(); // (head, good)
    let mut good = 0u16;
    for k in 0..120u16 {
        if k % 7 == 3 {
            let d = QSIZE - 1 - k;
            r.rx.write_desc(d, MEM as u64 - 100, 2048, VIRTQ_DESC_F_WRITE, 0);
            r.rx.push_avail_raw(d);
            offered.push((d, false));
        } else {
            assert_eq!(r.rx.post_rx(1, 2048), 1);
            offered.push((good, true));
            good += 1;
        }
    }
    // 100-byte frames with some that need three buffers (5000 bytes): one
    // of those meets a bad chain after a good one and is dropped with both.
    let frames: Vec<Vec<u8>> = (0..80).map(|i| frame(if i % 9 == 4 { 5000 } else { 100 }, i as u8)).collect();

    // What the spec asks for, chain by chain.
    let mut want_used = Vec::new(); // (head, len)
    let mut want_frames = Vec::new();
    let mut at = 0;
    for f in &frames {
        let need = hlen + f.len() as u32;
        let mut taken = Vec::new();
        let mut cap = 0;
        let mut dropped = false;
        while cap < need && at < offered.len() {
            let (head, ok) = offered[at];
            at += 1;
            if !ok {
                if taken.is_empty() {
                    want_used.push((head as u32, 0));
                    continue;
                }
                want_used.extend(taken.iter().map(|&h| (h as u32, 0)));
                want_used.push((head as u32, 0));
                dropped = true;
                break;
            }
            taken.push(head);
            cap += 2048;
        }
        if dropped {
            continue;
        }
        if cap < need {
            break; // out of buffers: the rest waits on the link
        }
        let mut left = need;
        for h in taken {
            let n = left.min(2048);
            want_used.push((h as u32, n));
            left -= n;
        }
        want_frames.push(f.clone());
    }
    assert!(want_frames.len() > 2 * 32, "the test should span several batches");

    let link = Link::new(1024);
    for f in &frames {
        link.transmit(Packet::from_bytes(f));
    }
    let sent = r.vrx.transmit_to_guest(&r.gm, None, &link);
    assert_eq!(sent, want_frames.len());
    assert_eq!(r.rx.used_idx() as usize, want_used.len());
    for (i, w) in want_used.iter().enumerate() {
        assert_eq!(r.rx.used_elem(i as u16), *w, "used entry {i}");
    }
    let mut got = Vec::new();
    r.rx.reap(&mut got);
    assert!(got == want_frames, "frames differ");
    assert_eq!(r.vrx.stats().bad_descriptor as usize, offered[..at].iter().filter(|o| !o.1).count());
    drop(link);
    assert_no_leak();
}

/// A batch ends early when its packets hold many buffer pieces (the
/// scratch space is bounded); the next batch goes on where it stopped.
#[test]
fn batches_end_early_on_many_pieces() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_RING_F_INDIRECT_DESC);
    let mut r = rig(features);
    r.rx.rx_indirect = true;
    r.rx.rx_pieces = 200;
    assert_eq!(r.rx.post_rx(60, 200), 60);
    // 6 chains of 200 pieces each per frame: 1200 pieces, so at most two
    // frames fit the scratch space of one batch.
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(1000, i as u8)).collect();
    let got = r.push(&frames);
    assert_eq!(got.len(), frames.len());
    for (i, (h, g)) in got.iter().enumerate() {
        assert!(*g == frames[i], "frame {i}");
        assert_eq!(h.num_buffers, 6, "frame {i}");
    }
    assert_eq!(r.rx.used_idx(), 48);
    assert_eq!(r.vrx.stats().no_room, 0);
    assert_no_leak();
}
