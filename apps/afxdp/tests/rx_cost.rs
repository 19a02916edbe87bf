//! What the receive path costs in user space, frames copied into host
//! packets (`rx_buffers: Copy`) against frames lent as foreign packets
//! (`Lend`): ns per frame for `pull` and the next app, measured on frames
//! already waiting in the RX ring (the kernel's part, done when they were
//! sent, is not timed). Three next apps: one that drops each packet
//! unread (a full link), one that reads its Ethernet header (a switch
//! choosing an output: VmdqSplitter) and one that copies it all (VhostUser
//! into a guest's buffer).
//! Not a test: run it by hand on a quiet machine (docs/ARCHITECTURE.md):
//!
//!   cargo test --release -p snabb-apps-afxdp --test rx_cost -- --ignored --nocapture

use std::hint::black_box;
use std::time::{Duration, Instant};

use snabb_apps_afxdp::afxdp::COPY_MAX;
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
#[derive(Clone, Copy)]
enum Next {
    Drop,
    Header,
    Copy,
}

fn measure(v: &VethPair, rx: RxBuffers, copy_max: u32, size: usize, next: Next) -> f64 {
    let args = AfXdpArgs { rx_buffers: rx, copy_max, rx_ring: 4096, lend_frames: 4096, ..AfXdpArgs::new(&v.a) };
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
            got += dut.pull_with(|p| match next {
                Next::Drop => {
                    black_box(p.len());
                }
                Next::Header => {
                    let d = p.data();
                    black_box(u64::from_le_bytes(d[..8].try_into().unwrap()) ^ u64::from(d[12]));
                }
                Next::Copy => {
                    let d = p.data();
                    sink[..d.len()].copy_from_slice(d);
                    black_box(&sink);
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
    // lend: every frame lent (copy_max 0); default: lent above COPY_MAX.
    let cases = [
        ("copy/drop", RxBuffers::Copy, 0, Next::Drop),
        ("lend/drop", RxBuffers::Lend, 0, Next::Drop),
        ("copy/header", RxBuffers::Copy, 0, Next::Header),
        ("lend/header", RxBuffers::Lend, 0, Next::Header),
        ("dflt/header", RxBuffers::Lend, COPY_MAX, Next::Header),
        ("copy/copy", RxBuffers::Copy, 0, Next::Copy),
        ("lend/copy", RxBuffers::Lend, 0, Next::Copy),
        ("dflt/copy", RxBuffers::Lend, COPY_MAX, Next::Copy),
    ];
    print!("{:>6}", "size");
    for (name, _, _, _) in cases {
        print!(" {name:>11}");
    }
    println!();
    for size in [64, 128, 192, 256, 512, 1500, 4000, 9000] {
        if size > 1500 {
            for i in [&v.a, &v.b] {
                snabb_apps_rawsocket::veth::ip(&["link", "set", i, "mtu", "9000"]).unwrap();
            }
        }
        print!("{size:>6}");
        for (_, rx, copy_max, next) in cases {
            print!(" {:>11.1}", measure(&v, rx, copy_max, size, next));
        }
        println!();
    }
}
