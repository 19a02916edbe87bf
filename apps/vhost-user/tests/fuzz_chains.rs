//! Fuzzing the chain walker: a seeded random guest writes random
//! descriptors, indirect tables, avail entries and indices, and the device
//! runs both directions over them. For SNABB_FUZZ_SECS seconds (default 2)
//! per test; `fuzz_concurrent_scribbling` does the same from a second
//! thread while the device runs.
//!
//! Guest memory is laid out so that what the device may write is known:
//!
//!   0x00000  TX ring            the device writes only its used ring
//!   0x04000  RX ring            likewise
//!   0x08000  canary
//!   0x10000  read-only area     TX buffers and TX indirect tables, then
//!   0x90000                     RX indirect tables (apart, so that an RX
//!                               descriptor never finds a TX table): the
//!                               device only reads them
//!   0x110000 canary
//!   0x120000 RX arena           receive buffers: the device may write
//!   0x220000 canary             to the end of memory
//!
//! Descriptors either stay wholly inside their area or are "wild" (beyond
//! memory, overflowing, crossing its end). After every device call the
//! canaries, the read-only area, the descriptor tables and the avail rings
//! must be as they were, and nothing may have panicked. Seeds are printed
//! so that a failure can be replayed with SNABB_FUZZ_SEED (hex); a run can
//! start from another seed with SNABB_FUZZ_BASE (hex).

mod common;
use common::*;

use std::time::{Duration, Instant};

use snabb_apps_vhost_user::driver::{DriverMemory, DriverQueue, ring_bytes};
use snabb_apps_vhost_user::memory::{DirtyLog, GuestMemory};
use snabb_apps_vhost_user::virtio::*;
use snabb_apps_vhost_user::virtq::{Virtqueue, VringAddr};
use snabb_core::{Link, Packet, packet};

const DEV: u64 = 0x30_0000;
const TX_RING: u64 = 0x0;
const RX_RING: u64 = 0x4000;
const RO: (u64, u64) = (0x1_0000, 0x11_0000);
/// Where TX buffers and tables go, and where RX tables go.
const RO_TX: (u64, u64) = (0x1_0000, 0x9_0000);
const RO_RX_TABLES: (u64, u64) = (0x9_0000, 0x11_0000);
const RX_ARENA: (u64, u64) = (0x12_0000, 0x22_0000);
const CANARIES: [(u64, u64); 3] = [(0x8000, 0x1_0000), (0x11_0000, 0x12_0000), (0x22_0000, DEV)];

fn canary_byte(gpa: u64) -> u8 {
    (gpa.wrapping_mul(0x9e37_79b9) >> 24) as u8 | 1
}

/// An address and length: inside `area` usually, wild sometimes.
fn pick_buffer(rng: &mut Rng, area: (u64, u64)) -> (u64, u32) {
    match rng.below(20) {
        0 => (DEV + rng.below(1 << 20), rng.below(4096) as u32),
        1 => (u64::MAX - rng.below(4096), rng.below(8192) as u32),
        2 => (DEV - 1 - rng.below(64), 65 + rng.below(4096) as u32), // crosses the end
        3 => (rng.next(), rng.next() as u32),
        4 => (area.0 + rng.below(area.1 - area.0), 0),
        _ => {
            let addr = area.0 + rng.below(area.1 - area.0);
            let room = area.1 - addr;
            let len = match rng.below(4) {
                0 => rng.below(64),
                1 => rng.below(2048),
                _ => rng.below(room.min(12 * 1024) + 1),
            };
            (addr, len.min(room) as u32)
        }
    }
}

fn pick_flags(rng: &mut Rng, rx: bool) -> u16 {
    let mut f = 0;
    if rng.chance(45) {
        f |= VIRTQ_DESC_F_NEXT;
    }
    if rng.chance(if rx { 90 } else { 5 }) {
        f |= VIRTQ_DESC_F_WRITE;
    }
    if rng.chance(2) {
        f |= rng.next() as u16 & !7; // unknown bits
    }
    f
}

fn pick_next(rng: &mut Rng, n: u16) -> u16 {
    if rng.chance(3) { rng.next() as u16 } else { rng.below(n as u64) as u16 }
}

