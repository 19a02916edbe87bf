//! SELFTESTS
//!
//! Run against the software 82599 by default. With `SNABB_PCI0` and
//! `SNABB_PCI1` set to two real 82599 ports cabled to each other, the same
//! traffic checks run on the hardware (the model-only checks are skipped):
//!
//!   init_and_reset    init sequence, link up, restart of an app, re-open
//!   model_checks      the model reports a driver's register mistakes
//!   dma_faults        a DMA nobody mapped is a fault, never a write
//!   zero_copy_rx      a lender's buffer posted on a receive ring comes back
//!                     holding a frame
//!   zero_copy::*      lent receive buffers (sizes, checksums, refusals,
//!                     revocation, mode switches), split and lent transmit
//!   bad_configs       refused before the device is touched
//!   loopback          port 0 -> cable -> port 1: content, order, conservation
//!   vmdq              8 pools: unicast, broadcast, VLANs, a full ring, VM to VM
//!   rss               4 RSS queues share the traffic, nothing lost
//!   refilter          a pool's MAC changed in place, without a restart

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use snabb_core::memory::{ForeignMemory, ForeignSegment};
use snabb_core::packet::{self, ForeignBuffer};
use snabb_core::{App, AppClass, AppContext, Args, BufferOwner, Config, Engine, Io, LinkSettings, PortSpec, Registry};
use snabb_model_82599::Model82599;

use crate::Intel10g;
use crate::bar::{ModelBar, Registers};
use crate::regs::*;

/// Where the tests run: the model, or two cabled real ports.
#[derive(Clone, Debug)]
pub enum Target {
    Model,
    Hardware { pci0: String, pci1: String },
}

impl Target {
    pub fn from_env() -> Result<Target> {
        match (std::env::var("SNABB_PCI0"), std::env::var("SNABB_PCI1")) {
            (Ok(a), Ok(b)) if !a.is_empty() && !b.is_empty() => Ok(Target::Hardware { pci0: a, pci1: b }),
            (Ok(a), _) if !a.is_empty() => {
                bail!("SNABB_PCI0 is set but SNABB_PCI1 is not: two cabled ports are needed")
            }
            _ => Ok(Target::Model),
        }
    }
    fn is_model(&self) -> bool {
        matches!(self, Target::Model)
    }
    /// Names for this test's two ports, and the RON for port 0's wire.
    fn ports(&self) -> (String, String, String) {
        match self {
            Target::Model => {
                let n = SERIAL.fetch_add(1, Ordering::Relaxed);
                let (a, b) =
                    (format!("model:st{n}a-{}", std::process::id()), format!("model:st{n}b-{}", std::process::id()));
                let wire = format!(", wire: Cable(\"{b}\")");
                (a, b, wire)
            }
            Target::Hardware { pci0, pci1 } => (pci0.clone(), pci1.clone(), String::new()),
        }
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

pub mod zero_copy;

pub fn selftest() -> Result<()> {
    let t = Target::from_env()?;
    if t.is_model() {
        init_and_reset().context("init and reset")?;
        model_checks().context("model checks")?;
        dma_faults().context("DMA faults")?;
        zero_copy_rx().context("zero-copy receive")?;
        partial_csum_tx().context("partial checksum on transmit")?;
        zero_copy::lend_sizes().context("lent buffers of every size")?;
        zero_copy::lend_checksums().context("checksum verdicts")?;
        zero_copy::lend_refusals().context("refused supply")?;
        zero_copy::lend_revocation().context("revocation under traffic")?;
        zero_copy::lend_mode_switch().context("Host <-> Lend under traffic")?;
        zero_copy::split_tx().context("split packets on transmit")?;
        zero_copy::prompt_reclaim().context("prompt reclaim")?;
    }
    bad_configs(&t).context("bad configs")?;
    loopback(&t).context("loopback")?;
    vmdq(&t).context("VMDq")?;
    rss(&t).context("RSS")?;
    refilter(&t).context("refilter")?;
    Ok(())
}

fn registry() -> Registry {
    let mut r = crate::registry();
    r.register::<Verify>("Intel10gVerify", "checks numbered frames (intel10g selftests)");
    r
}

fn nic<'a>(e: &'a mut Engine, name: &str) -> Result<&'a mut Intel10g> {
    e.app_mut::<Intel10g>(name).with_context(|| format!("no app {name}"))
}

fn wait_links(e: &mut Engine, apps: &[&str]) -> Result<()> {
    for _ in 0..2000 {
        let mut up = true;
        for a in apps {
            up &= nic(e, a)?.link_up();
        }
        if up {
            return Ok(());
        }
        e.run_for(Duration::from_millis(5));
    }
    bail!("the link did not come up within 10 s on {apps:?}")
}

/// No violation and no DMA fault on the model behind each app.
fn model_clean(e: &mut Engine, apps: &[&str]) -> Result<()> {
    for a in apps {
        if let Some(m) = nic(e, a)?.model() {
            let v = m.violations();
            ensure!(v.is_empty(), "{}: the model saw violations: {v:?}", m.name());
            let f = m.faults();
            ensure!(f.is_empty(), "{}: DMA faults: {f:?}", m.name());
        }
    }
    Ok(())
}

