//! Zero copy end to end: a VMDq pool of the 82599 model lends the receive
//! buffers of a VhostUser port's guest (the in-repo frontend), so frames
//! injected on the model's wire land in guest memory and reach the guest's
//! used ring without a copy; the guest's buffer size decides the queue's
//! (2 KiB for DPDK-like 2060-byte buffers, 1 KiB for Linux-like 1536-byte
//! ones, whose 1500-byte frames the driver compacts into one buffer); and
//! the guest's transmit buffers go to the wire in place, as split packets.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use snabb_apps_intel10g::{Intel10g, RxMode};
use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions, spawn_frontend, temp_socket};
use snabb_core::{Args, Config, Engine};

fn frame(n: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + n * 13 + 1) as u8).collect();
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x01, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..16].copy_from_slice(&(n as u16).to_be_bytes());
    f
}

fn run(buf_len: u32, sizes: &[usize], n: usize) -> Result<(Engine, RxMode, u32)> {
    let (e, mode, bsize, got) = run_lossy(buf_len, sizes, n, 0)?;
    ensure!(got.len() == n, "buffers of {buf_len}: {} of {n} frames", got.len());
    Ok((e, mode, bsize))
}

/// `run`, where a frame may be dropped by the chip for want of a posted
/// buffer (counted in `dev_rxdrop`: a guest that falls behind) or by the
/// port for want of a buffer that holds it (`tx_no_room`: a long frame for
/// a guest without MRG_RXBUF), with the guest refusing the features in
/// `refuse`: every frame is either delivered exact, in order, or counted
/// so. Returns the delivered frames' lengths.
fn run_lossy(buf_len: u32, sizes: &[usize], n: usize, refuse: u64) -> Result<(Engine, RxMode, u32, Vec<usize>)> {
    let path = temp_socket("nic");
    // One model per run: tests in this binary run at once.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let port = format!("model:zce2e{buf_len}-{}-{k}", std::process::id());
    let mut r = snabb_apps_intel10g::registry();
    snabb_apps_vhost_user::register(&mut r);
    let mut c = Config::new();
    c.app_args(
        "p",
        "Intel10g",
        Args::from_ron(&format!(
            "(pci: \"{port}\", wire: Pcap(), mode: Vmdq(pools: 64), macs: [\"02:00:00:00:01:01\"], mtu: 9018)"
        ))?,
    )
    .app_args("vm", "VhostUser", Args::from_ron(&format!("(socket: {:?})", path.display().to_string()))?)
    .link("p.output -> vm.input")
    .link("vm.supply -> p.supply")
    .link("vm.output -> p.input");
    let mut e = Engine::new(r);
    e.configure(&c)?;
    let model = e.app_mut::<Intel10g>("p").context("p")?.model().context("model")?;
    let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(i, sizes[i % sizes.len()])).collect();
    let want = frames.clone();
    let guest = spawn_frontend(move |_| -> Result<Vec<Vec<u8>>> {
        let opts = FrontendOptions { refuse, ..FrontendOptions::default() };
        let mut fe = Frontend::connect(&path, opts, Duration::from_secs(30))?;
        fe.setup()?;
        fe.post_rx(0, 200, buf_len);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        while got.len() < n && Instant::now() < end {
            fe.queues[0].reap_with_headers(&mut got);
            if fe.queues[0].num_free() > 32 {
                fe.post_rx(0, 32, buf_len);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(got.into_iter().map(|(_, f)| f).collect())
    });
    let mut sent = 0;
    let mut mode = (RxMode::Host, 0);
    let got = guest.finish_with(
        || {
            e.run_for(Duration::from_millis(1));
            // (The guest going away at the end takes the pool back to Host.)
            if let Some(m) = e.app_mut::<Intel10g>("p").and_then(|p| p.rx_mode())
                && m.0 == RxMode::Lend
            {
                mode = m;
            }
            // Frames once the pool lends, a few at a time (the guest must
            // keep up: frames without a buffer are dropped, counted).
            if mode.0 == RxMode::Lend && sent < n {
                for f in &frames[sent..(sent + 8).min(n)] {
                    model.inject(f.clone());
                }
                sent = (sent + 8).min(n);
            }
        },
        Duration::from_secs(30),
    )??;
    let p = e.app_counters("p");
    let mut next = 0;
    for f in &got {
        // A frame's number is in bytes 14..16.
        let k = u16::from_be_bytes([f[14], f[15]]) as usize;
        let k = (next..n).find(|&i| i % 65536 == k).context("a frame out of order")?;
        ensure!(*f == want[k], "buffers of {buf_len}: frame {k} arrived different ({} bytes)", f.len());
        next = k + 1;
    }
    let vm = e.app_counters("vm");
    ensure!(
        got.len() as u64 + p["dev_rxdrop"] + vm["tx_no_room"] == n as u64,
        "buffers of {buf_len}: {} of {n} frames delivered, {} + {} dropped; pool {p:?} port {vm:?}",
        got.len(),
        p["dev_rxdrop"],
        vm["tx_no_room"]
    );
    let lens = got.iter().map(Vec::len).collect();
    Ok((e, mode.0, mode.1, lens))
}

#[test]
fn a_pool_lends_dpdk_like_guest_buffers() -> Result<()> {
    let (e, mode, bsize) = run(2060, &[60, 1514, 2048, 900], 400)?;
    ensure!(mode == RxMode::Lend && bsize == 2048, "{mode:?} {bsize}");
    let (p, vm) = (e.app_counters("p"), e.app_counters("vm"));
    ensure!(p["rx_lent"] >= 400 && p["rx_gathered"] == 0 && p["rx_copied_long"] == 0, "{p:?}");
    ensure!(vm["tx_zc_packets"] == 400 && vm["tx_copied_bytes"] == 0, "{vm:?}");
    Ok(())
}

#[test]
fn a_pool_compacts_1500_byte_frames_into_linux_like_buffers() -> Result<()> {
    let (e, mode, bsize) = run(1536, &[60, 1500, 1024, 1025], 400)?;
    ensure!(mode == RxMode::Lend && bsize == 1024, "{mode:?} {bsize}");
    let (p, vm) = (e.app_counters("p"), e.app_counters("vm"));
    ensure!(p["rx_gathered"] == 200 && p["rx_copied_long"] == 0, "{p:?}");
    ensure!(vm["tx_zc_packets"] == 400 && vm["tx_copied_bytes"] == 0, "{vm:?}");
    Ok(())
}

#[test]
fn a_guests_frames_leave_from_its_memory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let wire = dir.path().join("wire.pcap");
    let path = temp_socket("nictx");
    let port = format!("model:zce2etx-{}", std::process::id());
    let mut r = snabb_apps_intel10g::registry();
    snabb_apps_vhost_user::register(&mut r);
    let mut c = Config::new();
    c.app_args(
        "p",
        "Intel10g",
        Args::from_ron(&format!(
            "(pci: \"{port}\", wire: Pcap(output: Some({:?})), mode: Vmdq(pools: 64), macs: [\"02:00:00:00:01:01\"])",
            wire.display().to_string()
        ))?,
    )
    .app_args("vm", "VhostUser", Args::from_ron(&format!("(socket: {:?})", path.display().to_string()))?)
    .link("p.output -> vm.input")
    .link("vm.output -> p.input");
    let mut e = Engine::new(r);
    e.configure(&c)?;
    let sizes = [60, 600, 1514, 1000];
    let frames: Vec<Vec<u8>> = (0..400).map(|i| frame(i, sizes[i % sizes.len()])).collect();
    let send = frames.clone();
    let guest = spawn_frontend(move |_| -> Result<()> {
        let mut fe = Frontend::connect(&path, FrontendOptions::default(), Duration::from_secs(30))?;
        fe.setup()?;
        let mut at = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while at < send.len() && Instant::now() < end {
            fe.reclaim_tx(0);
            // No more than 32 out at once: the port lends at most 64 of a
            // guest's chains (then copies), and a slow machine must not
            // make the switch fall back to copying here.
            if fe.queues[1].in_flight() < 32 {
                at += fe.send(0, &send[at..(at + 16).min(send.len())]);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        ensure!(at == send.len(), "sent {at}");
        // Every buffer comes back once the NIC has sent it.
        let end = Instant::now() + Duration::from_secs(10);
        while fe.queues[1].num_free() < fe.queues[1].size() as usize && Instant::now() < end {
            fe.reclaim_tx(0);
            std::thread::sleep(Duration::from_micros(200));
        }
        ensure!(fe.queues[1].num_free() == fe.queues[1].size() as usize, "transmit buffers still out");
        Ok(())
    });
    guest.finish_with(|| e.run_for(Duration::from_millis(1)), Duration::from_secs(40))??;
    let p = e.app_counters("p");
    ensure!(p["txsplit"] == 300 && p["txcopied"] == 0, "{p:?}");
    let mut rd = snabb_apps_basic::pcap::PcapFileReader::new(std::fs::File::open(&wire)?)?;
    for (i, f) in frames.iter().enumerate() {
        let rec = rd.next_record()?.with_context(|| format!("frame {i} not on the wire"))?;
        ensure!(rec.data[..f.len()] == f[..], "frame {i} differs on the wire");
    }
    Ok(())
}

/// An IPv4 header checksum.
fn ip_csum(h: &[u8]) -> u16 {
    let mut s: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// `inner` in VXLAN over IPv4 (192.0.2.1 -> 192.0.2.2, VNI 5000), outer
/// destination the pool's MAC.
fn vxlan(inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0x01, 0x01, 0x02, 0, 0, 0, 0, 9, 0x08, 0x00];
    let total = 20 + 8 + 8 + inner.len();
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
    let c = ip_csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let ulen = 8 + 8 + inner.len();
    f.extend_from_slice(&[0xc0, 0x00, 0x12, 0xb5, (ulen >> 8) as u8, ulen as u8, 0, 0]);
    f.extend_from_slice(&[0x08, 0, 0, 0, 0x00, 0x13, 0x88, 0x00]);
    f.extend_from_slice(inner);
    f
}

/// Header edits on lent buffers: a VLAN tag the chip strips (the frame is
/// written without it), and a VXLAN tunnel Decap strips in the guest's
/// buffer, whose start is fixed (the frame moves down, counted in bytes).
#[test]
fn vlan_strip_and_decap_work_on_lent_buffers() -> Result<()> {
    for tunnel in [false, true] {
        let path = temp_socket("nicedit");
        let port = format!("model:zcedit{tunnel}-{}", std::process::id());
        let mut r = snabb_apps_intel10g::registry();
        snabb_apps_vhost_user::register(&mut r);
        snabb_apps_decap::register(&mut r);
        let mut c = Config::new();
        let vlans = if tunnel { "" } else { ", vlans: [10]" };
        c.app_args(
            "p",
            "Intel10g",
            Args::from_ron(&format!(
                "(pci: \"{port}\", wire: Pcap(), mode: Vmdq(pools: 64), macs: [\"02:00:00:00:01:01\"]{vlans})"
            ))?,
        )
        .app_args("vm", "VhostUser", Args::from_ron(&format!("(socket: {:?})", path.display().to_string()))?)
        .link("vm.supply -> p.supply")
        .link("vm.output -> p.input");
        if tunnel {
            c.app_args(
                "decap",
                "Decap",
                Args::from_ron("(tunnel: Vxlan(local: \"192.0.2.2\", remote: \"192.0.2.1\", vni: 5000))")?,
            )
            .link("p.output -> decap.input")
            .link("decap.output -> vm.input");
        } else {
            c.link("p.output -> vm.input");
        }
        let mut e = Engine::new(r);
        e.configure(&c)?;
        let model = e.app_mut::<Intel10g>("p").context("p")?.model().context("model")?;
        let inner: Vec<Vec<u8>> = (0..300).map(|i| frame(i, [60, 700, 1400][i % 3])).collect();
        let wire: Vec<Vec<u8>> = inner
            .iter()
            .map(|f| {
                if tunnel {
                    vxlan(f)
                } else {
                    let mut t = f.clone();
                    t.splice(12..12, [0x81, 0x00, 0x00, 10]);
                    t
                }
            })
            .collect();
        let n = inner.len();
        let guest = spawn_frontend(move |_| -> Result<Vec<Vec<u8>>> {
            let mut fe = Frontend::connect(&path, FrontendOptions::default(), Duration::from_secs(30))?;
            fe.setup()?;
            fe.post_rx(0, 200, 2060);
            let mut got = Vec::new();
            let end = Instant::now() + Duration::from_secs(20);
            while got.len() < n && Instant::now() < end {
                fe.queues[0].reap(&mut got);
                if fe.queues[0].num_free() > 32 {
                    fe.post_rx(0, 32, 2060);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(got)
        });
        let mut sent = 0;
        let got = guest.finish_with(
            || {
                e.run_for(Duration::from_millis(1));
                let lending = e.app_mut::<Intel10g>("p").and_then(|p| p.rx_mode()).is_some_and(|m| m.0 == RxMode::Lend);
                if lending && sent < n {
                    for f in &wire[sent..(sent + 8).min(n)] {
                        model.inject(f.clone());
                    }
                    sent = (sent + 8).min(n);
                }
            },
            Duration::from_secs(40),
        )??;
        ensure!(got == inner, "tunnel {tunnel}: {} of {n} frames, or other bytes", got.len());
        let vm = e.app_counters("vm");
        ensure!(vm["tx_zc_packets"] == n as u64 && vm["tx_copied_bytes"] == 0, "tunnel {tunnel}: {vm:?}");
        let moved: u64 = inner.iter().map(|f| f.len() as u64).sum();
        let want_moved = if tunnel { moved } else { 0 };
        ensure!(vm["tx_zc_moved_bytes"] == want_moved, "tunnel {tunnel}: moved {}", vm["tx_zc_moved_bytes"]);
        ensure!(model.faults().is_empty());
    }
    Ok(())
}

/// Every frame size from 60 to 9018 bytes arrives exact through a lending
/// pool, into DPDK-like and Linux-like buffers (MRG_RXBUF on): the frames a
/// lent buffer holds stay in it; longer ones stay in the several lent
/// buffers the chip wrote them into, as one chain packet, and the port
/// moves each later buffer's bytes down over its header room and merges
/// them (num_buffers): no frame is copied, every moved byte is counted.
#[test]
fn every_frame_size_arrives_exact() -> Result<()> {
    let sizes: Vec<usize> = (60..=9018).collect();
    for buf_len in [2060usize, 1536] {
        // A 9000-byte frame takes 9 of a Linux-like guest's buffers: one
        // that falls behind under load loses some, counted.
        let (e, mode, bsize, got) = run_lossy(buf_len as u32, &sizes, sizes.len(), 0)?;
        ensure!(mode == RxMode::Lend, "{buf_len}: {mode:?}");
        ensure!(got.len() * 2 >= sizes.len(), "{buf_len}: {} of {} frames", got.len(), sizes.len());
        let (p, vm) = (e.app_counters("p"), e.app_counters("vm"));
        ensure!(vm["tx_packets"] == got.len() as u64, "{buf_len}: {vm:?}");
        ensure!(p["rx_lent"] > 0 && p["model_dma_faults"] == 0, "{buf_len}: {p:?}");
        // The first lent buffer holds `room` bytes; past that, a chain.
        let (b, room) = (bsize as usize, (buf_len - 12).min(bsize as usize + 1023));
        let long: Vec<usize> = got.iter().copied().filter(|&s| s > room).collect();
        let moved: usize = long.iter().map(|s| s - b).sum();
        let chain_buffers: usize = long.iter().map(|s| s.div_ceil(b)).sum();
        ensure!(
            vm["tx_zc_packets"] == got.len() as u64
                && vm["tx_copied_bytes"] == 0
                && p["rx_copied_long"] == 0
                && p["rx_chained"] == long.len() as u64
                && p["rx_chained_buffers"] == chain_buffers as u64
                && vm["tx_zc_chained"] == long.len() as u64
                && vm["tx_zc_moved_bytes"] == moved as u64,
            "{buf_len}: pool {p:?} port {vm:?}"
        );
    }
    Ok(())
}

/// Without MRG_RXBUF a frame must fit one buffer of the guest's: those that
/// fit a lent buffer are delivered in it; the chip still writes a longer
/// one over several lent buffers, and the port, which cannot merge them for
/// this guest, would copy the chain from where it lies into a buffer that
/// holds it; this guest posts none that does, so it is dropped, counted
/// (`tx_no_room`). Never truncated, never a wrong frame, every lent buffer
/// back.
#[test]
fn without_mrg_rxbuf_a_long_frame_is_copied_or_counted() -> Result<()> {
    use snabb_apps_vhost_user::virtio::{VIRTIO_NET_F_MRG_RXBUF, bit};
    let sizes: Vec<usize> = (60..=4000).step_by(7).collect();
    let (e, mode, bsize, got) = run_lossy(2060, &sizes, sizes.len(), bit(VIRTIO_NET_F_MRG_RXBUF))?;
    ensure!(mode == RxMode::Lend && bsize == 2048, "{mode:?} {bsize}");
    let (p, vm) = (e.app_counters("p"), e.app_counters("vm"));
    ensure!(got.iter().all(|&s| s <= 2048), "a frame longer than the guest's buffers arrived");
    ensure!(p["rx_chained"] > 0 && vm["tx_zc_chained"] == 0, "pool {p:?} port {vm:?}");
    ensure!(vm["tx_zc_packets"] == got.len() as u64 && vm["tx_no_room"] > 0, "{vm:?}");
    ensure!(vm["zc_lent"] == 0 && p["model_dma_faults"] == 0, "pool {p:?} port {vm:?}");
    Ok(())
}
