//! THE INTERNET CHECKSUM (RFC 1071), the one implementation in snabb-rs:
//!
//!   ones_sum(bytes)          the unfolded ones'-complement sum (`sum`)
//!   fold(sum)                folded to 16 bits with end-around carry
//!   Checksum                 a running sum over pieces (pseudo-header,
//!                            header, payload), `finish`ed or checked
//!   complete_checksum(..)    finish a partial checksum, as a virtio
//!                            device or a NIC does for NEEDS_CSUM /
//!                            CHECKSUM_PARTIAL
//!
//! Words are summed 32 bits at a time into a 64-bit accumulator and folded
//! at the end, which gives the same result because 2^16 is 1 modulo 0xffff.

/// Finish a partial checksum: the ones'-complement sum of
/// `frame[csum_start..]` goes, complemented, into the 16 bits at
/// `csum_start + csum_offset` (whose current content, the pseudo-header sum
/// the sender left there, is part of the sum). Returns false, leaving the
/// frame as it is, when the offsets do not fit the frame.
pub fn complete_checksum(frame: &mut [u8], csum_start: u16, csum_offset: u16) -> bool {
    let start = csum_start as usize;
    let at = start + csum_offset as usize;
    if at + 2 > frame.len() {
        return false;
    }
    let sum = ones_sum(&frame[start..]);
    let csum = !fold(sum);
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Ones'-complement sum of big-endian 16-bit words (a trailing odd byte is
/// padded with zero), not yet folded.
pub fn ones_sum(b: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes(c.try_into().unwrap());
        // Four 16-bit words at once: add the two 32-bit halves, carries stay in the u64.
        sum += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [last] = pairs.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// Fold a wide ones'-complement sum to 16 bits (branch-free: four steps
/// bring any u64 down to 16 bits).
#[inline]
pub fn fold(s: u64) -> u16 {
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The unfolded sum of `b`: `ones_sum` under its short name.
#[inline]
pub fn sum(b: &[u8]) -> u64 {
    ones_sum(b)
}

/// A running checksum over several pieces (a pseudo-header, then a
/// header, then a payload). Each piece but the last must have even length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    #[inline]
    pub fn new() -> Checksum {
        Checksum(0)
    }
    #[inline]
    pub fn add_bytes(&mut self, b: &[u8]) {
        self.0 += ones_sum(b);
    }
    #[inline]
    pub fn add_u16(&mut self, v: u16) {
        self.0 += v as u64;
    }
    #[inline]
    pub fn add_u32(&mut self, v: u32) {
        self.0 += v as u64;
    }
    #[inline]
    pub fn add_sum(&mut self, s: u64) {
        self.0 += s;
    }
    /// The sum so far, folded to 16 bits (not complemented).
    #[inline]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }
    /// The value for the header's checksum field.
    #[inline]
    pub fn finish(self) -> u16 {
        !fold(self.0)
    }
    /// True when the data summed includes a correct checksum field.
    #[inline]
    pub fn is_valid(self) -> bool {
        fold(self.0) == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simplest possible reference: 16-bit words, folding as we go.
    fn reference(b: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for pair in b.chunks(2) {
            let w = (pair[0] as u32) << 8 | pair.get(1).copied().unwrap_or(0) as u32;
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn matches_a_word_by_word_sum() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&b)), 0xddf2);
        let mut x = 12345u32;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let mut c = Checksum::new();
            c.add_bytes(&data);
            assert_eq!(c.finish(), reference(&data), "len {len}");
        }
        assert_eq!(fold(0xffff_ffff_ffff), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        // Against repeated folding, on awkward values.
        for s in [0u64, 1, 0xffff, 0x10000, 0xfffe_ffff, 0x1_0000_0000, 0xffff_0000_ffff, 0x8000_0000_0000_0001] {
            let mut r = s;
            while r > 0xffff {
                r = (r & 0xffff) + (r >> 16);
            }
            assert_eq!(fold(s) as u64, r, "{s:#x}");
        }
    }
}