fn counter(e: &Engine, app: &str, name: &str) -> u64 {
    e.app_counters(app).get(name).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Frames and pcap files

fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00, (v >> 8) as u8, v as u8]);
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(len, 0);
    f
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0xee, 0xee, 0x02, 0, 0, 0, 0xee, 0x01, 0x08, 0x00];
    let ip = [0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) -> Result<()> {
    let mut w = snabb_apps_basic::pcap::PcapFileWriter::create(path, None)?;
    for f in frames {
        w.write(f, std::time::SystemTime::now())?;
    }
    w.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// A checker for numbered frames (as the Source app makes them).

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyArgs {
    sizes: Vec<usize>,
}

/// Frames on `input` must be Source frames numbered in increasing order
/// (gaps are losses, counted elsewhere), of the size their number gives.
#[derive(Default)]
struct Verify {
    sizes: Vec<usize>,
    next: u32,
    good: u64,
    bad: u64,
    first_bad: Option<String>,
}

impl AppClass for Verify {
    type Args = VerifyArgs;
    const PORTS: PortSpec = PortSpec::new(&["*"], &[]);
    fn new(a: VerifyArgs, _: &AppContext) -> Result<Verify> {
        Ok(Verify { sizes: a.sizes, ..Verify::default() })
    }
}

impl App for Verify {
    fn push(&mut self, io: &Io) {
        let Some(l) = io.input.first() else { return };
        for p in l.drain() {
            let d = p.data();
            let ok = d.len() >= 18 && {
                let seq = u32::from_be_bytes(d[14..18].try_into().unwrap());
                let size_ok = self.sizes.is_empty() || d.len() == self.sizes[seq as usize % self.sizes.len()];
                let ok = seq >= self.next && size_ok && d[18..].iter().all(|&b| b == 0);
                self.next = seq.wrapping_add(1);
                ok
            };
            if ok {
                self.good += 1;
            } else {
                self.bad += 1;
                self.first_bad.get_or_insert_with(|| format!("{} bytes: {:02x?}", d.len(), &d[..d.len().min(24)]));
            }
        }
    }
}

// ---------------------------------------------------------------------------

/// Open, reset, restart an app in place, close and open again.
pub fn init_and_reset() -> Result<()> {
    let t = Target::Model;
    let (a, b, wire) = t.ports();
    let conf = |ring: u32| -> Result<Config> {
        let mut c = Config::new();
        c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire}, rx_ring: {ring})"))?).app_args(
            "b",
            "Intel10g",
            Args::from_ron(&format!("(pci: \"{b}\")"))?,
        );
        Ok(c)
    };
    let before = packet::stats().in_use;
    let m;
    {
        let mut e = Engine::new(registry());
        e.configure(&conf(1024)?)?;
        wait_links(&mut e, &["a", "b"])?;
        m = nic(&mut e, "a")?.model().context("a model port")?;
        let mac = m.config().mac;
        ensure!(
            m.read(ral(0)) == u32::from_le_bytes(mac[0..4].try_into().unwrap()),
            "RAL[0] keeps the burned-in address"
        );
        ensure!(m.read(rah(0)) & RAH_AV != 0, "RAH[0] valid after reset");
        ensure!(m.read(STATUS) & (1 << 7) != 0, "STATUS.LinkUp");
        ensure!(nic(&mut e, "a")?.hw_stats() == crate::HwStats::default(), "statistics start at zero");
        // A restart: the new instance takes the queue over from the old one.
        e.configure(&conf(2048)?)?;
        e.run_for(Duration::from_millis(5));
        ensure!(nic(&mut e, "a")?.running(), "the restarted app runs");
        model_clean(&mut e, &["a", "b"])?;
        e.stop();
        ensure!(m.read(RXCTRL) & RXCTRL_RXEN == 0, "receiver off once the last app stops");
    }
    ensure!(
        packet::stats().in_use == before,
        "every buffer came back ({} in use, {before} before)",
        packet::stats().in_use
    );
    // Open the same ports again: reset and initialise them afresh.
    let resets = m.accesses();
    let mut e = Engine::new(registry());
    e.configure(&conf(512)?)?;
    wait_links(&mut e, &["a", "b"])?;
    ensure!(m.accesses() > resets, "the port was initialised again");
    model_clean(&mut e, &["a", "b"])?;
    Ok(())
}

