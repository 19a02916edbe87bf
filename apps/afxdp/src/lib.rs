//! A queue of any Linux interface as a port of the graph, through an AF_XDP
//! socket and a small XDP program.
//!
//! | class   | ports                                        | does                                    |
//! |---------|----------------------------------------------|-----------------------------------------|
//! | `AfXdp` | in: `rx` (to the wire); out: `tx` (from it)  | sends and receives on one queue         |
//!
//! One app per (interface, queue). [`xsk`] is the socket, its UMEM (in our
//! packet memory) and rings; [`attach`] the XDP program that sends the
//! queue's frames to the socket, shared by the apps of an interface and
//! taken off when they stop, or when the process dies; [`netlink`] the two
//! rtnetlink requests that go with it; [`afxdp`] the app.
//!
//! What the interface must not do: merge frames (GRO, LRO) beyond a
//! packet, strip VLAN tags into descriptors (`ethtool -K IF rxvlan off`:
//! XDP sees the frame without its tag), or hand us frames whose checksum a
//! local sender left to offload (on a veth or tap, `ethtool -K PEER tx off`
//! on the sending side): AF_XDP carries no checksum status.

pub mod afxdp;
pub mod attach;
pub mod netlink;
pub mod xsk;

pub use afxdp::{AfXdp, AfXdpArgs, Mode, RxBuffers, rx_queue_count};
pub use attach::XdpAttach;

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<AfXdp>("AfXdp", "a queue of a Linux interface through AF_XDP: `rx` to the wire, `tx` from it");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("AfXdp", selftest)]
}

/// Test support: an AfXdp app driven by hand, with a link on each port.
pub mod rig {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use snabb_core::app::Port;
    use snabb_core::{App, AppClass, AppContext, Io, Link, Packet, Ports};

    use crate::{AfXdp, AfXdpArgs};

    pub struct Rig {
        pub app: AfXdp,
        /// Packets to send out of the interface.
        pub rx: Rc<Link>,
        /// Packets received from it.
        pub tx: Rc<Link>,
        io: Io,
    }

    impl Rig {
        pub fn new(args: AfXdpArgs) -> anyhow::Result<Rig> {
            Rig::named("xdp", args)
        }

        pub fn named(name: &str, args: AfXdpArgs) -> anyhow::Result<Rig> {
            let mut app = AfXdp::new(args, &AppContext { name, class: "AfXdp" })?;
            let (rx, tx) = (Rc::new(Link::new(4096)), Rc::new(Link::new(4096)));
            let io = Io {
                input: Ports::new(vec![Port { name: "rx".into(), link: rx.clone() }]),
                output: Ports::new(vec![Port { name: "tx".into(), link: tx.clone() }]),
            };
            app.link(&io);
            Ok(Rig { app, rx, tx, io })
        }

        /// Send frames out of the interface, waiting up to five seconds
        /// for room in the TX ring; what is left then is dropped.
        pub fn send(&mut self, frames: &[Vec<u8>]) {
            self.send_packets(frames.iter().map(|f| Packet::from_bytes(f)).collect());
        }

        /// As `send`, with packets made by the caller.
        pub fn send_packets(&mut self, packets: Vec<Packet>) {
            let end = Instant::now() + Duration::from_secs(5);
            // Small batches: a veth hands each frame to its peer's backlog,
            // which holds 1000 frames (net.core.netdev_max_backlog).
            let mut packets = packets.into_iter().peekable();
            while packets.peek().is_some() {
                for p in packets.by_ref().take(100) {
                    self.rx.transmit(p);
                }
                while !self.rx.is_empty() && Instant::now() < end {
                    self.app.push(&self.io);
                }
                self.rx.discard();
            }
            self.app.push(&self.io);
        }

