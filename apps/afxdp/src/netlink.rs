//! RTNETLINK for XDP: which programs an interface has, and attaching or
//! detaching one the old way (IFLA_XDP in RTM_SETLINK).
//!
//!   attached(ifindex) -> Vec<(XdpMode, prog_id)>    what `ip link` shows as xdp/xdpgeneric/xdpoffload
//!   set_xdp(ifindex, fd, mode, expected)             attach fd (or detach: fd -1), only over `expected`
//!
//! aya attaches our program through a BPF link, which the kernel detaches
//! when the last descriptor of the link closes (the process exits, even
//! killed). These two requests are what aya does not offer: seeing a
//! program someone else attached, and taking off a program attached through
//! netlink (a kernel before 5.9, `ip link set dev X xdp obj ...`, or our
//! own when told to attach that way), which outlives its process. Two
//! small messages do not justify a netlink crate.
//!
//! The attribute numbers are include/uapi/linux/if_link.h's.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;

pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_HW_MODE: u32 = 1 << 3;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Where an XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`xdp` in `ip link`).
    Native,
    /// In the kernel's generic receive path (`xdpgeneric`).
    Generic,
    /// On the NIC (`xdpoffload`).
    Offload,
}

impl XdpMode {
    pub fn flag(self) -> u32 {
        match self {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            XdpMode::Offload => XDP_FLAGS_HW_MODE,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Offload => "offload",
        }
    }
}

/// A netlink error: the errno and the kernel's message (extended ack).
#[derive(Debug)]
pub struct NlError {
    pub err: io::Error,
    pub msg: Option<String>,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.msg {
            Some(m) => write!(f, "{} ({m})", self.err),
            None => write!(f, "{}", self.err),
        }
    }
}

impl std::error::Error for NlError {}

impl From<io::Error> for NlError {
    fn from(err: io::Error) -> NlError {
        NlError { err, msg: None }
    }
}

/// A request being built: header, ifinfomsg, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16, ifindex: u32) -> Msg {
        let mut m = Msg(Vec::with_capacity(128));
        let hdr = libc::nlmsghdr { nlmsg_len: 0, nlmsg_type: ty, nlmsg_flags: flags, nlmsg_seq: 1, nlmsg_pid: 0 };
        m.put_struct(&hdr);
        // SAFETY: ifinfomsg is plain data; all-zero is valid.
        let mut ifi: libc::ifinfomsg = unsafe { std::mem::zeroed() };
        ifi.ifi_family = libc::AF_UNSPEC as u8;
        ifi.ifi_index = ifindex as c_int;
        m.put_struct(&ifi);
        m
    }

    fn put_struct<T>(&mut self, v: &T) {
        // SAFETY: T is a plain C struct; its bytes are read as they are.
        let b = unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) };
        self.0.extend_from_slice(b);
        self.align();
    }

    fn align(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// Start a nested attribute; `end_nest` fills in its length.
    fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn put_attr(&mut self, ty: u16, data: &[u8]) {
        self.0.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.align();
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Attributes in `b`: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, payload))
    })
}

fn u32_of(b: &[u8]) -> Option<u32> {
    b.get(..4).map(|x| u32::from_ne_bytes(x.try_into().unwrap()))
}

/// Send `req` on a fresh NETLINK_ROUTE socket and hand each reply message
/// (type, body after the header) to `f` until the kernel's ack or error.
fn request(req: &[u8], mut f: impl FnMut(u16, &[u8])) -> Result<(), NlError> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: fd was just created and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: c_int = 1;
    // SAFETY: an int option, its size passed. Failure only loses the
    // kernel's message text.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_EXT_ACK,
            &one as *const c_int as *const c_void,
            size_of::<c_int>() as u32,
        )
    };
    // SAFETY: sending our own buffer on our socket (to the kernel: no address).
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr() as *const c_void, req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut buf = vec![0u8; 32 << 10];
    loop {
        // SAFETY: receiving into our own buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut c_void, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut b = &buf[..n as usize];
        while b.len() >= size_of::<libc::nlmsghdr>() {
            let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(b[6..8].try_into().unwrap());
            if len < size_of::<libc::nlmsghdr>() || len > b.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply").into());
            }
            let body = &b[size_of::<libc::nlmsghdr>()..len];
            match ty as c_int {
                libc::NLMSG_ERROR => {
                    let errno = body.get(..4).map(|x| i32::from_ne_bytes(x.try_into().unwrap())).unwrap_or(-libc::EIO);
                    if errno == 0 {
                        return Ok(());
                    }
                    // The request echoed back is only its header (with
                    // NETLINK_CAP_ACK unset, the whole request): skip it to
                    // reach the extended-ack attributes.
                    let mut msg = None;
                    if flags & NLM_F_ACK_TLVS != 0 && body.len() >= 4 + size_of::<libc::nlmsghdr>() {
                        let echoed = u32::from_ne_bytes(body[4..8].try_into().unwrap()) as usize;
                        let skip = 4 + echoed.max(size_of::<libc::nlmsghdr>());
                        if let Some(tlvs) = body.get(skip.next_multiple_of(4)..) {
                            for (t, v) in attrs(tlvs) {
                                if t == NLMSGERR_ATTR_MSG {
                                    msg = Some(String::from_utf8_lossy(v).trim_end_matches('\0').to_string());
                                }
                            }
                        }
                    }
                    return Err(NlError { err: io::Error::from_raw_os_error(-errno), msg });
                }
                libc::NLMSG_DONE => return Ok(()),
                _ => f(ty, body),
            }
            b = &b[len.next_multiple_of(4).min(b.len())..];
        }
    }
}

/// The XDP programs on an interface, by mode, with their ids.
pub fn attached(ifindex: u32) -> Result<Vec<(XdpMode, u32)>, NlError> {
    let req = Msg::new(libc::RTM_GETLINK, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, ifindex).finish();
    let mut found = Vec::new();
    request(&req, |ty, body| {
        if ty != libc::RTM_NEWLINK || body.len() < size_of::<libc::ifinfomsg>() {
            return;
        }
        for (t, v) in attrs(&body[size_of::<libc::ifinfomsg>()..]) {
            if t != IFLA_XDP {
                continue;
            }
            for (t, v) in attrs(v) {
                let mode = match t {
                    IFLA_XDP_DRV_PROG_ID => XdpMode::Native,
                    IFLA_XDP_SKB_PROG_ID => XdpMode::Generic,
                    IFLA_XDP_HW_PROG_ID => XdpMode::Offload,
                    _ => continue,
                };
                if let Some(id) = u32_of(v).filter(|&id| id != 0) {
                    found.push((mode, id));
                }
            }
        }
    })?;
    Ok(found)
}

/// Attach program `fd` in `mode` (or detach, with `fd` -1). With
/// `expected`, only if that program is the one attached now (Linux 5.7);
/// with `if_none`, only if none is.
pub fn set_xdp(ifindex: u32, fd: c_int, mode: XdpMode, expected: Option<c_int>, if_none: bool) -> Result<(), NlError> {
    let mut m = Msg::new(libc::RTM_SETLINK, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, ifindex);
    let nest = m.begin_nest(IFLA_XDP);
    m.put_attr(IFLA_XDP_FD, &fd.to_ne_bytes());
    let mut flags = mode.flag();
    if expected.is_some() {
        flags |= XDP_FLAGS_REPLACE;
    }
    if if_none {
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
    }
    m.put_attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    if let Some(e) = expected {
        m.put_attr(IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes());
    }
    m.end_nest(nest);
    request(&m.finish(), |_, _| {})
}