/// Write an indirect table of `n` random entries into the read-only area; returns its gpa.
fn indirect_table(rng: &mut Rng, mem: &DriverMemory, q: &DriverQueue, rx: bool, n: u64) -> u64 {
    let tables = if rx { RO_RX_TABLES } else { RO_TX };
    let at = tables.0 + 16 * rng.below((tables.1 - tables.0) / 16 - n);
    for j in 0..n {
        let area = if rx { RX_ARENA } else { RO_TX };
        let (addr, len) = pick_buffer(rng, area);
        let mut flags = pick_flags(rng, rx);
        if rng.chance(3) {
            flags |= VIRTQ_DESC_F_INDIRECT; // nested
        }
        q.write_desc_at(at + 16 * j, addr, len, flags, pick_next(rng, n as u16));
    }
    let _ = mem;
    at
}

/// One random descriptor for queue `q`.
fn random_desc(rng: &mut Rng, mem: &DriverMemory, q: &mut DriverQueue, rx: bool, indirect_ok: bool) {
    let size = q.size();
    let i = rng.below(size as u64) as u16;
    if rng.chance(if indirect_ok { 15 } else { 3 }) {
        let n = match rng.below(10) {
            0 => 0,
            1 => 300,
            _ => 1 + rng.below(20),
        };
        let table = indirect_table(rng, mem, q, rx, n.min(280));
        let mut len = 16 * n as u32;
        if rng.chance(10) {
            len += 1 + rng.below(15) as u32;
        }
        let mut flags = VIRTQ_DESC_F_INDIRECT;
        if rng.chance(5) {
            flags |= VIRTQ_DESC_F_NEXT;
        }
        q.write_desc(i, table, len, flags, pick_next(rng, size));
        return;
    }
    let area = if rx { RX_ARENA } else { RO_TX };
    let (addr, len) = pick_buffer(rng, area);
    q.write_desc(i, addr, len, pick_flags(rng, rx), pick_next(rng, size));
}

struct Snapshot(Vec<(u64, Vec<u8>)>);

impl Snapshot {
    /// What the device must not change: the read-only area, the canaries,
    /// the rings but their used parts. (The canaries were checked against
    /// their pattern when the rig was made, and are here after every call.)
    fn take(mem: &DriverMemory, qs: &[&DriverQueue]) -> Snapshot {
        let mut v = vec![(RO.0, mem.slice(RO.0, (RO.1 - RO.0) as usize).to_vec())];
        for (lo, hi) in CANARIES {
            v.push((lo, mem.slice(lo, (hi - lo) as usize).to_vec()));
        }
        for q in qs {
            let ring = q.desc_gpa();
            let used = q.used_gpa();
            v.push((ring, mem.slice(ring, (used - ring) as usize).to_vec()));
        }
        Snapshot(v)
    }
    fn check(&self, mem: &DriverMemory, what: &str) {
        for (at, bytes) in &self.0 {
            let now = mem.slice(*at, bytes.len());
            if now != bytes.as_slice() {
                let off = now.iter().zip(bytes).position(|(a, b)| a != b).unwrap();
                panic!("{what}: the device changed guest memory it may not write at {:#x}", at + off as u64);
            }
        }
    }
}

fn features_from(rng: &mut Rng) -> u64 {
    let mut f = 0;
    for (b, p) in [
        (VIRTIO_F_VERSION_1, 70),
        (VIRTIO_NET_F_MRG_RXBUF, 50),
        (VIRTIO_RING_F_INDIRECT_DESC, 60),
        (VIRTIO_RING_F_EVENT_IDX, 50),
    ] {
        if rng.chance(p) {
            f |= bit(b);
        }
    }
    f
}

fn memfd(size: usize) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls; the fd is fresh and owned from here on.
    unsafe {
        let fd = libc::memfd_create(c"fuzzlog".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, size as i64), 0);
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

