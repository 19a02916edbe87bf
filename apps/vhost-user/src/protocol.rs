//! The vhost-user messages a virtio-net frontend (QEMU, DPDK virtio-user)
//! exchanges with us, as typed values: parse what arrives, encode what we
//! (or the test frontend) send. Names follow the vhost-user specification.
//!
//! Every size is bounded here, before the device sees a message: a payload
//! is at most [`MAX_PAYLOAD`] bytes, a message carries at most [`MAX_FDS`]
//! file descriptors, a memory table at most [`MAX_REGIONS`] regions. A
//! message that does not parse is a [`ProtocolError`] and ends the
//! connection; descriptors it carried are closed when it is dropped.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Header flags: the protocol version (always 1), and the reply bits.
pub const VERSION: u32 = 0x1;
pub const VERSION_MASK: u32 = 0x3;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Bytes of a message header (request, flags, size).
pub const HEADER_SIZE: usize = 12;
/// The largest payload we accept: a memory table of 8 regions is 264 bytes,
/// a config space message 12 + 256; anything larger is not for a net device.
pub const MAX_PAYLOAD: usize = 4096;
/// File descriptors in one message (one per memory region at most).
pub const MAX_FDS: usize = 8;
/// Memory regions in SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
pub const MAX_REGIONS: usize = 8;
/// The virtio config space we serve (virtio-net's is 24 bytes or so).
pub const MAX_CONFIG: usize = 256;

/// The "no file descriptor" bit of SET_VRING_KICK/CALL/ERR (then: poll).
pub const VRING_NOFD: u64 = 0x100;
/// The queue index bits of the same.
pub const VRING_INDEX_MASK: u64 = 0xff;

/// Request codes (frontend to backend).
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const NET_SET_MTU: u32 = 20;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const IOTLB_MSG: u32 = 22;
    pub const SET_VRING_ENDIAN: u32 = 23;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const CREATE_CRYPTO_SESSION: u32 = 26;
    pub const CLOSE_CRYPTO_SESSION: u32 = 27;
    pub const POSTCOPY_ADVISE: u32 = 28;
    pub const POSTCOPY_LISTEN: u32 = 29;
    pub const POSTCOPY_END: u32 = 30;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GPU_SET_SOCKET: u32 = 33;
    pub const RESET_DEVICE: u32 = 34;
    pub const VRING_KICK: u32 = 35;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const SET_STATUS: u32 = 39;
    pub const GET_STATUS: u32 = 40;
}

/// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
pub mod pf {
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const RARP: u64 = 1 << 2;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const NET_MTU: u64 = 1 << 4;
    pub const BACKEND_REQ: u64 = 1 << 5;
    pub const CONFIG: u64 = 1 << 9;
    pub const STATUS: u64 = 1 << 16;
}

/// A request's name for log lines.
pub fn request_name(request: u32) -> &'static str {
    const NAMES: [&str; 41] = [
        "NONE",
        "GET_FEATURES",
        "SET_FEATURES",
        "SET_OWNER",
        "RESET_OWNER",
        "SET_MEM_TABLE",
        "SET_LOG_BASE",
        "SET_LOG_FD",
        "SET_VRING_NUM",
        "SET_VRING_ADDR",
        "SET_VRING_BASE",
        "GET_VRING_BASE",
        "SET_VRING_KICK",
        "SET_VRING_CALL",
        "SET_VRING_ERR",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        "SET_VRING_ENABLE",
        "SEND_RARP",
        "NET_SET_MTU",
        "SET_BACKEND_REQ_FD",
        "IOTLB_MSG",
        "SET_VRING_ENDIAN",
        "GET_CONFIG",
        "SET_CONFIG",
        "CREATE_CRYPTO_SESSION",
        "CLOSE_CRYPTO_SESSION",
        "POSTCOPY_ADVISE",
        "POSTCOPY_LISTEN",
        "POSTCOPY_END",
        "GET_INFLIGHT_FD",
        "SET_INFLIGHT_FD",
        "GPU_SET_SOCKET",
        "RESET_DEVICE",
        "VRING_KICK",
        "GET_MAX_MEM_SLOTS",
        "ADD_MEM_REG",
        "REM_MEM_REG",
        "SET_STATUS",
        "GET_STATUS",
    ];
    NAMES.get(request as usize).copied().unwrap_or("UNKNOWN")
}

