//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{Checksum, Error, Result, get16, put16};

/// An IPv4 header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const DF: u16 = 0x4000;
const MF: u16 = 0x2000;

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Without options.
    pub const MIN_HEADER_LEN: usize = 20;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// A view, when the buffer holds the whole header and as many bytes as
    /// the total length says. The version is not checked (see `version`).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Ipv4Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    #[inline]
    fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hlen = self.header_len();
        if hlen < Self::MIN_HEADER_LEN {
            return Err(Error::BadLength);
        }
        if len < hlen {
            return Err(Error::Truncated);
        }
        let total = self.total_len() as usize;
        if total < hlen {
            return Err(Error::BadLength);
        }
        if len < total {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }
    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        (self.b()[field::VER_IHL] & 0x0f) as usize * 4
    }
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.b()[field::DSCP_ECN] >> 2
    }
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN] & 3
    }
    /// Header and payload, in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get16(self.b(), field::LENGTH)
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        get16(self.b(), field::IDENT)
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        get16(self.b(), field::FLAGS_FRAG) & DF != 0
    }
    #[inline]
    pub fn more_frags(&self) -> bool {
        get16(self.b(), field::FLAGS_FRAG) & MF != 0
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get16(self.b(), field::FLAGS_FRAG) & 0x1fff) << 3
    }
    /// Part of a fragmented datagram (first, middle or last fragment).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get16(self.b(), field::FLAGS_FRAG) & (MF | 0x1fff) != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        get16(self.b(), field::CHECKSUM)
    }
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[field::SRC], b[field::SRC + 1], b[field::SRC + 2], b[field::SRC + 3])
    }
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[field::DST], b[field::DST + 1], b[field::DST + 2], b[field::DST + 3])
    }
    /// The header checksum is right (options included).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let mut c = Checksum::new();
        c.add_bytes(&self.b()[..self.header_len()]);
        c.is_valid()
    }
    /// The bytes after the header, up to the total length (not any
    /// link-layer padding beyond it).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Version 4 and a header of `header_len` bytes (a multiple of 4).
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.m()[field::VER_IHL] = 0x40 | (header_len / 4) as u8;
    }
    #[inline]
    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        self.m()[field::DSCP_ECN] = dscp << 2 | (ecn & 3);
    }
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.m(), field::LENGTH, len);
    }
    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        put16(self.m(), field::IDENT, id);
    }
    /// Flags and fragment offset (in bytes, a multiple of 8).
    #[inline]
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let v = if dont_frag { DF } else { 0 } | if more_frags { MF } else { 0 } | (offset >> 3);
        put16(self.m(), field::FLAGS_FRAG, v);
    }
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.m()[field::TTL] = ttl;
    }
    #[inline]
    pub fn set_protocol(&mut self, p: u8) {
        self.m()[field::PROTOCOL] = p;
    }
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.m(), field::CHECKSUM, c);
    }
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.m()[field::SRC..field::SRC + 4].copy_from_slice(&a.octets());
    }
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.m()[field::DST..field::DST + 4].copy_from_slice(&a.octets());
    }
    /// Compute and store the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hlen = self.header_len();
        let mut c = Checksum::new();
        c.add_bytes(&self.b()[..hlen]);
        let v = c.finish();
        self.set_checksum(v);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len() as usize);
        &mut self.m()[h..t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header from RFC 1071-style worked examples (checksum b861).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    #[test]
    fn reads_and_verifies() {
        let mut buf = HEADER.to_vec();
        buf.resize(0x73, 0);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.version(), p.header_len(), p.total_len()), (4, 20, 0x73));
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!((p.ttl(), p.protocol()), (64, 17));
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 0x73 - 20);
    }

    #[test]
    fn writes_a_header_that_reads_back() {
        let mut buf = [0u8; 40];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_total_len(40);
        p.set_ident(0x1234);
        p.set_flags_and_offset(false, true, 1480);
        p.set_ttl(3);
        p.set_protocol(47);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum() && p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        let mut bad = buf;
        bad[8] = 4;
        assert!(!Ipv4Packet::new_checked(&bad[..]).unwrap().verify_checksum());
    }

    #[test]
    fn lengths_are_checked() {
        let mut buf = HEADER.to_vec();
        buf.resize(0x73, 0);
        assert_eq!(Ipv4Packet::new_checked(&buf[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Ipv4Packet::new_checked(&buf[..0x72]).unwrap_err(), Error::Truncated);
        let mut b = buf.clone();
        b[0] = 0x44; // IHL 4
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), Error::BadLength);
        let mut b = buf.clone();
        b[0] = 0x4f; // 60-byte header, fits
        assert!(Ipv4Packet::new_checked(&b[..]).is_ok());
        b[3] = 30; // total length below the header
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), Error::BadLength);
        // Link-layer padding past the total length is not payload.
        let mut padded = buf.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(Ipv4Packet::new_checked(&padded[..]).unwrap().payload().len(), 0x73 - 20);
    }
}
