//! Internet checksums (RFC 1071): the ones'-complement sum, and finishing a
//! partial checksum as a virtio device or a NIC does for NEEDS_CSUM /
//! CHECKSUM_PARTIAL.

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

/// Fold a wide ones'-complement sum to 16 bits.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
