//! `snabb-rs bench copy`: the copier against the platform's memcpy.
//!
//! For each size, nanoseconds per copy for: `memcpy` (what
//! `ptr::copy_nonoverlapping` calls), `copy()` (the entry point every
//! caller uses: inline up to 128 bytes, then the active kernel), and each
//! kernel level this CPU runs, called directly. All in the same run,
//! interleaved round by round, so that a busy neighbour slows them alike;
//! each figure is the median of the rounds and each ratio is memcpy's time
//! over the contender's (above 1 is faster than memcpy).
//!
//! *warm*: a few buffer pairs that stay in the L1/L2 cache, copied in turn.
//! A round's figure is the fastest of `SAMPLES` short samples (about 10 µs
//! each): on a shared machine a sample is either interrupted or not, and
//! the fastest is the one that was not.
//! *cold*: source and destination picked in random order from an arena
//! several times the size of the last-level cache, each pair used once per
//! measurement, so both miss the caches as a packet from a NIC ring would.
//! A round's figure is the fastest of `COLD_PASSES` passes over the arena.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Result, ensure};
use snabb_core::copy::{self, Copier, Level};

pub const SIZES: [usize; 8] = [64, 128, 256, 512, 1024, 1514, 4096, 9000];

pub struct Options {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// Arena for cold copies, MiB.
    pub arena_mib: usize,
    /// Milliseconds per warm measurement.
    pub warm_ms: f64,
    /// Offset of the source from 64-byte alignment (the destination is aligned).
    pub src_offset: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { sizes: SIZES.to_vec(), rounds: 9, arena_mib: 256, warm_ms: 0.01, src_offset: 0 }
    }
}

/// One contender: a name and a copy routine.
#[derive(Clone, Copy)]
enum Contender {
    Memcpy,
    Entry,
    Kernel(Copier),
}

