//! SOURCE: generated Ethernet frames.
//!
//! Each breath it sends `PULL_NPACKETS` frames on every output, cycling
//! through `sizes` (or sending `size`-byte frames), until `count` frames
//! have been sent if a count is given. Frames carry the given addresses and
//! ethertype and, when `vlan` is set, an 802.1Q tag; the payload is zero,
//! or with `numbered` starts with a 32-bit sequence number right after the
//! header, so that a receiver can check order and loss.
//!
//! Paced with `pps` (frames per second) or `gbps` (Gbit/s of frames, from
//! the destination address to the end of the payload), it sends no faster
//! than that on each output, counted from its first breath: a breath sends
//! what is due by then (at most `PULL_NPACKETS`), so a late breath catches
//! up and the long-run rate is the one asked for, as long as the engine
//! keeps up. Unpaced, it sends as fast as the engine runs.

use serde::{Deserialize, Serialize};
use snabb_core::ethernet::{self, MacAddr};
use snabb_core::packet::Allocator;
use snabb_core::{App, AppClass, AppContext, Io, Link, PULL_NPACKETS, Packet, PortSpec};

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SourceArgs {
    /// Frame size in bytes (without FCS).
    pub size: usize,
    /// A mix of sizes, used in turn; overrides `size`.
    pub sizes: Vec<usize>,
    /// Stop after this many frames per output.
    pub count: Option<u64>,
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
    pub vlan: Option<u16>,
    /// Put a big-endian sequence number after the header.
    pub numbered: bool,
    /// Pace: frames per second (per output).
    pub pps: Option<f64>,
    /// Pace: Gbit/s of frames (per output).
    pub gbps: Option<f64>,
}

impl Default for SourceArgs {
    fn default() -> Self {
        SourceArgs {
            size: 60,
            sizes: Vec::new(),
            count: None,
            dst: MacAddr([0x02, 0, 0, 0, 0, 2]),
            src: MacAddr([0x02, 0, 0, 0, 0, 1]),
            ethertype: 0x88b5, // IEEE local experimental
            vlan: None,
            numbered: false,
            pps: None,
            gbps: None,
        }
    }
}

impl SourceArgs {
    /// The frame sizes in use, and the header length before the payload.
    fn sizes_and_header(&self) -> (Vec<usize>, usize) {
        let sizes = if self.sizes.is_empty() { vec![self.size] } else { self.sizes.clone() };
        (sizes, ethernet::HEADER_LEN + if self.vlan.is_some() { 4 } else { 0 })
    }
}

pub struct Source {
    templates: Vec<Packet>,
    next: usize,
    count: Option<u64>,
    sent: u64,
    seq_at: usize,
    seq: u32,
    numbered: bool,
    pace: Option<Pace>,
}

/// How many frames are due: `rate` frames (or bytes) a second from `start`.
struct Pace {
    /// Frames or bytes per second.
    rate: f64,
    /// Whether `rate` counts bytes.
    bytes: bool,
    start: Option<std::time::Instant>,
    /// Frames or bytes sent since `start`.
    done: f64,
}

fn frame(args: &SourceArgs, size: usize) -> Packet {
    let mut p = Packet::new();
    p.resize(size);
    let d = p.data_mut();
    let mut at = 0;
    let mut put = |d: &mut [u8], bytes: &[u8]| {
        let n = bytes.len().min(d.len().saturating_sub(at));
        d[at..at + n].copy_from_slice(&bytes[..n]);
        at += bytes.len();
    };
    put(d, &args.dst.0);
    put(d, &args.src.0);
    if let Some(v) = args.vlan {
        put(d, &ethernet::ETHERTYPE_VLAN.to_be_bytes());
        put(d, &(v & 0x0fff).to_be_bytes());
    }
    put(d, &args.ethertype.to_be_bytes());
    p
}

