//! IPv6 headers (RFC 8200), with the walk over the extension headers a
//! tunnel endpoint may meet before its own protocol.

use std::net::Ipv6Addr;

use super::{Error, Result, get16, get32, ip, put16, put32};

/// An IPv6 fixed header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Extension headers walked over at most, so that a chain of empty
/// options cannot make a packet cost more than a few reads.
const MAX_EXTENSIONS: usize = 4;

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const HEADER_LEN: usize = 40;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// A view, when the buffer holds the header and as many bytes as the
    /// payload length says. The version is not checked (see `version`).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Ipv6Packet { buffer };
        let len = p.b().len();
        if len < Self::HEADER_LEN || len < Self::HEADER_LEN + p.payload_len() as usize {
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
    pub fn version(&self) -> u8 {
        self.b()[field::VER_TC_FLOW] >> 4
    }
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (get16(self.b(), field::VER_TC_FLOW) >> 4) as u8
    }
    #[inline]
    pub fn flow_label(&self) -> u32 {
        get32(self.b(), field::VER_TC_FLOW) & 0x000f_ffff
    }
    /// Bytes after the fixed header (extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        get16(self.b(), field::LENGTH)
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.b()[field::SRC..field::SRC + 16]).unwrap())
    }
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.b()[field::DST..field::DST + 16]).unwrap())
    }
    /// The source address bytes, for comparisons without conversion.
    #[inline]
    pub fn src_bytes(&self) -> &[u8] {
        &self.b()[field::SRC..field::SRC + 16]
    }
    #[inline]
    pub fn dst_bytes(&self) -> &[u8] {
        &self.b()[field::DST..field::DST + 16]
    }
    /// The payload, up to the payload length (not link-layer padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[Self::HEADER_LEN..Self::HEADER_LEN + self.payload_len() as usize]
    }

    /// The upper-layer protocol and its offset in the payload, past any
    /// hop-by-hop and destination options headers. A fragment header (or
    /// any other extension) is returned as the protocol, for the caller to
    /// refuse.
    #[inline]
    pub fn upper_layer(&self) -> Result<(u8, usize)> {
        let payload = self.payload();
        let (mut next, mut at) = (self.next_header(), 0);
        for _ in 0..MAX_EXTENSIONS {
            if next != ip::HOP_BY_HOP && next != ip::DEST_OPTIONS {
                return Ok((next, at));
            }
            // Next header, then the length in 8-byte units beyond the first 8.
            if payload.len() < at + 8 {
                return Err(Error::Truncated);
            }
            let len = 8 + payload[at + 1] as usize * 8;
            if payload.len() < at + len {
                return Err(Error::Truncated);
            }
            next = payload[at];
            at += len;
        }
        Err(Error::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Version 6 with a traffic class and flow label.
    #[inline]
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        put32(self.m(), field::VER_TC_FLOW, 6 << 28 | (traffic_class as u32) << 20 | (flow_label & 0x000f_ffff));
    }
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.m(), field::LENGTH, len);
    }
    #[inline]
    pub fn set_next_header(&mut self, n: u8) {
        self.m()[field::NEXT_HEADER] = n;
    }
    #[inline]
    pub fn set_hop_limit(&mut self, h: u8) {
        self.m()[field::HOP_LIMIT] = h;
    }
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.m()[field::SRC..field::SRC + 16].copy_from_slice(&a.octets());
    }
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.m()[field::DST..field::DST + 16].copy_from_slice(&a.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_len: u16, next: u8) -> Vec<u8> {
        let mut b = vec![0u8; 40 + payload_len as usize];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version_tc_flow(0xb8, 0x12345);
        p.set_payload_len(payload_len);
        p.set_next_header(next);
        p.set_hop_limit(64);
        p.set_src_addr("2001:db8::1".parse().unwrap());
        p.set_dst_addr("2001:db8::2".parse().unwrap());
        b
    }

    #[test]
    fn fields_and_lengths() {
        let b = header(16, ip::UDP);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0xb8, 0x12345));
        assert_eq!((p.payload_len(), p.next_header(), p.hop_limit()), (16, 17, 64));
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.upper_layer(), Ok((17, 0)));
        assert_eq!(Ipv6Packet::new_checked(&b[..55]).unwrap_err(), Error::Truncated);
        assert_eq!(Ipv6Packet::new_checked(&b[..39]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn walks_options_headers() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> GRE.
        let mut b = header(24 + 4, ip::HOP_BY_HOP);
        b[40] = ip::DEST_OPTIONS;
        b[41] = 0;
        b[48] = ip::GRE;
        b[49] = 1;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Ok((ip::GRE, 24)));
        // A length running past the payload.
        b[49] = 5;
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap().upper_layer(), Err(Error::Truncated));
        // Fragment headers are handed back, not walked.
        let f = header(8, ip::FRAGMENT);
        assert_eq!(Ipv6Packet::new_checked(&f[..]).unwrap().upper_layer(), Ok((ip::FRAGMENT, 0)));
        // An endless chain of empty options is cut short.
        let mut chain = header(64, ip::HOP_BY_HOP);
        for i in 0..8 {
            chain[40 + 8 * i] = ip::DEST_OPTIONS;
        }
        assert_eq!(Ipv6Packet::new_checked(&chain[..]).unwrap().upper_layer(), Err(Error::Malformed));
    }
}
