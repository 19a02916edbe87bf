//! AfXdp against the kernel, over veth pairs: jumbo frames, several queues
//! sharing one XDP program, reconfiguring in place, a program of ours left
//! by a process that died, another's program refused or replaced, lent
//! buffers, an interface that goes away and comes back. Each test needs
//! root (it makes interfaces) and is skipped without it, except under CI.

use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use snabb_apps_afxdp::afxdp::COPY_MAX;
use snabb_apps_afxdp::netlink::{self, XdpMode};
use snabb_apps_afxdp::rig::Rig;
use snabb_apps_afxdp::{AfXdpArgs, RxBuffers, XdpAttach, attach, xdp_programs};
use snabb_apps_rawsocket::test_frames;
use snabb_apps_rawsocket::veth::{ip, quiet, require_root};
use snabb_core::selftest::skipped;
use snabb_core::{App, AppClass, AppContext};

const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const WAIT: Duration = Duration::from_secs(5);

/// A veth pair with `queues` queues on each end, deleted on drop.
struct Veth {
    a: String,
    b: String,
}

impl Veth {
    fn new(queues: u32) -> Option<Veth> {
        match require_root() {
            Ok(()) => {}
            Err(e) if skipped(&e).is_some() => {
                eprintln!("{e}");
                return None;
            }
            Err(e) => panic!("{e:#}"),
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("sxd{}x{n}", std::process::id());
        let v = Veth { a: format!("{base}a"), b: format!("{base}b") };
        let q = queues.to_string();
        #[rustfmt::skip]
        ip(&["link", "add", &v.a, "numtxqueues", &q, "numrxqueues", &q, "type", "veth",
             "peer", "name", &v.b, "numtxqueues", &q, "numrxqueues", &q]).unwrap();
        for i in [&v.a, &v.b] {
            quiet(i).unwrap();
            ip(&["link", "set", i, "up"]).unwrap();
        }
        Some(v)
    }

    fn mtu(&self, mtu: u32) {
        for i in [&self.a, &self.b] {
            ip(&["link", "set", i, "mtu", &mtu.to_string()]).unwrap();
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.a]);
    }
}

fn args(ifname: &str, queue: u32) -> AfXdpArgs {
    AfXdpArgs { queue, ..AfXdpArgs::new(ifname) }
}

/// Send `frames` from `a` and collect them at `b`, a hundred at a time.
fn carry(a: &mut Rig, b: &mut Rig, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for chunk in frames.chunks(100) {
        a.send(chunk);
        got.extend(b.poll());
    }
    let left = frames.len().saturating_sub(got.len());
    got.extend(b.receive(left, WAIT));
    got
}

fn programs(ifname: &str) -> Vec<(XdpMode, u32, String)> {
    xdp_programs(ifname).unwrap()
}

#[test]
fn jumbo_frames_cross_both_ways() {
    let Some(v) = Veth::new(1) else { return };
    v.mtu(9000);
    let mut a = Rig::named("a", args(&v.a, 0)).unwrap();
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    // 9000 + header, a tagged 9018, and everything around a frame's 3840
    // bytes of room, where a frame starts to take a second descriptor.
    let mut frames = test_frames(40, DST);
    for (i, len) in [9014usize, 9018, 3839, 3840, 3841, 4096, 4097, 8192, 5000, 7777].into_iter().enumerate() {
        let f = &mut frames[i * 4];
        f.resize(len, (i * 31) as u8);
    }
    let got = carry(&mut a, &mut b, &frames);
    assert_eq!(got.len(), frames.len());
    assert!(got == frames, "frames changed on the way");
    let back = carry(&mut b, &mut a, &frames);
    assert!(back == frames, "frames changed on the way back");
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    assert_eq!((a.counter("tx_packets"), a.counter("tx_bytes")), (40, bytes));
    assert_eq!((b.counter("rx_packets"), b.counter("rx_bytes")), (40, bytes));
    // One byte over the MTU is not sent.
    let mut big = frames[0].clone();
    big.resize(9000 + 18 + 1, 0);
    a.send(&[big]);
    assert_eq!(a.counter("tx_oversize"), 1);
    b.tick();
    assert_eq!(b.counter("xdp_rx_dropped"), 0);
}