/// The reply a request asks for by itself (without need_reply), by code:
/// those a frontend waits for whatever the backend supports. For requests
/// we do not implement the answer is a u64 error, which the frontend
/// reads (and rejects) rather than waiting forever.
pub fn has_reply(request: u32) -> bool {
    matches!(
        request,
        req::GET_FEATURES
            | req::GET_PROTOCOL_FEATURES
            | req::GET_VRING_BASE
            | req::GET_QUEUE_NUM
            | req::GET_CONFIG
            | req::GET_STATUS
            | req::IOTLB_MSG
            | req::CREATE_CRYPTO_SESSION
            | req::POSTCOPY_ADVISE
            | req::POSTCOPY_END
            | req::GET_INFLIGHT_FD
            | req::GET_MAX_MEM_SLOTS
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("header flags {0:#x}: not protocol version 1")]
    BadVersion(u32),
    #[error("payload of {0} bytes (at most {MAX_PAYLOAD})")]
    TooLong(u32),
    #[error("more than {MAX_FDS} file descriptors in one message")]
    TooManyFds,
    #[error("{name}: payload of {got} bytes, needs {need}")]
    Short { name: &'static str, got: usize, need: usize },
    #[error("{name}: {got} file descriptors, needs {need}")]
    Fds { name: &'static str, got: usize, need: usize },
    #[error("SET_MEM_TABLE: {0} regions (1 to {MAX_REGIONS})")]
    Regions(u32),
    #[error("config space: offset {offset} size {size} (at most {MAX_CONFIG} bytes)")]
    Config { offset: u32, size: u32 },
    #[error("reply to {expected}: got request {got} flags {flags:#x} size {size}")]
    BadReply { expected: &'static str, got: u32, flags: u32, size: usize },
}

/// The fixed 12 bytes in front of every message (little-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { request: w(0), flags: w(4), size: w(8) }
    }
    /// Checks every message must pass before its payload is read.
    pub fn check(&self) -> Result<(), ProtocolError> {
        if self.flags & VERSION_MASK != VERSION {
            return Err(ProtocolError::BadVersion(self.flags));
        }
        if self.size as usize > MAX_PAYLOAD {
            return Err(ProtocolError::TooLong(self.size));
        }
        Ok(())
    }
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }
}

/// One message off the wire: header, payload, and the descriptors that came
/// with it (closed when dropped unless taken).
#[derive(Debug)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    pub fn new(request: u32, flags: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        Message { header: Header { request, flags, size: payload.len() as u32 }, payload, fds }
    }
}

/// SET_VRING_NUM / BASE / ENABLE, GET_VRING_BASE: a queue index and a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringState {
    pub index: u32,
    pub num: u32,
}

/// SET_VRING_ADDR: frontend virtual addresses of one ring's parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringAddress {
    pub index: u32,
    /// VHOST_VRING_F_LOG (bit 0): log writes to the used ring.
    pub flags: u32,
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
    pub log_guest_addr: u64,
}

/// One region of SET_MEM_TABLE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub mmap_offset: u64,
}

/// SET_LOG_BASE: where the dirty log lies in the fd that comes with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogArea {
    pub mmap_size: u64,
    pub mmap_offset: u64,
}

/// GET_CONFIG / SET_CONFIG: a window of the virtio config space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    pub offset: u32,
    pub size: u32,
    /// 1 = writable, 2 = live migration (SET_CONFIG).
    pub flags: u32,
    pub payload: Vec<u8>,
}

/// A typed frontend request. Descriptors are owned: dropping the request
/// closes them.
#[derive(Debug)]
pub enum Request {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    ResetOwner,
    SetMemTable {
        regions: Vec<MemoryRegion>,
        fds: Vec<OwnedFd>,
    },
    SetLogBase {
        area: LogArea,
        fd: Option<OwnedFd>,
    },
    SetLogFd(Option<OwnedFd>),
    SetVringNum(VringState),
    SetVringAddr(VringAddress),
    SetVringBase(VringState),
    GetVringBase(VringState),
    /// Queue index; None = no descriptor (poll / no notification).
    SetVringKick(u32, Option<OwnedFd>),
    SetVringCall(u32, Option<OwnedFd>),
    SetVringErr(u32, Option<OwnedFd>),
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    SetVringEnable(VringState),
    SendRarp([u8; 6]),
    NetSetMtu(u64),
    SetBackendReqFd(Option<OwnedFd>),
    GetConfig(ConfigSpace),
    SetConfig(ConfigSpace),
    SetStatus(u64),
    GetStatus,
    /// Anything else: its code (the message's descriptors are dropped).
    Other(u32),
}