        /// Receive until `n` frames came in or `timeout` passed; then a
        /// little longer, to catch any extra frame.
        pub fn receive(&mut self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            let end = Instant::now() + timeout;
            let mut extra: Option<Instant> = None;
            loop {
                self.app.pull(&self.io);
                got.extend(self.tx.drain().map(|p| p.data().to_vec()));
                let now = Instant::now();
                if got.len() >= n && extra.is_none() {
                    extra = Some(now + Duration::from_millis(50));
                }
                if now >= end || extra.is_some_and(|t| now >= t) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            got
        }

        /// Take whatever the RX ring holds now.
        pub fn poll(&mut self) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            loop {
                self.app.pull(&self.io);
                let before = got.len();
                got.extend(self.tx.drain().map(|p| p.data().to_vec()));
                if got.len() == before {
                    return got;
                }
            }
        }

        /// Pull once and hand what came to `consume` (then dropped), as the
        /// next app of a graph would: how many packets came.
        pub fn pull_with(&mut self, mut consume: impl FnMut(&Packet)) -> usize {
            self.app.pull(&self.io);
            let mut n = 0;
            for p in self.tx.drain() {
                consume(&p);
                n += 1;
            }
            n
        }

        /// Run the app's periodic work once (kernel stats, interface checks).
        pub fn tick(&mut self) {
            self.app.update_kernel_stats();
            self.app.tick(&self.io);
        }

        pub fn counter(&self, name: &str) -> u64 {
            let mut v = None;
            self.app.counters(&mut |k, x| {
                if k == name {
                    v = Some(x)
                }
            });
            v.unwrap_or_else(|| panic!("no counter {name}"))
        }

        /// Stop the app, as the engine does when it leaves the graph.
        pub fn stop(&mut self) {
            self.app.stop();
        }
    }
}

/// The XDP programs on an interface: (mode, id, name), as `ip link` shows them.
pub fn xdp_programs(ifname: &str) -> anyhow::Result<Vec<(netlink::XdpMode, u32, String)>> {
    let ifc = snabb_apps_rawsocket::socket::Interface::lookup(ifname)?;
    let found = netlink::attached(ifc.index as u32)?;
    Ok(found
        .into_iter()
        .map(|(m, id)| {
            let name = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .and_then(|p| p.name_as_str().map(str::to_string))
                .unwrap_or_default();
            (m, id, name)
        })
        .collect())
}

/// The XDP programs on an interface that are not ours (`snabb_xsk…`):
/// what an app refuses to take off unless told to `replace` them.
pub fn foreign_programs(ifname: &str) -> anyhow::Result<Vec<(netlink::XdpMode, u32, String)>> {
    Ok(xdp_programs(ifname)?.into_iter().filter(|(_, _, name)| !name.starts_with(attach::PROGRAM_PREFIX)).collect())
}

/// What this process lacks to run AfXdp apps pinning `umem_bytes` of
/// UMEM in all: the capabilities by name (an empty list: nothing). The
/// socket needs CAP_NET_RAW, the program CAP_BPF (or CAP_SYS_ADMIN) and
/// CAP_NET_ADMIN, the UMEM CAP_IPC_LOCK or a locked-memory limit above it.
pub fn missing_privileges(umem_bytes: u64) -> Vec<&'static str> {
    const NET_ADMIN: u32 = 12;
    const NET_RAW: u32 = 13;
    const IPC_LOCK: u32 = 14;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |bit: u32| eff & (1 << bit) != 0;
    let mut missing = Vec::new();
    if !has(NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 { lim.rlim_cur } else { 0 };
    if !has(IPC_LOCK) && memlock != libc::RLIM_INFINITY && memlock < umem_bytes {
        missing.push("CAP_IPC_LOCK");
    }
    missing
}

/// Bytes a veth leaves out of each frame it counts when an XDP program runs
/// on the receiving end: the Ethernet header, pulled before it counts.
pub const VETH_XDP_HEADER: u64 = 14;

