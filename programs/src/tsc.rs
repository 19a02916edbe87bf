//! The time-stamp counter, for the benches that time parts of a breath.
//!
//! ```text
//!   tsc() -> ticks          RDTSC (nanoseconds off x86-64)
//!   tsc_rate() -> f64       ticks per ns, measured over 50 ms
//!   median(Vec<f64>)        the middle value (the upper one of an even
//!                           count; NaN for none)
//! ```

use std::time::{Duration, Instant};

/// The engines' clock for busy_ticks (`engine::ticks`), so that the benches'
/// figures and the counters are in the same unit.
#[inline(always)]
pub fn tsc() -> u64 {
    snabb_core::engine::ticks()
}

pub fn tsc_rate() -> f64 {
    let (t0, i0) = (tsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(50));
    (tsc() - t0) as f64 / i0.elapsed().as_nanos() as f64
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
