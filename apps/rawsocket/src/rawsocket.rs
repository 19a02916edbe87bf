//! RAWSOCKET: a Linux interface as a port of the graph.
//!
//! Frames received on the interface go out on `tx`; packets arriving on
//! `rx` are sent out of the interface (Snabb's port names: the app is the
//! wire's end). Each breath it reads what the receive ring holds (no system
//! call) and writes what `rx` holds into the transmit ring, then makes one
//! `send()` to push the batch. A missing interface or a missing privilege
//! stops the config from loading; an interface that goes down and up again is
//! ridden out, and one that disappears is looked for again every second.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snabb_core::packet::{Allocator, PAYLOAD_SIZE};
use snabb_core::{App, AppClass, AppContext, Io, Link, PULL_NPACKETS, PortSpec};

use crate::csum;
use crate::socket::{Interface, Kick, L2_OVERHEAD, RX_BLOCK_SIZE, RxRing, TxRing, merges_frames};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocketArgs {
    /// The interface (`eth0`, `veth1`, `tap0`...).
    pub interface: String,
    /// Receive every frame, not only those the interface's MAC filter keeps
    /// (a switch port must). Undone when the app stops.
    #[serde(default = "yes")]
    pub promiscuous: bool,
    /// Finish TCP and UDP checksums that a local sender left to offload
    /// (TP_STATUS_CSUMNOTREADY), so that the frames are valid elsewhere.
    #[serde(default = "yes")]
    pub complete_checksums: bool,
    /// Hand frames straight to the driver, past the interface's queueing
    /// discipline (faster; no traffic shaping, drops when the driver is busy).
    #[serde(default)]
    pub qdisc_bypass: bool,
    /// Receive ring size in KiB (whole 64 KiB blocks).
    #[serde(default = "rx_ring_kib")]
    pub rx_ring_kib: usize,
    /// Transmit ring slots.
    #[serde(default = "tx_frames")]
    pub tx_frames: usize,
}

fn yes() -> bool {
    true
}
fn rx_ring_kib() -> usize {
    4096
}
fn tx_frames() -> usize {
    1024
}

impl RawSocketArgs {
    pub fn new(interface: &str) -> RawSocketArgs {
        RawSocketArgs {
            interface: interface.to_string(),
            promiscuous: true,
            complete_checksums: true,
            qdisc_bypass: false,
            rx_ring_kib: rx_ring_kib(),
            tx_frames: tx_frames(),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let n = &self.interface;
        anyhow::ensure!(
            !n.is_empty() && n.len() < libc::IFNAMSIZ && !n.contains(['/', ':', ' ', '\0']) && n != "." && n != "..",
            "interface `{n}`: not an interface name (1 to {} characters, no `/`, `:` or space)",
            libc::IFNAMSIZ - 1
        );
        let kib = RX_BLOCK_SIZE >> 10;
        anyhow::ensure!(
            self.rx_ring_kib >= kib && self.rx_ring_kib <= 1 << 20,
            "rx_ring_kib {}: from {kib} to {}",
            self.rx_ring_kib,
            1 << 20
        );
        anyhow::ensure!((16..=1 << 16).contains(&self.tx_frames), "tx_frames {}: from 16 to 65536", self.tx_frames);
        Ok(())
    }
}

/// The open sockets of an interface.
struct Device {
    ifc: Interface,
    rx: RxRing,
    tx: TxRing,
    /// Longest frame the kernel takes on transmit (MTU + header + tag).
    tx_max: usize,
}

fn open(a: &RawSocketArgs) -> anyhow::Result<Device> {
    let name = &a.interface;
    let ifc = Interface::lookup(name).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("interface `{name}`: no such interface (see `ip link`)")
        } else {
            anyhow::anyhow!("interface `{name}`: {e}")
        }
    })?;
    let privilege = |what: &str, e: std::io::Error| {
        if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            anyhow::anyhow!(
                "interface `{name}`: {what}: permission denied: AF_PACKET sockets need CAP_NET_RAW (run as root, or `setcap cap_net_raw+ep` on the program)"
            )
        } else {
            anyhow::anyhow!("interface `{name}`: {what}: {e}")
        }
    };
    let blocks = a.rx_ring_kib.div_ceil(RX_BLOCK_SIZE >> 10);
    let rx = RxRing::open(ifc.index, blocks, a.promiscuous).map_err(|e| privilege("receive ring", e))?;
    let tx_max = (ifc.mtu + L2_OVERHEAD).min(PAYLOAD_SIZE);
    let tx = TxRing::open(ifc.index, a.tx_frames, tx_max, a.qdisc_bypass).map_err(|e| privilege("transmit ring", e))?;
    if merges_frames(name) == Some(true) {
        log::warn!(
            "interface `{name}` merges received frames (GRO or LRO): merged frames longer than {PAYLOAD_SIZE} bytes will be dropped (rx_oversize); `ethtool -K {name} gro off lro off`"
        );
    }
    Ok(Device { ifc, rx, tx, tx_max })
}