/// The model reports what a driver does wrong.
pub fn model_checks() -> Result<()> {
    // A slow reset, EEPROM and DMA initialisation, so that the accesses
    // below surely come too early, however the threads are scheduled.
    let cfg = snabb_model_82599::ModelConfig {
        reset_delay: Duration::from_millis(100),
        eeprom_delay: Duration::from_millis(500),
        dma_init_delay: Duration::from_millis(600),
        ..Default::default()
    };
    let m = Model82599::new(&format!("checks-{}", std::process::id()), cfg);
    m.set_quiet(true);
    let r = ModelBar(m.clone());
    let expect = |what: &str, want: &str| -> Result<()> {
        let v = m.take_violations();
        ensure!(v.iter().any(|x| x.what.contains(want)), "{what}: expected a violation about `{want}`, got {v:?}");
        Ok(())
    };
    let q = 3;
    // Rings must be 128-byte aligned and a multiple of 128 bytes long.
    r.write(rdbal(q), 0x1000_0040);
    expect("misaligned ring", "128-byte aligned")?;
    r.write(rdlen(q), 1000);
    expect("ring length", "multiple of 128")?;
    r.write(tdlen(q), 64);
    expect("tx ring length", "multiple of 128")?;
    // A buffer size the chip cannot take, then enabling the queue.
    r.write(rdlen(q), 4096);
    r.write(srrctl(q), SRRCTL_DESCTYPE_ADV_ONEBUF);
    r.write(rxdctl(q), RXDCTL_ENABLE);
    expect("buffer size 0", "BSIZEPACKET = 0")?;
    r.write(srrctl(q), 17 | SRRCTL_DESCTYPE_ADV_ONEBUF);
    r.write(rxdctl(q), RXDCTL_ENABLE);
    expect("buffer size 17 KiB", "BSIZEPACKET = 17")?;
    // A proper queue, then its ring registers written while it runs.
    r.write(rdbal(q), 0x1000_0000);
    r.write(srrctl(q), 10 | SRRCTL_DESCTYPE_ADV_ONEBUF);
    r.write(rxdctl(q), RXDCTL_ENABLE);
    r.wait(rxdctl(q), RXDCTL_ENABLE, RXDCTL_ENABLE, Duration::from_secs(1), "enable")?;
    ensure!(m.take_violations().is_empty(), "a good queue enables cleanly");
    r.write(rdlen(q), 8192);
    expect("RDLEN of an enabled queue", "while receive queue 3 is enabled")?;
    r.write(rdt(q), 300);
    expect("tail beyond the ring", "beyond the ring")?;
    // MTQC needs the arbiter off.
    r.write(MTQC, MTQC_VT_ENA | MTQC_64_POOLS);
    expect("MTQC with the arbiter on", "RTTDCS.ARBDIS")?;
    // CRC stripping must be set the same way in both places.
    r.write(HLREG0, HLREG0_RXCRCSTRP);
    r.write(RDRXCTL, 0);
    r.write(RXCTRL, RXCTRL_RXEN);
    expect("CRC strip mismatch", "RXCRCSTRP")?;
    // Nothing but CTRL may be touched during a reset.
    r.write(CTRL, CTRL_RST);
    r.write(FCTRL, FCTRL_BAM);
    expect("write during reset", "while a reset is in progress")?;
    r.wait(CTRL, CTRL_RST, 0, Duration::from_secs(1), "reset")?;
    // And a queue may not start before the EEPROM and DMA are ready.
    r.write(rdlen(q), 4096);
    r.write(rdbal(q), 0x1000_0000);
    r.write(srrctl(q), 2 | SRRCTL_DESCTYPE_ADV_ONEBUF);
    r.write(rxdctl(q), RXDCTL_ENABLE);
    expect("enable before init done", "not done")?;
    r.write(0x00004, 1);
    expect("unknown register", "no register")?;
    Ok(())
}