/// One rig: a memory, two rings, a few hundred random rounds.
fn run_case(seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed | 1);
    let mem = DriverMemory::new(DEV as usize).unwrap();
    // Canaries, and random bytes for the device to read.
    for (lo, hi) in CANARIES {
        let c: Vec<u8> = (lo..hi).map(canary_byte).collect();
        mem.write(lo, &c);
    }
    for (lo, hi) in CANARIES {
        assert!(mem.slice(lo, (hi - lo) as usize).iter().enumerate().all(|(k, &b)| b == canary_byte(lo + k as u64)));
    }
    let noise: Vec<u8> = (RO.0..RO.1).map(|_| rng.next() as u8).collect();
    mem.write(RO.0, &noise);

    let features = features_from(&mut rng);
    let size = 1u16 << rng.below(9);
    assert!(ring_bytes(size) <= RX_RING - TX_RING);
    let mut tx = DriverQueue::new(&mem, size, TX_RING, RO.0, RO.1 - RO.0, features);
    let mut rx = DriverQueue::new(&mem, size, RX_RING, RX_ARENA.0, RX_ARENA.1 - RX_ARENA.0, features);
    let gm: GuestMemory = mem.guest_memory();
    let log = DirtyLog::map(memfd(4096 + 128), 128, 4096).unwrap(); // covers 4 MiB
    let logged = rng.chance(50);
    let addr = |q: &DriverQueue| VringAddr { flags: if logged { VHOST_VRING_F_LOG } else { 0 }, ..q.addr() };
    let mut vtx = Virtqueue::start(size, &addr(&tx), 0, features, &gm).unwrap();
    let mut vrx = Virtqueue::start(size, &addr(&rx), 0, features, &gm).unwrap();
    if rng.chance(50) {
        vtx.suppress_kicks();
        vrx.suppress_kicks();
    }
    let indirect_ok = has(features, VIRTIO_RING_F_INDIRECT_DESC);
    let link = Link::new(256);
    let (mut moved, mut restarts) = (0u64, 0u64);

    for round in 0..100 {
        // The guest scribbles.
        for _ in 0..rng.below(2 * size as u64 + 2) {
            random_desc(&mut rng, &mem, &mut tx, false, indirect_ok);
        }
        for _ in 0..rng.below(2 * size as u64 + 2) {
            random_desc(&mut rng, &mem, &mut rx, true, indirect_ok);
        }
        for (q, dev) in [(&mut tx, &vtx), (&mut rx, &vrx)] {
            let k = rng.below(size as u64 + 1);
            for _ in 0..k {
                let head = if rng.below(1000) < 3 { rng.next() as u16 } else { rng.below(size as u64) as u16 };
                let i = q.avail_idx();
                q.write_avail_entry(i, head);
                q.set_avail_idx(i.wrapping_add(1));
            }
            // Keep the index honest most of the time (at most `size` ahead), or not.
            let ahead = q.avail_idx().wrapping_sub(dev.next_avail());
            if ahead > size && rng.below(1000) >= 5 {
                q.set_avail_idx(dev.next_avail().wrapping_add(rng.below(size as u64 + 1) as u16));
            }
            if rng.below(1000) < 5 {
                q.set_avail_idx(rng.next() as u16);
            }
            if rng.chance(10) {
                q.set_used_event(rng.next() as u16);
            }
            if rng.chance(10) {
                q.set_avail_flags(rng.next() as u16);
            }
        }
        for _ in 0..rng.below(64) {
            if link.is_full() {
                break;
            }
            let n = match rng.below(8) {
                0 => 0,
                1 => packet::PAYLOAD_SIZE,
                _ => rng.below(9100) as usize,
            };
            let mut p = Packet::new();
            p.resize(n);
            link.transmit(p);
        }

        // The device runs.
        let snap = Snapshot::take(&mem, &[&tx, &rx]);
        let log_opt = if rng.chance(50) { Some(&log) } else { None };
        let what = format!("seed {seed:#x} round {round} size {size} features {features:#x}");
        vtx.receive_from_guest(&gm, log_opt, rng.below(2 * size as u64 + 1) as usize, None, |p| {
            assert!(p.len() <= packet::PAYLOAD_SIZE);
            moved += 1;
        });
        snap.check(&mem, &what);
        moved += vrx.transmit_to_guest(&gm, log_opt, &link) as u64;
        snap.check(&mem, &what);
        vtx.take_signal();
        vrx.take_signal();
        assert_eq!(log.beyond(), 0);

        // A stopped queue is restarted, as a frontend would after a reset.
        for (q, dev) in [(&tx, &mut vtx), (&rx, &mut vrx)] {
            if dev.broken().is_some() {
                *dev = Virtqueue::start(size, &addr(q), q.avail_idx(), features, &gm).unwrap();
                restarts += 1;
            }
        }
        if rng.chance(10) {
            link.discard();
        }
    }
    link.discard();
    (moved, restarts)
}