/// Counters, named as they are published.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Frames taken from the receive ring, and their bytes (VLAN tag
    /// included): with `rx_kernel_drops`, what the interface's `rx_packets`
    /// and `rx_bytes` count.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the kernel could not put in the full receive ring.
    pub rx_kernel_drops: u64,
    /// Frames longer than a packet (10240 bytes), or cut short by the ring:
    /// counted in rx_packets, then dropped. GRO or LRO on the interface makes
    /// these (`ethtool -K IF gro off lro off`).
    pub rx_oversize: u64,
    /// Frames whose TCP/UDP checksum was finished here.
    pub rx_csum_completed: u64,
    /// Ring entries out of place (a kernel bug); the rest of the block is skipped.
    pub rx_ring_errors: u64,
    /// Frames the kernel took from the transmit ring, and their bytes: the
    /// interface's `tx_packets` + `tx_dropped`.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets longer than the interface's MTU allows, dropped.
    pub tx_oversize: u64,
    /// Packets shorter than an Ethernet header, dropped.
    pub tx_runt: u64,
    /// Frames dropped because the interface was down or gone.
    pub tx_down_drops: u64,
    /// Frames the kernel refused, or lost to an unexpected send error.
    pub tx_errors: u64,
    /// Times the sockets were opened again (the interface came back, or its
    /// MTU grew past the transmit slots).
    pub reopens: u64,
}

pub struct RawSocket {
    args: RawSocketArgs,
    dev: Option<Device>,
    c: Counters,
    next_stats: Instant,
    next_check: Instant,
}

const STATS_EVERY: Duration = Duration::from_millis(100);
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl AppClass for RawSocket {
    type Args = RawSocketArgs;
    const PORTS: PortSpec = PortSpec::new(&["rx"], &["tx"]);

    fn validate(args: &RawSocketArgs) -> anyhow::Result<()> {
        args.check()
    }

    fn new(args: RawSocketArgs, _ctx: &AppContext) -> anyhow::Result<RawSocket> {
        args.check()?;
        let dev = open(&args)?;
        let now = Instant::now();
        Ok(RawSocket { args, dev: Some(dev), c: Counters::default(), next_stats: now, next_check: now + CHECK_EVERY })
    }
}

impl RawSocket {
    pub fn counters_now(&self) -> Counters {
        self.c
    }

    /// The interface's index while it is open.
    pub fn ifindex(&self) -> Option<i32> {
        self.dev.as_ref().map(|d| d.ifc.index)
    }

    /// Read the kernel's drop count now (it is also read every 100 ms).
    pub fn update_kernel_stats(&mut self) {
        if let Some(Ok(n)) = self.dev.as_ref().map(|d| d.rx.kernel_drops()) {
            self.c.rx_kernel_drops += n;
        }
    }

    fn close(&mut self, why: &str) {
        if self.dev.take().is_some() {
            log::warn!("RawSocket `{}`: {why}; looking for it again every second", self.args.interface);
        }
    }

    /// Every second: is the interface still the one we opened, with the same MTU?
    fn check_interface(&mut self) {
        let now = Interface::lookup(&self.args.interface).ok();
        let reopen = match (&self.dev, &now) {
            (None, Some(_)) => true,
            (Some(_), None) => {
                self.discard_tx();
                self.close("the interface is gone");
                false
            }
            (Some(d), Some(n)) => {
                if n.index != d.ifc.index {
                    true
                } else if n.mtu != d.ifc.mtu {
                    let tx_max = (n.mtu + L2_OVERHEAD).min(PAYLOAD_SIZE);
                    if tx_max <= d.tx.max_frame() {
                        let d = self.dev.as_mut().unwrap();
                        d.ifc.mtu = n.mtu;
                        d.tx_max = tx_max;
                        false
                    } else {
                        true
                    }
                } else {
                    false
                }
            }
            (None, None) => false,
        };
        if reopen {
            self.discard_tx();
            self.update_kernel_stats();
            self.dev = None;
            match open(&self.args) {
                Ok(d) => {
                    log::info!(
                        "RawSocket `{}`: opened again (index {}, MTU {})",
                        self.args.interface,
                        d.ifc.index,
                        d.ifc.mtu
                    );
                    self.dev = Some(d);
                    self.c.reopens += 1;
                }
                Err(e) => log::warn!("RawSocket: {e:#}"),
            }
        }
    }

    fn discard_tx(&mut self) {
        if let Some(d) = &mut self.dev {
            let (n, b, refused) = d.tx.reclaim();
            self.c.tx_packets += n;
            self.c.tx_bytes += b;
            self.c.tx_errors += refused;
            self.c.tx_down_drops += d.tx.discard_pending();
        }
    }

