//! Helpers the integration tests share.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// xorshift64*: small and seedable, so a failing case replays from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Send `bytes` with `fds` (at most 32) as SCM_RIGHTS in one sendmsg, the
/// way a frontend passes descriptors; true when all bytes went.
pub fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[i32]) -> bool {
    assert!(fds.len() <= 32);
    let mut cbuf = [0u64; 32];
    let len = std::mem::size_of_val(fds);
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    // SAFETY: the msghdr points at iov and cbuf, which outlive the call;
    // cbuf (256 bytes) holds CMSG_SPACE of up to 32 fds, so the one header
    // and its data written through CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = libc::CMSG_SPACE(len as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(len as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut i32, fds.len());
        libc::sendmsg(s.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) == bytes.len() as isize
    }
}
