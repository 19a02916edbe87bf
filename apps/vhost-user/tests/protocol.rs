//! Protocol messages: every request survives encode -> socket -> parse with
//! its fields and descriptors; bad headers and payloads are errors, never
//! panics; framing copes with messages arriving a byte at a time.

mod common;
use common::*;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use snabb_apps_vhost_user::channel::Channel;
use snabb_apps_vhost_user::frontend::memfd;
use snabb_apps_vhost_user::protocol::*;

fn pair() -> (Channel, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    (Channel::new(a).unwrap(), Channel::new(b).unwrap())
}

fn fd() -> OwnedFd {
    memfd(4096).unwrap()
}

/// Send `r` from one end, parse it at the other.
fn round_trip(r: Request) -> Request {
    let (a, mut b) = pair();
    let (payload, fds) = r.encode();
    a.send(Header { request: r.code(), flags: VERSION, size: payload.len() as u32 }, &payload, &fds).unwrap();
    drop(r);
    let m = b.recv_timeout(Duration::from_secs(2)).unwrap();
    Request::parse(m).unwrap()
}

#[test]
fn every_request_round_trips() {
    let state = VringState { index: 3, num: 256 };
    let addr = VringAddress {
        index: 1,
        flags: 1,
        desc_user_addr: 0x7f00_0000_1000,
        used_user_addr: 0x7f00_0000_3000,
        avail_user_addr: 0x7f00_0000_2000,
        log_guest_addr: 0x3000,
    };
    let regions = vec![
        MemoryRegion { guest_phys_addr: 0, memory_size: 0xa0000, userspace_addr: 0x7f00_0000_0000, mmap_offset: 0 },
        MemoryRegion {
            guest_phys_addr: 0xc0000,
            memory_size: 0x1ff40000,
            userspace_addr: 0x7f00_000c_0000,
            mmap_offset: 0xc0000,
        },
    ];
    let config = ConfigSpace { offset: 0, size: 6, flags: 0, payload: vec![] };
    let set_config = ConfigSpace { offset: 6, size: 2, flags: 1, payload: vec![1, 0] };
    let cases: Vec<Request> = vec![
        Request::GetFeatures,
        Request::SetFeatures(0x1_7020_e783),
        Request::SetOwner,
        Request::ResetOwner,
        Request::SetMemTable { regions: regions.clone(), fds: vec![fd(), fd()] },
        Request::SetLogBase { area: LogArea { mmap_size: 4096, mmap_offset: 0 }, fd: Some(fd()) },
        Request::SetLogFd(Some(fd())),
        Request::SetVringNum(state),
        Request::SetVringAddr(addr),
        Request::SetVringBase(state),
        Request::GetVringBase(state),
        Request::SetVringKick(1, Some(fd())),
        Request::SetVringKick(2, None),
        Request::SetVringCall(0, Some(fd())),
        Request::SetVringErr(5, None),
        Request::GetProtocolFeatures,
        Request::SetProtocolFeatures(0x10cbf),
        Request::GetQueueNum,
        Request::SetVringEnable(VringState { index: 1, num: 1 }),
        Request::SendRarp([0x52, 0x54, 0, 1, 2, 3]),
        Request::NetSetMtu(9000),
        Request::SetBackendReqFd(Some(fd())),
        Request::GetConfig(config.clone()),
        Request::SetConfig(set_config.clone()),
        Request::SetStatus(0x0f),
        Request::GetStatus,
        Request::Other(req::GET_INFLIGHT_FD),
        Request::Other(999),
    ];
    for r in cases {
        let before = format!("{r:?}");
        let fd_count = r.encode().1.len();
        let code = r.code();
        let back = round_trip(r);
        assert_eq!(back.code(), code, "{before}");
        // Descriptors arrive as new numbers; everything else is equal.
        let strip = |s: String| {
            s.split("OwnedFd")
                .map(|p| p.trim_start_matches(|c: char| c != '}').to_string())
                .collect::<Vec<_>>()
                .join("Fd")
        };
        assert_eq!(strip(format!("{back:?}")), strip(before.clone()), "round trip of {before}");
        let (_, fds) = back.encode();
        assert_eq!(fds.len(), fd_count, "descriptors of {before}");
    }
}

#[test]
fn replies_round_trip() {
    for (code, r) in [
        (req::GET_FEATURES, Reply::U64(0x1_5000_8000)),
        (req::GET_VRING_BASE, Reply::VringState(VringState { index: 1, num: 4242 })),
        (req::GET_CONFIG, Reply::Config(ConfigSpace { offset: 0, size: 4, flags: 0, payload: vec![1, 2, 3, 4] })),
    ] {
        let (a, mut b) = pair();
        a.send_reply(code, &r.encode()).unwrap();
        let m = b.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(Reply::parse(code, &m).unwrap(), r);
        // A reply to another request is refused.
        assert!(Reply::parse(req::GET_STATUS, &m).is_err());
    }
}

#[test]
fn headers_that_break_the_rules_are_errors() {
    let (a, mut b) = pair();
    a.send(Header { request: req::GET_FEATURES, flags: 2, size: 0 }, &[], &[]).unwrap();
    assert!(matches!(b.recv_timeout(Duration::from_secs(2)), Err(ProtocolError::BadVersion(2))));

    // A size beyond the bound is refused from the header alone.
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut b = Channel::new(b).unwrap();
    a.write_all(&Header { request: req::SET_MEM_TABLE, flags: VERSION, size: 1 << 20 }.to_bytes()).unwrap();
    assert!(matches!(b.recv_timeout(Duration::from_secs(2)), Err(ProtocolError::TooLong(_))));

    // EOF is `Closed`.
    let (a, mut b) = pair();
    drop(a);
    assert!(matches!(b.try_recv(), Err(ProtocolError::Closed)));
}