/// A device reaches only mapped memory: a deliberately missing mapping is a
/// fault the test sees, and the good paths have none.
pub fn dma_faults() -> Result<()> {
    let t = Target::Model;
    let (a, b, wire) = t.ports();
    let mut c = Config::new();
    c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?)
        .app_args("b", "Intel10g", Args::from_ron(&format!("(pci: \"{b}\")"))?)
        .app("sink", "Sink", &())
        .app_args("feed", "Source", Args::from_ron("(count: 0)")?)
        .link("feed.output -> a.input")
        .link("b.output -> sink.input");
    let mut e = Engine::new(registry());
    e.configure(&c)?;
    wait_links(&mut e, &["a", "b"])?;
    model_clean(&mut e, &["a", "b"])?;
    let ma = nic(&mut e, "a")?.model().unwrap();
    let mb = nic(&mut e, "b")?.model().unwrap();
    ma.set_quiet(true);
    mb.set_quiet(true);

    // Transmit: a guest-like buffer registered for the devices, whose
    // mapping then disappears from the model behind the driver's back.
    let mut backing = vec![0u8; 4096];
    let iova = backing.as_mut_ptr() as u64;
    let seg = ForeignSegment { virt: iova as usize, dma: iova, len: backing.len(), physical: false };
    let registered = ForeignMemory::register(vec![seg]);
    ensure!(ma.iommu().is_mapped(iova, 4096), "registered memory is mapped for the device");
    ma.iommu().unmap(iova);
    let owner = BufferOwner::register("selftest", None);
    let pkt = {
        backing[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        // SAFETY: the buffer lives until the end of this function, after
        // the engine (and so every packet) is stopped.
        unsafe {
            owner.wrap(ForeignBuffer {
                base: std::ptr::NonNull::new(backing.as_mut_ptr()).unwrap(),
                cap: 4096,
                dma: iova,
                start: 0,
                len: 60,
                token: 1,
                fixed_start: false,
            })
        }
    };
    e.link("feed.output -> a.input").context("the feed link")?.transmit(pkt);
    e.run_for(Duration::from_millis(5));
    let mut fault = None;
    for _ in 0..200 {
        if let Some(f) = ma.faults().first().cloned() {
            fault = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = fault.context("no fault for a transmit from unmapped memory")?;
    ensure!(f.what == "TX buffer" && f.addr == iova && !f.write, "unexpected fault {f:?}");

    // Receive: every chunk unmapped, as if the driver had never mapped its
    // memory; an arriving frame must fault, not land anywhere.
    for ch in snabb_core::memory::chunks() {
        mb.iommu().unmap(ch.dma);
    }
    mb.inject(frame([0xff; 6], [2, 0, 0, 0, 0, 9], None, 60));
    let mut rx_fault = None;
    for _ in 0..200 {
        if let Some(f) = mb.faults().first().cloned() {
            rx_fault = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = rx_fault.context("no fault for a receive into unmapped memory")?;
    ensure!(f.what == "RX descriptor", "unexpected fault {f:?}");
    ensure!(counter(&e, "sink", "packets") == 0, "nothing received");
    // Map the chunks back so that stopping is clean.
    for ch in snabb_core::memory::chunks() {
        // SAFETY: chunks are never unmapped from the process.
        unsafe { mb.iommu().map(ch.dma, ch.virt as *mut u8, ch.len) }.map_err(anyhow::Error::msg)?;
    }
    e.stop();
    drop(owner);
    drop(registered);
    Ok(())
}

/// A packet still carrying a partial checksum (a guest's NEEDS_CSUM) goes
/// on the wire finished: port 0 sends it, port 1 receives it into a pcap.
pub fn partial_csum_tx() -> Result<()> {
    let t = Target::Model;
    let (a, b, wire) = t.ports();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rx.pcap");
    let mut c = Config::new();
    c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?)
        .app_args("b", "Intel10g", Args::from_ron(&format!("(pci: \"{b}\")"))?)
        .app("w", "PcapWriter", &snabb_apps_basic::pcap::PcapWriterArgs { file: file.clone(), format: None })
        .app_args("feed", "Source", Args::from_ron("(count: 0)")?)
        .link("feed.output -> a.input")
        .link("b.output -> w.input");
    let mut e = Engine::new(registry());
    e.configure(&c)?;
    wait_links(&mut e, &["a", "b"])?;
    let mut f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], None, 120);
    f[40..42].copy_from_slice(&[0xab, 0xcd]);
    let mut want = f.clone();
    ensure!(snabb_core::checksum::complete_checksum(&mut want, 34, 6));
    let mut p = snabb_core::Packet::from_bytes(&f);
    ensure!(p.set_partial_csum(Some(packet::PartialCsum { start: 34, offset: 6 })));
    e.link("feed.output -> a.input").context("the feed link")?.transmit(p);
    for _ in 0..400 {
        e.run_for(Duration::from_millis(5));
        if counter(&e, "b", "rxpackets") > 0 {
            break;
        }
    }
    e.run_for(Duration::from_millis(5));
    e.stop();
    drop(e);
    let mut r = snabb_apps_basic::pcap::PcapFileReader::new(std::fs::File::open(&file)?)?;
    let rec = r.next_record()?.context("port 1 received nothing")?;
    ensure!(rec.data[..want.len()] == want[..], "the frame on the wire is not the finished one");
    Ok(())
}

/// A receive ring posts the buffers it is given: a foreign buffer (a
/// guest's, say) whose memory the device can reach is filled in place and
/// comes back to its owner with the frame; one it cannot reach is refused.
pub fn zero_copy_rx() -> Result<()> {
    let mut q = crate::bench::model_queue(64, 2048)?;
    let model = q.model.clone();
    let rx = q.rx.as_mut().context("rx")?;
    // Take the host buffers off the ring: fill them and receive them.
    let frame = |seq: u8| {
        let mut f = frame([0xff; 6], [2, 0, 0, 0, 0, 7], None, 100);
        f[20] = seq;
        f
    };
    for _ in 0..rx.capacity() {
        model.inject(frame(0));
    }
    model.step();
    let n = rx.receive(usize::MAX, drop);
    ensure!(n == 63 && rx.posted() == 0, "{n} host buffers came back, {} still posted", rx.posted());

    // A lender with two buffers: one in memory registered for devices, one
    // not (IOVA = VA).
    let mut mem = vec![0u8; 2 * 4096];
    let base = mem.as_mut_ptr();
    let iova = base as u64;
    let registered =
        ForeignMemory::register(vec![ForeignSegment { virt: base as usize, dma: iova, len: 4096, physical: false }]);
    let owner = BufferOwner::register("guest", None);
    let lend = |i: usize, dma: u64| {
        // SAFETY: the buffers live in `mem`, which outlives every packet here.
        unsafe {
            owner.wrap(ForeignBuffer {
                base: std::ptr::NonNull::new(base.add(i * 4096)).unwrap(),
                cap: 4096,
                dma,
                start: 64,
                len: 0,
                token: i as u64,
                fixed_start: true,
            })
        }
    };
    let rx = q.rx.as_mut().context("rx")?;
    ensure!(rx.post(lend(1, iova + 4096)).is_err(), "a buffer the device cannot reach is refused");
    rx.post(lend(0, iova)).map_err(|_| anyhow::anyhow!("a mapped foreign buffer was refused"))?;
    rx.flush()?;
    model.inject(frame(42));
    model.step();
    let mut got = Vec::new();
    rx.receive(usize::MAX, |p| got.push(p));
    ensure!(got.len() == 1, "{} packets received", got.len());
    let p = got.pop().unwrap();
    ensure!(p.is_foreign() && p.len() == 100 && p.data()[20] == 42, "the frame landed in the guest buffer");
    let r = owner.reclaim(p).map_err(|_| anyhow::anyhow!("not the owner's packet"))?;
    ensure!(r.token == 0 && r.len == 100, "reclaimed {r:?}");
    ensure!(mem[64 + 20] == 42, "in place, at the buffer's start");
    ensure!(
        model.faults().is_empty() && model.violations().is_empty(),
        "{:?} {:?}",
        model.faults(),
        model.violations()
    );
    // No buffer of the lender's is posted any more: it may let go.
    drop(registered);
    ensure!(!model.iommu().is_mapped(iova, 1), "unmapped when the lender let go");
    drop(q);
    drop(owner);
    drop(mem);
    Ok(())
}

/// Bad arguments are refused with a clear error before any register access.
pub fn bad_configs(t: &Target) -> Result<()> {
    let (a, b, wire) = t.ports();
    let cases: &[(&str, &str)] = &[
        ("buffer_size: 3000", "multiple of 1024"),
        ("buffer_size: 20480", "1 to 16 KiB"),
        ("rx_ring: 100", "rx_ring 100"),
        ("tx_ring: 65536", "tx_ring 65536"),
        ("mode: Vmdq(pools: 16)", "64 pools of 2 queues or 32 pools of 4"),
        ("mode: Vmdq(pools: 32), pool: 40, macs: [\"02:00:00:00:00:01\"]", "pool 40"),
        ("mode: Vmdq(pools: 64)", "at least one MAC"),
        ("mode: Rss(queues: 17)", "1 to 16 queues"),
        ("macs: [\"02:00:00:00:00:01\", \"02:00:00:00:00:01\"]", "listed twice"),
        ("vlans: [4095]", "not a VLAN id"),
        ("mtu: 12000", "mtu 12000"),
        ("buffer_size: 2048, mtu: 9014", "would not fit"),
        ("colour: 3", "colour"),
    ];
    for (args, want) in cases {
        let mut c = Config::new();
        c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\", {args})"))?);
        let err = registry().check(&c).err().with_context(|| format!("`{args}` was accepted by config check"))?;
        ensure!(err.to_string().contains(want), "`{args}`: error `{err}` does not say `{want}`");
        let err = Engine::new(registry()).configure(&c).err().with_context(|| format!("`{args}` was accepted"))?;
        ensure!(err.to_string().contains(want), "`{args}`: error `{err}` does not say `{want}`");
    }
    if t.is_model() {
        ensure!(snabb_model_82599::registry::get(&a).is_none(), "no model port was even made");
    }
    // A MAC already in another pool: refused before the second pool is
    // programmed.
    let pool = |p: u8, mac: &str| format!("(pci: \"{b}\", mode: Vmdq(pools: 64), pool: {p}, macs: [\"{mac}\"])");
    let conf = |extra: &[(&str, String)]| -> Result<Config> {
        let mut c = Config::new();
        c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?).app_args(
            "p1",
            "Intel10g",
            Args::from_ron(&pool(1, "02:00:00:00:00:11"))?,
        );
        for (name, args) in extra {
            c.app_args(name, "Intel10g", Args::from_ron(args)?);
        }
        Ok(c)
    };
    let mut e = Engine::new(registry());
    e.configure(&conf(&[])?)?;
    let accesses = nic(&mut e, "p1")?.model().map(|m| m.accesses());
    let err = e
        .configure(&conf(&[("p2", pool(2, "02:00:00:00:00:11"))])?)
        .err()
        .context("a MAC in two pools was accepted")?;
    ensure!(err.to_string().contains("already in pool 1"), "{err}");
    if let Some(n) = accesses {
        let now = nic(&mut e, "p1")?.model().unwrap().accesses();
        ensure!(now == n, "the refused pool touched {} registers", now - n);
    }
    // The pool that was refused is free again.
    e.configure(&conf(&[("p2", pool(2, "02:00:00:00:00:12"))])?)?;
    // Port-wide settings must agree between apps on one port.
    let p3 = format!("(pci: \"{b}\", mode: Vmdq(pools: 32), macs: [\"02:00:00:00:00:13\"])");
    let err = e
        .configure(&conf(&[("p2", pool(2, "02:00:00:00:00:12")), ("p3", p3)])?)
        .err()
        .context("a second mode on one port was accepted")?;
    ensure!(err.to_string().contains("must agree"), "{err}");
    Ok(())
}

