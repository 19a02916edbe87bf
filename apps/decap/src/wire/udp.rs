//! UDP headers (RFC 768).

use std::net::IpAddr;

use super::{Checksum, Error, Result, get16, ip, pseudo_header_sum, put16};

#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const HEADER_LEN: usize = 8;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// A view, when the buffer holds the header and as many bytes as the
    /// length field says, and that length covers the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = UdpPacket { buffer };
        let len = p.b().len();
        if len < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field = p.len() as usize;
        if field < Self::HEADER_LEN {
            return Err(Error::BadLength);
        }
        if len < field {
            return Err(Error::Truncated);
        }
        Ok(p)
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
    pub fn src_port(&self) -> u16 {
        get16(self.b(), 0)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        get16(self.b(), 2)
    }
    /// Header and payload, in bytes.
    #[inline]
    pub fn len(&self) -> u16 {
        get16(self.b(), 4)
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= Self::HEADER_LEN
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        get16(self.b(), 6)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[Self::HEADER_LEN..self.len() as usize]
    }
    /// The checksum is right, or absent (zero; allowed over IPv4, and over
    /// IPv6 for tunnels by RFC 6935).
    #[inline]
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let mut c = Checksum::new();
        c.add_sum(pseudo_header_sum(src, dst, ip::UDP, len as u32));
        c.add_bytes(&self.b()[..len as usize]);
        c.is_valid()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        put16(self.m(), 0, p);
    }
    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        put16(self.m(), 2, p);
    }
    #[inline]
    pub fn set_len(&mut self, l: u16) {
        put16(self.m(), 4, l);
    }
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.m(), 6, c);
    }
    /// Compute and store the checksum over the pseudo-header, the header
    /// and the payload (a computed zero is sent as 0xffff, RFC 768).
    #[inline]
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = self.len();
        let mut c = Checksum::new();
        c.add_sum(pseudo_header_sum(src, dst, ip::UDP, len as u32));
        c.add_bytes(&self.b()[..len as usize]);
        let v = match c.finish() {
            0 => 0xffff,
            v => v,
        };
        self.set_checksum(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_round_trip_and_lengths() {
        let (s, d): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut b = vec![0u8; 8 + 13];
        b[8..].copy_from_slice(b"hello, world!");
        let mut u = UdpPacket::new_unchecked(&mut b[..]);
        u.set_src_port(1234);
        u.set_dst_port(4789);
        u.set_len(21);
        u.fill_checksum(s, d);
        let u = UdpPacket::new_checked(&b[..]).unwrap();
        assert!(u.verify_checksum(s, d));
        assert!(!u.verify_checksum(s, "192.0.2.3".parse().unwrap()));
        assert_eq!(u.payload(), b"hello, world!");
        assert_eq!(UdpPacket::new_checked(&b[..20]).unwrap_err(), Error::Truncated);
        let mut short = b.clone();
        short[5] = 7;
        assert_eq!(UdpPacket::new_checked(&short[..]).unwrap_err(), Error::BadLength);
        let (s6, d6): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        let mut u = UdpPacket::new_unchecked(&mut b[..]);
        u.fill_checksum(s6, d6);
        assert!(UdpPacket::new_checked(&b[..]).unwrap().verify_checksum(s6, d6));
    }
}