#[test]
fn short_payloads_and_wrong_fd_counts_are_errors() {
    let msg = |request, payload: Vec<u8>, fds: Vec<OwnedFd>| Message::new(request, VERSION, payload, fds);
    assert!(matches!(Request::parse(msg(req::SET_FEATURES, vec![1, 2, 3], vec![])), Err(ProtocolError::Short { .. })));
    assert!(matches!(Request::parse(msg(req::SET_VRING_ADDR, vec![0; 39], vec![])), Err(ProtocolError::Short { .. })));
    // A table of 2 regions with one descriptor.
    let mut t = 2u32.to_le_bytes().to_vec();
    t.extend_from_slice(&[0; 4 + 64]);
    assert!(matches!(Request::parse(msg(req::SET_MEM_TABLE, t, vec![fd()])), Err(ProtocolError::Fds { .. })));
    // Zero and too many regions.
    let mut t = 0u32.to_le_bytes().to_vec();
    t.extend_from_slice(&[0; 4]);
    assert!(matches!(Request::parse(msg(req::SET_MEM_TABLE, t, vec![])), Err(ProtocolError::Regions(0))));
    let mut t = 9u32.to_le_bytes().to_vec();
    t.extend_from_slice(&[0; 4 + 9 * 32]);
    assert!(matches!(Request::parse(msg(req::SET_MEM_TABLE, t, vec![])), Err(ProtocolError::Regions(9))));
    // A kick without a descriptor and without the "no fd" bit.
    assert!(matches!(
        Request::parse(msg(req::SET_VRING_KICK, 0u64.to_le_bytes().to_vec(), vec![])),
        Err(ProtocolError::Fds { .. })
    ));
    // A config window larger than any config space.
    let mut c = 0u32.to_le_bytes().to_vec();
    c.extend_from_slice(&4096u32.to_le_bytes());
    c.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(Request::parse(msg(req::GET_CONFIG, c, vec![])), Err(ProtocolError::Config { .. })));
    // The "no fd" bit with a descriptor anyway: accepted, descriptor closed.
    match Request::parse(msg(req::SET_VRING_CALL, (0x100u64 | 3).to_le_bytes().to_vec(), vec![fd()])).unwrap() {
        Request::SetVringCall(3, None) => {}
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_message_trickling_in_byte_by_byte_is_framed() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut b = Channel::new(b).unwrap();
    let r = Request::SetVringAddr(VringAddress { index: 1, desc_user_addr: 7, ..Default::default() });
    let (payload, _) = r.encode();
    let mut bytes = Header { request: r.code(), flags: VERSION, size: payload.len() as u32 }.to_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    // Two messages back to back, the first in single bytes.
    for (i, byte) in bytes.iter().enumerate() {
        a.write_all(&[*byte]).unwrap();
        let got = b.try_recv().unwrap();
        assert_eq!(got.is_some(), i == bytes.len() - 1, "after byte {i}");
    }
    a.write_all(&bytes).unwrap();
    a.write_all(&bytes).unwrap();
    for _ in 0..2 {
        let m = b.recv_timeout(Duration::from_secs(2)).unwrap();
        assert!(matches!(
            Request::parse(m).unwrap(),
            Request::SetVringAddr(VringAddress { index: 1, desc_user_addr: 7, .. })
        ));
    }
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn descriptors_stay_with_their_message() {
    let (a, mut b) = pair();
    let (f1, f2) = (fd(), fd());
    let kick = |i: u64| (i.to_le_bytes(), Header { request: req::SET_VRING_KICK, flags: VERSION, size: 8 });
    let (p, h) = kick(0);
    a.send(h, &p, &[f1.as_raw_fd()]).unwrap();
    let (p, h) = kick(1 | 0x100);
    a.send(h, &p, &[]).unwrap();
    let (p, h) = kick(2);
    a.send(h, &p, &[f2.as_raw_fd()]).unwrap();
    let counts: Vec<usize> = (0..3).map(|_| b.recv_timeout(Duration::from_secs(2)).unwrap().fds.len()).collect();
    assert_eq!(counts, [1, 0, 1]);
}

#[test]
fn too_many_descriptors_are_refused_and_closed() {
    let (a, mut b) = pair();
    let fds: Vec<OwnedFd> = (0..12).map(|_| fd()).collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // The channel refuses to send more than MAX_FDS...
    assert!(a.send(Header { request: req::SET_OWNER, flags: VERSION, size: 0 }, &[], &raw).is_err());
    // ...and to receive them (sent by hand).
    let (x, y) = UnixStream::pair().unwrap();
    let mut y = Channel::new(y).unwrap();
    let h = Header { request: req::SET_OWNER, flags: VERSION, size: 0 }.to_bytes();
    assert!(send_with_fds(&x, &h, &raw));
    assert!(matches!(y.recv_timeout(Duration::from_secs(2)), Err(ProtocolError::TooManyFds)));
    drop((b.try_recv(), a));
}