#[test]
fn queues_share_one_program_which_goes_with_the_last() {
    let Some(v) = Veth::new(4) else { return };
    let mut a: Vec<Rig> = (0..4).map(|q| Rig::named(&format!("a{q}"), args(&v.a, q)).unwrap()).collect();
    let mut b: Vec<Rig> = (0..4).map(|q| Rig::named(&format!("b{q}"), args(&v.b, q)).unwrap()).collect();
    let progs = programs(&v.a);
    assert_eq!(progs.len(), 1, "one program for the interface: {progs:?}");
    assert!(progs[0].2.starts_with(attach::PROGRAM_PREFIX));
    // What b sends on queue q arrives on a's queue q.
    for q in 0..4 {
        let mut frames = test_frames(50, DST);
        for f in &mut frames {
            f[17] = q as u8;
        }
        let got = carry(&mut b[q], &mut a[q], &frames);
        assert!(got == frames, "queue {q}: {} of 50 frames", got.len());
    }
    for (q, r) in a.iter().enumerate() {
        assert_eq!(r.counter("rx_packets"), 50, "queue {q}");
    }
    // The program stays while any queue's app does.
    let id = progs[0].1;
    for r in a.iter_mut().take(3) {
        r.stop();
        assert_eq!(programs(&v.a).iter().map(|p| p.1).collect::<Vec<_>>(), vec![id]);
    }
    // Queue 0's frames now go to the kernel; queue 3 still gets its own.
    let frames = test_frames(20, DST);
    let got = carry(&mut b[3], &mut a[3], &frames);
    assert!(got == frames);
    a[3].stop();
    assert!(programs(&v.a).is_empty(), "{:?}", programs(&v.a));
    // Apps that asked for different modes do not share: refused.
    let native = Rig::named("n", AfXdpArgs { xdp: XdpAttach::Native, ..args(&v.a, 0) }).unwrap();
    let generic = Rig::named("g", AfXdpArgs { xdp: XdpAttach::Generic, ..args(&v.a, 1) });
    assert!(generic.err().is_some_and(|e| format!("{e:#}").contains("same `xdp` mode")));
    drop(native);
    drop(b);
}

#[test]
fn reconfigured_in_place_on_the_same_queue() {
    let Some(v) = Veth::new(1) else { return };
    let mut a = Rig::named("a", args(&v.a, 0)).unwrap();
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    let frames = test_frames(300, DST);
    assert!(carry(&mut a, &mut b, &frames) == frames);
    // New rings: the socket is closed and bound again to the same queue
    // (the kernel releases the old one from a work queue).
    let ctx = AppContext { name: "b", class: "AfXdp" };
    let new = AfXdpArgs { rx_ring: 512, tx_ring: 256, frame_size: 2048, ..args(&v.b, 0) };
    let t = Instant::now();
    assert!(b.app.reconfigure(new, &ctx).unwrap());
    eprintln!("reconfigured in {:?}", t.elapsed());
    assert!(carry(&mut a, &mut b, &frames) == frames);
    assert_eq!(programs(&v.b).len(), 1);
    // A bad interface: refused, and the old settings still work.
    let e = b.app.reconfigure(args("sxd-none0", 0), &ctx).unwrap_err();
    assert!(format!("{e:#}").contains("no such interface"), "{e:#}");
    assert!(carry(&mut a, &mut b, &frames) == frames);
    assert_eq!(b.counter("rx_packets"), 900);
    // Another interface: the program leaves the old one.
    let Some(w) = Veth::new(1) else { return };
    assert!(b.app.reconfigure(args(&w.a, 0), &ctx).unwrap());
    assert!(programs(&v.b).is_empty());
    assert_eq!(programs(&w.a).len(), 1);
}