/// Reads little-endian fields off a payload, checking its length once.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(name: &'static str, b: &'a [u8], need: usize) -> Result<Fields<'a>, ProtocolError> {
        if b.len() < need {
            return Err(ProtocolError::Short { name, got: b.len(), need });
        }
        Ok(Fields { b, at: 0 })
    }
    // Callers asked for enough bytes in `new`; `get` returning zeroes past the
    // end only guards against a wrong count in this file, never a panic.
    fn u32(&mut self) -> u32 {
        let v = self.b.get(self.at..self.at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        self.at += 4;
        v
    }
    fn u64(&mut self) -> u64 {
        let lo = self.u32() as u64;
        let hi = self.u32() as u64;
        lo | hi << 32
    }
}

fn u64_of(name: &'static str, p: &[u8]) -> Result<u64, ProtocolError> {
    Ok(Fields::new(name, p, 8)?.u64())
}

fn state_of(name: &'static str, p: &[u8]) -> Result<VringState, ProtocolError> {
    let mut f = Fields::new(name, p, 8)?;
    Ok(VringState { index: f.u32(), num: f.u32() })
}

fn config_of(name: &'static str, p: &[u8], with_payload: bool) -> Result<ConfigSpace, ProtocolError> {
    let mut f = Fields::new(name, p, 12)?;
    let (offset, size, flags) = (f.u32(), f.u32(), f.u32());
    if size as usize > MAX_CONFIG || offset as usize > MAX_CONFIG {
        return Err(ProtocolError::Config { offset, size });
    }
    let payload = if with_payload {
        let need = 12 + size as usize;
        Fields::new(name, p, need)?;
        p[12..need].to_vec()
    } else {
        Vec::new()
    };
    Ok(ConfigSpace { offset, size, flags, payload })
}

/// At most `n` descriptors are wanted; more is an error, fewer too when `exact`.
fn take_fds(name: &'static str, fds: Vec<OwnedFd>, need: usize) -> Result<Vec<OwnedFd>, ProtocolError> {
    if fds.len() != need {
        return Err(ProtocolError::Fds { name, got: fds.len(), need });
    }
    Ok(fds)
}

/// SET_VRING_KICK/CALL/ERR: the index, and the descriptor unless the
/// "no fd" bit says there is none (one sent anyway is closed).
fn vring_file(name: &'static str, p: &[u8], mut fds: Vec<OwnedFd>) -> Result<(u32, Option<OwnedFd>), ProtocolError> {
    let v = u64_of(name, p)?;
    let index = (v & VRING_INDEX_MASK) as u32;
    if v & VRING_NOFD != 0 {
        return Ok((index, None));
    }
    if fds.len() != 1 {
        return Err(ProtocolError::Fds { name, got: fds.len(), need: 1 });
    }
    Ok((index, fds.pop()))
}

