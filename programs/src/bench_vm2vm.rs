//! `snabb-rs bench vm2vm`: WHAT THE SWITCH PAYS PER FRAME FROM ONE VM TO
//! ANOTHER, TIMED APART FROM THE GUESTS
//!
//! The graph `vmdq-vswitch` builds for two VM ports and no uplink (each
//! port's VhostUser, the software splitter between them), in an engine in
//! this thread, and two in-repo frontends as the guests, driven by hand:
//!
//!   per round  vm2's guest tops up its receive ring and vm1's guest posts
//!              `batch` frames for vm2 (not timed); the engine breathes
//!              once (timed: vm1's port takes the frames, the splitter
//!              sends them on, vm2's port copies them into its guest's
//!              buffers); vm2's guest reaps what arrived (not timed)
//!
//! It reports the median over rounds of the breath's TSC ticks per frame
//! delivered, in ns, and on a line of its own what the engine's commit of
//! counters to shared memory costs (it runs once every COMMIT_BREATHS
//! breaths at most, and at most once every COMMIT_PERIOD, outside the
//! breath). `selftest/vswitch-bench.sh` measures the same path
//! end to end against OVS-DPDK with two CPUs; this one isolates the
//! switch's CPU cost on one, so that changes to it can be compared run
//! against run without the guests' CPU in the figure.
//!
//!   run(&Options)    one line per frame size, and a VM2VM line each

use std::time::Duration;

use crate::tsc::{median, tsc, tsc_rate};
use anyhow::{Context, Result, ensure};
use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions, spawn_frontend, temp_socket};
use snabb_core::Engine;

#[derive(Clone, Debug)]
pub struct Options {
    /// Frames timed per size.
    pub packets: u64,
    pub sizes: Vec<usize>,
    /// Frames vm1 posts per round (one breath's worth).
    pub batch: usize,
}

const VM1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const VM2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn frame(len: usize, n: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i + n) as u8).collect();
    f[..6].copy_from_slice(&VM2);
    f[6..12].copy_from_slice(&VM1);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The switch and its two guests.
struct Bench {
    engine: Engine,
    _shm: TempDir,
    vm1: Frontend,
    vm2: Frontend,
}

impl Bench {
    fn new(huge_pages: bool) -> Result<Bench> {
        let (s1, s2) = (temp_socket("vm2vm-1"), temp_socket("vm2vm-2"));
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        let text = format!(
            "(uplink: None, ports: [\
             (name: \"vm1\", socket: \"{}\", macs: [\"{}\"]), \
             (name: \"vm2\", socket: \"{}\", macs: [\"{}\"])])",
            s1.display(),
            mac(VM1),
            s2.display(),
            mac(VM2)
        );
        let v = crate::vswitch::schema::parse(&text, None)?;
        let registry = crate::registry();
        let g = crate::vswitch::prepare(&v, &registry, false)?;
        let mut engine = Engine::new(registry);
        // Counters in shared memory, as the program keeps them (a
        // directory of its own under the temp dir, gone at the end).
        let shm = TempDir(std::env::temp_dir().join(format!("snabb-rs-vm2vm-{}", std::process::id())));
        engine.enable_shm(&snabb_core::engine::ShmOptions {
            root: shm.0.clone(),
            name: "vm2vm".into(),
            program: "bench vm2vm".into(),
        })?;
        engine.configure(&g.config)?;
        let mut connect = |sock: std::path::PathBuf| -> Result<Frontend> {
            let s = spawn_frontend(move |_| -> Result<Frontend> {
                // Huge pages, as a production guest's memory is (and as
                // vswitch-bench's VirtioUser guests' is).
                let opts =
                    FrontendOptions { queue_size: 1024, mem_size: 64 << 20, huge_pages, ..FrontendOptions::default() };
                let mut fe = Frontend::connect(&sock, opts, Duration::from_secs(30))?;
                fe.setup()?;
                Ok(fe)
            });
            s.finish_with(
                // (run_for: the ports accept and answer in their ticks.)
                || engine.run_for(Duration::from_millis(1)),
                Duration::from_secs(30),
            )?
        };
        let vm1 = connect(s1).context("vm1's guest")?;
        let vm2 = connect(s2).context("vm2's guest")?;
        Ok(Bench { engine, _shm: shm, vm1, vm2 })
    }

    /// `rounds` rounds of `batch` frames of `size`: ticks per frame of each
    /// round that delivered frames, and the frames delivered in all.
    fn run(&mut self, size: usize, batch: usize, rounds: u64) -> Result<(Vec<f64>, u64)> {
        let frames: Vec<Vec<u8>> = (0..batch).map(|i| frame(size, i)).collect();
        let warm = 64;
        let mut per_frame = Vec::with_capacity(rounds as usize);
        let mut got = Vec::new();
        let (mut sent, mut delivered) = (0u64, 0u64);
        for round in 0..warm + rounds {
            let rx = &mut self.vm2.queues[0];
            let free = rx.num_free();
            if free > 0 {
                rx.post_rx(free, 2060);
            }
            self.vm1.reclaim_tx(0);
            let tx = &mut self.vm1.queues[1];
            let n = frames.iter().take_while(|f| tx.send(f)).count();
            let t0 = tsc();
            self.engine.breathe();
            let t1 = tsc();
            got.clear();
            let k = self.vm2.queues[0].reap(&mut got);
            if round >= warm {
                ensure!(got.iter().all(|f| f.len() == size), "round {round}: a frame of the wrong length arrived");
                sent += n as u64;
                delivered += k as u64;
                if k > 0 {
                    per_frame.push((t1 - t0) as f64 / k as f64);
                }
            }
        }
        // Frames still in the switch arrive within a few more breaths.
        for _ in 0..16 {
            self.engine.breathe();
            got.clear();
            delivered += self.vm2.queues[0].reap(&mut got) as u64;
        }
        ensure!(
            delivered == sent,
            "vm1's guest posted {sent} frames and vm2's received {delivered} (counters: {:?})",
            self.engine.app_counters("vm2")
        );
        Ok((per_frame, delivered))
    }
}

/// Measure every size and print the figures.
pub fn run(o: &Options) -> Result<()> {
    ensure!((1..=128).contains(&o.batch), "batch {}: 1 to 128", o.batch);
    let rate = tsc_rate();
    let rounds = (o.packets / o.batch as u64).max(16);
    let mut b = match Bench::new(true) {
        Ok(b) => b,
        Err(e) => {
            println!("(the guests' memory is on ordinary pages: {e:#}; the figures are higher than with huge pages)");
            Bench::new(false)?
        }
    };
    for &size in &o.sizes {
        ensure!((60..=9000).contains(&size), "frame size {size}: 60 to 9000");
        let (per_frame, n) = b.run(size, o.batch, rounds)?;
        println!("VM2VM size={size} ns_per_frame={:.1} frames={n} batch={}", median(per_frame) / rate, o.batch);
        let mut c = Vec::new();
        for _ in 0..21 {
            let t0 = tsc();
            b.engine.commit();
            c.push((tsc() - t0) as f64);
        }
        let commit = median(c) / rate;
        println!(
            "VM2VM_COMMIT ns={commit:.0} (at most once every {} breaths: {:.2} ns per frame at {} frames a breath)",
            snabb_core::engine::COMMIT_BREATHS,
            commit / (snabb_core::engine::COMMIT_BREATHS as f64 * o.batch as f64),
            o.batch
        );
    }
    b.engine.stop();
    Ok(())
}
