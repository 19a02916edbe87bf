//! RATE LIMITER: a token bucket in bits and in packets per second.
//!
//! | class         | ports                                    | does                                   |
//! |---------------|------------------------------------------|----------------------------------------|
//! | `RateLimiter` | in: any; out: `output` (or the only one) | passes what the rates allow, drops the rest |
//!
//! ```ron
//! "limit": (class: "RateLimiter", args: (
//!     gbps: Some(1.0),          // bits of frames per second, in Gbit/s
//!     pps: Some(100000.0),      // packets per second
//!     burst_bytes: None,        // bucket depths; default: 10 ms at the rate,
//!     burst_packets: None,      //   and at least one largest packet (or 32 packets)
//! )),
//! ```
//!
//! A policer, not a shaper: a packet passes when both buckets hold enough
//! tokens (its bits, and one packet) and is dropped and counted otherwise;
//! nothing waits, so a port over its rate never holds back the app that
//! feeds it. Tokens flow in continuously, at the rate, up to the bucket's
//! depth: traffic below the rate passes whole, a burst passes up to the
//! depth. Bits are those of the Ethernet frame as the graph carries it,
//! from the destination address to the end of the payload (no preamble,
//! FCS or inter-frame gap). Either rate may be left out; at least one must
//! be given. New rates are taken in place; the buckets keep their tokens
//! (cut to the new depths) and the counters carry on.
//!
//! Counters: `rxpackets`, `rxbytes` (taken from the inputs), `txpackets`,
//! `txbytes` (passed), `dropped`, `dropped_bytes` (over the rate, or no
//! output linked).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use snabb_core::packet::PAYLOAD_SIZE;
use snabb_core::{App, AppClass, AppContext, Io, PortSpec, Registry};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterArgs {
    /// Gbit/s of frames.
    #[serde(default)]
    pub gbps: Option<f64>,
    /// Packets per second.
    #[serde(default)]
    pub pps: Option<f64>,
    /// Depth of the bit bucket, in bytes.
    #[serde(default)]
    pub burst_bytes: Option<u64>,
    /// Depth of the packet bucket, in packets.
    #[serde(default)]
    pub burst_packets: Option<u64>,
}

impl RateLimiterArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.gbps.is_none() && self.pps.is_none() {
            return Err("give `gbps`, `pps` or both: a rate limiter without a rate".into());
        }
        if let Some(g) = self.gbps
            && !(g.is_finite() && g > 0.0 && g <= 10_000.0)
        {
            return Err(format!("gbps {g}: a rate above 0 and at most 10000 Gbit/s"));
        }
        if let Some(p) = self.pps
            && !(p.is_finite() && p > 0.0 && p <= 1e10)
        {
            return Err(format!("pps {p}: a rate above 0 and at most 1e10 packets/s"));
        }
        if self.burst_bytes.is_some() && self.gbps.is_none() {
            return Err("burst_bytes without gbps".into());
        }
        if self.burst_packets.is_some() && self.pps.is_none() {
            return Err("burst_packets without pps".into());
        }
        if let Some(b) = self.burst_bytes
            && b < PAYLOAD_SIZE as u64
        {
            return Err(format!(
                "burst_bytes {b}: at least {PAYLOAD_SIZE} (the largest packet), or such packets could never pass"
            ));
        }
        if self.burst_packets == Some(0) {
            return Err("burst_packets 0: at least 1".into());
        }
        Ok(())
    }

    /// Bucket depth in bits (when limited by bits).
    fn bit_depth(&self) -> Option<f64> {
        let rate = self.gbps? * 1e9;
        Some(match self.burst_bytes {
            Some(b) => b as f64 * 8.0,
            None => (rate / 100.0).max(PAYLOAD_SIZE as f64 * 8.0),
        })
    }

    /// Bucket depth in packets (when limited by packets).
    fn packet_depth(&self) -> Option<f64> {
        let rate = self.pps?;
        Some(match self.burst_packets {
            Some(p) => p as f64,
            None => (rate / 100.0).max(32.0),
        })
    }
}

/// The arguments, checked while the config is parsed (`config check`
/// refuses what the app would).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(try_from = "RateLimiterArgs", into = "RateLimiterArgs")]
pub struct Checked(pub RateLimiterArgs);

impl TryFrom<RateLimiterArgs> for Checked {
    type Error = String;
    fn try_from(a: RateLimiterArgs) -> Result<Checked, String> {
        a.validate()?;
        Ok(Checked(a))
    }
}

impl From<Checked> for RateLimiterArgs {
    fn from(c: Checked) -> RateLimiterArgs {
        c.0
    }
}

/// One token bucket: `rate` tokens a second, up to `depth`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    pub rate: f64,
    pub depth: f64,
    pub tokens: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, depth: f64) -> Bucket {
        Bucket { rate, depth, tokens: depth }
    }
    /// Add what flowed in over `secs`.
    #[inline]
    pub fn refill(&mut self, secs: f64) {
        self.tokens = (self.tokens + secs * self.rate).min(self.depth);
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    rxpackets: u64,
    rxbytes: u64,
    txpackets: u64,
    txbytes: u64,
    dropped: u64,
    dropped_bytes: u64,
}

