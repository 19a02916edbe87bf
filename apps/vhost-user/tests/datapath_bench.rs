//! A rough measure of the device side alone (ignored by default: speed is
//! for benchmarks, not tests). The guest side is reduced to re-posting the
//! same descriptors by index, so that the time is the device's.
//!
//!   CARGO_TARGET_DIR=... cargo test --release -p snabb-apps-vhost-user \
//!       --test datapath_bench -- --ignored --nocapture

use std::time::Instant;

use snabb_apps_vhost_user::driver::{DriverMemory, DriverQueue};
use snabb_apps_vhost_user::memory::GuestMemory;
use snabb_apps_vhost_user::virtio::*;
use snabb_apps_vhost_user::virtq::Virtqueue;
use snabb_core::{Link, Packet};

const SIZE: u16 = 256;
const BATCH: u16 = 64;
const PACKETS: u64 = 4_000_000;

fn setup(features: u64, rx: bool, len: u32) -> (DriverMemory, GuestMemory, DriverQueue, Virtqueue) {
    let mem = DriverMemory::new(16 << 20).unwrap();
    let mut q = DriverQueue::new(&mem, SIZE, 0x1000, 0x10_0000, 8 << 20, features);
    let flags = if rx { VIRTQ_DESC_F_WRITE } else { 0 };
    for i in 0..SIZE {
        q.write_desc(i, q.slot_gpa(i), len, flags, 0);
        // A zero net header in front of each TX frame.
        mem.write(q.slot_gpa(i), &[0u8; 12]);
    }
    let gm = mem.guest_memory();
    let v = Virtqueue::start(SIZE, &q.addr(), 0, features, &gm).unwrap();
    (mem, gm, q, v)
}

/// Post BATCH more heads (the same descriptors, round robin).
fn repost(q: &mut DriverQueue, v: &Virtqueue) {
    while q.avail_idx().wrapping_sub(v.next_avail()) < SIZE - BATCH {
        let i = q.avail_idx();
        q.write_avail_entry(i, i & (SIZE - 1));
        q.set_avail_idx(i.wrapping_add(1));
    }
}

#[test]
#[ignore]
fn bench_device_side() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    for frame in [60usize, 1514] {
        // Guest -> switch.
        let (_mem, gm, mut q, mut v) = setup(features, false, 12 + frame as u32);
        let t = Instant::now();
        let mut n = 0u64;
        while n < PACKETS {
            repost(&mut q, &v);
            n += v.receive_from_guest(&gm, None, BATCH as usize, None, drop) as u64;
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!("guest->switch {frame:5} B: {:.2} Mpps ({:.1} ns/packet)", n as f64 / s / 1e6, s * 1e9 / n as f64);

        // Switch -> guest.
        let (_mem, gm, mut q, mut v) = setup(features, true, 2048);
        let link = Link::new(1024);
        let template = Packet::from_bytes(&vec![0x5a; frame]);
        let t = Instant::now();
        let mut n = 0u64;
        while n < PACKETS {
            repost(&mut q, &v);
            for _ in 0..BATCH {
                link.transmit(template.clone());
            }
            n += v.transmit_to_guest(&gm, None, &link) as u64;
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "switch->guest {frame:5} B: {:.2} Mpps ({:.1} ns/packet, packet clone included)",
            n as f64 / s / 1e6,
            s * 1e9 / n as f64
        );
        drop(link);
    }
}
