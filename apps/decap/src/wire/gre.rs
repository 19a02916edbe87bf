//! GRE headers (RFC 2784) with the key and sequence number of RFC 2890:
//!
//! ```text
//!   |C|R|K|S|s|Recur|  Flags  | Ver |        Protocol Type          |
//!   |      Checksum (if C)          |       Reserved1 (if C)        |
//!   |                         Key (if K)                            |
//!   |                  Sequence Number (if S)                       |
//! ```

use super::{Checksum, Error, Result, get16, get32, put16, put32};

#[derive(Debug, Clone, Copy)]
pub struct GreHeader<T: AsRef<[u8]>> {
    buffer: T,
}

const C: u16 = 0x8000;
const K: u16 = 0x2000;
const S: u16 = 0x1000;
/// Bits RFC 2784 says a receiver must find zero (routing present, strict
/// source route, the first recursion bit), and the version.
const MUST_BE_ZERO: u16 = 0x4000 | 0x0800 | 0x0400 | 0x0007;

/// Transparent Ethernet bridging: the payload is an Ethernet frame.
pub const PROTOCOL_TEB: u16 = 0x6558;

impl<T: AsRef<[u8]>> GreHeader<T> {
    pub const MIN_HEADER_LEN: usize = 4;

    /// Header bytes with the given optional fields.
    #[inline]
    pub const fn header_len_for(checksum: bool, key: bool, seq: bool) -> usize {
        4 + 4 * (checksum as usize + key as usize + seq as usize)
    }

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        GreHeader { buffer }
    }

    /// A view, when the buffer holds the whole header its flags announce
    /// and the flags are ones a GRE (RFC 2784/2890) sender may set.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let h = GreHeader { buffer };
        if h.b().len() < Self::MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if h.flags() & MUST_BE_ZERO != 0 {
            return Err(Error::Malformed);
        }
        if h.b().len() < h.header_len() {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    #[inline]
    fn flags(&self) -> u16 {
        get16(self.b(), 0)
    }
    #[inline]
    pub fn version(&self) -> u8 {
        (self.flags() & 7) as u8
    }
    #[inline]
    pub fn checksum_present(&self) -> bool {
        self.flags() & C != 0
    }
    #[inline]
    pub fn key_present(&self) -> bool {
        self.flags() & K != 0
    }
    #[inline]
    pub fn seq_present(&self) -> bool {
        self.flags() & S != 0
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        Self::header_len_for(self.checksum_present(), self.key_present(), self.seq_present())
    }
    /// The ethertype of the payload.
    #[inline]
    pub fn protocol(&self) -> u16 {
        get16(self.b(), 2)
    }
    #[inline]
    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present().then(|| get16(self.b(), 4))
    }
    #[inline]
    pub fn key(&self) -> Option<u32> {
        self.key_present().then(|| get32(self.b(), if self.checksum_present() { 8 } else { 4 }))
    }
    #[inline]
    pub fn sequence(&self) -> Option<u32> {
        self.seq_present().then(|| get32(self.b(), self.header_len() - 4))
    }
    /// With the checksum bit set, the checksum over header and payload
    /// (the whole buffer) is right; without it, true.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        if !self.checksum_present() {
            return true;
        }
        let mut c = Checksum::new();
        c.add_bytes(self.b());
        c.is_valid()
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GreHeader<T> {
    /// Version 0, the given optional fields present (zeroed), and the
    /// payload protocol. Returns the header length.
    #[inline]
    pub fn set_flags_and_protocol(&mut self, checksum: bool, key: bool, seq: bool, protocol: u16) -> usize {
        let flags = if checksum { C } else { 0 } | if key { K } else { 0 } | if seq { S } else { 0 };
        let len = Self::header_len_for(checksum, key, seq);
        let b = self.buffer.as_mut();
        put16(b, 0, flags);
        put16(b, 2, protocol);
        b[4..len].fill(0);
        len
    }
    /// Set the key (the key flag must be set).
    #[inline]
    pub fn set_key(&mut self, key: u32) {
        let at = if self.checksum_present() { 8 } else { 4 };
        put32(self.buffer.as_mut(), at, key);
    }
    #[inline]
    pub fn set_sequence(&mut self, seq: u32) {
        let at = self.header_len() - 4;
        put32(self.buffer.as_mut(), at, seq);
    }
    /// Compute the checksum over the whole buffer (header and payload) and
    /// store it (the checksum flag must be set).
    #[inline]
    pub fn fill_checksum(&mut self) {
        put16(self.buffer.as_mut(), 4, 0);
        let mut c = Checksum::new();
        c.add_bytes(self.b());
        let v = c.finish();
        put16(self.buffer.as_mut(), 4, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields() {
        for (c, k, s) in [(false, false, false), (false, true, false), (true, true, true), (true, false, false)] {
            let mut b = [0u8; 16 + 20];
            let mut g = GreHeader::new_unchecked(&mut b[..]);
            let len = g.set_flags_and_protocol(c, k, s, PROTOCOL_TEB);
            assert_eq!(len, 4 + 4 * (c as usize + k as usize + s as usize));
            if k {
                g.set_key(0xdeadbeef);
            }
            if s {
                g.set_sequence(77);
            }
            if c {
                g.fill_checksum();
            }
            let g = GreHeader::new_checked(&b[..]).unwrap();
            assert_eq!(g.header_len(), len);
            assert_eq!(g.protocol(), PROTOCOL_TEB);
            assert_eq!(g.key(), k.then_some(0xdeadbeef));
            assert_eq!(g.sequence(), s.then_some(77));
            assert_eq!(g.checksum().is_some(), c);
            assert!(g.verify_checksum());
            assert_eq!(g.payload().len(), 36 - len);
            assert_eq!(GreHeader::new_checked(&b[..len - 1]).unwrap_err(), Error::Truncated);
        }
    }

    #[test]
    fn refuses_what_rfc_2784_refuses() {
        for flags in [0x4000u16, 0x0800, 0x0400, 0x0001, 0x0002] {
            let mut b = [0u8; 8];
            b[..2].copy_from_slice(&flags.to_be_bytes());
            assert_eq!(GreHeader::new_checked(&b[..]).unwrap_err(), Error::Malformed, "{flags:#x}");
        }
        // Bits 6-12 are ignored on receipt.
        let b = [0x00, 0xf8, 0x65, 0x58];
        assert!(GreHeader::new_checked(&b[..]).is_ok());
    }
}