/// Load our own program and attach it through netlink, then forget it: what
/// a snabb-rs that died leaves behind on a kernel without XDP links.
fn leave_stale_program(ifindex: u32) -> u32 {
    let mut ebpf = aya::EbpfLoader::new().map_max_entries("snabb_xsks", 4).load(attach::object()).unwrap();
    let prog: &mut aya::programs::Xdp = ebpf.program_mut("snabb_xsk_frags").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let id = prog.info().unwrap().id();
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();
    netlink::set_xdp(ifindex, fd, XdpMode::Native, None, true).unwrap();
    id
}

fn ifindex(name: &str) -> u32 {
    snabb_apps_rawsocket::socket::Interface::lookup(name).unwrap().index as u32
}

#[test]
fn a_stale_program_of_ours_is_replaced() {
    let Some(v) = Veth::new(1) else { return };
    let stale = leave_stale_program(ifindex(&v.a));
    assert_eq!(programs(&v.a).iter().map(|p| p.1).collect::<Vec<_>>(), vec![stale]);
    let mut a = Rig::named("a", args(&v.a, 0)).unwrap();
    let now = programs(&v.a);
    assert!(now.len() == 1 && now[0].1 != stale, "{now:?}");
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    let frames = test_frames(100, DST);
    assert!(carry(&mut b, &mut a, &frames) == frames);
    a.stop();
    assert!(programs(&v.a).is_empty());
}

/// A program that is not ours, compiled from `tests/xdp_pass.c`.
fn foreign_object() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("sxd-pass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("pass.o");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/xdp_pass.c");
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let st = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", &multiarch, "-c", src, "-o"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "clang");
    let b = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    b
}

#[test]
fn another_program_is_refused_unless_told_to_replace_it() {
    let Some(v) = Veth::new(1) else { return };
    let obj = foreign_object();
    let mut ebpf = aya::Ebpf::load(&obj).unwrap();
    let prog: &mut aya::programs::Xdp = ebpf.program_mut("other_pass").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();
    // Through netlink, as `ip link set dev X xdp obj ...` does.
    netlink::set_xdp(ifindex(&v.a), fd, XdpMode::Native, None, true).unwrap();
    let e = Rig::named("a", args(&v.a, 0)).err().map(|e| format!("{e:#}")).unwrap();
    assert!(e.contains("already has an XDP program") && e.contains("other_pass") && e.contains("replace"), "{e}");
    assert_eq!(programs(&v.a)[0].2, "other_pass", "left as it was");
    let mut a = Rig::named("a", AfXdpArgs { replace: true, ..args(&v.a, 0) }).unwrap();
    assert!(programs(&v.a)[0].2.starts_with(attach::PROGRAM_PREFIX));
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    let frames = test_frames(50, DST);
    assert!(carry(&mut b, &mut a, &frames) == frames);
    a.stop();
    assert!(programs(&v.a).is_empty(), "ours is taken off; theirs is not put back");
    // Through a BPF link held by a live process (this one): it cannot be
    // taken off, and the error says so.
    let link = prog.attach(&v.a, aya::programs::XdpMode::Driver).unwrap();
    let e = Rig::named("a2", AfXdpArgs { replace: true, ..args(&v.a, 0) }).err().map(|e| format!("{e:#}")).unwrap();
    assert!(e.contains("BPF link"), "{e}");
    prog.detach(link).unwrap();
}

