//! The copier against byte-by-byte references: every length up to 1100 at
//! every source and destination alignment 0..63, every length up to 10240
//! at a few alignments and a stride of lengths at all of them, overlapping
//! moves both ways, and random cases; for each level this CPU runs and for
//! the public entry points (inline path plus dispatch).
//!
//! Debug builds run a reduced sweep (every 7th alignment) so that a plain
//! `cargo test` stays quick; the release build CI runs is the full sweep.

use super::*;
use proptest::prelude::*;

/// Largest length checked: a whole packet buffer.
const MAX: usize = crate::packet::PAYLOAD_SIZE;
/// Every length up to this is checked at every alignment pair.
const ALL_ALIGN_MAX: usize = 1100;
/// Bytes around the destination that must stay untouched.
const GUARD: usize = 96;
const CANARY: u8 = 0xa5;

fn aligns() -> impl Iterator<Item = usize> + Clone {
    let step = if cfg!(debug_assertions) { 7 } else { 1 };
    (0..64).step_by(step)
}

/// Bytes that do not repeat with any short period, so a byte copied from
/// the wrong offset shows.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The reference: one byte at a time, in the direction that is correct for
/// an overlapping move.
fn reference_move(buf: &mut [u8], from: usize, to: usize, n: usize) {
    if to <= from {
        for i in 0..n {
            buf[to + i] = buf[from + i];
        }
    } else {
        for i in (0..n).rev() {
            buf[to + i] = buf[from + i];
        }
    }
}

/// A copy implementation under test.
type CopyFn<'a> = &'a dyn Fn(&mut [u8], &[u8]);
type MoveFn<'a> = &'a dyn Fn(&mut [u8], Range<usize>, usize);

/// Checks copies of `len` bytes from `src[sa..]` to a destination at
/// alignment `da`, leaving `dst` as it found it (all canary).
struct CopyBench {
    src: Vec<u8>,
    dst: Vec<u8>,
    base: usize,
}

impl CopyBench {
    fn new() -> CopyBench {
        // Both buffers 64-byte aligned at `base`, so that offsets are alignments.
        let src = noise(MAX + 256, 0x9e3779b97f4a7c15);
        let dst = vec![CANARY; MAX + 64 + 2 * GUARD + 128];
        let base = GUARD + 64 - (dst.as_ptr() as usize + GUARD) % 64;
        CopyBench { src, dst, base }
    }

    fn check(&mut self, f: CopyFn, what: &str, len: usize, sa: usize, da: usize) {
        let s0 = 64 - self.src.as_ptr() as usize % 64;
        let src = &self.src[s0 + sa..s0 + sa + len];
        let d = self.base + da;
        f(&mut self.dst[d..d + len], src);
        // Against the source bytes, then the guards on both sides.
        if self.dst[d..d + len] != *src {
            let i = (0..len).find(|&i| self.dst[d + i] != src[i]).unwrap();
            panic!("{what}: copy of {len} bytes, src align {sa}, dst align {da}: byte {i} wrong");
        }
        let before = &self.dst[d - GUARD..d];
        let after = &self.dst[d + len..d + len + GUARD];
        if before.iter().chain(after).any(|&b| b != CANARY) {
            panic!("{what}: copy of {len} bytes, src align {sa}, dst align {da}: wrote outside the destination");
        }
        self.dst[d..d + len].fill(CANARY);
    }
}

/// Every length 0..=10240 as the module comment says.
fn sweep_copies(f: CopyFn, what: &str) {
    let mut b = CopyBench::new();
    for len in 0..=ALL_ALIGN_MAX {
        for sa in aligns() {
            for da in aligns() {
                b.check(f, what, len, sa, da);
            }
        }
    }
    let few = [(0, 0), (1, 0), (0, 1), (63, 1), (17, 45), (32, 0), (8, 40), (31, 33)];
    for len in ALL_ALIGN_MAX + 1..=MAX {
        for &(sa, da) in &few {
            b.check(f, what, len, sa, da);
        }
    }
    // A stride of long lengths, ending at the maximum, at every alignment.
    let stride = if cfg!(debug_assertions) { 1021 } else { 127 };
    let long = (ALL_ALIGN_MAX + 1..MAX).step_by(stride).chain([MAX]);
    for len in long {
        for sa in aligns() {
            for da in aligns() {
                b.check(f, what, len, sa, da);
            }
        }
    }
}

