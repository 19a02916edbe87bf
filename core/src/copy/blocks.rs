//! The copy and move algorithm, written once for any block size.
//!
//! A `Block` is the unit one load or one store moves: a `u64` (portable),
//! or a 16-, 32- or 64-byte vector register (see `x86.rs`). Every routine
//! here is correct for overlapping regions in both directions, because it
//! either loads everything before storing anything (up to eight blocks) or
//! walks in the direction that never overwrites bytes still to be read.
//!
//! Short lengths take overlapping blocks from both ends rather than a
//! byte loop: 40 bytes with 32-byte blocks is a block at 0 and a block at
//! 8, two loads and two stores whatever the length. Long lengths run a loop
//! of four blocks per turn with the stores aligned to the block size (an
//! unaligned store that straddles a cache line costs twice), after loading
//! the unaligned first and last blocks, which are stored last.

use std::ptr;

/// A unit of bytes that one instruction loads or stores, at any alignment.
pub(super) trait Block: Copy {
    const SIZE: usize;
    /// # Safety
    /// `p .. p + SIZE` must be readable, and the CPU must have the
    /// instructions the block uses.
    unsafe fn load(p: *const u8) -> Self;
    /// # Safety
    /// `p .. p + SIZE` must be writable, and the CPU must have the
    /// instructions the block uses.
    unsafe fn store(p: *mut u8, v: Self);
}