/// Port 0 sends numbered frames of three sizes over the cable to port 1:
/// every frame arrives intact and in order, or is counted where it was lost.
pub fn loopback(t: &Target) -> Result<()> {
    const N: u64 = 20_000;
    let sizes = [60usize, 1514, 9014];
    let (a, b, wire) = t.ports();
    let before = packet::stats().in_use;
    let mut e = Engine::new(registry());
    {
        let mut c = Config::new();
        c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?)
            .app_args("b", "Intel10g", Args::from_ron(&format!("(pci: \"{b}\")"))?)
            .app_args("verify", "Intel10gVerify", Args::from_ron(&format!("(sizes: {sizes:?})"))?)
            .link("b.output -> verify.input");
        e.configure(&c)?;
        wait_links(&mut e, &["a", "b"])?;
        c.app_args("src", "Source", Args::from_ron(&format!("(sizes: {sizes:?}, count: {N}, numbered: true)"))?)
            .link_with("src.output -> a.input", LinkSettings { size: 32768, ..Default::default() });
        e.configure(&c)?;
    }
    let received = |e: &Engine| e.app::<Verify>("verify").map_or(0, |v| v.good + v.bad);
    let lost = |e: &mut Engine| -> Result<u64> {
        let hw = nic(e, "b")?.hw_stats();
        let link = e.link_counters("src.output -> a.input").unwrap_or_default().txdrop;
        Ok(hw.rx_drop() + hw.rx_missed + hw.rx_errors + link + counter(e, "a", "txdrop") + counter(e, "b", "rxerrors"))
    };
    let mut done = false;
    for _ in 0..3000 {
        e.run_for(Duration::from_millis(5));
        let sent = e.app::<snabb_apps_basic::Source>("src").map_or(0, |s| s.sent());
        if sent == N && received(&e) + lost(&mut e)? == N {
            done = true;
            break;
        }
    }
    let v = e.app::<Verify>("verify").unwrap();
    let (good, bad, first_bad) = (v.good, v.bad, v.first_bad.clone());
    let lost = lost(&mut e)?;
    ensure!(done, "after 15 s: {good} good, {bad} bad, {lost} lost of {N}");
    ensure!(bad == 0, "{bad} frames arrived damaged or out of order, first: {first_bad:?}");
    // How many the receiver misses depends on how the model's threads and
    // ours share the CPUs (other tests run beside this one): a loss is fine
    // as long as the chip counted it, which the sum above proved.
    ensure!(good > 0, "none of {N} arrived ({lost} counted lost)");
    let (ha, hb) = (nic(&mut e, "a")?.hw_stats(), nic(&mut e, "b")?.hw_stats());
    let sent_by_a = counter(&e, "a", "txpackets");
    ensure!(
        ha.tx_packets == sent_by_a,
        "port 0 sent {} by its counters, the driver handed it {sent_by_a}",
        ha.tx_packets
    );
    ensure!(
        hb.rx_packets + hb.rx_missed == ha.tx_packets,
        "port 1 received {} and missed {} of the {} port 0 sent",
        hb.rx_packets,
        hb.rx_missed,
        ha.tx_packets
    );
    ensure!(
        counter(&e, "b", "rxpackets") == good,
        "port 1's app delivered {} but {good} were checked",
        counter(&e, "b", "rxpackets")
    );
    model_clean(&mut e, &["a", "b"])?;
    e.stop();
    drop(e);
    ensure!(packet::stats().in_use == before, "buffers leaked: {} in use, {before} before", packet::stats().in_use);
    log::info!("intel10g loopback: {good} of {N} frames checked, {lost} counted lost");

    Ok(())
}

