//! THE DRIVER'S COST PER PACKET, WITHOUT THE MODEL'S
//!
//! A model port in manual mode does nothing unless asked, so the driver's
//! work and the model's can be timed apart:
//!
//!   receive   the model fills `batch` descriptors (not timed); then the
//!             driver takes them (DD check, length, hand-over to a link),
//!             posts fresh buffers and bumps RDT (timed); the link is
//!             emptied (not timed)
//!   transmit  `batch` packets wait on a link (not timed); the driver
//!             reclaims the previous batch, fills descriptors and bumps TDT
//!             (timed); the model sends them (not timed)
//!
//! Time is read with RDTSC around the timed part only. The driver's work
//! is in `driver_rx` and `driver_tx`, which are never inlined, so that
//! `valgrind --tool=callgrind --toggle-collect=*driver_rx*` counts its
//! instructions and nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use snabb_core::Link;
use snabb_core::packet::{Allocator, Packet};
use snabb_model_82599::{WireSpec, registry};

use crate::bar::{ModelBar, Registers};
use crate::device::{Claimed, Device, DeviceSettings, Filters, LinkSetup, Mode, QueueSettings};
use crate::dma::{DmaMapper, DmaPath};
use crate::ring::{RxQueue, TxQueue};

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub batch: usize,
    /// Packets timed per direction.
    pub packets: u64,
    /// Calls of `driver_rx` (and of `driver_tx`), warm-up included: what
    /// callgrind sees.
    pub calls: u64,
    /// TSC ticks per packet in the driver's receive path: the median over
    /// batches (a batch during which the thread was preempted is an
    /// outlier that the median ignores and the mean does not).
    pub rx_ticks: f64,
    /// The same for the transmit path.
    pub tx_ticks: f64,
    /// Means over all batches, for comparison.
    pub rx_mean: f64,
    pub tx_mean: f64,
    /// TSC ticks per nanosecond (the TSC's rate, measured).
    pub ticks_per_ns: f64,
}

#[inline(always)]
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no preconditions on x86-64.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Instant::now().elapsed().as_nanos() as u64
    }
}

fn tsc_rate() -> f64 {
    let (t0, i0) = (tsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(50));
    (tsc() - t0) as f64 / i0.elapsed().as_nanos() as f64
}

/// The driver's receive path for one batch: take, refill, one tail write.
#[inline(never)]
pub fn driver_rx<R: Registers>(rx: &mut RxQueue<R>, max: usize, out: &Link) -> usize {
    let mut tx = out.transmitter();
    let n = rx.receive(max, |p| tx.send(p));
    drop(tx);
    rx.refill();
    rx.flush().expect("RDT");
    n
}

/// The driver's transmit path for one batch: reclaim, fill, one tail write.
#[inline(never)]
pub fn driver_tx<R: Registers>(tx: &mut TxQueue<R>, input: &Link) -> usize {
    tx.transmit(input).expect("TDT")
}

/// One queue pair of a model port in manual mode, driven directly through
/// the driver's lower layers (for the benchmark and the zero-copy test).
pub(crate) struct ModelQueue {
    pub dev: Arc<Device<ModelBar>>,
    pub model: Arc<snabb_model_82599::Model82599>,
    id: u64,
    pub rx: Option<RxQueue<ModelBar>>,
    pub tx: Option<TxQueue<ModelBar>>,
}

impl Drop for ModelQueue {
    fn drop(&mut self) {
        self.model.set_manual(false);
        if let (Some(rx), Some(tx)) = (self.rx.take(), self.tx.take()) {
            self.dev.stop(self.id, 0, &Filters::default(), rx, tx);
        }
    }
}

pub(crate) fn model_queue(ring: u32, buffer_size: u32) -> Result<ModelQueue> {
    // A wire with carrier that goes nowhere: the link comes up alone.
    model_queue_with(ring, buffer_size, 1514, WireSpec::Pcap { input: None, output: None, repeat: false })
}