impl AppClass for Source {
    type Args = SourceArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["*"]);

    fn validate(args: &SourceArgs) -> anyhow::Result<()> {
        let (sizes, header) = args.sizes_and_header();
        for &s in &sizes {
            anyhow::ensure!(
                (header..=snabb_core::packet::PAYLOAD_SIZE).contains(&s),
                "frame size {s}: must be from {header} to {}",
                snabb_core::packet::PAYLOAD_SIZE
            );
        }
        if let Some(v) = args.vlan {
            anyhow::ensure!(v < 4096, "vlan {v}: must be below 4096");
        }
        for (what, r) in [("pps", args.pps), ("gbps", args.gbps)] {
            if let Some(r) = r {
                anyhow::ensure!(r.is_finite() && r > 0.0, "{what} {r}: a rate above 0");
            }
        }
        anyhow::ensure!(args.pps.is_none() || args.gbps.is_none(), "pace with `pps` or `gbps`, not both");
        if args.numbered {
            anyhow::ensure!(
                sizes.iter().all(|&s| s >= header + 4),
                "numbered frames need {} bytes at least",
                header + 4
            );
        }
        Ok(())
    }

    fn new(args: SourceArgs, _ctx: &AppContext) -> anyhow::Result<Source> {
        let (sizes, header) = args.sizes_and_header();
        let pace = match (args.pps, args.gbps) {
            (Some(r), _) => Some(Pace { rate: r, bytes: false, start: None, done: 0.0 }),
            (_, Some(g)) => Some(Pace { rate: g * 1e9 / 8.0, bytes: true, start: None, done: 0.0 }),
            _ => None,
        };
        Ok(Source {
            templates: sizes.iter().map(|&s| frame(&args, s)).collect(),
            next: 0,
            count: args.count,
            sent: 0,
            seq_at: header,
            seq: 0,
            numbered: args.numbered,
            pace,
        })
    }
}

/// `n` copies of `frame` onto `out`: the loop of a plain Source, in a
/// function of its own so that its state stays in registers.
#[inline(never)]
fn send_copies(out: &Link, frame: &[u8], n: usize) {
    let mut tx = out.transmitter();
    let mut alloc = Allocator::new(n);
    for _ in 0..n {
        tx.send(alloc.from_bytes(frame));
    }
}

impl App for Source {
    fn has_pull(&self) -> bool {
        true
    }

    fn pull(&mut self, io: &Io) {
        let mut n = PULL_NPACKETS as u64;
        if let Some(c) = self.count {
            n = n.min(c - self.sent);
        }
        if let Some(p) = &mut self.pace {
            n = n.min(due(p, &self.templates, self.next, n));
            if n == 0 {
                return;
            }
        }
        for out in io.output.iter() {
            match (self.templates.len(), self.numbered) {
                // One size, no numbers: the plain loop.
                (1, false) => send_copies(out, self.templates[0].data(), n as usize),
                _ => self.send_mix(out, n as usize),
            }
        }
        self.seq = self.seq.wrapping_add(n as u32);
        self.next = (self.next + n as usize) % self.templates.len();
        self.sent += n;
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        emit("sent", self.sent);
    }
}

/// How many of the next `max` frames (templates from `next` on) are due
/// now; counts them as done.
fn due(p: &mut Pace, templates: &[Packet], next: usize, max: u64) -> u64 {
    due_at(p, templates, next, max, std::time::Instant::now())
}

fn due_at(p: &mut Pace, templates: &[Packet], next: usize, max: u64, now: std::time::Instant) -> u64 {
    let start = *p.start.get_or_insert(now);
    let allowed = (now - start).as_secs_f64() * p.rate;
    let mut n = 0;
    // A frame is due when what went before it fits in the time so far.
    while n < max && p.done <= allowed {
        p.done += if p.bytes { templates[(next + n as usize) % templates.len()].len() as f64 } else { 1.0 };
        n += 1;
    }
    n
}

