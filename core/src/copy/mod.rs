//! COPYING PACKET DATA
//!
//! Every byte copy of packet data in snabb-rs goes through these two
//! functions, so that the copier can be changed in one place:
//!
//!   copy(dst, src)                 dst.len() == src.len(), no overlap
//!   move_within(buf, range, to)    overlapping move inside one buffer
//!
//! Behind them are kernels for four levels of the instruction set:
//!
//!   Avx512    64-byte blocks (AVX-512F)
//!   Avx2      32-byte blocks
//!   Sse2      16-byte blocks (every x86-64 has SSE2)
//!   Portable  8-byte words, any CPU
//!
//! The level is chosen once, at the first copy that needs a kernel, as the
//! best the CPU has (`is_x86_feature_detected!`), or a lower one named by
//! the environment variable `SNABB_RS_COPY` (`avx2`, `sse2`, `portable`;
//! `auto` is the default), for testing and for CPUs that lower their clock
//! while running wide vector code. `set_level` changes it later.
//!
//! Copies of up to 64 bytes (`INLINE_MAX`) do not go through the kernel: they are done
//! inline at the call site with SSE2 and scalar moves, without a call. Most
//! packets on a busy link are small, and cloning a 60-byte packet is a few
//! nanoseconds of work in which an indirect call would be a large share.
//! (This inline path is the same at every level; SSE2 never lowers the
//! clock.) Longer copies make one indirect call to the chosen kernel.
//!
//! [`Copier`] gives a kernel of a given level directly, for tests and
//! benchmarks that compare levels.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

mod blocks;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

/// Longest copy done inline at the call site. Above 64 bytes the inline
/// SSE2 path needs more 16-byte stores than the kernels' wider ones cost
/// with a call (measured: 128 bytes took 1.5x memcpy's time inline).
#[cfg(target_arch = "x86_64")]
pub const INLINE_MAX: usize = 64;
#[cfg(not(target_arch = "x86_64"))]
pub const INLINE_MAX: usize = 64;

/// The environment variable that caps the level.
pub const ENV: &str = "SNABB_RS_COPY";

/// An instruction-set level for the copy kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Portable = 0,
    Sse2 = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Portable, Level::Sse2, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Sse2 => "sse2",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The best level this CPU runs.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
            Level::Sse2
        }
        #[cfg(not(target_arch = "x86_64"))]
        Level::Portable
    }

    /// Whether this CPU runs this level's kernel.
    pub fn supported(self) -> bool {
        self <= Level::detect()
    }

    /// The levels this CPU runs, lowest first.
    pub fn all_supported() -> impl DoubleEndedIterator<Item = Level> {
        Level::ALL.into_iter().filter(|l| l.supported())
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("copy level `{s}`: expected one of avx512, avx2, sse2, portable"))
    }
}

type Kernel = unsafe fn(*mut u8, *const u8, usize);

/// A copy kernel and a move kernel of one level.
#[derive(Clone, Copy)]
pub struct Copier {
    level: Level,
    copy: Kernel,
    mov: Kernel,
    /// `copy` for lengths above INLINE_MAX only.
    long: Kernel,
}

/// Indexed by `Level as usize`. Entries for levels the CPU lacks are never
/// reached: a `Copier` is only made for a supported level.
#[cfg(target_arch = "x86_64")]
static KERNELS: [Copier; 4] = [
    Copier {
        level: Level::Portable,
        copy: blocks::copy_portable,
        mov: blocks::move_portable,
        long: blocks::copy_portable,
    },
    Copier { level: Level::Sse2, copy: x86::copy_sse2, mov: x86::move_sse2, long: x86::copy_long_sse2 },
    Copier { level: Level::Avx2, copy: x86::copy_avx2, mov: x86::move_avx2, long: x86::copy_long_avx2 },
    Copier { level: Level::Avx512, copy: x86::copy_avx512, mov: x86::move_avx512, long: x86::copy_long_avx512 },
];
#[cfg(not(target_arch = "x86_64"))]
static KERNELS: [Copier; 4] = {
    let p = Copier {
        level: Level::Portable,
        copy: blocks::copy_portable,
        mov: blocks::move_portable,
        long: blocks::copy_portable,
    };
    [p, p, p, p]
};

impl Copier {
    /// The kernels of `level`, or `None` when this CPU lacks it.
    pub fn new(level: Level) -> Option<Copier> {
        level.supported().then(|| KERNELS[level as usize])
    }