/// Two AfXdp apps on the ends of a veth pair: frames sent on one arrive,
/// identical and in order, on the other; both apps' counters agree with
/// the kernel's; each end's XDP program is ours while the app runs and is
/// gone when it stops; a missing interface and a missing queue are clear
/// errors.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    use snabb_apps_rawsocket::test_frames;
    use snabb_apps_rawsocket::veth::{VethPair, kernel_stat, require_root};
    use std::time::Duration;

    let missing = rig::Rig::new(AfXdpArgs::new("snabbrs-none0")).err().map(|e| format!("{e:#}"));
    ensure!(
        missing.as_deref() == Some("interface `snabbrs-none0`: no such interface (see `ip link`)"),
        "missing interface: {missing:?}"
    );
    require_root()?;
    let v = VethPair::new()?;
    let q9 = rig::Rig::new(AfXdpArgs { queue: 9, ..AfXdpArgs::new(&v.a) }).err().map(|e| format!("{e:#}"));
    ensure!(q9.as_deref().is_some_and(|e| e.contains("there is no queue 9")), "missing queue: {q9:?}");
    let stat = |i: &str, s: &str| kernel_stat(i, s);
    let kernel = || -> anyhow::Result<[u64; 4]> {
        Ok([
            stat(&v.a, "tx_packets")? + stat(&v.a, "tx_dropped")?,
            stat(&v.a, "tx_bytes")?,
            stat(&v.b, "rx_packets")?,
            stat(&v.b, "rx_bytes")?,
        ])
    };
    let mut a = rig::Rig::named("a", AfXdpArgs::new(&v.a))?;
    let mut b = rig::Rig::named("b", AfXdpArgs::new(&v.b))?;
    for end in [&v.a, &v.b] {
        let progs = xdp_programs(end)?;
        ensure!(progs.len() == 1 && progs[0].2.starts_with(attach::PROGRAM_PREFIX), "{end}: XDP programs {progs:?}");
    }
    let before = kernel()?;
    let frames = test_frames(3000, [0x02, 0, 0, 0, 0, 0x0b]);
    let mut got = Vec::new();
    for chunk in frames.chunks(100) {
        a.send(chunk);
        got.extend(b.poll());
    }
    got.extend(b.receive(frames.len() - got.len(), Duration::from_secs(5)));
    b.tick();
    a.tick();
    if got.len() != frames.len() {
        let k: Vec<u64> = kernel()?.iter().zip(before).map(|(n, b)| n - b).collect();
        anyhow::bail!(
            "{} of {} frames arrived; kernel (a tx+dropped, a tx bytes, b rx, b rx bytes): {k:?}; a: {:?}; b: {:?}",
            got.len(),
            frames.len(),
            a.app.counters_now(),
            b.app.counters_now()
        );
    }
    for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
        ensure!(g == f, "frame {i} changed on the way: got {:02x?}, sent {:02x?}", &g[..20], &f[..20]);
    }
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let mut kernel: Vec<u64> = kernel()?.iter().zip(before).map(|(n, b)| n - b).collect();
    // With an XDP program on the receiving end a veth counts bytes after
    // it took the Ethernet header off (its NAPI path), on both ends.
    kernel[1] += VETH_XDP_HEADER * kernel[0];
    kernel[3] += VETH_XDP_HEADER * kernel[2];
    let ours = [a.counter("tx_packets"), a.counter("tx_bytes"), b.counter("rx_packets"), b.counter("rx_bytes")];
    ensure!(ours == [3000, bytes, 3000, bytes], "app counters {ours:?}, sent 3000 frames of {bytes} bytes");
    ensure!(kernel == ours, "kernel counters (bytes with Ethernet headers) {kernel:?}, app counters {ours:?}");
    ensure!(b.counter("xdp_rx_dropped") == 0 && b.counter("xdp_rx_ring_full") == 0, "kernel drops");
    // The other way, and a frame longer than the MTU (1500 + header + tag).
    b.send(&[vec![0xee; 1519], frames[5].clone()]);
    ensure!(b.counter("tx_oversize") == 1, "oversize not counted");
    let back = a.receive(1, Duration::from_secs(5));
    ensure!(back == [frames[5].clone()], "the way back: {} frames", back.len());
    // Stopping takes the program off.
    a.stop();
    b.stop();
    for end in [&v.a, &v.b] {
        let progs = xdp_programs(end)?;
        ensure!(progs.is_empty(), "{end}: XDP programs left after stop: {progs:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_selftest_passes() {
        for (name, t) in super::selftests() {
            match t() {
                Ok(()) => {}
                Err(e) if snabb_core::selftest::skipped(&e).is_some() => eprintln!("{name}: {e}"),
                Err(e) => panic!("{name}: {e:#}"),
            }
        }
    }
}
