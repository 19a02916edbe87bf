//! What the receive path costs in user space, frames copied into host
//! packets (`rx_buffers: Copy`) against frames lent as foreign packets
//! (`Lend`): ns per frame for `pull` and the next app, measured on frames
//! already waiting in the RX ring (the kernel's part, done when they were
//! sent, is not timed). Two next apps: one that drops each packet (a
//! filter, a full link) and one that copies it (VhostUser into a guest).
//! Not a test: run it by hand on a quiet machine (docs/ARCHITECTURE.md):
//!
//!   cargo test --release -p snabb-apps-afxdp --test rx_cost -- --ignored --nocapture

use std::hint::black_box;
use std::time::{Duration, Instant};

use snabb_apps_afxdp::rig::Rig;
use snabb_apps_afxdp::{AfXdpArgs, RxBuffers};
use snabb_apps_rawsocket::veth::{VethPair, require_root};

/// Frames per batch: they must all wait in the RX ring (4096 entries).
fn batch(size: usize) -> usize {
    if size <= 3800 { 2000 } else { 1000 }
}
const ROUNDS: usize = 41;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns per frame, median over ROUNDS batches.
fn measure(v: &VethPair, rx: RxBuffers, size: usize, copy_out: bool) -> f64 {
    let args = AfXdpArgs { rx_buffers: rx, rx_ring: 4096, lend_frames: 4096, ..AfXdpArgs::new(&v.a) };
    let mut dut = Rig::named("dut", args).unwrap();
    let mut sender = Rig::named("gen", AfXdpArgs::new(&v.b)).unwrap();
    let mut frame = vec![0u8; size];
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let n = batch(size);
    let frames = vec![frame; n];
    let mut sink = vec![0u8; 10240];
    let mut times = Vec::new();
    for round in 0..ROUNDS + 3 {
        sender.send(&frames);
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        let mut got = 0;
        let deadline = t + Duration::from_secs(2);
        while got < n && Instant::now() < deadline {
            got += dut.pull_with(|p| {
                if copy_out {
                    let d = p.data();
                    sink[..d.len()].copy_from_slice(d);
                    black_box(&sink);
                } else {
                    black_box(p.len());
                }
            });
        }
        let dt = t.elapsed();
        assert_eq!(got, n, "round {round}: {got} of {n} frames (a busy machine drops them)");
        if round >= 3 {
            times.push(dt.as_nanos() as f64 / n as f64);
        }
    }
    median(times)
}

#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn copy_against_lend() {
    if require_root().is_err() {
        eprintln!("needs root");
        return;
    }
    let v = VethPair::new().unwrap();
    println!("ns per frame in pull and the next app, median of {ROUNDS} batches of 2000 (1000 above 3800 B)");
    println!("{:>6} {:>10} {:>10} {:>10} {:>10}", "size", "copy/drop", "lend/drop", "copy/copy", "lend/copy");
    for size in [64, 256, 1500, 4000, 9000] {
        if size > 1500 {
            for i in [&v.a, &v.b] {
                snabb_apps_rawsocket::veth::ip(&["link", "set", i, "mtu", "9000"]).unwrap();
            }
        }
        let r: Vec<f64> =
            [(RxBuffers::Copy, false), (RxBuffers::Lend, false), (RxBuffers::Copy, true), (RxBuffers::Lend, true)]
                .into_iter()
                .map(|(m, c)| measure(&v, m, size, c))
                .collect();
        println!("{size:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.1}", r[0], r[1], r[2], r[3]);
    }
}