    /// The kernels the dispatch uses now.
    pub fn active() -> Copier {
        *active()
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Copy `src` into `dst` with this level's kernel, whatever the length
    /// (no inline path). Panics when the lengths differ.
    #[inline]
    pub fn copy(&self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len(), "copy between slices of different lengths");
        // SAFETY: both slices are n bytes and cannot overlap (one is &mut);
        // the kernel's level is supported (checked when self was made).
        unsafe { (self.copy)(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
    }

    /// The kernel `copy()` uses above INLINE_MAX (for tests: shorter
    /// copies go to `copy`).
    #[cfg(test)]
    fn copy_long(&self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len());
        if src.len() <= INLINE_MAX {
            return self.copy(dst, src);
        }
        // SAFETY: as for copy, and the length is above INLINE_MAX.
        unsafe { (self.long)(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
    }

    /// As [`move_within`], with this level's kernel.
    #[inline]
    pub fn move_within(&self, buf: &mut [u8], range: Range<usize>, to: usize) {
        let n = check_move(buf.len(), &range, to);
        let p = buf.as_mut_ptr();
        // SAFETY: check_move proved both regions lie inside buf; the kernel
        // handles overlap and its level is supported.
        unsafe { (self.mov)(p.add(to), p.add(range.start), n) }
    }
}

impl fmt::Debug for Copier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Copier({})", self.level)
    }
}

/// The level in use, or UNRESOLVED before the first choice.
static ACTIVE: AtomicU8 = AtomicU8::new(UNRESOLVED);
const UNRESOLVED: u8 = u8::MAX;

/// The active level's `long` kernel, as a plain pointer: what `copy()`
/// calls above INLINE_MAX, one load and one call. It starts as
/// `resolve_long`, which chooses the level on the first call. Only ever
/// holds a `Kernel` (see `set_active`).
static LONG: AtomicPtr<()> = AtomicPtr::new(resolve_long as *mut ());

/// # Safety
/// As for a `long` kernel.
unsafe fn resolve_long(d: *mut u8, s: *const u8, n: usize) {
    let k = active();
    // SAFETY: passed on from the caller; the level is supported.
    unsafe { (k.long)(d, s, n) }
}

/// Make `level` (supported) the one every dispatch uses.
fn set_active(level: Level) {
    ACTIVE.store(level as u8, Ordering::Relaxed);
    LONG.store(KERNELS[level as usize].long as *mut (), Ordering::Relaxed);
}

#[inline(always)]
fn active() -> &'static Copier {
    match KERNELS.get(ACTIVE.load(Ordering::Relaxed) as usize) {
        Some(k) => k,
        None => resolve(),
    }
}

/// Choose the level: the best detected, capped by `SNABB_RS_COPY`.
#[cold]
#[inline(never)]
fn resolve() -> &'static Copier {
    let best = Level::detect();
    let (level, warning) = choose(std::env::var(ENV).ok().as_deref(), best);
    if let Some(w) = warning {
        log::warn!("{w}");
    }
    // Two threads may race here; both store the same answer.
    set_active(level);
    log::debug!("copy: {level} kernels (CPU has {best})");
    &KERNELS[level as usize]
}

/// The level for a setting of `SNABB_RS_COPY` on a CPU whose best is
/// `best`, and a warning when the setting cannot be followed.
fn choose(setting: Option<&str>, best: Level) -> (Level, Option<String>) {
    match setting.map(str::trim) {
        None | Some("") => (best, None),
        Some(s) if s.eq_ignore_ascii_case("auto") => (best, None),
        Some(s) => match s.parse::<Level>() {
            Ok(l) if l <= best => (l, None),
            Ok(l) => (best, Some(format!("{ENV}={s}: this CPU lacks {l}; copying with {best}"))),
            Err(e) => (best, Some(format!("{ENV}: {e}; copying with {best}"))),
        },
    }
}

/// The level the dispatch uses (choosing it if no copy has yet).
pub fn level() -> Level {
    active().level
}

/// Use `level` from now on, in every thread (for tests and benchmarks, or
/// to step down at run time). Returns the previous level, or an error when
/// this CPU lacks `level`.
pub fn set_level(level: Level) -> Result<Level, String> {
    if !level.supported() {
        return Err(format!("this CPU lacks {level} (it has {})", Level::detect()));
    }
    let old = self::level();
    set_active(level);
    Ok(old)
}

/// Copy `src` into `dst`; the lengths must be equal (panics otherwise).
#[inline(always)]
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy between slices of different lengths");
    let n = src.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY (all branches): both slices are n bytes and cannot overlap
    // (one is &mut); each branch's length range is what it requires.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if n.wrapping_sub(16) <= 48 {
            // 16..=64 first: minimum-size frames, the most common packets.
            x86::move_16_to_64(d, s, n)
        } else if n <= INLINE_MAX {
            x86::move_upto128(d, s, n)
        } else {
            copy_large(d, s, n)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unsafe {
        if n < 8 {
            blocks::move_under8(d, s, n)
        } else if n <= INLINE_MAX {
            blocks::move_upto8::<u64>(d, s, n)
        } else {
            copy_large(d, s, n)
        }
    }
}

/// # Safety
/// `n > INLINE_MAX`, `s .. s + n` readable, `d .. d + n` writable, no overlap.
#[inline(always)]
unsafe fn copy_large(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: LONG only ever holds a `Kernel` (resolve_long or the `long`
    // kernel of a supported level), stored as a plain pointer; the caller
    // passes on the kernel's requirements.
    unsafe {
        let long: Kernel = std::mem::transmute::<*mut (), Kernel>(LONG.load(Ordering::Relaxed));
        long(d, s, n)
    }
}

/// Move `buf[range]` so that it starts at `to` (the regions may overlap).
/// Panics when either region is outside `buf`.
#[inline]
pub fn move_within(buf: &mut [u8], range: Range<usize>, to: usize) {
    let n = check_move(buf.len(), &range, to);
    if n == 0 || range.start == to {
        return;
    }
    let p = buf.as_mut_ptr();
    // SAFETY: check_move proved both regions lie inside buf; the kernels
    // handle overlap in both directions; the active level is supported.
    unsafe { (active().mov)(p.add(to), p.add(range.start), n) }
}

/// The length of a move, after checking both regions lie inside a buffer
/// of `len` bytes (as `slice::copy_within` does).
#[inline(always)]
fn check_move(len: usize, range: &Range<usize>, to: usize) -> usize {
    if range.start > range.end || range.end > len {
        bad_move(len, range, to);
    }
    let n = range.end - range.start;
    if to > len - n {
        bad_move(len, range, to);
    }
    n
}

#[cold]
#[inline(never)]
fn bad_move(len: usize, range: &Range<usize>, to: usize) -> ! {
    panic!("move_within: {range:?} to {to} is outside a buffer of {len} bytes")
}
