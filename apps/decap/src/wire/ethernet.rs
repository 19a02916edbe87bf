//! Ethernet II frames and 802.1Q / 802.1ad tags.

use super::{Error, Result, get16, put16};
use snabb_core::ethernet::MacAddr;

/// An Ethernet II header and what follows it.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub const HEADER_LEN: usize = 14;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }
    /// A view, when the buffer holds at least the 14-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }
    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[0..6])
    }
    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[6..12])
    }
    #[inline]
    pub fn ethertype(&self) -> u16 {
        get16(self.buffer.as_ref(), 12)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buffer.as_mut()[0..6].copy_from_slice(&m.0);
    }
    #[inline]
    pub fn set_src(&mut self, m: MacAddr) {
        self.buffer.as_mut()[6..12].copy_from_slice(&m.0);
    }
    #[inline]
    pub fn set_ethertype(&mut self, t: u16) {
        put16(self.buffer.as_mut(), 12, t);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[Self::HEADER_LEN..]
    }
}

/// The 4 bytes that follow a tag's TPID (which sits where an ethertype
/// would): the tag control information (priority, drop eligible, VLAN id)
/// and the type of what the tag encloses.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    pub const HEADER_LEN: usize = 4;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(VlanTag { buffer })
    }
    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        self.buffer.as_ref()[0] >> 5
    }
    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.buffer.as_ref()[0] & 0x10 != 0
    }
    /// VLAN identifier (12 bits).
    #[inline]
    pub fn vid(&self) -> u16 {
        get16(self.buffer.as_ref(), 0) & 0x0fff
    }
    /// The type of the enclosed payload (or of the next tag).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        get16(self.buffer.as_ref(), 2)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    #[inline]
    pub fn set_tci(&mut self, pcp: u8, dei: bool, vid: u16) {
        let tci = (pcp as u16 & 7) << 13 | (dei as u16) << 12 | (vid & 0x0fff);
        put16(self.buffer.as_mut(), 0, tci);
    }
    #[inline]
    pub fn set_ethertype(&mut self, t: u16) {
        put16(self.buffer.as_mut(), 2, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut f = [0u8; 22];
        assert!(EthernetFrame::new_checked(&f[..13]).is_err());
        let mut e = EthernetFrame::new_checked(&mut f[..]).unwrap();
        e.set_dst(MacAddr([1, 2, 3, 4, 5, 6]));
        e.set_src(MacAddr([7, 8, 9, 10, 11, 12]));
        e.set_ethertype(0x8100);
        let mut t = VlanTag::new_checked(e.payload_mut()).unwrap();
        t.set_tci(5, true, 0xabc);
        t.set_ethertype(0x0800);
        assert_eq!(&f[12..18], &[0x81, 0x00, 0xba, 0xbc, 0x08, 0x00]);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(e.dst(), MacAddr([1, 2, 3, 4, 5, 6]));
        assert_eq!(e.src(), MacAddr([7, 8, 9, 10, 11, 12]));
        let t = VlanTag::new_checked(e.payload()).unwrap();
        assert_eq!((t.pcp(), t.dei(), t.vid(), t.ethertype()), (5, true, 0xabc, 0x0800));
        assert!(VlanTag::new_checked(&f[..3]).is_err());
    }
}
