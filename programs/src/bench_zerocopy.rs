//! `snabb-rs bench zerocopy`: WHAT THE SWITCH PAYS PER PACKET BETWEEN AN
//! 82599 POOL AND A GUEST, LENDING AGAINST COPYING
//!
//! One VMDq pool of the 82599 model (an `Intel10g` app) and one `VhostUser`
//! port, cabled as vmdq-vswitch cables them, with the in-repo frontend as
//! the guest, all in this thread, and the model in manual mode, so that the
//! switch's work and everyone else's can be timed apart:
//!
//!   receive    the guest's ring is topped up and the model writes `batch`
//!              frames into the pool's queue (not timed); the pool app
//!              pulls them onto its link and posts the buffers it was lent,
//!              the port pushes (completes lent buffers or copies, lends
//!              more) (timed); the guest reaps (not timed)
//!   transmit   the guest posts `batch` frames (not timed); the port pulls
//!              them (lends or copies), the pool app pushes them onto its
//!              transmit ring and reclaims what the chip finished (timed);
//!              the model sends them (not timed)
//!
//! `copy: Zero` on every link lends (the pool posts the guest's own
//! buffers; the guest's frames leave as split packets), `copy: Simd`
//! copies. Each case reports the median over batches of the timed part per
//! packet (RDTSC), and the bytes the switch copied and moved per packet,
//! from the apps' and links' counters: what the port copied into or out of
//! guest memory, what the driver copied or moved between receive buffers
//! (a frame longer than the queue's buffer), what links copied, and what
//! header edits moved inside lent buffers.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::tsc::{tsc, tsc_rate};
use anyhow::{Context, Result, ensure};
use snabb_apps_intel10g::{Intel10g, Intel10gArgs, Intel10gConfig, Mode};
use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions, spawn_frontend, temp_socket};
use snabb_apps_vhost_user::{VhostUser, VhostUserArgs};
use snabb_core::app::Port;
use snabb_core::{App, AppClass, AppContext, CopyMode, Io, Link, MacAddr, Ports};
use snabb_model_82599::{Model82599, WireSpec};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Packets timed per case and direction.
    pub packets: u64,
    pub sizes: Vec<usize>,
    /// Guest receive buffer lengths, net header included.
    pub buffers: Vec<u32>,
    pub batch: usize,
    /// Directions: "rx" (NIC to guest), "tx" (guest to NIC).
    pub dirs: Vec<String>,
    /// Copy modes: "simd", "zero".
    pub modes: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            packets: 200_000,
            sizes: vec![64, 1500, 9000],
            buffers: vec![2060, 1536],
            batch: 32,
            dirs: vec!["rx".into(), "tx".into()],
            modes: vec!["simd".into(), "zero".into()],
        }
    }
}

/// One case's figures.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub ns: f64,
    pub copied: f64,
    pub moved: f64,
}

const DST: [u8; 6] = [0x02, 0, 0, 0, 0x5a, 0x01];

fn frame(len: usize, n: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i + n) as u8).collect();
    f[..6].copy_from_slice(&DST);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x5a, 0x02]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// The pool, the port, their links, the model and the guest.
struct Bench {
    pool: Intel10g,
    vm: VhostUser,
    pool_io: Io,
    vm_io: Io,
    data: Rc<Link>,
    back: Rc<Link>,
    model: Arc<Model82599>,
    fe: Frontend,
}

fn counter(app: &dyn App, name: &str) -> u64 {
    let mut v = 0;
    app.counters(&mut |k, x| {
        if k == name {
            v = x
        }
    });
    v
}

