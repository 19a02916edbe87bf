//! VIRTIO CONSTANTS AND THE VIRTIO-NET HEADER
//!
//! Names as in the virtio 1.x specification (and the vhost-user spec for the
//! VHOST_* bits). Everything a guest writes is little-endian: split rings of
//! VERSION_1 devices are, and we do not offer legacy big-endian guests
//! anything else.

// Feature bits (bit numbers).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
pub const VIRTIO_NET_F_MTU: u32 = 3;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
pub const VIRTIO_NET_F_STATUS: u32 = 16;
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u32 = 21;
pub const VIRTIO_NET_F_MQ: u32 = 22;
pub const VHOST_F_LOG_ALL: u32 = 26;
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_F_RING_PACKED: u32 = 34;
/// The device uses buffers in the order they were made available. Ours
/// always does (both directions walk the avail ring in order and every
/// chain taken goes on the used ring, a bad one with length 0), and DPDK's
/// virtio driver has faster receive and transmit paths when it knows.
pub const VIRTIO_F_IN_ORDER: u32 = 35;

/// The mask of feature bit `bit`.
#[inline(always)]
pub const fn bit(bit: u32) -> u64 {
    1u64 << bit
}

/// Whether `features` has feature bit `b`.
#[inline(always)]
pub const fn has(features: u64, b: u32) -> bool {
    features & bit(b) != 0
}

// Descriptor flags (struct virtq_desc.flags).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// used.flags: the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// avail.flags: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// SET_VRING_ADDR flags: log writes to the used ring.
pub const VHOST_VRING_F_LOG: u32 = 1;

/// The largest split ring (virtio 1.x: Queue Size up to 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes of one descriptor (addr u64, len u32, flags u16, next u16).
pub const DESC_SIZE: usize = 16;

// virtio_net_hdr.flags
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
// virtio_net_hdr.gso_type
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// The virtio-net header in front of every packet on a net queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Only present in the 12-byte form (VERSION_1 or MRG_RXBUF).
    pub num_buffers: u16,
}

/// The header's length for these features: 12 with VERSION_1 or MRG_RXBUF
/// (num_buffers is there), else the legacy 10.
#[inline]
pub fn net_hdr_len(features: u64) -> usize {
    if has(features, VIRTIO_F_VERSION_1) || has(features, VIRTIO_NET_F_MRG_RXBUF) { 12 } else { 10 }
}

impl NetHdr {
    /// The longest form.
    pub const MAX_LEN: usize = 12;

    /// Parse the first 10 or 12 bytes of `b` (num_buffers is 0 in the short form).
    /// `b` must be at least 10 bytes.
    #[inline(always)]
    pub fn parse(b: &[u8]) -> NetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: if b.len() >= 12 { u16_at(10) } else { 0 },
        }
    }

    /// The header from its first eight bytes and the next four (little
    /// endian, as in memory; `tail`'s high half 0 for the short form). The
    /// hot paths move it as these two words: a header built or read byte
    /// by byte and then moved as words (or the reverse) makes the CPU wait
    /// for the stores before the load can read them.
    #[inline(always)]
    pub fn from_words(head: u64, tail: u32) -> NetHdr {
        NetHdr {
            flags: head as u8,
            gso_type: (head >> 8) as u8,
            hdr_len: (head >> 16) as u16,
            gso_size: (head >> 32) as u16,
            csum_start: (head >> 48) as u16,
            csum_offset: tail as u16,
            num_buffers: (tail >> 16) as u16,
        }
    }

    /// The two words of `from_words`.
    #[inline(always)]
    pub fn to_words(&self) -> (u64, u32) {
        let head = self.flags as u64
            | (self.gso_type as u64) << 8
            | (self.hdr_len as u64) << 16
            | (self.gso_size as u64) << 32
            | (self.csum_start as u64) << 48;
        (head, self.csum_offset as u32 | (self.num_buffers as u32) << 16)
    }

    /// The header's bytes in its 12-byte form; write the first `net_hdr_len` of them.
    #[inline]
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// The checksum routines live in core (every egress may need them); the
/// data path and its tests name them from here.
pub use snabb_core::checksum::{complete_checksum, fold, ones_sum};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h =
            NetHdr { flags: 1, gso_type: 0, hdr_len: 54, gso_size: 0, csum_start: 34, csum_offset: 16, num_buffers: 3 };
        let b = h.to_bytes();
        assert_eq!(NetHdr::parse(&b), h);
        assert_eq!(NetHdr::parse(&b[..10]).num_buffers, 0);
        assert_eq!(net_hdr_len(0), 10);
        assert_eq!(net_hdr_len(bit(VIRTIO_NET_F_MRG_RXBUF)), 12);
        assert_eq!(net_hdr_len(bit(VIRTIO_F_VERSION_1)), 12);
    }

    #[test]
    fn header_words_are_its_bytes_in_memory() {
        let h = NetHdr {
            flags: 0x01,
            gso_type: 0x82,
            hdr_len: 0x0403,
            gso_size: 0x0605,
            csum_start: 0x0807,
            csum_offset: 0x0a09,
            num_buffers: 0x0c0b,
        };
        let b = h.to_bytes();
        let (head, tail) = h.to_words();
        assert_eq!(head.to_le_bytes(), b[..8]);
        assert_eq!(tail.to_le_bytes(), b[8..]);
        assert_eq!(NetHdr::from_words(head, tail), h);
        // The short form: the tail's high half is not there.
        assert_eq!(NetHdr::from_words(head, tail & 0xffff), NetHdr { num_buffers: 0, ..h });
    }

    /// The textbook RFC 1071 sum, one 16-bit word at a time.
    fn reference(b: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for i in (0..b.len()).step_by(2) {
            let hi = b[i] as u32;
            let lo = if i + 1 < b.len() { b[i + 1] as u32 } else { 0 };
            s += (hi << 8) | lo;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn sum_matches_reference() {
        let mut x = 0x1234_5678u32;
        for n in 0..300 {
            let b: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let r = reference(&b);
            let f = fold(ones_sum(&b));
            // 0 and 0xffff are the same number in ones' complement.
            assert!(f == r || (f == 0xffff && r == 0) || (f == 0 && r == 0xffff), "n={n}: {f:#x} vs {r:#x}");
        }
    }

    #[test]
    fn completed_checksum_verifies() {
        let mut f = vec![0u8; 100];
        for (i, b) in f.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        f[40] = 0x12;
        f[41] = 0x34; // a "pseudo-header sum" left by the guest
        assert!(complete_checksum(&mut f, 20, 20));
        // The sum over the covered bytes, checksum included, plus the
        // pseudo-header sum the checksum replaced, is all ones.
        assert_eq!(fold(ones_sum(&f[20..]) + 0x1234), 0xffff);
        assert!(!complete_checksum(&mut f, 90, 9));
        assert!(!complete_checksum(&mut f, 0xffff, 0xffff));
    }
}