pub struct RateLimiter {
    args: RateLimiterArgs,
    bits: Option<Bucket>,
    packets: Option<Bucket>,
    last: Instant,
    c: Counters,
}

impl AppClass for RateLimiter {
    type Args = Checked;
    const PORTS: PortSpec = PortSpec::new(&["*"], &["output"]);

    fn new(Checked(args): Checked, _ctx: &AppContext) -> anyhow::Result<RateLimiter> {
        let mut r =
            RateLimiter { args: args.clone(), bits: None, packets: None, last: Instant::now(), c: Counters::default() };
        r.set(args);
        Ok(r)
    }

    fn reconfigure(&mut self, Checked(args): Checked, _ctx: &AppContext) -> anyhow::Result<bool> {
        self.refill(Instant::now());
        self.set(args);
        Ok(true)
    }
}

impl RateLimiter {
    /// New rates and depths; buckets that stay keep their tokens (up to
    /// the new depth), new ones start full.
    fn set(&mut self, args: RateLimiterArgs) {
        let keep = |old: Option<Bucket>, rate: Option<f64>, depth: Option<f64>| {
            let (rate, depth) = (rate?, depth?);
            Some(match old {
                Some(b) => Bucket { rate, depth, tokens: b.tokens.min(depth) },
                None => Bucket::new(rate, depth),
            })
        };
        self.bits = keep(self.bits, args.gbps.map(|g| g * 1e9), args.bit_depth());
        self.packets = keep(self.packets, args.pps, args.packet_depth());
        self.args = args;
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        for b in [&mut self.bits, &mut self.packets].into_iter().flatten() {
            b.refill(secs);
        }
    }

    /// Whether a packet of `len` bytes may pass; takes its tokens if so.
    #[inline]
    fn admit(&mut self, len: usize) -> bool {
        let bits = len as f64 * 8.0;
        let bits_ok = self.bits.is_none_or(|b| b.tokens >= bits);
        let packet_ok = self.packets.is_none_or(|b| b.tokens >= 1.0);
        if !(bits_ok && packet_ok) {
            return false;
        }
        if let Some(b) = &mut self.bits {
            b.tokens -= bits;
        }
        if let Some(b) = &mut self.packets {
            b.tokens -= 1.0;
        }
        true
    }

    pub fn args(&self) -> &RateLimiterArgs {
        &self.args
    }
    pub fn passed(&self) -> u64 {
        self.c.txpackets
    }
    pub fn dropped(&self) -> u64 {
        self.c.dropped
    }
}

impl App for RateLimiter {
    fn push(&mut self, io: &Io) {
        if io.input.iter().all(|l| l.is_empty()) {
            return;
        }
        self.refill(Instant::now());
        let out = io.output.get("output").or_else(|| io.output.first());
        for input in io.input.iter() {
            let Some(out) = out else {
                let (n, bytes) = input.discard();
                self.c.rxpackets += n;
                self.c.rxbytes += bytes;
                self.c.dropped += n;
                self.c.dropped_bytes += bytes;
                continue;
            };
            let mut tx = out.transmitter();
            for p in input.drain() {
                let len = p.len();
                self.c.rxpackets += 1;
                self.c.rxbytes += len as u64;
                if self.admit(len) {
                    self.c.txpackets += 1;
                    self.c.txbytes += len as u64;
                    tx.send(p);
                } else {
                    self.c.dropped += 1;
                    self.c.dropped_bytes += len as u64;
                }
            }
        }
    }

    fn counters(&self, emit: &mut dyn FnMut(&str, u64)) {
        let c = &self.c;
        emit("rxpackets", c.rxpackets);
        emit("rxbytes", c.rxbytes);
        emit("txpackets", c.txpackets);
        emit("txbytes", c.txbytes);
        emit("dropped", c.dropped);
        emit("dropped_bytes", c.dropped_bytes);
    }

    fn report(&self, out: &mut String) {
        let mut rates = Vec::new();
        if let Some(g) = self.args.gbps {
            rates.push(format!("{g} Gbit/s"));
        }
        if let Some(p) = self.args.pps {
            rates.push(format!("{p} packets/s"));
        }
        out.push_str(&format!(
            "limit {}: {} packets passed, {} dropped over the rate\n",
            rates.join(" and "),
            self.c.txpackets,
            self.c.dropped
        ));
    }
}

/// Add this crate's classes to a registry.
pub fn register(r: &mut Registry) {
    r.register::<RateLimiter>("RateLimiter", "passes packets up to a rate in Gbit/s and packets/s, drops the rest");
}

/// Each app's selftest, by class name.
pub fn selftests() -> Vec<(&'static str, snabb_core::selftest::Selftest)> {
    vec![("RateLimiter", selftest)]
}