/// Distances between source and destination of the overlapping moves,
/// both ways: around every block size and loop step.
const DELTAS: [usize; 24] =
    [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300];

struct MoveBench {
    pattern: Vec<u8>,
    buf: Vec<u8>,
    base: usize,
}

impl MoveBench {
    /// Region starts are `base + offset`, with `base` 64-byte aligned and
    /// room for the largest delta on either side.
    fn new() -> MoveBench {
        let size = 2 * 384 + MAX + 128;
        let pattern = noise(size, 0x2545f4914f6cdd1d);
        let buf = pattern.clone();
        let base = 384 - buf.as_ptr() as usize % 64;
        MoveBench { pattern, buf, base }
    }

    fn check(&mut self, f: MoveFn, what: &str, len: usize, from: usize, to: usize) {
        let (from, to) = (self.base + from, self.base + to);
        f(&mut self.buf, from..from + len, to);
        let want = &self.pattern[from..from + len];
        if self.buf[to..to + len] != *want {
            let i = (0..len).find(|&i| self.buf[to + i] != want[i]).unwrap();
            panic!("{what}: move of {len} bytes from {from} to {to}: byte {i} wrong");
        }
        // Everything else must be as it was: only [to, to+len) may change.
        let lo = to.saturating_sub(GUARD);
        let hi = (to + len + GUARD).min(self.buf.len());
        if self.buf[lo..to] != self.pattern[lo..to] || self.buf[to + len..hi] != self.pattern[to + len..hi] {
            panic!("{what}: move of {len} bytes from {from} to {to}: wrote outside the destination");
        }
        self.buf[to..to + len].copy_from_slice(&self.pattern[to..to + len]);
    }
}

fn sweep_moves(f: MoveFn, what: &str) {
    let mut b = MoveBench::new();
    let cases = |b: &mut MoveBench, len: usize, a: usize| {
        for &d in &DELTAS {
            b.check(f, what, len, a, a + d); // up: backward
            b.check(f, what, len, a + d, a); // down: forward
        }
        b.check(f, what, len, a, a);
    };
    for len in 0..=ALL_ALIGN_MAX {
        for a in aligns() {
            cases(&mut b, len, a);
        }
    }
    let stride = if cfg!(debug_assertions) { 509 } else { 61 };
    for len in (ALL_ALIGN_MAX + 1..MAX).step_by(stride).chain([MAX]) {
        for a in [0, 1, 31, 63] {
            cases(&mut b, len, a);
        }
    }
}

fn copier(level: Level) -> Option<Copier> {
    let c = Copier::new(level);
    if c.is_none() {
        eprintln!("skipped: this CPU lacks {level} (it has {}), so its kernel cannot run here", Level::detect());
    }
    c
}

macro_rules! level_tests {
    ($level:expr, $copies:ident, $long:ident, $moves:ident) => {
        #[test]
        fn $copies() {
            if let Some(c) = copier($level) {
                sweep_copies(&|d, s| c.copy(d, s), $level.name());
            }
        }
        #[test]
        fn $long() {
            if let Some(c) = copier($level) {
                sweep_copies(&|d, s| c.copy_long(d, s), $level.name());
            }
        }
        #[test]
        fn $moves() {
            if let Some(c) = copier($level) {
                sweep_moves(&|b, r, t| c.move_within(b, r, t), $level.name());
            }
        }
    };
}

level_tests!(Level::Portable, portable_copies, portable_long_copies, portable_moves);
level_tests!(Level::Sse2, sse2_copies, sse2_long_copies, sse2_moves);
level_tests!(Level::Avx2, avx2_copies, avx2_long_copies, avx2_moves);
level_tests!(Level::Avx512, avx512_copies, avx512_long_copies, avx512_moves);

/// The public functions: the inline path below 129 bytes, the dispatched
/// kernel above.
#[test]
fn entry_point_copies() {
    sweep_copies(&|d, s| copy(d, s), "copy()");
}