impl Request {
    /// Parse a message from the frontend. Descriptors a request has no use
    /// for are closed here.
    pub fn parse(msg: Message) -> Result<Request, ProtocolError> {
        let Message { header, payload: p, fds } = msg;
        let name = request_name(header.request);
        let p = &p[..];
        Ok(match header.request {
            req::GET_FEATURES => Request::GetFeatures,
            req::SET_FEATURES => Request::SetFeatures(u64_of(name, p)?),
            req::SET_OWNER => Request::SetOwner,
            req::RESET_OWNER => Request::ResetOwner,
            req::SET_MEM_TABLE => {
                let mut f = Fields::new(name, p, 8)?;
                let n = f.u32();
                let _padding = f.u32();
                if n == 0 || n as usize > MAX_REGIONS {
                    return Err(ProtocolError::Regions(n));
                }
                let mut f = Fields::new(name, p, 8 + 32 * n as usize)?;
                f.at = 8;
                let regions = (0..n)
                    .map(|_| MemoryRegion {
                        guest_phys_addr: f.u64(),
                        memory_size: f.u64(),
                        userspace_addr: f.u64(),
                        mmap_offset: f.u64(),
                    })
                    .collect();
                Request::SetMemTable { regions, fds: take_fds(name, fds, n as usize)? }
            }
            req::SET_LOG_BASE => {
                let mut f = Fields::new(name, p, 16)?;
                let area = LogArea { mmap_size: f.u64(), mmap_offset: f.u64() };
                let mut fds = fds;
                if fds.len() > 1 {
                    return Err(ProtocolError::Fds { name, got: fds.len(), need: 1 });
                }
                Request::SetLogBase { area, fd: fds.pop() }
            }
            req::SET_LOG_FD => Request::SetLogFd(fds.into_iter().next()),
            req::SET_VRING_NUM => Request::SetVringNum(state_of(name, p)?),
            req::SET_VRING_ADDR => {
                let mut f = Fields::new(name, p, 40)?;
                Request::SetVringAddr(VringAddress {
                    index: f.u32(),
                    flags: f.u32(),
                    desc_user_addr: f.u64(),
                    used_user_addr: f.u64(),
                    avail_user_addr: f.u64(),
                    log_guest_addr: f.u64(),
                })
            }
            req::SET_VRING_BASE => Request::SetVringBase(state_of(name, p)?),
            req::GET_VRING_BASE => Request::GetVringBase(state_of(name, p)?),
            req::SET_VRING_KICK => {
                let (i, fd) = vring_file(name, p, fds)?;
                Request::SetVringKick(i, fd)
            }
            req::SET_VRING_CALL => {
                let (i, fd) = vring_file(name, p, fds)?;
                Request::SetVringCall(i, fd)
            }
            req::SET_VRING_ERR => {
                let (i, fd) = vring_file(name, p, fds)?;
                Request::SetVringErr(i, fd)
            }
            req::GET_PROTOCOL_FEATURES => Request::GetProtocolFeatures,
            req::SET_PROTOCOL_FEATURES => Request::SetProtocolFeatures(u64_of(name, p)?),
            req::GET_QUEUE_NUM => Request::GetQueueNum,
            req::SET_VRING_ENABLE => Request::SetVringEnable(state_of(name, p)?),
            req::SEND_RARP => {
                Fields::new(name, p, 6)?;
                let mut mac = [0; 6];
                mac.copy_from_slice(&p[..6]);
                Request::SendRarp(mac)
            }
            req::NET_SET_MTU => Request::NetSetMtu(u64_of(name, p)?),
            req::SET_BACKEND_REQ_FD => Request::SetBackendReqFd(fds.into_iter().next()),
            req::GET_CONFIG => Request::GetConfig(config_of(name, p, false)?),
            req::SET_CONFIG => Request::SetConfig(config_of(name, p, true)?),
            req::SET_STATUS => Request::SetStatus(u64_of(name, p)?),
            req::GET_STATUS => Request::GetStatus,
            other => Request::Other(other),
        })
    }

    pub fn code(&self) -> u32 {
        match self {
            Request::GetFeatures => req::GET_FEATURES,
            Request::SetFeatures(_) => req::SET_FEATURES,
            Request::SetOwner => req::SET_OWNER,
            Request::ResetOwner => req::RESET_OWNER,
            Request::SetMemTable { .. } => req::SET_MEM_TABLE,
            Request::SetLogBase { .. } => req::SET_LOG_BASE,
            Request::SetLogFd(_) => req::SET_LOG_FD,
            Request::SetVringNum(_) => req::SET_VRING_NUM,
            Request::SetVringAddr(_) => req::SET_VRING_ADDR,
            Request::SetVringBase(_) => req::SET_VRING_BASE,
            Request::GetVringBase(_) => req::GET_VRING_BASE,
            Request::SetVringKick(..) => req::SET_VRING_KICK,
            Request::SetVringCall(..) => req::SET_VRING_CALL,
            Request::SetVringErr(..) => req::SET_VRING_ERR,
            Request::GetProtocolFeatures => req::GET_PROTOCOL_FEATURES,
            Request::SetProtocolFeatures(_) => req::SET_PROTOCOL_FEATURES,
            Request::GetQueueNum => req::GET_QUEUE_NUM,
            Request::SetVringEnable(_) => req::SET_VRING_ENABLE,
            Request::SendRarp(_) => req::SEND_RARP,
            Request::NetSetMtu(_) => req::NET_SET_MTU,
            Request::SetBackendReqFd(_) => req::SET_BACKEND_REQ_FD,
            Request::GetConfig(_) => req::GET_CONFIG,
            Request::SetConfig(_) => req::SET_CONFIG,
            Request::SetStatus(_) => req::SET_STATUS,
            Request::GetStatus => req::GET_STATUS,
            Request::Other(c) => *c,
        }
    }