impl Bench {
    fn new(mode: CopyMode) -> Result<Bench> {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let args = Intel10gArgs {
            pci: format!("model:zcbench{n}-{}", std::process::id()),
            wire: Some(WireSpec::Pcap { input: None, output: None, repeat: false }),
            mode: Mode::Vmdq { pools: 64 },
            pool: Some(0),
            macs: vec![MacAddr(DST)],
            link_wait: 2.0,
            ..Intel10gArgs::default()
        };
        let mut pool = Intel10g::new(Intel10gConfig(args), &AppContext { name: "pool", class: "Intel10g" })?;
        let sock = temp_socket("zcbench");
        let mut vm = VhostUser::new(VhostUserArgs::new(&sock), &AppContext { name: "vm", class: "VhostUser" })?;
        let model = pool.model().context("a model port")?;
        let link = |m| {
            let l = Link::new(1024);
            l.set_copy_mode(m);
            Rc::new(l)
        };
        let (data, supply, back) = (link(mode), link(CopyMode::Zero), link(mode));
        let port = |name: &str, l: &Rc<Link>| Port { name: name.into(), link: l.clone() };
        let pool_io = Io {
            input: Ports::new(vec![port("input", &back), port("supply", &supply)]),
            output: Ports::new(vec![port("output", &data)]),
        };
        let vm_io = Io {
            input: Ports::new(vec![port("input", &data)]),
            output: Ports::new(vec![port("output", &back), port("supply", &supply)]),
        };
        pool.link(&pool_io);
        vm.link(&vm_io);
        // The guest connects and sets up while both apps breathe.
        let s = spawn_frontend(move |_| -> Result<Frontend> {
            // A deep ring (as a DPDK guest's): a 9000-byte frame takes five
            // 2 KiB buffers, and a batch's worth is lent ahead.
            let opts = FrontendOptions { queue_size: 1024, mem_size: 64 << 20, ..FrontendOptions::default() };
            let mut fe = Frontend::connect(&sock, opts, Duration::from_secs(30))?;
            fe.setup()?;
            Ok(fe)
        });
        let fe = s.finish_with(
            || {
                for (a, io) in [(&mut pool as &mut dyn App, &pool_io), (&mut vm as &mut dyn App, &vm_io)] {
                    a.tick(io);
                    a.pull(io);
                    a.push(io);
                }
                std::thread::sleep(Duration::from_micros(100));
            },
            Duration::from_secs(30),
        )??;
        ensure!(pool.link_up(), "the model port's link is down");
        model.set_manual(true);
        Ok(Bench { pool, vm, pool_io, vm_io, data, back, model, fe })
    }

    /// Bytes copied and moved by the switch so far.
    fn cost(&self) -> (u64, u64) {
        let (p, v) = (&self.pool as &dyn App, &self.vm as &dyn App);
        let copied = counter(v, "tx_copied_bytes")
            + counter(v, "rx_copied_bytes")
            + counter(p, "rx_gathered_bytes")
            + counter(p, "rx_copied_long_bytes")
            + self.data.counters().copybytes
            + self.back.counters().copybytes;
        (copied, counter(v, "tx_zc_moved_bytes"))
    }

    /// NIC to guest: `rounds` batches of frames of `size`. Returns the
    /// timed ticks per batch and the bytes copied and moved meanwhile.
    fn receive(&mut self, size: usize, buf_len: u32, batch: usize, rounds: u64) -> Result<(Vec<u64>, u64, u64)> {
        let frames: Vec<Vec<u8>> = (0..batch).map(|i| frame(size, i)).collect();
        let warm = 64;
        let mut ticks = Vec::with_capacity(rounds as usize);
        let mut got = Vec::new();
        let (mut c0, mut m0) = (0, 0);
        for round in 0..warm + rounds {
            if round == warm {
                (c0, m0) = self.cost();
            }
            let q = &mut self.fe.queues[0];
            let free = q.num_free();
            if free > 0 {
                q.post_rx(free, buf_len);
            }
            for f in &frames {
                self.model.inject(f.clone());
            }
            self.model.step();
            let t0 = tsc();
            self.pool.pull(&self.pool_io);
            self.vm.push(&self.vm_io);
            let t1 = tsc();
            got.clear();
            self.fe.queues[0].reap(&mut got);
            if round >= warm {
                ensure!(
                    got.len() == batch && got[0].len() == size,
                    "round {round}: the guest received {} of {batch} (pool dropped {}, port {:?})",
                    got.len(),
                    counter(&self.pool, "rxdrop"),
                    ["tx_no_buffer", "tx_no_room", "tx_backlog_drops"].map(|n| counter(&self.vm, n))
                );
                ticks.push(t1 - t0);
            }
        }
        let (c1, m1) = self.cost();
        Ok((ticks, c1 - c0, m1 - m0))
    }