/// The same with a given MTU and wire.
pub(crate) fn model_queue_with(ring: u32, buffer_size: u32, mtu: u32, wire: WireSpec) -> Result<ModelQueue> {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("queue{n}-{}", std::process::id());
    let model = registry::open(&name, Some(&wire)).map_err(anyhow::Error::msg)?;
    let filters =
        Filters { accept_broadcast: true, accept_multicast: true, accept_untagged: true, ..Filters::default() };
    let settings = DeviceSettings { mode: Mode::Single, mtu, vm_to_vm: false, port_filters: Some(filters.clone()) };
    let dma = DmaMapper::new(DmaPath::Model(model.clone()), &name)?;
    let dev =
        Arc::new(Device::open(&name, ModelBar(model.clone()), dma, settings, LinkSetup::Sfi, Duration::from_secs(2))?);
    ensure!(dev.link_up(), "the bench port's link did not come up");
    let Claimed::Now(id) = dev.claim(0, "bench")? else { anyhow::bail!("queue 0 taken") };
    let (rx, tx, _) = dev.start(id, 0, &filters, &QueueSettings { rx_ring: ring, tx_ring: ring, buffer_size })?;
    model.set_manual(true);
    Ok(ModelQueue { dev, model, id, rx: Some(rx), tx: Some(tx) })
}

/// Measure receive and transmit at `batch` packets per call over about
/// `packets` packets each.
pub fn run(batch: usize, packets: u64) -> Result<Figures> {
    ensure!((1..=512).contains(&batch), "batch {batch}: 1 to 512");
    let mut b = model_queue(1024, 2048)?;
    let rounds = packets.div_ceil(batch as u64).max(1);
    let warm = (rounds / 10).max(10);
    let frame = {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5];
        f.resize(60, 0);
        f
    };

    // Receive.
    let link = Link::new(1024);
    let rx = b.rx.as_mut().context("rx")?;
    let mut rx_ticks = Vec::with_capacity(rounds as usize);
    for round in 0..warm + rounds {
        for _ in 0..batch {
            b.model.inject(frame.clone());
        }
        b.model.step();
        let t0 = tsc();
        let n = driver_rx(rx, batch, &link);
        let t1 = tsc();
        ensure!(n == batch, "round {round}: received {n} of {batch}");
        if round >= warm {
            rx_ticks.push(t1 - t0);
        }
        link.discard();
    }

    // Transmit.
    let tx = b.tx.as_mut().context("tx")?;
    let template = Packet::from_bytes(&frame);
    let mut tx_ticks = Vec::with_capacity(rounds as usize);
    for round in 0..warm + rounds {
        let mut alloc = Allocator::new(batch);
        for _ in 0..batch {
            link.transmit(alloc.clone_of(&template));
        }
        drop(alloc);
        let t0 = tsc();
        let n = driver_tx(tx, &link);
        let t1 = tsc();
        ensure!(n == batch, "round {round}: sent {n} of {batch}");
        if round >= warm {
            tx_ticks.push(t1 - t0);
        }
        b.model.step();
    }
    let v = b.model.violations();
    ensure!(v.is_empty() && b.model.faults().is_empty(), "the model saw {v:?}");
    let n = rounds * batch as u64;
    let per_packet = |mut v: Vec<u64>| {
        let mean = v.iter().sum::<u64>() as f64 / n as f64;
        v.sort_unstable();
        (v[v.len() / 2] as f64 / batch as f64, mean)
    };
    let ((rx_ticks, rx_mean), (tx_ticks, tx_mean)) = (per_packet(rx_ticks), per_packet(tx_ticks));
    Ok(Figures {
        batch,
        packets: n,
        calls: warm + rounds,
        rx_ticks,
        tx_ticks,
        rx_mean,
        tx_mean,
        ticks_per_ns: tsc_rate(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_runs() {
        let f = super::run(32, 3200).unwrap();
        assert_eq!(f.packets, 3200);
        assert!(f.rx_ticks > 0.0 && f.tx_ticks > 0.0);
    }
}