impl Source {
    /// `n` frames onto `out`, cycling through the templates from `next`,
    /// numbered from `seq` if asked.
    fn send_mix(&self, out: &Link, n: usize) {
        let (mut next, mut seq, at) = (self.next, self.seq, self.seq_at);
        let mut tx = out.transmitter();
        let mut alloc = Allocator::new(n);
        for _ in 0..n {
            let mut p = alloc.clone_of(&self.templates[next]);
            if self.numbered {
                p.data_mut()[at..at + 4].copy_from_slice(&seq.to_be_bytes());
            }
            tx.send(p);
            seq = seq.wrapping_add(1);
            next += 1;
            if next == self.templates.len() {
                next = 0;
            }
        }
    }

    /// Frames sent per output so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

pub fn selftest() -> anyhow::Result<()> {
    use snabb_core::{Config, Engine};
    let mut c = Config::new();
    c.app_args("src", "Source", snabb_core::Args::from_ron("(sizes: [64, 128], count: 1000, vlan: 5)")?)
        .app("a", "Sink", &())
        .app("b", "Sink", &())
        .link("src.x -> a.input")
        .link("src.y -> b.input");
    let mut e = Engine::new(crate::registry());
    e.configure(&c)?;
    e.run_until(|e| e.app::<Source>("src").unwrap().sent() == 1000, std::time::Duration::from_secs(10));
    e.run(snabb_core::Limit::Breaths(3));
    for l in ["src.x -> a.input", "src.y -> b.input"] {
        let lc = e.link_counters(l).unwrap();
        anyhow::ensure!(lc.txpackets == 1000, "{l}: {} packets", lc.txpackets);
        anyhow::ensure!(lc.txbytes == 500 * 64 + 500 * 128, "{l}: {} bytes", lc.txbytes);
    }
    // Bad arguments are refused with the field named.
    let mut bad = Config::new();
    bad.app_args("src", "Source", snabb_core::Args::from_ron("(size: 10)")?);
    let err = Engine::new(crate::registry()).configure(&bad).unwrap_err().to_string();
    anyhow::ensure!(err.contains("frame size 10"), "{err}");
    let mut bad = Config::new();
    bad.app_args("src", "Source", snabb_core::Args::from_ron("(colour: 1)")?);
    let err = Engine::new(crate::registry()).configure(&bad).unwrap_err().to_string();
    anyhow::ensure!(err.contains("app `src` (class `Source`)") && err.contains("colour"), "{err}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn paced_frames_come_when_due() {
        use std::time::{Duration, Instant};
        let t =
            vec![super::frame(&super::SourceArgs::default(), 100), super::frame(&super::SourceArgs::default(), 1000)];
        // 1000 frames/s: the first at once, then one a millisecond.
        let mut p = super::Pace { rate: 1000.0, bytes: false, start: None, done: 0.0 };
        let t0 = Instant::now();
        assert_eq!(super::due_at(&mut p, &t, 0, 100, t0), 1);
        assert_eq!(super::due_at(&mut p, &t, 0, 100, t0 + Duration::from_micros(500)), 0);
        assert_eq!(super::due_at(&mut p, &t, 0, 100, t0 + Duration::from_millis(10)), 10);
        assert_eq!(super::due_at(&mut p, &t, 0, 5, t0 + Duration::from_secs(1)), 5, "at most max a breath");
        assert_eq!(super::due_at(&mut p, &t, 0, 10_000, t0 + Duration::from_secs(1)), 1001 - 16);
        // 8.8 Mbit/s of 100- and 1000-byte frames: 1100 bytes a ms.
        let mut p = super::Pace { rate: 8.8e6 / 8.0, bytes: true, start: None, done: 0.0 };
        assert_eq!(super::due_at(&mut p, &t, 0, 100, t0), 1);
        assert_eq!(super::due_at(&mut p, &t, 1, 100, t0 + Duration::from_millis(10)), 20, "11000 bytes: 10 of each");
    }

    #[test]
    fn frame_layout() {
        let args = super::SourceArgs { vlan: Some(7), ..Default::default() };
        let p = super::frame(&args, 60);
        assert_eq!(p.len(), 60);
        assert_eq!(&p.data()[12..18], &[0x81, 0x00, 0x00, 0x07, 0x88, 0xb5]);
    }
}
