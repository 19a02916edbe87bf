//! Linux interfaces as ports of the graph, through AF_PACKET sockets with
//! memory-mapped rings.
//!
//! | class       | ports                                    | does                                  |
//! |-------------|------------------------------------------|---------------------------------------|
//! | `RawSocket` | in: `rx` (to the wire); out: `tx` (from it) | sends and receives on an interface |
//!
//! Receive uses a TPACKET_V3 ring, transmit a TPACKET_V2 ring on a second
//! socket (see [`socket`] for why). Frames are copied between the rings and
//! host packets; VLAN tags that the kernel takes out of received frames are
//! put back, and TCP/UDP checksums that a local sender left to offload are
//! finished ([`csum`]). The counters ([`rawsocket::Counters`]) are defined so
//! that they can be checked against `/sys/class/net/IF/statistics`.
//!
//! What the interface must not do: merge frames (GRO, LRO) or let local
//! senders hand it unsegmented TCP (TSO, GSO on a veth or tap peer). Such
//! frames exceed a packet and are dropped and counted (`rx_oversize`):
//! `ethtool -K IF gro off lro off`, and `tso off gso off` on the senders.

pub mod csum;
pub mod rawsocket;
pub mod socket;
pub mod veth;

pub use rawsocket::{RawSocket, RawSocketArgs};

use snabb_core::Registry;

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<RawSocket>("RawSocket", "a Linux interface through AF_PACKET rings: `rx` to the wire, `tx` from it");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("RawSocket", selftest)]
}

/// Test support: a RawSocket app driven by hand, with a link on each port.
pub mod rig {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use snabb_core::app::Port;
    use snabb_core::{App, AppClass, AppContext, Io, Link, Packet, Ports};

    use crate::{RawSocket, RawSocketArgs};

    pub struct Rig {
        pub app: RawSocket,
        /// Packets to send out of the interface.
        pub rx: Rc<Link>,
        /// Packets received from it.
        pub tx: Rc<Link>,
        io: Io,
    }

    impl Rig {
        pub fn new(args: RawSocketArgs) -> anyhow::Result<Rig> {
            let app = RawSocket::new(args, &AppContext { name: "raw", class: "RawSocket" })?;
            let (rx, tx) = (Rc::new(Link::new(4096)), Rc::new(Link::new(4096)));
            let io = Io {
                input: Ports::new(vec![Port { name: "rx".into(), link: rx.clone() }]),
                output: Ports::new(vec![Port { name: "tx".into(), link: tx.clone() }]),
            };
            Ok(Rig { app, rx, tx, io })
        }

        /// Send frames out of the interface, waiting up to five seconds
        /// for room in the transmit ring; what is left then is dropped.
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

        /// Take whatever the receive ring holds now.
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

        /// Run the app's periodic work once (kernel stats, interface checks).
        pub fn tick(&mut self) {
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
    }
}

/// Frames test traffic is made of: numbered, of various sizes, some with a
/// VLAN tag (802.1Q) and some with two (802.1ad outside), all with the
/// local experimental ethertype so that nothing in the kernel answers them.
pub fn test_frames(n: usize, dst: [u8; 6]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = [60, 64, 128, 333, 1000, 1514][i % 6];
            let mut f = dst.to_vec();
            f.extend_from_slice(&[0x02, 0x00, 0x5e, 0x00, 0x00, 0x01]);
            match i % 5 {
                1 => f.extend_from_slice(&[0x81, 0x00, 0x20, 0x64]),
                3 => f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14]),
                _ => {}
            }
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(&(i as u32).to_be_bytes());
            while f.len() < len {
                f.push((f.len() * 7 + i) as u8);
            }
            f
        })
        .collect()
}

/// Two RawSockets on the ends of a veth pair: frames sent on one arrive,
/// identical and in order, on the other, with their VLAN tags; both apps'
/// counters agree with the kernel's; a packet too long for the MTU is
/// dropped and counted; a missing interface is a clear error.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    use std::time::Duration;
    use veth::{VethPair, kernel_stat, require_root};

    let missing = rig::Rig::new(RawSocketArgs::new("snabbrs-none0")).err().map(|e| format!("{e:#}"));
    ensure!(
        missing.as_deref() == Some("interface `snabbrs-none0`: no such interface (see `ip link`)"),
        "missing interface: {missing:?}"
    );
    require_root()?;
    let v = VethPair::new()?;
    let stat = |i: &str, s: &str| kernel_stat(i, s);
    let kernel = || -> anyhow::Result<[u64; 4]> {
        Ok([
            stat(&v.a, "tx_packets")? + stat(&v.a, "tx_dropped")?,
            stat(&v.a, "tx_bytes")?,
            stat(&v.b, "rx_packets")?,
            stat(&v.b, "rx_bytes")?,
        ])
    };
    let before = kernel()?;
    let mut a = rig::Rig::new(RawSocketArgs::new(&v.a))?;
    let mut b = rig::Rig::new(RawSocketArgs::new(&v.b))?;
    let frames = test_frames(3000, [0x02, 0, 0, 0, 0, 0x0b]);
    // The receiver reads while the sender sends, as in a running graph: a
    // block the kernel retires on its timer holds only what came by then,
    // so an unread ring fills up long before its bytes do.
    let mut got = Vec::new();
    for chunk in frames.chunks(100) {
        a.send(chunk);
        got.extend(b.poll());
    }
    got.extend(b.receive(frames.len() - got.len(), Duration::from_secs(5)));
    if got.len() != frames.len() {
        b.tick();
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
    b.tick();
    let kernel: Vec<u64> = kernel()?.iter().zip(before).map(|(n, b)| n - b).collect();
    let ours = [a.counter("tx_packets"), a.counter("tx_bytes"), b.counter("rx_packets"), b.counter("rx_bytes")];
    ensure!(ours == [3000, bytes, 3000, bytes], "app counters {ours:?}, sent 3000 frames of {bytes} bytes");
    ensure!(kernel == ours, "kernel counters {kernel:?}, app counters {ours:?}");
    ensure!(b.counter("rx_kernel_drops") == 0, "kernel drops");
    // The other way, and a frame longer than the MTU (1500 + header + tag).
    b.send(&[vec![0xee; 1519], frames[5].clone()]);
    ensure!(b.counter("tx_oversize") == 1, "oversize not counted");
    let back = a.receive(1, Duration::from_secs(5));
    ensure!(back == [frames[5].clone()], "the way back: {} frames", back.len());
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