impl Contender {
    fn name(&self) -> String {
        match self {
            Contender::Memcpy => "memcpy".into(),
            Contender::Entry => format!("copy()={}", copy::level()),
            Contender::Kernel(c) => c.level().to_string(),
        }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    ensure!(opts.rounds > 0, "rounds must be at least 1");
    ensure!(opts.src_offset < 64, "src offset must be below 64");
    ensure!(opts.sizes.iter().all(|&s| s > 0 && s <= 1 << 20), "sizes must be 1 byte to 1 MiB");
    let mut contenders = vec![Contender::Memcpy, Contender::Entry];
    contenders.extend(Level::all_supported().rev().filter_map(Copier::new).map(Contender::Kernel));
    let missing: Vec<String> = Level::ALL.iter().filter(|l| !l.supported()).map(|l| l.to_string()).collect();
    println!(
        "copy: dispatch uses {} (CPU best {}{}); {} rounds, median ns per copy, ratio = memcpy / contender{}",
        copy::level(),
        Level::detect(),
        std::env::var(copy::ENV).map(|v| format!(", {}={v}", copy::ENV)).unwrap_or_default(),
        opts.rounds,
        if missing.is_empty() { String::new() } else { format!("; not on this CPU: {}", missing.join(", ")) },
    );
    print!("{:>6} {:>5}", "size", "mode");
    for n in contenders.iter().map(Contender::name) {
        print!(" {n:>17}");
    }
    println!();

    let mut arena = Arena::new((opts.arena_mib << 20).max(4 << 20))?;
    let arena = arena.bytes();
    for &size in &opts.sizes {
        for mode in ["warm", "cold"] {
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
            for round in 0..opts.rounds {
                // Rotate the order so no contender always runs first.
                for k in 0..contenders.len() {
                    let i = (k + round) % contenders.len();
                    let ns = match mode {
                        "warm" => warm(contenders[i], size, opts),
                        _ => cold(contenders[i], size, opts, arena, round as u64),
                    };
                    samples[i].push(ns);
                }
            }
            let med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
            print!("{size:>6} {mode:>5}");
            for (i, ns) in med.iter().enumerate() {
                if i == 0 {
                    print!(" {ns:>11.2}      ");
                } else {
                    print!(" {ns:>9.2} {:>5.2}x", med[0] / ns);
                }
            }
            println!();
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Copies `pairs` (source offset, destination offset) in `buf`, `iters`
/// times round robin, with contender `c`; returns the seconds taken.
/// Each contender gets its own loop (monomorphised), so that the entry
/// point is inlined into it as it is into real callers.
fn timed(c: Contender, buf: &mut [u8], pairs: &[(usize, usize)], size: usize, iters: usize) -> f64 {
    fn go(
        buf: &mut [u8],
        pairs: &[(usize, usize)],
        size: usize,
        iters: usize,
        mut f: impl FnMut(&mut [u8], &[u8]),
    ) -> f64 {
        let len = buf.len();
        assert!(pairs.iter().all(|&(s, d)| s + size <= len && d + size <= len && (s + size <= d || d + size <= s)));
        let size = black_box(size);
        let base = buf.as_mut_ptr();
        let t = Instant::now();
        let mut k = 0;
        for _ in 0..iters {
            let (s, d) = pairs[k];
            k += 1;
            if k == pairs.len() {
                k = 0;
            }
            // SAFETY: both regions lie inside buf (checked above) and do
            // not overlap, so a shared and a mutable slice may coexist.
            let (src, dst) = unsafe {
                (std::slice::from_raw_parts(base.add(s), size), std::slice::from_raw_parts_mut(base.add(d), size))
            };
            f(dst, src);
        }
        black_box(&buf);
        t.elapsed().as_secs_f64()
    }
    match c {
        Contender::Memcpy => go(buf, pairs, size, iters, |d, s| {
            // SAFETY: the slices are `size` bytes each and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr(), d.len()) }
        }),
        Contender::Entry => go(buf, pairs, size, iters, copy::copy),
        Contender::Kernel(k) => go(buf, pairs, size, iters, |d, s| k.copy(d, s)),
    }
}

/// Samples per warm figure, and passes per cold one (the fastest counts).
const SAMPLES: usize = 100;
const COLD_PASSES: usize = 2;

/// ns per copy with the buffers in cache.
fn warm(c: Contender, size: usize, opts: &Options) -> f64 {
    // A few pairs, all of them fitting in the L1 cache when they can.
    let slot = (size + opts.src_offset).next_multiple_of(64) + 64;
    let npairs = (16384 / (2 * slot)).clamp(1, 16);
    let mut buf = vec![1u8; 2 * npairs * slot + 64];
    let a = buf.as_ptr().align_offset(64);
    let pairs: Vec<(usize, usize)> =
        (0..npairs).map(|i| (a + 2 * i * slot + opts.src_offset, a + (2 * i + 1) * slot)).collect();
    // Calibrate the count to about `warm_ms` per sample.
    let probe = 200;
    let t = timed(c, &mut buf, &pairs, size, probe).max(1e-8);
    let iters = ((opts.warm_ms / 1e3 / t * probe as f64) as usize).clamp(probe, 50_000_000);
    (0..SAMPLES).map(|_| timed(c, &mut buf, &pairs, size, iters)).fold(f64::MAX, f64::min) * 1e9 / iters as f64
}

/// ns per copy with the buffers out of cache: each pair once, in an order
/// the prefetchers cannot guess.
fn cold(c: Contender, size: usize, opts: &Options, arena: &mut [u8], seed: u64) -> f64 {
    // A stride that is not a power of two, so buffers spread over the
    // cache sets instead of piling into a few.
    let slot = (size + opts.src_offset).next_multiple_of(64) + 192;
    let nslots = arena.len() / slot;
    let a = arena.as_ptr().align_offset(64);
    let mut order: Vec<u32> = (0..nslots.saturating_sub(1) as u32).collect();
    shuffle(&mut order, seed.wrapping_mul(0x9e3779b97f4a7c15) ^ size as u64);
    let pairs: Vec<(usize, usize)> =
        order.chunks_exact(2).map(|p| (a + p[0] as usize * slot + opts.src_offset, a + p[1] as usize * slot)).collect();
    let n = pairs.len();
    (0..COLD_PASSES).map(|_| timed(c, arena, &pairs, size, n)).fold(f64::MAX, f64::min) * 1e9 / n as f64
}

/// Memory for the cold copies, on transparent huge pages when the kernel
/// gives them (as packet buffers are on huge pages): then a cold copy
/// measures cache misses rather than page-table walks.
struct Arena {
    base: *mut u8,
    len: usize,
}

impl Arena {
    fn new(len: usize) -> Result<Arena> {
        // SAFETY: a private anonymous mapping of `len` bytes, owned by the
        // Arena and unmapped in Drop; nothing else refers to it.
        let base = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            ensure!(p != libc::MAP_FAILED, "arena of {len} bytes: {}", std::io::Error::last_os_error());
            // Advice only: without huge pages the bench still runs.
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
            p as *mut u8
        };
        let mut a = Arena { base, len };
        // Touch every page now, not during a measurement.
        for (i, b) in a.bytes().iter_mut().enumerate().step_by(4096) {
            *b = i as u8;
        }
        Ok(a)
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and
        // lives as long as self; &mut self makes the slice exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, no longer borrowed.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

fn shuffle(v: &mut [u32], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}