#[test]
fn entry_point_moves() {
    sweep_moves(&|b, r, t| move_within(b, r, t), "move_within()");
}

#[test]
fn detection_and_levels() {
    let best = Level::detect();
    assert!(Level::Portable.supported() && best.supported());
    #[cfg(target_arch = "x86_64")]
    {
        assert!(Level::Sse2.supported(), "every x86-64 has SSE2");
        assert_eq!(Level::Avx2.supported(), std::is_x86_feature_detected!("avx2"));
        assert_eq!(Level::Avx512.supported(), std::is_x86_feature_detected!("avx512f"));
    }
    for l in Level::ALL {
        assert_eq!(l.name().parse::<Level>(), Ok(l));
        assert_eq!(Copier::new(l).map(|c| c.level()), l.supported().then_some(l));
    }
    assert!("AVX2".parse::<Level>().is_ok());
    assert!("avx3".parse::<Level>().is_err());
    assert!(level() <= best);
}

#[test]
fn environment_caps_the_level() {
    let (best, low) = (Level::Avx2, Level::Sse2);
    assert_eq!(choose(None, best), (best, None));
    assert_eq!(choose(Some("auto"), best), (best, None));
    assert_eq!(choose(Some(" sse2 "), best), (low, None));
    assert_eq!(choose(Some("portable"), best).0, Level::Portable);
    // Asking for more than the CPU has, or nonsense, warns and keeps the best.
    let (l, w) = choose(Some("avx512"), best);
    assert_eq!(l, best);
    assert!(w.unwrap().contains("lacks avx512"));
    let (l, w) = choose(Some("fast"), best);
    assert_eq!(l, best);
    assert!(w.unwrap().contains("expected one of"));
}

#[test]
fn set_level_switches_the_dispatch() {
    // Other tests copy meanwhile: every level gives the same bytes, so
    // switching under them is harmless, which is also what this shows.
    let src = noise(5000, 7);
    let mut dst = vec![0u8; 5000];
    for l in Level::all_supported() {
        set_level(l).unwrap();
        assert!(level() <= Level::detect());
        copy(&mut dst, &src);
        assert_eq!(dst, src, "{l}");
        dst.fill(0);
    }
    if !Level::Avx512.supported() {
        assert!(set_level(Level::Avx512).is_err());
    }
    set_level(Level::detect()).unwrap();
}

#[test]
#[allow(clippy::reversed_empty_ranges)]
fn bad_arguments_panic_cleanly() {
    let r = std::panic::catch_unwind(|| copy(&mut [0u8; 4], &[0u8; 5]));
    assert!(r.is_err(), "lengths differ");
    let mut buf = [0u8; 16];
    for (range, to) in [(0..17, 0), (4..2, 0), (8..16, 9), (0..16, 1), (20..20, 0)] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| move_within(&mut buf, range.clone(), to)));
        assert!(r.is_err(), "{range:?} to {to}");
    }
    // At the edges but inside: fine.
    move_within(&mut buf, 8..16, 0);
    move_within(&mut buf, 0..8, 8);
    move_within(&mut buf, 16..16, 16);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(debug_assertions) { 64 } else { 512 }))]

    #[test]
    fn random_copies(len in 0..=MAX, sa in 0..64usize, da in 0..64usize, level in 0..4usize, seed: u64) {
        let src = noise(len + sa, seed);
        let mut dst = noise(len + da + 64, !seed);
        let mut want = dst.clone();
        want[da..da + len].copy_from_slice(&src[sa..]);
        match Copier::new(Level::ALL[level]) {
            Some(c) => c.copy(&mut dst[da..da + len], &src[sa..]),
            None => copy(&mut dst[da..da + len], &src[sa..]),
        }
        prop_assert!(dst == want);
    }

    #[test]
    fn random_moves(len in 0..=MAX, from in 0..600usize, to in 0..600usize, level in 0..4usize, seed: u64) {
        let mut buf = noise(len + 600, seed);
        let mut want = buf.clone();
        reference_move(&mut want, from, to, len);
        match Copier::new(Level::ALL[level]) {
            Some(c) => c.move_within(&mut buf, from..from + len, to),
            None => move_within(&mut buf, from..from + len, to),
        }
        prop_assert!(buf == want);
    }
}