const POOL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0];
fn pool_mac(p: u8) -> [u8; 6] {
    let mut m = POOL_MAC;
    m[5] = p;
    m
}
fn mac_str(m: [u8; 6]) -> String {
    snabb_core::MacAddr(m).to_string()
}

/// Eight pools on port 1, fed by port 0: each gets exactly its frames.
pub fn vmdq(t: &Target) -> Result<()> {
    let (a, b, wire) = t.ports();
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("vmdq.pcap");
    let src = [2, 0, 0, 0, 0xee, 1];
    let mut frames = Vec::new();
    let mut expect = [0u64; 8];
    // Unicast to each pool (pool 7 lives on VLAN 10).
    for p in 0..8u8 {
        for _ in 0..20 {
            frames.push(frame(pool_mac(p), src, (p == 7).then_some(10), if p == 7 { 64 } else { 60 }));
            expect[p as usize] += 1;
        }
    }
    // Pool 7 takes no untagged frame; pool 3 is not on VLAN 10; nobody has this MAC.
    for _ in 0..5 {
        frames.push(frame(pool_mac(7), src, None, 60));
        frames.push(frame(pool_mac(3), src, Some(10), 64));
        frames.push(frame([2, 0, 0, 0, 0x01, 0x99], src, None, 60));
    }
    // Broadcast: untagged to the pools that accept broadcast and untagged
    // frames (0, 2, 4, 6), tagged to pool 7 only.
    for _ in 0..10 {
        frames.push(frame([0xff; 6], src, None, 60));
        frames.push(frame([0xff; 6], src, Some(10), 64));
    }
    for p in [0, 2, 4, 6, 7] {
        expect[p] += 10;
    }
    // Pool 6 has no consumer: its 64-descriptor ring fills.
    for _ in 0..200 {
        frames.push(frame(pool_mac(6), src, None, 60));
    }
    expect[6] += 200;
    write_pcap(&pcap, &frames)?;

    let mut c = Config::new();
    c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?)
        .app("sink_a", "Sink", &())
        .link("a.output -> sink_a.input");
    for p in 0..8u8 {
        let vlans = if p == 7 { "vlans: [10], " } else { "" };
        let ring = if p == 6 { ", rx_ring: 64" } else { "" };
        c.app_args(
            &format!("p{p}"),
            "Intel10g",
            Args::from_ron(&format!(
                "(pci: \"{b}\", mode: Vmdq(pools: 64), pool: {p}, macs: [\"{}\"], {vlans}accept_broadcast: {}{ring})",
                mac_str(pool_mac(p)),
                p % 2 == 0 || p == 7
            ))?,
        );
        if p != 6 {
            c.app(&format!("sink{p}"), "Sink", &()).link(&format!("p{p}.output -> sink{p}.input"));
        }
    }
    let mut e = Engine::new(registry());
    e.configure(&c)?;
    let all: Vec<String> = std::iter::once("a".to_string()).chain((0..8).map(|p| format!("p{p}"))).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_links(&mut e, &all)?;
    c.app_args("pcap", "PcapReader", Args::from_ron(&format!("(file: {:?})", pcap.display().to_string()))?)
        .link("pcap.output -> a.input");
    e.configure(&c)?;

    let got = |e: &Engine, p: usize| -> u64 {
        if p == 6 { counter(e, "p6", "rxdrop") + 63 } else { counter(e, &format!("sink{p}"), "packets") }
    };
    let mut ok = false;
    for _ in 0..2000 {
        e.run_for(Duration::from_millis(5));
        let _ = nic(&mut e, "p0")?.hw_stats();
        e.commit();
        if (0..8).all(|p| got(&e, p) >= expect[p]) {
            ok = true;
            break;
        }
    }
    // Anything extra would show up in this time too.
    e.run_for(Duration::from_millis(50));
    let _ = nic(&mut e, "p0")?.hw_stats();
    e.commit();
    let counts: Vec<u64> = (0..8).map(|p| got(&e, p)).collect();
    ensure!(ok && counts == expect, "per pool: got {counts:?}, expected {expect:?}");
    ensure!(
        counter(&e, "p6", "rxdrop") == expect[6] - 63,
        "pool 6's full ring: {} dropped",
        counter(&e, "p6", "rxdrop")
    );
    ensure!(counter(&e, "sink7", "bytes") == 30 * 60, "pool 7 gets its frames with the tag stripped");

    // VM to VM: pool 1 to pool 2 stays inside the chip; pool 1's broadcast
    // goes to the wire and to the other pools that take broadcast.
    let sent_before = nic(&mut e, "a")?.hw_stats().rx_packets;
    let base: Vec<u64> = (0..8).map(|p| got(&e, p)).collect();
    c.app_args(
        "vm1",
        "Source",
        Args::from_ron(&format!("(dst: \"{}\", src: \"{}\", count: 50)", mac_str(pool_mac(2)), mac_str(pool_mac(1))))?,
    )
    .app_args(
        "bc1",
        "Source",
        Args::from_ron(&format!("(dst: \"ff:ff:ff:ff:ff:ff\", src: \"{}\", count: 10)", mac_str(pool_mac(1))))?,
    )
    .app("join", "Join", &())
    .link("vm1.output -> join.a")
    .link("bc1.output -> join.b")
    .link("join.output -> p1.input");
    e.configure(&c)?;
    let want = |p: usize| {
        base[p]
            + if p == 2 {
                60
            } else if [0, 4].contains(&p) {
                10
            } else {
                0
            }
    };
    for _ in 0..2000 {
        e.run_for(Duration::from_millis(5));
        e.commit();
        if [0, 2, 4].iter().all(|&p| got(&e, p) >= want(p)) && counter(&e, "sink_a", "packets") >= 10 {
            break;
        }
    }
    e.run_for(Duration::from_millis(50));
    let _ = nic(&mut e, "p0")?.hw_stats();
    e.commit();
    for p in [0, 1, 2, 3, 4, 5, 7] {
        ensure!(
            got(&e, p) == want(p),
            "VM to VM: pool {p} got {} more, expected {}",
            got(&e, p) - base[p],
            want(p) - base[p]
        );
    }
    let wire = nic(&mut e, "a")?.hw_stats().rx_packets - sent_before;
    ensure!(wire == 10, "port 0 saw {wire} frames of pool 1's, expected its 10 broadcasts only");
    let mut names = all.clone();
    names.push("p6");
    model_clean(&mut e, &names)?;
    if let Some(m) = nic(&mut e, "p1")?.model() {
        ensure!(m.stats().looped >= 60, "the model switched {} frames inside", m.stats().looped);
    }
    Ok(())
}

