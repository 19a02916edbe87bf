//! Random and mutated vhost-user messages, with and without descriptors,
//! thrown at the device (directly, many per second) and at the app through
//! its socket, for SNABB_FUZZ_SECS seconds each (default 2). Nothing may
//! panic or hang, descriptors must not leak, and afterwards a well-behaved
//! frontend must still be served.

mod common;
use common::*;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use snabb_apps_vhost_user::VhostUserArgs;
use snabb_apps_vhost_user::device::{Device, DeviceConfig};
use snabb_apps_vhost_user::driver::{DriverMemory, DriverQueue};
use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions, Rig, memfd, spawn_frontend, temp_socket};
use snabb_apps_vhost_user::protocol::*;
use snabb_core::{Link, Packet};

/// The tests run one at a time, so that counting open descriptors means something.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fuzz_time() -> Duration {
    let secs = std::env::var("SNABB_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    let s = std::env::var("SNABB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("fuzz seed {s} (SNABB_FUZZ_SEED={s} to repeat)");
    s
}

fn eventfd() -> OwnedFd {
    snabb_apps_vhost_user::frontend::eventfd().unwrap()
}

/// Descriptors open in this process (to see leaks).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

const MEM: usize = 1 << 20;

/// The world a message generator draws from: guest memory with a few rings
/// laid out by a driver, so that valid-looking requests reach deep states.
struct World {
    mem: DriverMemory,
    queues: Vec<DriverQueue>,
}

impl World {
    fn new() -> World {
        let mem = DriverMemory::new(MEM).unwrap();
        let queues = (0..4).map(|i| DriverQueue::new(&mem, 64, i * 16384, 65536 + i * 131072, 131072, 0)).collect();
        World { mem, queues }
    }

    /// A request that makes sense (or nearly), with random parameters.
    fn plausible(&self, r: &mut Rng) -> Request {
        let index = r.below(5) as u32; // one out of range sometimes
        let base = self.mem.bytes() as u64;
        match r.below(17) {
            0 => Request::GetFeatures,
            1 => Request::SetFeatures(
                DeviceConfig { queue_pairs: 2, mtu: 1500, mac: None, in_order: true }.features() & r.next(),
            ),
            2 => Request::GetProtocolFeatures,
            3 => Request::SetProtocolFeatures(r.next() & 0x1_ffff),
            4 => {
                // Mostly inside the memfd; sometimes past its end (must be refused, not SIGBUS).
                let off = if r.chance(70) { 0 } else { r.below(MEM as u64 / 4096) * 4096 };
                let size = if r.chance(90) { 1 + r.below(MEM as u64 - off) } else { r.next() >> r.below(64) };
                let region = MemoryRegion {
                    guest_phys_addr: if r.chance(70) { 0 } else { r.next() >> r.below(64) },
                    memory_size: size,
                    userspace_addr: if r.chance(80) { base + off } else { r.next() },
                    mmap_offset: off,
                };
                Request::SetMemTable { regions: vec![region], fds: vec![self.mem.fd().try_clone_to_owned().unwrap()] }
            }
            5 => Request::SetVringNum(VringState {
                index,
                num: if r.chance(80) { 64 } else { r.next() as u32 >> r.below(32) },
            }),
            6 => {
                let q = &self.queues[index as usize % 4];
                let a = q.addr();
                let mut v = VringAddress {
                    index,
                    flags: r.below(2) as u32,
                    desc_user_addr: a.desc_user_addr,
                    used_user_addr: a.used_user_addr,
                    avail_user_addr: a.avail_user_addr,
                    log_guest_addr: a.used_user_addr - base,
                };
                if r.chance(20) {
                    v.desc_user_addr = v.desc_user_addr.wrapping_add(r.next() >> r.below(64));
                }
                if r.chance(20) {
                    v.used_user_addr = r.next();
                }
                Request::SetVringAddr(v)
            }
            7 => Request::SetVringBase(VringState { index, num: r.below(70000) as u32 }),
            8 => Request::GetVringBase(VringState { index, num: 0 }),
            9 => Request::SetVringKick(index, r.chance(70).then(eventfd)),
            10 => Request::SetVringCall(index, r.chance(70).then(eventfd)),
            11 => Request::SetVringEnable(VringState { index, num: r.below(3) as u32 }),
            12 => {
                let size = 1 + r.below(8192);
                let fd = memfd(4096).unwrap();
                Request::SetLogBase { area: LogArea { mmap_size: size, mmap_offset: r.below(2) * 4096 }, fd: Some(fd) }
            }
            13 => Request::SendRarp([r.next() as u8; 6]),
            14 => Request::GetConfig(ConfigSpace {
                offset: r.below(300) as u32,
                size: r.below(300) as u32,
                flags: 0,
                payload: vec![],
            }),
            15 => Request::SetStatus(r.next()),
            _ => Request::Other(r.below(64) as u32),
        }
    }

    /// A message: plausible, plausible with bytes flipped, or noise.
    fn message(&self, r: &mut Rng) -> Message {
        let flags =
            if r.chance(90) { VERSION } else { r.next() as u32 } | if r.chance(30) { FLAG_NEED_REPLY } else { 0 };
        if r.chance(60) {
            let req = self.plausible(r);
            let (mut payload, _) = req.encode();
            let code = req.code();
            let fds = take_fds(req);
            if r.chance(20) && !payload.is_empty() {
                let n = payload.len() as u64;
                for _ in 0..1 + r.below(3) {
                    let i = r.below(n) as usize;
                    payload[i] ^= 1 << r.below(8);
                }
            }
            if r.chance(5) {
                payload.truncate(r.below(payload.len() as u64 + 1) as usize);
            }
            return Message::new(code, flags, payload, fds);
        }
        let code = r.below(48) as u32;
        let payload: Vec<u8> = (0..r.below(320)).map(|_| r.next() as u8).collect();
        let fds = (0..r.below(3)).map(|_| if r.chance(50) { eventfd() } else { memfd(4096).unwrap() }).collect();
        Message::new(code, flags, payload, fds)
    }
}

