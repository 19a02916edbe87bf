//! VXLAN headers (RFC 7348): flags, 24-bit network identifier.

use super::{Error, Result, get32, put32};

#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

/// The I flag: the VNI is valid. RFC 7348 requires it set.
pub const FLAG_I: u8 = 0x08;

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    pub const HEADER_LEN: usize = 8;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        VxlanHeader { buffer }
    }
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(VxlanHeader { buffer })
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The I flag is set: the VNI field is valid.
    #[inline]
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }
    #[inline]
    pub fn vni(&self) -> u32 {
        get32(self.buffer.as_ref(), 4) >> 8
    }
    /// The encapsulated Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// The I flag, the VNI, and zero reserved fields.
    #[inline]
    pub fn set(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        put32(b, 0, (FLAG_I as u32) << 24);
        put32(b, 4, vni << 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut b = [0xffu8; 8];
        VxlanHeader::new_checked(&mut b[..]).unwrap().set(0xabcdef);
        assert_eq!(b, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        let h = VxlanHeader::new_checked(&b[..]).unwrap();
        assert!(h.vni_valid());
        assert_eq!(h.vni(), 0xabcdef);
        assert!(VxlanHeader::new_checked(&b[..7]).is_err());
    }
}