#[test]
fn fuzz_chain_walking() {
    let secs: f64 = std::env::var("SNABB_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let hex =
        |name: &str| std::env::var(name).ok().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    // SNABB_FUZZ_SEED replays one case; SNABB_FUZZ_BASE starts a run elsewhere.
    let base: u64 = hex("SNABB_FUZZ_SEED").or(hex("SNABB_FUZZ_BASE")).unwrap_or(0x5eed_0000_0000);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let (mut cases, mut moved, mut restarts) = (0u64, 0u64, 0u64);
    loop {
        let seed = base + cases;
        let (m, r) = run_case(seed);
        moved += m;
        restarts += r;
        cases += 1;
        // The first few always run, whatever the time limit (SNABB_FUZZ_SEED replays exactly one).
        if std::env::var("SNABB_FUZZ_SEED").is_ok() || (cases >= 4 && Instant::now() >= until) {
            break;
        }
    }
    eprintln!("fuzz_chains: {cases} cases from seed {base:#x}: {moved} packets moved, {restarts} queue restarts");
    assert!(moved > 0, "the fuzzer never produced a valid chain: it tests nothing");
    assert_eq!(packet::stats().in_use, 0, "host packets leaked: {:?}", packet::stats());
}

/// The guest scribbles on its rings from another thread while the device
/// runs: descriptors and indices change under the device's feet (between
/// its reads of one chain, say). Only the canaries can be checked here (the
/// guest itself writes the rest), and nothing may panic.
#[test]
fn fuzz_concurrent_scribbling() {
    let secs: f64 = std::env::var("SNABB_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mut rng = Rng(0xc0c0_5eed);
    let mem = DriverMemory::new(DEV as usize).unwrap();
    for (lo, hi) in CANARIES {
        let c: Vec<u8> = (lo..hi).map(canary_byte).collect();
        mem.write(lo, &c);
    }
    let canaries: Vec<Vec<u8>> = CANARIES.iter().map(|&(lo, hi)| mem.slice(lo, (hi - lo) as usize).to_vec()).collect();
    let features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_RING_F_EVENT_IDX);
    let size = 64u16;
    let mut tx = DriverQueue::new(&mem, size, TX_RING, RO.0, RO.1 - RO.0, features);
    let mut rx = DriverQueue::new(&mem, size, RX_RING, RX_ARENA.0, RX_ARENA.1 - RX_ARENA.0, features);
    let (tx_addr, rx_addr) = (tx.addr(), rx.addr());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut moved, mut restarts, mut calls) = (0u64, 0u64, 0u64);
    std::thread::scope(|s| {
        let (mem, stop) = (&mem, &stop);
        s.spawn(move || {
            let mut rng = Rng(0x5c21_bb1e);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rxq = rng.chance(50);
                let q = if rxq { &mut rx } else { &mut tx };
                match rng.below(10) {
                    0..=6 => random_desc(&mut rng, mem, q, rxq, true),
                    7 | 8 => {
                        // Mostly honest: at most `size` ahead of what the device used.
                        let i = q.avail_idx();
                        let head = if rng.below(1000) == 0 { size } else { rng.below(size as u64) as u16 };
                        q.write_avail_entry(i, head);
                        if i.wrapping_sub(q.used_idx()) < size || rng.below(1000) == 0 {
                            q.set_avail_idx(i.wrapping_add(1));
                        }
                    }
                    9 if rng.chance(50) => q.write_avail_entry(rng.next() as u16, rng.below(size as u64) as u16),
                    _ => q.set_used_event(rng.next() as u16),
                }
            }
        });
        let gm = mem.guest_memory();
        let mut vtx = Virtqueue::start(size, &tx_addr, 0, features, &gm).unwrap();
        let mut vrx = Virtqueue::start(size, &rx_addr, 0, features, &gm).unwrap();
        let link = Link::new(256);
        let until = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < until || calls < 1000 {
            for _ in 0..16 {
                if link.is_full() {
                    break;
                }
                let mut p = Packet::new();
                p.resize(rng.below(9100) as usize);
                link.transmit(p);
            }
            vtx.receive_from_guest(&gm, None, 64, None, |_| moved += 1);
            moved += vrx.transmit_to_guest(&gm, None, &link) as u64;
            vtx.take_signal();
            vrx.take_signal();
            calls += 1;
            for (k, &(lo, hi)) in CANARIES.iter().enumerate() {
                assert!(mem.slice(lo, (hi - lo) as usize) == canaries[k].as_slice(), "canary at {lo:#x} overwritten");
            }
            for (addr, dev) in [(&tx_addr, &mut vtx), (&rx_addr, &mut vrx)] {
                if dev.broken().is_some() {
                    // Past the entry that broke it, or it would break again at once.
                    let base = dev.next_avail().wrapping_add(1);
                    *dev = Virtqueue::start(size, addr, base, features, &gm).unwrap();
                    restarts += 1;
                }
            }
        }
        link.discard();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    eprintln!("fuzz_concurrent_scribbling: {calls} rounds, {moved} packets moved, {restarts} queue restarts");
    assert_eq!(packet::stats().in_use, 0, "host packets leaked: {:?}", packet::stats());
}
