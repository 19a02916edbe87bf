//! COPYING PACKET DATA
//!
//! Every byte copy of packet data in snabb-rs goes through these two
//! functions, so that the copier can be changed in one place.
//!
//!   copy(dst, src)                 dst.len() == src.len(), no overlap
//!   move_within(buf, range, to)    overlapping move inside one buffer
//!
//! Small copies (most packets on a busy link are small) are done inline
//! with overlapping 16-byte loads and stores, which every x86-64 has: a call
//! into libc's memcpy costs more than the copy itself below 128 bytes.

use std::ops::Range;
use std::ptr;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

/// Copy `src` into `dst`; the lengths must be equal.
#[inline(always)]
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy between slices of different lengths");
    let n = src.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    #[cfg(target_arch = "x86_64")]
    if (16..=64).contains(&n) {
        // SAFETY: both slices are n bytes and cannot overlap (one is &mut).
        // The 16-byte blocks start at 0, 16, n-32 and n-16, all within
        // [0, n) for 16 <= n <= 64; SSE2 is part of x86-64.
        unsafe {
            let last = n - 16;
            if n > 32 {
                let b = _mm_loadu_si128(s.add(16) as *const __m128i);
                let y = _mm_loadu_si128(s.add(last - 16) as *const __m128i);
                _mm_storeu_si128(d.add(16) as *mut __m128i, b);
                _mm_storeu_si128(d.add(last - 16) as *mut __m128i, y);
            }
            let a = _mm_loadu_si128(s as *const __m128i);
            let z = _mm_loadu_si128(s.add(last) as *const __m128i);
            _mm_storeu_si128(d as *mut __m128i, a);
            _mm_storeu_si128(d.add(last) as *mut __m128i, z);
        }
        return;
    }
    // SAFETY: as above; n bytes each, no overlap.
    unsafe { ptr::copy_nonoverlapping(s, d, n) };
}

/// Move `buf[range]` so that it starts at `to` (regions may overlap).
#[inline]
pub fn move_within(buf: &mut [u8], range: Range<usize>, to: usize) {
    buf.copy_within(range, to);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_small_length_and_offset() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..=200 {
            for off in 0..20 {
                let mut dst = vec![0xeeu8; len + 40];
                super::copy(&mut dst[off..off + len], &src[off..off + len]);
                assert_eq!(&dst[off..off + len], &src[off..off + len], "len {len} off {off}");
                assert!(dst[..off].iter().all(|&b| b == 0xee), "wrote before, len {len}");
                assert!(dst[off + len..].iter().all(|&b| b == 0xee), "wrote after, len {len}");
            }
        }
    }
}