#[test]
fn lent_frames_come_back_and_go_out_as_they_are() {
    let Some(v) = Veth::new(1) else { return };
    let lend = AfXdpArgs { rx_buffers: RxBuffers::Lend, rx_ring: 256, tx_ring: 256, lend_frames: 256, ..args(&v.a, 0) };
    let mut a = Rig::named("a", lend).unwrap();
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    // Many more frames than the UMEM holds: each comes back when dropped.
    let frames = test_frames(5000, DST);
    let got = carry(&mut b, &mut a, &frames);
    assert!(got == frames, "{} of 5000", got.len());
    a.tick();
    assert_eq!((a.counter("xdp_rx_dropped"), a.counter("rx_copied")), (0, 0));
    // Received packets are our frames (those longer than COPY_MAX); sent
    // back out of the same app, they go from where they are.
    let long = |n| -> Vec<Vec<u8>> {
        test_frames(n, DST)
            .into_iter()
            .map(|mut f| {
                f.resize(f.len().max(COPY_MAX as usize + 1), 0x77);
                f
            })
            .collect()
    };
    let frames = long(100);
    b.send(&frames);
    let t = Instant::now();
    let mut held = Vec::new();
    while held.len() < 100 && t.elapsed() < WAIT {
        a.app.pull(&a_io(&a));
        held.extend(a.tx.drain());
    }
    assert_eq!(held.len(), 100);
    assert!(held.iter().all(|p| p.is_foreign()));
    let short = test_frames(3, DST)[..1].to_vec();
    assert!(short[0].len() <= COPY_MAX as usize);
    b.send(&short);
    let got = a.receive(1, WAIT);
    assert_eq!(got, short, "a short frame is copied");
    let before = snabb_core::packet::stats();
    a.send_packets(held);
    assert_eq!(snabb_core::packet::stats().allocs, before.allocs, "no host packet was made to send them");
    let back = b.receive(100, WAIT);
    assert!(back == frames, "{} of 100 back", back.len());
    assert_eq!(a.counter("tx_packets"), 100);
    // Held past the budget (a stalled consumer): the rest are copied, and
    // the kernel still has frames to receive into.
    let frames = long(600);
    let mut held = Vec::new();
    for chunk in frames.chunks(100) {
        b.send(chunk);
        let t = Instant::now();
        let want = held.len() + chunk.len();
        while held.len() < want && t.elapsed() < WAIT {
            a.app.pull(&a_io(&a));
            held.extend(a.tx.drain());
        }
    }
    assert_eq!(held.len(), 600);
    assert!(held.iter().zip(&frames).all(|(p, f)| p.data() == &f[..]));
    assert_eq!(held.iter().filter(|p| p.is_foreign()).count(), 256);
    assert_eq!(a.counter("rx_copied"), 600 - 256);
    a.tick();
    assert_eq!(a.counter("xdp_rx_dropped"), 0);
    drop(held);
    let frames = test_frames(50, DST);
    assert!(carry(&mut b, &mut a, &frames) == frames, "lending again once they came back");
    assert_eq!(a.counter("rx_copied"), 600 - 256);
}

/// The rig's ports (to pull without draining).
fn a_io(r: &Rig) -> snabb_core::Io {
    use snabb_core::app::Port;
    snabb_core::Io {
        input: snabb_core::Ports::new(vec![Port { name: "rx".into(), link: r.rx.clone() }]),
        output: snabb_core::Ports::new(vec![Port { name: "tx".into(), link: r.tx.clone() }]),
    }
}

#[test]
fn an_interface_that_disappears_is_opened_again_when_it_comes_back() {
    let Some(v) = Veth::new(1) else { return };
    let mut a = Rig::named("a", args(&v.a, 0)).unwrap();
    ip(&["link", "del", &v.a]).unwrap();
    let frames = test_frames(50, DST);
    a.send(&frames);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1100) {
        a.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.app.modes().is_none(), "closed");
    #[rustfmt::skip]
    ip(&["link", "add", &v.a, "numtxqueues", "1", "numrxqueues", "1", "type", "veth",
         "peer", "name", &v.b, "numtxqueues", "1", "numrxqueues", "1"]).unwrap();
    for i in [&v.a, &v.b] {
        quiet(i).unwrap();
        ip(&["link", "set", i, "up"]).unwrap();
    }
    let t = Instant::now();
    while a.app.modes().is_none() && t.elapsed() < WAIT {
        a.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.counter("reopens"), 1);
    let mut b = Rig::named("b", args(&v.b, 0)).unwrap();
    assert!(carry(&mut b, &mut a, &frames) == frames);
    assert!(a.counter("tx_down_drops") >= 50 || a.counter("tx_packets") == 0);
}