/// The descriptors a request owns, taken out of it.
fn take_fds(r: Request) -> Vec<OwnedFd> {
    match r {
        Request::SetMemTable { fds, .. } => fds,
        Request::SetLogBase { fd, .. }
        | Request::SetLogFd(fd)
        | Request::SetBackendReqFd(fd)
        | Request::SetVringKick(_, fd)
        | Request::SetVringCall(_, fd)
        | Request::SetVringErr(_, fd) => fd.into_iter().collect(),
        _ => Vec::new(),
    }
}

#[test]
fn random_messages_at_the_device() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Rng(seed());
    let world = World::new();
    let fds_before = open_fds();
    let end = Instant::now() + fuzz_time();
    let link = Link::new(256);
    let (mut messages, mut refused, mut devices) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        let mut dev =
            Device::new(DeviceConfig { queue_pairs: 2, mtu: 1500, mac: Some([2, 0, 0, 0, 0, 1]), in_order: true });
        devices += 1;
        for _ in 0..200 {
            let msg = world.message(&mut r);
            messages += 1;
            match dev.handle(msg) {
                Ok(Some((_, reply))) => assert!(reply.len() <= MAX_PAYLOAD),
                Ok(None) => {}
                Err(_) => refused += 1,
            }
            // The guest scribbles over its rings now and then.
            if r.chance(10) {
                let at = r.below(MEM as u64 - 8) as usize;
                // SAFETY: at + 8 <= MEM, the size of the guest memory mapping.
                unsafe { std::ptr::write_unaligned(world.mem.bytes().add(at) as *mut u64, r.next()) };
            }
            if r.chance(30) {
                for _ in 0..r.below(8) {
                    link.transmit(Packet::from_bytes(&vec![0x5a; 14 + r.below(1600) as usize]));
                }
                dev.to_guest(&link);
                link.discard();
                dev.from_guest(64, false, drop);
                dev.check_broken();
            }
        }
    }
    drop(world);
    eprintln!("{devices} devices, {messages} messages, {refused} refused as malformed");
    assert!(messages > 0);
    // Every descriptor that came with a message was closed.
    let after = open_fds();
    assert!(after <= fds_before, "descriptors leaked: {fds_before} before, {after} after");
}

#[test]
fn random_bytes_at_the_socket() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fds_before = open_fds();
    let mut seed_rng = Rng(seed());
    let path = temp_socket("fuzz");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let p = path.clone();
    let thread_seed = seed_rng.next() | 1;
    let secs = fuzz_time();
    let session = spawn_frontend(move |_| -> anyhow::Result<u64> {
        let mut r = Rng(thread_seed);
        let world = World::new();
        let end = Instant::now() + secs;
        let mut connections = 0;
        while Instant::now() < end {
            let Ok(mut s) = UnixStream::connect(&p) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            connections += 1;
            let read_replies = r.chance(80);
            for _ in 0..r.below(60) {
                let m = world.message(&mut r);
                let mut bytes =
                    Header { request: m.header.request, flags: m.header.flags, size: m.payload.len() as u32 }
                        .to_bytes()
                        .to_vec();
                if r.chance(3) {
                    // A lying size field.
                    let size = r.next() as u32 >> r.below(32);
                    bytes[8..12].copy_from_slice(&size.to_le_bytes());
                }
                bytes.extend_from_slice(&m.payload);
                if r.chance(5) {
                    bytes.truncate(r.below(bytes.len() as u64) as usize);
                }
                let fds: Vec<i32> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
                let ok = if fds.is_empty() {
                    s.write_all(&bytes).is_ok()
                } else {
                    bytes.is_empty() || send_with_fds(&s, &bytes, &fds)
                };
                if !ok {
                    break;
                }
                if read_replies {
                    s.set_nonblocking(true).ok();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                    s.set_nonblocking(false).ok();
                }
            }
            // Close, or leave the backend waiting on half a message.
            if r.chance(10) {
                let _ = s.write_all(&[1, 0, 0]);
            }
            drop(s);
        }
        Ok(connections)
    });
    let connections = session.finish(&mut rig, fuzz_time() + Duration::from_secs(30)).unwrap().unwrap();
    eprintln!("{connections} connections, counters: {:?}", rig.app.counter("protocol_errors"));
    assert!(rig.step_until(|r| !r.app.connected(), Duration::from_secs(10)), "the last connection was not dropped");
    // The app still serves a proper frontend.
    let p = path.clone();
    let s = spawn_frontend(move |ctl| -> anyhow::Result<()> {
        let mut fe = Frontend::connect(&p, FrontendOptions::default(), Duration::from_secs(10))?;
        fe.setup()?;
        ctl.park();
        Ok(())
    });
    s.serve(&mut rig, Duration::from_secs(20)).unwrap();
    assert_eq!(rig.app.running(), (1, 1));
    s.finish(&mut rig, Duration::from_secs(20)).unwrap().unwrap();
    assert!(rig.step_until(|r| !r.app.connected(), Duration::from_secs(10)));
    drop(rig);
    let after = open_fds();
    assert!(after <= fds_before, "descriptors leaked: {fds_before} before, {after} after");
}
