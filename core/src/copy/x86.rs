//! The x86-64 kernels: SSE2 (16-byte blocks, every x86-64 has it), AVX2
//! (32-byte blocks) and AVX-512 (64-byte blocks). Each is the algorithm of
//! `blocks.rs` compiled for its instruction set; lengths below a kernel's
//! block size fall through to the next smaller block.
//!
//! The `#[target_feature]` functions may only be called once the CPU is
//! known to have the feature: `Level::supported` checks it, and the
//! dispatch in `mod.rs` only ever selects a supported level.

use std::arch::x86_64::*;

use super::blocks::{self, Block};

#[derive(Clone, Copy)]
pub(super) struct Xmm(__m128i);
#[derive(Clone, Copy)]
pub(super) struct Ymm(__m256i);
#[derive(Clone, Copy)]
pub(super) struct Zmm(__m512i);

impl Block for Xmm {
    const SIZE: usize = 16;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Xmm {
        // SAFETY: 16 readable bytes (caller); SSE2 is part of x86-64.
        Xmm(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: Xmm) {
        // SAFETY: 16 writable bytes (caller); SSE2 is part of x86-64.
        unsafe { _mm_storeu_si128(p.cast(), v.0) }
    }
}

impl Block for Ymm {
    const SIZE: usize = 32;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Ymm {
        // SAFETY: 32 readable bytes and AVX (caller).
        Ymm(unsafe { _mm256_loadu_si256(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: Ymm) {
        // SAFETY: 32 writable bytes and AVX (caller).
        unsafe { _mm256_storeu_si256(p.cast(), v.0) }
    }
}

impl Block for Zmm {
    const SIZE: usize = 64;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Zmm {
        // SAFETY: 64 readable bytes and AVX-512F (caller).
        Zmm(unsafe { _mm512_loadu_si512(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: Zmm) {
        // SAFETY: 64 writable bytes and AVX-512F (caller).
        unsafe { _mm512_storeu_si512(p.cast(), v.0) }
    }
}

/// 16 to 64 bytes: two or four SSE2 blocks from both ends. The common
/// case (a minimum-size frame is 60 bytes), so it is tested first.
///
/// # Safety
/// `16 <= n <= 64`, `s .. s + n` readable, `d .. d + n` writable.
#[inline(always)]
pub(super) unsafe fn move_16_to_64(d: *mut u8, s: *const u8, n: usize) {
    debug_assert!((16..=64).contains(&n));
    // SAFETY: the blocks start at 0, 16, n-32 and n-16 (the middle two only
    // when n > 32), all within [0, n - 16]; loads precede stores.
    unsafe {
        if n > 32 {
            let a = Xmm::load(s);
            let b = Xmm::load(s.add(16));
            let y = Xmm::load(s.add(n - 32));
            let z = Xmm::load(s.add(n - 16));
            Xmm::store(d, a);
            Xmm::store(d.add(16), b);
            Xmm::store(d.add(n - 32), y);
            Xmm::store(d.add(n - 16), z);
        } else {
            let a = Xmm::load(s);
            let z = Xmm::load(s.add(n - 16));
            Xmm::store(d, a);
            Xmm::store(d.add(n - 16), z);
        }
    }
}

/// Up to 128 bytes with SSE2 and scalar moves, no loop: small enough to
/// inline at every call site of `copy`. Overlap is fine.
///
/// # Safety
/// `n <= 128`, `s .. s + n` readable, `d .. d + n` writable.
#[inline(always)]
pub(super) unsafe fn move_upto128(d: *mut u8, s: *const u8, n: usize) {
    debug_assert!(n <= 128);
    // SAFETY: passed on from the caller; each branch's length range is
    // what the function it calls requires.
    unsafe {
        if n.wrapping_sub(16) <= 48 {
            move_16_to_64(d, s, n)
        } else if n < 16 {
            blocks::move_under16(d, s, n)
        } else {
            blocks::move_upto8::<Xmm>(d, s, n)
        }
    }
}

// The kernels. Each `copy_*` is the `move_*` for regions known not to
// overlap (no direction test).

macro_rules! kernels {
    ($feature:literal, $copy:ident, $move:ident, $body:ident) => {
        /// # Safety
        /// `s .. s + n` readable, `d .. d + n` writable, no overlap, and
        #[doc = concat!("the CPU has ", $feature, ".")]
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $copy(d: *mut u8, s: *const u8, n: usize) {
            // SAFETY: passed on from the caller.
            unsafe { $body(d, s, n, true) }
        }

        /// # Safety
        /// `s .. s + n` readable, `d .. d + n` writable (they may overlap), and
        #[doc = concat!("the CPU has ", $feature, ".")]
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $move(d: *mut u8, s: *const u8, n: usize) {
            // SAFETY: passed on from the caller.
            unsafe { $body(d, s, n, false) }
        }
    };
}

kernels!("sse2", copy_sse2, move_sse2, body_sse2);
kernels!("avx2", copy_avx2, move_avx2, body_avx2);
kernels!("avx512f", copy_avx512, move_avx512, body_avx512);

// What `copy()` calls for lengths it does not copy inline: the same code
// without the branches for short lengths.

macro_rules! long_copy {
    ($feature:literal, $name:ident, $block:ty) => {
        /// # Safety
        /// `n > INLINE_MAX`, `s .. s + n` readable, `d .. d + n` writable,
        #[doc = concat!("no overlap, and the CPU has ", $feature, ".")]
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $name(d: *mut u8, s: *const u8, n: usize) {
            // SAFETY: passed on from the caller, who promises n > INLINE_MAX
            // (64), so that the block sizes below (at most 64) are at most n.
            unsafe {
                std::hint::assert_unchecked(n > super::INLINE_MAX);
                blocks::copy_long::<$block>(d, s, n)
            }
        }
    };
}

long_copy!("sse2", copy_long_sse2, Xmm);
long_copy!("avx2", copy_long_avx2, Ymm);
long_copy!("avx512f", copy_long_avx512, Zmm);

#[inline(always)]
unsafe fn body_sse2(d: *mut u8, s: *const u8, n: usize, forward_only: bool) {
    // SAFETY: passed on from the kernel; each block size is used only for
    // lengths of at least one block.
    unsafe { if n < 16 { blocks::move_under16(d, s, n) } else { blocks::move_blocks::<Xmm>(d, s, n, forward_only) } }
}

#[inline(always)]
unsafe fn body_avx2(d: *mut u8, s: *const u8, n: usize, forward_only: bool) {
    // SAFETY: as for body_sse2; AVX2 implies SSE2.
    unsafe {
        if n < 16 {
            blocks::move_under16(d, s, n)
        } else if n < 32 {
            blocks::move_upto8::<Xmm>(d, s, n)
        } else {
            blocks::move_blocks::<Ymm>(d, s, n, forward_only)
        }
    }
}

#[inline(always)]
unsafe fn body_avx512(d: *mut u8, s: *const u8, n: usize, forward_only: bool) {
    // SAFETY: as for body_sse2; AVX-512F implies AVX2 and SSE2.
    unsafe {
        if n < 16 {
            blocks::move_under16(d, s, n)
        } else if n < 32 {
            blocks::move_upto8::<Xmm>(d, s, n)
        } else if n < 64 {
            blocks::move_upto8::<Ymm>(d, s, n)
        } else {
            blocks::move_blocks::<Zmm>(d, s, n, forward_only)
        }
    }
}