impl Block for u64 {
    const SIZE: usize = 8;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> u64 {
        // SAFETY: the caller vouches for 8 readable bytes.
        unsafe { ptr::read_unaligned(p as *const u64) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: u64) {
        // SAFETY: the caller vouches for 8 writable bytes.
        unsafe { ptr::write_unaligned(p as *mut u64, v) }
    }
}

/// Move `n` bytes (`n < 8`) with scalar loads from both ends.
///
/// # Safety
/// `s .. s + n` readable and `d .. d + n` writable; they may overlap.
#[inline(always)]
pub(super) unsafe fn move_under8(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: every access below lies within the first or last 4, 2 or 1
    // bytes of the n-byte regions, and all loads come before the stores.
    unsafe {
        if n >= 4 {
            let a = ptr::read_unaligned(s as *const u32);
            let z = ptr::read_unaligned(s.add(n - 4) as *const u32);
            ptr::write_unaligned(d as *mut u32, a);
            ptr::write_unaligned(d.add(n - 4) as *mut u32, z);
        } else if n >= 2 {
            let a = ptr::read_unaligned(s as *const u16);
            let z = ptr::read_unaligned(s.add(n - 2) as *const u16);
            ptr::write_unaligned(d as *mut u16, a);
            ptr::write_unaligned(d.add(n - 2) as *mut u16, z);
        } else if n == 1 {
            *d = *s;
        }
    }
}

/// Move `n` bytes (`n < 16`) with scalar loads from both ends.
///
/// # Safety
/// As for [`move_under8`].
#[inline(always)]
pub(super) unsafe fn move_under16(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: for 8 <= n < 16 the two words lie within the regions and are
    // both loaded before either is stored; below 8, see move_under8.
    unsafe {
        if n >= 8 {
            let a = u64::load(s);
            let z = u64::load(s.add(n - 8));
            u64::store(d, a);
            u64::store(d.add(n - 8), z);
        } else {
            move_under8(d, s, n);
        }
    }
}

/// Move `n` bytes, `B::SIZE <= n <= 8 * B::SIZE`, loading every block
/// before storing any (so any overlap is fine).
///
/// # Safety
/// `s .. s + n` readable and `d .. d + n` writable; the CPU has `B`.
#[inline(always)]
pub(super) unsafe fn move_upto8<B: Block>(d: *mut u8, s: *const u8, n: usize) {
    let k = B::SIZE;
    debug_assert!(k <= n && n <= 8 * k);
    // SAFETY: each block starts at an offset in 0..=n-k, so it lies within
    // the regions (n >= k); all loads precede all stores.
    unsafe {
        if n <= 2 * k {
            let a = B::load(s);
            let z = B::load(s.add(n - k));
            B::store(d, a);
            B::store(d.add(n - k), z);
        } else if n <= 4 * k {
            let a = B::load(s);
            let b = B::load(s.add(k));
            let y = B::load(s.add(n - 2 * k));
            let z = B::load(s.add(n - k));
            B::store(d, a);
            B::store(d.add(k), b);
            B::store(d.add(n - 2 * k), y);
            B::store(d.add(n - k), z);
        } else {
            let a = B::load(s);
            let b = B::load(s.add(k));
            let c = B::load(s.add(2 * k));
            let e = B::load(s.add(3 * k));
            let w = B::load(s.add(n - 4 * k));
            let x = B::load(s.add(n - 3 * k));
            let y = B::load(s.add(n - 2 * k));
            let z = B::load(s.add(n - k));
            B::store(d, a);
            B::store(d.add(k), b);
            B::store(d.add(2 * k), c);
            B::store(d.add(3 * k), e);
            B::store(d.add(n - 4 * k), w);
            B::store(d.add(n - 3 * k), x);
            B::store(d.add(n - 2 * k), y);
            B::store(d.add(n - k), z);
        }
    }
}

/// Move `n > 8 * B::SIZE` bytes front to back: correct when the regions
/// do not overlap or when `d` is below `s`.
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable, `d` not inside `s + 1 .. s + n`.
#[inline(always)]
pub(super) unsafe fn forward<B: Block>(d: *mut u8, s: *const u8, n: usize) {
    let k = B::SIZE;
    debug_assert!(n > 8 * k);
    // SAFETY: all offsets lie in 0..=n-k. The first block and the last four
    // are loaded before any store and stored after the loop, so the loop
    // may overwrite their source bytes. In the loop, a turn reads source
    // offsets i..i+4k before writing destination offsets i..i+4k; with d
    // at or below s, earlier turns wrote only below d+i <= s+i, which is
    // source this loop has already read.
    unsafe {
        let head = B::load(s);
        let w = B::load(s.add(n - 4 * k));
        let x = B::load(s.add(n - 3 * k));
        let y = B::load(s.add(n - 2 * k));
        let z = B::load(s.add(n - k));
        // The first offset at which the destination is block-aligned: the
        // head block covers everything before it.
        let mut i = k - (d as usize & (k - 1));
        while i < n - 4 * k {
            let a = B::load(s.add(i));
            let b = B::load(s.add(i + k));
            let c = B::load(s.add(i + 2 * k));
            let e = B::load(s.add(i + 3 * k));
            B::store(d.add(i), a);
            B::store(d.add(i + k), b);
            B::store(d.add(i + 2 * k), c);
            B::store(d.add(i + 3 * k), e);
            i += 4 * k;
        }
        B::store(d.add(n - 4 * k), w);
        B::store(d.add(n - 3 * k), x);
        B::store(d.add(n - 2 * k), y);
        B::store(d.add(n - k), z);
        B::store(d, head);
    }
}

/// Move `n > 8 * B::SIZE` bytes back to front: for `d` above `s` with overlap.
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable, `d` at or above `s`.
#[inline(always)]
pub(super) unsafe fn backward<B: Block>(d: *mut u8, s: *const u8, n: usize) {
    let k = B::SIZE;
    debug_assert!(n > 8 * k);
    // SAFETY: the mirror image of `forward`: the last block and the first
    // four are loaded first and stored last; a turn of the loop reads
    // source offsets j..j+4k before writing destination offsets j..j+4k,
    // and earlier turns wrote only at or above d+j+4k >= s+j+4k.
    unsafe {
        let tail = B::load(s.add(n - k));
        let a = B::load(s);
        let b = B::load(s.add(k));
        let c = B::load(s.add(2 * k));
        let e = B::load(s.add(3 * k));
        // Offset where the destination's last aligned block ends; the tail
        // block covers everything after it.
        let mut j = n - ((d as usize).wrapping_add(n) & (k - 1));
        while j > 4 * k {
            j -= 4 * k;
            let p = B::load(s.add(j));
            let q = B::load(s.add(j + k));
            let r = B::load(s.add(j + 2 * k));
            let t = B::load(s.add(j + 3 * k));
            B::store(d.add(j), p);
            B::store(d.add(j + k), q);
            B::store(d.add(j + 2 * k), r);
            B::store(d.add(j + 3 * k), t);
        }
        B::store(d, a);
        B::store(d.add(k), b);
        B::store(d.add(2 * k), c);
        B::store(d.add(3 * k), e);
        B::store(d.add(n - k), tail);
    }
}

/// Move `n >= B::SIZE` bytes, in whichever direction the overlap needs
/// (`forward_only` when the caller knows there is none).
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable; the CPU has `B`.
#[inline(always)]
pub(super) unsafe fn move_blocks<B: Block>(d: *mut u8, s: *const u8, n: usize, forward_only: bool) {
    // SAFETY: passed on from the caller; the direction test keeps the
    // loops' overlap conditions (d - s wraps around when d is below s).
    unsafe {
        if n <= 8 * B::SIZE {
            move_upto8::<B>(d, s, n)
        } else if forward_only || (d as usize).wrapping_sub(s as usize) >= n {
            forward::<B>(d, s, n)
        } else {
            backward::<B>(d, s, n)
        }
    }
}

/// Copy `n >= B::SIZE` bytes between regions that do not overlap. Up
/// to eight blocks, each half is loaded and stored in turn (nothing needs
/// to be held back, as for a move); longer copies run `forward`.
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable, no overlap; the CPU has `B`.
#[inline(always)]
pub(super) unsafe fn copy_long<B: Block>(d: *mut u8, s: *const u8, n: usize) {
    let k = B::SIZE;
    debug_assert!(n >= k);
    // SAFETY: every block lies at an offset in 0..=n-k; without overlap,
    // stores cannot change bytes still to be loaded.
    unsafe {
        if n <= 2 * k {
            move_upto8::<B>(d, s, n)
        } else if n <= 4 * k {
            let a = B::load(s);
            let b = B::load(s.add(k));
            B::store(d, a);
            B::store(d.add(k), b);
            let y = B::load(s.add(n - 2 * k));
            let z = B::load(s.add(n - k));
            B::store(d.add(n - 2 * k), y);
            B::store(d.add(n - k), z);
        } else if n <= 8 * k {
            for i in 0..4 {
                B::store(d.add(i * k), B::load(s.add(i * k)));
            }
            for i in 1..=4 {
                B::store(d.add(n - i * k), B::load(s.add(n - i * k)));
            }
        } else {
            forward::<B>(d, s, n)
        }
    }
}

/// The portable kernel: 8-byte words, for CPUs without a vector kernel.
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable (they may overlap).
pub(super) unsafe fn move_portable(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: passed on from the caller.
    unsafe { if n < 8 { move_under8(d, s, n) } else { move_blocks::<u64>(d, s, n, false) } }
}

/// As [`move_portable`], for regions that do not overlap.
///
/// # Safety
/// `s .. s + n` readable, `d .. d + n` writable, no overlap.
pub(super) unsafe fn copy_portable(d: *mut u8, s: *const u8, n: usize) {
    // SAFETY: passed on from the caller.
    unsafe { if n < 8 { move_under8(d, s, n) } else { move_blocks::<u64>(d, s, n, true) } }
}