    /// Push the transmit ring and count what the kernel took.
    fn kick(&mut self) {
        let Some(d) = &mut self.dev else { return };
        let k = d.tx.kick();
        let (n, b, refused) = d.tx.reclaim();
        self.c.tx_packets += n;
        self.c.tx_bytes += b;
        self.c.tx_errors += refused;
        match k {
            Kick::Sent => {}
            Kick::Down => self.c.tx_down_drops += d.tx.discard_pending(),
            Kick::Gone => {
                self.c.tx_down_drops += d.tx.discard_pending();
                self.close("the interface is gone");
            }
            Kick::Error(e) => {
                let lost = d.tx.discard_pending();
                self.c.tx_errors += lost;
                log::warn!(
                    "RawSocket `{}`: send: {} ({lost} frames dropped)",
                    self.args.interface,
                    std::io::Error::from_raw_os_error(e)
                );
            }
        }
    }

    fn transmit(&mut self, input: &Link) {
        let Some(d) = &mut self.dev else {
            // No interface: what comes in is dropped, as on a cable with no end.
            self.c.tx_down_drops += input.discard().0;
            return;
        };
        // The status word of the slot is on the line the frame goes to.
        while d.tx.head_free() {
            let Some(mut p) = input.receive() else { break };
            // The kernel takes no partial checksum from us: finish it.
            p.finish_partial_csum();
            let frame = p.data();
            if frame.len() > d.tx_max {
                self.c.tx_oversize += 1;
            } else if frame.len() < 14 {
                self.c.tx_runt += 1;
            } else if !d.tx.put(frame) {
                // head_free() said the slot was free: cannot happen.
                self.c.tx_errors += 1;
            }
        }
    }
}

impl App for RawSocket {
    fn has_pull(&self) -> bool {
        true
    }

    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.get("tx").or_else(|| io.output.first()) else { return };
        let Some(d) = &mut self.dev else { return };
        let max = PULL_NPACKETS.min(out.nwritable());
        if max == 0 || !d.rx.ready() {
            return;
        }
        let c = &mut self.c;
        let complete = self.args.complete_checksums;
        let mut alloc = Allocator::new(max);
        let mut tx = out.transmitter();
        let (_, errors) = d.rx.receive(max, |f| {
            let tag = if f.vlan.is_some() { 4 } else { 0 };
            let len = f.len + tag;
            c.rx_packets += 1;
            c.rx_bytes += len as u64;
            if f.data.len() < f.len || len > PAYLOAD_SIZE || f.data.len() < 12 {
                c.rx_oversize += 1;
                return;
            }
            let mut p = alloc.allocate();
            p.set_len(len);
            let b = p.data_mut();
            match f.vlan {
                // The kernel took the tag out into the ring header: put it back.
                Some((tpid, tci)) => {
                    b[..12].copy_from_slice(&f.data[..12]);
                    b[12..14].copy_from_slice(&tpid.to_be_bytes());
                    b[14..16].copy_from_slice(&tci.to_be_bytes());
                    snabb_core::copy::copy(&mut b[16..], &f.data[12..]);
                }
                None => snabb_core::copy::copy(b, f.data),
            }
            if complete && f.status & libc::TP_STATUS_CSUMNOTREADY != 0 && csum::complete(b) {
                c.rx_csum_completed += 1;
            }
            tx.send(p);
        });
        self.c.rx_ring_errors += errors;
    }

    fn push(&mut self, io: &Io) {
        if let Some(input) = io.input.get("rx").or_else(|| io.input.first()).filter(|l| !l.is_empty()) {
            self.transmit(input);
        }
        if self.dev.as_ref().is_some_and(|d| d.tx.pending()) {
            self.kick();
        }
    }

    fn tick(&mut self, _io: &Io) {
        let now = Instant::now();
        if now >= self.next_stats {
            self.next_stats = now + STATS_EVERY;
            self.update_kernel_stats();
        }
        if now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            self.check_interface();
        }
    }

    fn stop(&mut self) {
        self.discard_tx();
        self.dev = None;
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let c = &self.c;
        for (k, v) in [
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("rx_kernel_drops", c.rx_kernel_drops),
            ("rx_oversize", c.rx_oversize),
            ("rx_csum_completed", c.rx_csum_completed),
            ("rx_ring_errors", c.rx_ring_errors),
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("tx_oversize", c.tx_oversize),
            ("tx_runt", c.tx_runt),
            ("tx_down_drops", c.tx_down_drops),
            ("tx_errors", c.tx_errors),
            ("reopens", c.reopens),
        ] {
            emit(k, v);
        }
    }

    fn report(&self, out: &mut String) {
        let c = &self.c;
        let state = match &self.dev {
            Some(d) => format!("index {}, MTU {}", d.ifc.index, d.ifc.mtu),
            None => "gone".to_string(),
        };
        out.push_str(&format!(
            "{} ({state}): rx {} frames {} bytes ({} kernel drops, {} oversize); tx {} frames {} bytes ({} oversize, {} dropped while down)\n",
            self.args.interface,
            c.rx_packets,
            c.rx_bytes,
            c.rx_kernel_drops,
            c.rx_oversize,
            c.tx_packets,
            c.tx_bytes,
            c.tx_oversize,
            c.tx_down_drops
        ));
    }
}