    /// Payload bytes and the descriptors to send with them (the frontend's
    /// side; the descriptors stay owned by the request).
    pub fn encode(&self) -> (Vec<u8>, Vec<RawFd>) {
        let mut b = Vec::new();
        let mut fds = Vec::new();
        let u32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        let u64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
        let file = |b: &mut Vec<u8>, fds: &mut Vec<RawFd>, i: u32, fd: &Option<OwnedFd>| match fd {
            Some(fd) => {
                u64(b, i as u64);
                fds.push(fd.as_raw_fd());
            }
            None => u64(b, i as u64 | VRING_NOFD),
        };
        match self {
            Request::GetFeatures
            | Request::SetOwner
            | Request::ResetOwner
            | Request::GetProtocolFeatures
            | Request::GetQueueNum
            | Request::GetStatus
            | Request::Other(_) => {}
            Request::SetFeatures(v)
            | Request::SetProtocolFeatures(v)
            | Request::NetSetMtu(v)
            | Request::SetStatus(v) => u64(&mut b, *v),
            Request::SetMemTable { regions, fds: f } => {
                u32(&mut b, regions.len() as u32);
                u32(&mut b, 0);
                for r in regions {
                    for v in [r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset] {
                        u64(&mut b, v);
                    }
                }
                fds.extend(f.iter().map(|f| f.as_raw_fd()));
            }
            Request::SetLogBase { area, fd } => {
                u64(&mut b, area.mmap_size);
                u64(&mut b, area.mmap_offset);
                fds.extend(fd.iter().map(|f| f.as_raw_fd()));
            }
            Request::SetLogFd(fd) | Request::SetBackendReqFd(fd) => fds.extend(fd.iter().map(|f| f.as_raw_fd())),
            Request::SetVringNum(s)
            | Request::SetVringBase(s)
            | Request::GetVringBase(s)
            | Request::SetVringEnable(s) => {
                u32(&mut b, s.index);
                u32(&mut b, s.num);
            }
            Request::SetVringAddr(a) => {
                u32(&mut b, a.index);
                u32(&mut b, a.flags);
                for v in [a.desc_user_addr, a.used_user_addr, a.avail_user_addr, a.log_guest_addr] {
                    u64(&mut b, v);
                }
            }
            Request::SetVringKick(i, fd) | Request::SetVringCall(i, fd) | Request::SetVringErr(i, fd) => {
                file(&mut b, &mut fds, *i, fd)
            }
            Request::SendRarp(mac) => {
                b.extend_from_slice(mac);
                b.extend_from_slice(&[0, 0]);
            }
            Request::GetConfig(c) | Request::SetConfig(c) => b = encode_config(c),
        }
        (b, fds)
    }
}

fn encode_config(c: &ConfigSpace) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + c.payload.len());
    b.extend_from_slice(&c.offset.to_le_bytes());
    b.extend_from_slice(&c.size.to_le_bytes());
    b.extend_from_slice(&c.flags.to_le_bytes());
    b.extend_from_slice(&c.payload);
    b
}

/// What the backend answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    U64(u64),
    VringState(VringState),
    Config(ConfigSpace),
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::U64(v) => v.to_le_bytes().to_vec(),
            Reply::VringState(s) => {
                let mut b = s.index.to_le_bytes().to_vec();
                b.extend_from_slice(&s.num.to_le_bytes());
                b
            }
            Reply::Config(c) => encode_config(c),
        }
    }

    /// The frontend's side: check that `msg` replies to `request` and parse it.
    pub fn parse(request: u32, msg: &Message) -> Result<Reply, ProtocolError> {
        let name = request_name(request);
        let h = msg.header;
        let bad =
            || ProtocolError::BadReply { expected: name, got: h.request, flags: h.flags, size: msg.payload.len() };
        if h.request != request || !h.is_reply() || h.flags & VERSION_MASK != VERSION {
            return Err(bad());
        }
        let p = &msg.payload[..];
        match request {
            req::GET_VRING_BASE => Ok(Reply::VringState(state_of(name, p)?)),
            req::GET_CONFIG => {
                if p.is_empty() {
                    // An empty config reply is how a backend says "error".
                    return Err(bad());
                }
                Ok(Reply::Config(config_of(name, p, true)?))
            }
            _ => Ok(Reply::U64(u64_of(name, p)?)),
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Reply::U64(v) => Some(*v),
            _ => None,
        }
    }
}