    /// Guest to NIC: `rounds` batches of frames of `size`.
    fn transmit(&mut self, size: usize, batch: usize, rounds: u64) -> Result<(Vec<u64>, u64, u64)> {
        let frames: Vec<Vec<u8>> = (0..batch).map(|i| frame(size, i)).collect();
        let warm = 64;
        let mut ticks = Vec::with_capacity(rounds as usize);
        let (mut c0, mut m0) = (0, 0);
        for round in 0..warm + rounds {
            if round == warm {
                (c0, m0) = self.cost();
            }
            self.fe.reclaim_tx(0);
            let sent = self.fe.send(0, &frames);
            let before = counter(&self.pool, "txpackets");
            let t0 = tsc();
            self.vm.pull(&self.vm_io);
            self.pool.push(&self.pool_io);
            let t1 = tsc();
            self.model.step();
            if round >= warm {
                let out = counter(&self.pool, "txpackets") - before;
                ensure!(
                    sent == batch && out == batch as u64,
                    "round {round}: the guest posted {sent} of {batch}, the pool sent {out}"
                );
                ticks.push(t1 - t0);
            }
        }
        let (c1, m1) = self.cost();
        Ok((ticks, c1 - c0, m1 - m0))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.model.set_manual(false);
    }
}

/// Median ticks per packet.
fn per_packet(mut ticks: Vec<u64>, batch: usize) -> f64 {
    ticks.sort_unstable();
    ticks[ticks.len() / 2] as f64 / batch as f64
}

/// Run every case and print a table (and the zero-copy / copy ratios).
pub fn run(o: &Options) -> Result<()> {
    ensure!((1..=128).contains(&o.batch), "batch {}: 1 to 128", o.batch);
    let mut modes = Vec::new();
    for m in &o.modes {
        match m.as_str() {
            "simd" => modes.push(CopyMode::Simd),
            "zero" => modes.push(CopyMode::Zero),
            m => anyhow::bail!("mode {m}: simd or zero"),
        }
    }
    let rate = tsc_rate();
    let rounds = (o.packets / o.batch as u64).max(16);
    println!(
        "{:<4} {:>6} {:>7} {:<5} {:>9} {:>11} {:>10}",
        "dir", "size", "buffer", "mode", "ns/pkt", "copied B/pkt", "moved B/pkt"
    );
    let mut results: Vec<(String, usize, u32, CopyMode, Figures)> = Vec::new();
    for dir in &o.dirs {
        for &size in &o.sizes {
            let bufs: &[u32] = if dir == "rx" { &o.buffers } else { &o.buffers[..1] };
            for &buf in bufs {
                for &mode in &modes {
                    let mut b = Bench::new(mode)?;
                    let (ticks, copied, moved) = match dir.as_str() {
                        "rx" => b.receive(size, buf, o.batch, rounds)?,
                        "tx" => b.transmit(size, o.batch, rounds)?,
                        d => anyhow::bail!("direction {d}: rx or tx"),
                    };
                    let n = (rounds * o.batch as u64) as f64;
                    let f = Figures {
                        ns: per_packet(ticks, o.batch) / rate,
                        copied: copied as f64 / n,
                        moved: moved as f64 / n,
                    };
                    let buf_s = if dir == "rx" { buf.to_string() } else { "-".into() };
                    println!(
                        "{dir:<4} {size:>6} {buf_s:>7} {:<5} {:>9.1} {:>11.0} {:>10.0}",
                        format!("{mode:?}"),
                        f.ns,
                        f.copied,
                        f.moved
                    );
                    let v = b.model.violations();
                    ensure!(v.is_empty() && b.model.faults().is_empty(), "the model saw {v:?} {:?}", b.model.faults());
                    results.push((dir.clone(), size, buf, mode, f));
                }
            }
        }
    }
    println!();
    for (dir, size, buf, mode, z) in &results {
        if *mode != CopyMode::Zero {
            continue;
        }
        if let Some((.., c)) =
            results.iter().find(|r| r.0 == *dir && r.1 == *size && r.2 == *buf && r.3 == CopyMode::Simd)
        {
            let buf_s = if dir == "rx" { format!(", {buf}-byte buffers") } else { String::new() };
            println!("ZEROCOPY_RATIO dir={dir} size={size}{buf_s} zero_over_simd={:.2}", z.ns / c.ns);
        }
    }
    Ok(())
}
