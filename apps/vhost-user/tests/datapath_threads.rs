//! Guest and device in two threads over shared memory, as they run for
//! real: the ring's memory ordering (Acquire/Release on the indices) is what
//! keeps every frame whole and in order here.

use std::sync::atomic::{AtomicBool, Ordering};

use snabb_apps_vhost_user::driver::{DriverMemory, DriverQueue};
use snabb_apps_vhost_user::virtio::*;
use snabb_apps_vhost_user::virtq::Virtqueue;
use snabb_core::{Link, Packet, packet};

const FRAMES: u32 = 20_000;

/// Frame `i`: its number, then bytes that depend on it, of a length that varies.
fn frame(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 7919) % 2000;
    let mut f: Vec<u8> = (0..len).map(|k| (k as u32).wrapping_mul(13).wrapping_add(i) as u8).collect();
    f[..4].copy_from_slice(&i.to_le_bytes());
    f
}

#[test]
fn guest_to_switch_across_threads() {
    for features in [bit(VIRTIO_F_VERSION_1), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX)] {
        let mem = DriverMemory::new(16 << 20).unwrap();
        let mut q = DriverQueue::new(&mem, 64, 0x1000, 0x10_0000, 8 << 20, features);
        let addr = q.addr();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let mem = &mem;
            let done = &done;
            s.spawn(move || {
                let mut none = Vec::new();
                for i in 0..FRAMES {
                    while !q.send(&frame(i)) {
                        q.reap(&mut none);
                        std::thread::yield_now();
                    }
                }
                while !done.load(Ordering::Acquire) {
                    q.reap(&mut none);
                    std::thread::yield_now();
                }
            });
            let gm = mem.guest_memory();
            let mut v = Virtqueue::start(64, &addr, 0, features, &gm).unwrap();
            let mut next = 0u32;
            while next < FRAMES {
                let n = v.receive_from_guest(&gm, None, 32, None, |p: Packet| {
                    assert_eq!(p.data(), frame(next).as_slice(), "frame {next}");
                    next += 1;
                });
                if n == 0 {
                    std::thread::yield_now();
                }
            }
            assert!(v.broken().is_none());
            done.store(true, Ordering::Release);
        });
    }
    assert_eq!(packet::stats().in_use, 0);
}

#[test]
fn switch_to_guest_across_threads() {
    for features in [bit(VIRTIO_F_VERSION_1), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)] {
        let mem = DriverMemory::new(16 << 20).unwrap();
        let mut q = DriverQueue::new(&mem, 64, 0x1000, 0x10_0000, 8 << 20, features);
        let addr = q.addr();
        std::thread::scope(|s| {
            let mem = &mem;
            let guest = s.spawn(move || {
                // Small buffers with MRG_RXBUF, so that packets span several.
                let buf = if has(features, VIRTIO_NET_F_MRG_RXBUF) { 512 } else { 2048 };
                let mut next = 0u32;
                let mut got = Vec::new();
                while next < FRAMES {
                    q.post_rx(q.num_free(), buf);
                    got.clear();
                    if q.reap(&mut got) == 0 {
                        std::thread::yield_now();
                    }
                    for f in &got {
                        assert_eq!(f.as_slice(), frame(next).as_slice(), "frame {next}");
                        next += 1;
                    }
                }
            });
            let gm = mem.guest_memory();
            let mut v = Virtqueue::start(64, &addr, 0, features, &gm).unwrap();
            let link = Link::new(256);
            let mut i = 0u32;
            while v.stats().packets < FRAMES as u64 {
                while i < FRAMES && !link.is_full() {
                    link.transmit(Packet::from_bytes(&frame(i)));
                    i += 1;
                }
                if v.transmit_to_guest(&gm, None, &link) == 0 {
                    std::thread::yield_now();
                }
                assert!(v.broken().is_none());
                assert_eq!(v.stats().no_room + v.stats().bad_descriptor, 0);
            }
            guest.join().unwrap();
        });
    }
    assert_eq!(packet::stats().in_use, 0);
}
