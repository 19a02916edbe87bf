//! L2TPv3 data headers carried directly over IP (RFC 3931 section 4.1.1.2)
//! as the keyed IPv6 tunnel uses them (draft-mkonstan-keyed-ipv6-tunnel):
//! a 32-bit session id and a 64-bit cookie, no L2-specific sublayer.

use super::{Error, Result, get32, get64, put32, put64};

#[derive(Debug, Clone, Copy)]
pub struct L2tpv3Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> L2tpv3Header<T> {
    pub const HEADER_LEN: usize = 12;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        L2tpv3Header { buffer }
    }
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(L2tpv3Header { buffer })
    }
    /// Session id; 0 marks a control message.
    #[inline]
    pub fn session_id(&self) -> u32 {
        get32(self.buffer.as_ref(), 0)
    }
    /// The cookie, as a big-endian number.
    #[inline]
    pub fn cookie(&self) -> u64 {
        get64(self.buffer.as_ref(), 4)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> L2tpv3Header<T> {
    #[inline]
    pub fn set_session_id(&mut self, s: u32) {
        put32(self.buffer.as_mut(), 0, s);
    }
    #[inline]
    pub fn set_cookie(&mut self, c: u64) {
        put64(self.buffer.as_mut(), 4, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut b = [0u8; 14];
        let mut h = L2tpv3Header::new_checked(&mut b[..]).unwrap();
        h.set_session_id(0xffff_ffff);
        h.set_cookie(0x0102_0304_0506_0708);
        assert_eq!(&b[..12], &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]);
        let h = L2tpv3Header::new_checked(&b[..]).unwrap();
        assert_eq!((h.session_id(), h.cookie(), h.payload().len()), (0xffff_ffff, 0x0102_0304_0506_0708, 2));
        assert!(L2tpv3Header::new_checked(&b[..11]).is_err());
    }
}