/// Bursts against buckets that barely refill, so that what passes is the
/// buckets' depth whatever the machine's speed: by bits, by packets, and
/// by both; new rates in place; bad arguments refused.
pub fn selftest() -> anyhow::Result<()> {
    use anyhow::ensure;
    use snabb_core::{Args, Config, Engine, Limit, packet};

    let before = packet::stats().in_use;
    {
        let registry = || {
            let mut r = Registry::new();
            snabb_apps_basic::register(&mut r);
            register(&mut r);
            r
        };
        // 64-byte frames: 512 bits each. A rate of 1 bit/s refills nothing
        // that matters over the test.
        let cases = [
            ("(gbps: 1e-9, burst_bytes: 64000)", 1000),
            ("(pps: 1e-3, burst_packets: 700)", 700),
            ("(gbps: 1e-9, burst_bytes: 64000, pps: 1e-3, burst_packets: 300)", 300),
        ];
        let graph = |limit: &str, src: &str| -> anyhow::Result<Config> {
            let mut c = Config::new();
            c.app_args("src", "Source", Args::from_ron(src)?)
                .app_args("limit", "RateLimiter", Args::from_ron(limit)?)
                .app("sink", "Sink", &())
                .link("src.output -> limit.input")
                .link("limit.output -> sink.input");
            Ok(c)
        };
        for (args, passed) in cases {
            let mut e = Engine::new(registry());
            e.configure(&graph(args, "(size: 64, count: 5000)")?)?;
            e.run(Limit::Breaths(100));
            let n = e.app_counters("limit");
            ensure!(n["rxpackets"] == 5000, "{args}: {n:?}");
            ensure!(n["txpackets"] == passed && n["dropped"] == 5000 - passed, "{args}: {n:?}");
            ensure!(n["txbytes"] == passed * 64 && n["dropped_bytes"] == (5000 - passed) * 64, "{args}: {n:?}");
            ensure!(e.link_counters("limit.output -> sink.input").unwrap().txpackets == passed, "{args}");
            // A deeper bucket in place (and a new source): the counters
            // carry on, and the new depth is not granted at once: the
            // bucket keeps the tokens it had, none.
            let c = graph("(pps: 1e-3, burst_packets: 5000)", "(size: 64, count: 5000, src: \"02:00:00:00:00:09\")")?;
            e.configure(&c)?;
            e.run(Limit::Breaths(100));
            let n = e.app_counters("limit");
            let (rx, tx) = (n["rxpackets"], n["txpackets"]);
            ensure!(rx == 10000, "{args}, reconfigured: {n:?}");
            let kept = if args.contains("pps") { 0 } else { 5000 };
            ensure!(tx == passed + kept, "{args}, reconfigured: {n:?}");
        }
        for (bad, why) in [
            ("()", "without a rate"),
            ("(gbps: 0.0)", "gbps 0"),
            ("(pps: -1.0)", "pps -1"),
            ("(gbps: 1.0, burst_bytes: 100)", "burst_bytes 100"),
            ("(pps: 1.0, burst_bytes: 100000)", "burst_bytes without gbps"),
            ("(gbps: 1.0, colour: 3)", "colour"),
        ] {
            let mut c = Config::new();
            c.app_args("limit", "RateLimiter", Args::from_ron(bad)?);
            let err = registry().check(&c).unwrap_err().to_string();
            ensure!(err.contains(why), "{bad}: {err}");
        }
    }
    ensure!(packet::stats().in_use == before, "packets leaked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selftest_passes() {
        for (name, t) in selftests() {
            t().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_depth() {
        let mut b = Bucket::new(1000.0, 50.0);
        b.tokens = 0.0;
        b.refill(0.01);
        assert!((b.tokens - 10.0).abs() < 1e-9);
        b.refill(1.0);
        assert_eq!(b.tokens, 50.0);
    }

    #[test]
    fn over_time_the_rate_passes() {
        // 1 Gbit/s of 1000-byte frames is 125000 frames/s: in 10 ms of
        // simulated time, offered twice that, ~1250 pass beyond the burst.
        let args = RateLimiterArgs { gbps: Some(1.0), pps: None, burst_bytes: Some(10240), burst_packets: None };
        let ctx = AppContext { name: "l", class: "RateLimiter" };
        let mut r = RateLimiter::new(Checked(args), &ctx).unwrap();
        let t0 = r.last;
        let mut passed = 0;
        for step in 1..=1000 {
            // 10 µs steps, 2.5 frames offered each.
            r.refill(t0 + std::time::Duration::from_micros(10 * step));
            for _ in 0..if step % 2 == 0 { 3 } else { 2 } {
                passed += r.admit(1000) as u64;
            }
        }
        // Burst of 10 frames, then 1250 over 10 ms.
        assert!((1255..=1262).contains(&passed), "{passed}");
    }
}