/// RSS over 4 queues: flows spread, nothing lost.
pub fn rss(t: &Target) -> Result<()> {
    const N: usize = 2000;
    let (a, b, wire) = t.ports();
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("rss.pcap");
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| udp4([10, 0, (i / 250) as u8, (i % 250) as u8], [10, 1, 0, 1], 1024 + (i % 61) as u16, 80))
        .collect();
    write_pcap(&pcap, &frames)?;
    let mut c = Config::new();
    c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?);
    for q in 0..4 {
        c.app_args(
            &format!("q{q}"),
            "Intel10g",
            Args::from_ron(&format!("(pci: \"{b}\", mode: Rss(queues: 4), queue: {q})"))?,
        )
        .app(&format!("sink{q}"), "Sink", &())
        .link(&format!("q{q}.output -> sink{q}.input"));
    }
    let mut e = Engine::new(registry());
    e.configure(&c)?;
    wait_links(&mut e, &["a", "q0", "q1", "q2", "q3"])?;
    c.app_args("pcap", "PcapReader", Args::from_ron(&format!("(file: {:?})", pcap.display().to_string()))?)
        .link("pcap.output -> a.input");
    e.configure(&c)?;
    let total = |e: &Engine| (0..4).map(|q| counter(e, &format!("sink{q}"), "packets")).sum::<u64>();
    for _ in 0..2000 {
        e.run_for(Duration::from_millis(5));
        e.commit();
        if total(&e) >= N as u64 {
            break;
        }
    }
    e.run_for(Duration::from_millis(20));
    e.commit();
    let per: Vec<u64> = (0..4).map(|q| counter(&e, &format!("sink{q}"), "packets")).collect();
    ensure!(total(&e) == N as u64, "RSS queues got {per:?}, {} in all of {N}", total(&e));
    ensure!(per.iter().all(|&n| n > N as u64 / 10), "RSS spread is lopsided: {per:?}");
    model_clean(&mut e, &["a", "q0", "q1", "q2", "q3"])?;
    Ok(())
}

/// A pool's filters change in place: the app is not restarted, the old MAC
/// stops and the new one starts reaching the pool.
pub fn refilter(t: &Target) -> Result<()> {
    let (a, b, wire) = t.ports();
    let (x, y) = (mac_str(pool_mac(0x20)), mac_str(pool_mac(0x21)));
    let conf = |mac: &str, sources: bool| -> Result<Config> {
        let mut c = Config::new();
        c.app_args("a", "Intel10g", Args::from_ron(&format!("(pci: \"{a}\"{wire})"))?)
            .app_args(
                "p0",
                "Intel10g",
                Args::from_ron(&format!("(pci: \"{b}\", mode: Vmdq(pools: 64), macs: [\"{mac}\"])"))?,
            )
            .app("sink", "Sink", &())
            .link("p0.output -> sink.input");
        if sources {
            c.app_args("to_x", "Source", Args::from_ron(&format!("(dst: \"{x}\", count: 20)"))?)
                .app_args("to_y", "Source", Args::from_ron(&format!("(dst: \"{y}\", count: 30)"))?)
                .app("join", "Join", &())
                .link("to_x.output -> join.x")
                .link("to_y.output -> join.y")
                .link("join.output -> a.input");
        }
        Ok(c)
    };
    let mut e = Engine::new(registry());
    e.configure(&conf(&x, false)?)?;
    wait_links(&mut e, &["a", "p0"])?;
    let before = nic(&mut e, "p0")? as *const Intel10g;
    e.configure(&conf(&y, false)?)?;
    ensure!(std::ptr::eq(before, nic(&mut e, "p0")?), "the app was restarted, not reconfigured");
    e.configure(&conf(&y, true)?)?;
    for _ in 0..2000 {
        e.run_for(Duration::from_millis(5));
        if counter(&e, "sink", "packets") >= 30 {
            break;
        }
    }
    e.run_for(Duration::from_millis(30));
    let got = counter(&e, "sink", "packets");
    ensure!(got == 30, "the pool got {got} frames: expected the 30 sent to its new MAC only");
    model_clean(&mut e, &["a", "p0"])?;
    Ok(())
}
