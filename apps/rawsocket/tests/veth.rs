//! RawSocket against the kernel, over veth pairs: an interface going down
//! and up, disappearing and coming back, frames too long for a packet,
//! checksums left to offload, and a full receive ring. Each test needs root
//! (it makes interfaces) and is skipped without it, except under CI.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use snabb_apps_rawsocket::rig::Rig;
use snabb_apps_rawsocket::veth::{VethPair, ip, kernel_stat, require_root};
use snabb_apps_rawsocket::{RawSocketArgs, test_frames};
use snabb_core::Packet;
use snabb_core::packet::PartialCsum;
use snabb_core::selftest::skipped;

const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const WAIT: Duration = Duration::from_secs(5);

/// A veth pair, or None when the test cannot run here.
fn veth() -> Option<VethPair> {
    match require_root() {
        Ok(()) => Some(VethPair::new().unwrap()),
        Err(e) if skipped(&e).is_some() => {
            eprintln!("{e}");
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

fn pair(v: &VethPair) -> (Rig, Rig) {
    (Rig::new(RawSocketArgs::new(&v.a)).unwrap(), Rig::new(RawSocketArgs::new(&v.b)).unwrap())
}

#[test]
fn the_interface_going_down_and_up_is_ridden_out() {
    let Some(v) = veth() else { return };
    let (mut a, mut b) = pair(&v);
    let frames = test_frames(100, DST);
    a.send(&frames);
    assert_eq!(b.receive(100, WAIT), frames);

    // The sending end down: send() fails with ENETDOWN, the frames are
    // dropped and counted, and the ring is not left stuck.
    ip(&["link", "set", &v.a, "down"]).unwrap();
    a.send(&frames);
    a.send(&frames);
    assert_eq!(a.counter("tx_down_drops"), 200);
    assert_eq!(a.counter("tx_packets"), 100);
    ip(&["link", "set", &v.a, "up"]).unwrap();
    // The receiving end down: the kernel drops them (the peer is down).
    ip(&["link", "set", &v.b, "down"]).unwrap();
    a.send(&frames[..10]);
    assert!(b.receive(1, Duration::from_millis(300)).is_empty());
    ip(&["link", "set", &v.b, "up"]).unwrap();
    // Both up: the same sockets carry traffic again, both ways.
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        a.send(&frames[..1]);
        got = b.receive(1, Duration::from_millis(100));
    }
    assert_eq!(got, vec![frames[0].clone()]);
    b.send(&frames);
    assert_eq!(a.receive(100, WAIT), frames);
    assert_eq!(a.counter("reopens") + b.counter("reopens"), 0, "down and up needs no reopening");
}

#[test]
fn an_interface_that_disappears_is_opened_again_when_it_comes_back() {
    let Some(v) = veth() else { return };
    let (mut a, mut b) = pair(&v);
    let frames = test_frames(50, DST);
    ip(&["link", "del", &v.a]).unwrap();
    // Sending into the void drops and counts; the app keeps running.
    a.send(&frames);
    assert_eq!(a.counter("tx_down_drops"), 50);
    // Checked once a second.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1100) {
        a.tick();
        b.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.app.ifindex().is_none() && b.app.ifindex().is_none());
    ip(&["link", "add", &v.a, "type", "veth", "peer", "name", &v.b]).unwrap();
    for i in [&v.a, &v.b] {
        snabb_apps_rawsocket::veth::quiet(i).unwrap();
        ip(&["link", "set", i, "up"]).unwrap();
    }
    let t = Instant::now();
    while (a.app.ifindex().is_none() || b.app.ifindex().is_none()) && t.elapsed() < WAIT {
        a.tick();
        b.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((a.counter("reopens"), b.counter("reopens")), (1, 1));
    a.send(&frames);
    assert_eq!(b.receive(50, WAIT), frames);
}

/// A plain AF_PACKET socket on `ifname` that sends `buf` as it is, with a
/// virtio-net header in front when `vnet` (to ask for offloads).
fn inject(ifname: &str, buf: &[u8], vnet: bool) {
    // SAFETY: plain socket calls on a descriptor owned here; the buffers
    // passed are valid for their lengths.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        if vnet {
            let one: libc::c_int = 1;
            let r = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &one as *const _ as *const libc::c_void,
                4,
            );
            assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(std::ffi::CString::new(ifname).unwrap().as_ptr()) as i32;
        let r = libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, buf.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn frames_longer_than_a_packet_are_counted_and_dropped() {
    let Some(v) = veth() else { return };
    for i in [&v.a, &v.b] {
        ip(&["link", "set", i, "mtu", "16000"]).unwrap();
    }
    let mut b = Rig::new(RawSocketArgs::new(&v.b)).unwrap();
    let mut big = DST.to_vec();
    big.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0x88, 0xb5]);
    big.resize(12000, 0x5a);
    inject(&v.a, &big, false);
    let small = test_frames(1, DST).remove(0);
    inject(&v.a, &small, false);
    assert_eq!(b.receive(1, WAIT), vec![small.clone()], "the big one dropped, the next one through");
    assert_eq!((b.counter("rx_packets"), b.counter("rx_oversize")), (2, 1));
    assert_eq!(b.counter("rx_bytes"), 12000 + small.len() as u64);
}

/// A TCP/IPv4 frame whose checksum field holds only the pseudo-header sum,
/// and the checksum it should end up with.
fn tcp_frame(payload: usize) -> (Vec<u8>, u16) {
    let mut f = DST.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00]);
    let tcp_len = 20 + payload;
    let total = (20 + tcp_len) as u16;
    let mut ipv4 = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 1, 10, 1, 0, 2];
    ipv4[2..4].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&ipv4);
    let mut tcp = vec![0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    tcp.extend((0..payload).map(|i| (i * 13) as u8));
    let mut pseudo = vec![10, 1, 0, 1, 10, 1, 0, 2, 0, 6];
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let sum = |b: &[u8]| {
        let mut s = 0u32;
        for w in b.chunks(2) {
            s += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    let full = !sum(&[pseudo.clone(), tcp.clone()].concat());
    tcp[16..18].copy_from_slice(&sum(&pseudo).to_be_bytes());
    f.extend_from_slice(&tcp);
    (f, full)
}

#[test]
fn checksums_left_to_offload_are_finished() {
    let Some(v) = veth() else { return };
    let (_a, mut b) = pair(&v);
    let (frame, want) = tcp_frame(333);
    // virtio_net_hdr: NEEDS_CSUM, no GSO, csum_start 34, csum_offset 16.
    let mut buf = vec![1u8, 0, 0, 0, 0, 0];
    buf.extend_from_slice(&34u16.to_le_bytes());
    buf.extend_from_slice(&16u16.to_le_bytes());
    buf.extend_from_slice(&frame);
    inject(&v.a, &buf, true);
    let got = b.receive(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(u16::from_be_bytes([got[0][50], got[0][51]]), want);
    assert_eq!(&got[0][..50], &frame[..50]);
    assert_eq!(&got[0][52..], &frame[52..]);
    assert_eq!(b.counter("rx_csum_completed"), 1);
    // With the option off the frame passes as it came.
    let mut b2 = Rig::new(RawSocketArgs { complete_checksums: false, ..RawSocketArgs::new(&v.b) }).unwrap();
    drop(b);
    inject(&v.a, &buf, true);
    assert_eq!(b2.receive(1, WAIT), vec![frame]);
}

/// A packet carrying a partial checksum (from a guest's NEEDS_CSUM) goes
/// out with the checksum finished: the kernel takes none from us.
#[test]
fn partial_checksums_are_finished_before_sending() {
    let Some(v) = veth() else { return };
    let (mut a, mut b) = pair(&v);
    let (frame, want) = tcp_frame(333);
    let mut p = Packet::from_bytes(&frame);
    assert!(p.set_partial_csum(Some(PartialCsum { start: 34, offset: 16 })));
    a.send_packets(vec![p]);
    let got = b.receive(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(u16::from_be_bytes([got[0][50], got[0][51]]), want);
    assert_eq!(&got[0][..50], &frame[..50]);
    assert_eq!(&got[0][52..], &frame[52..]);
}

#[test]
fn a_full_receive_ring_is_counted_by_the_kernel() {
    let Some(v) = veth() else { return };
    let mut a = Rig::new(RawSocketArgs::new(&v.a)).unwrap();
    // 256 KiB of blocks: 1000 frames of 1514 bytes cannot fit.
    let mut b = Rig::new(RawSocketArgs { rx_ring_kib: 256, ..RawSocketArgs::new(&v.b) }).unwrap();
    let before = kernel_stat(&v.b, "rx_packets").unwrap();
    let frames: Vec<Vec<u8>> = test_frames(6000, DST).into_iter().filter(|f| f.len() == 1514).collect();
    a.send(&frames);
    let got = b.receive(frames.len(), Duration::from_millis(500));
    b.tick();
    let kernel = kernel_stat(&v.b, "rx_packets").unwrap() - before;
    let (ours, drops) = (b.counter("rx_packets"), b.counter("rx_kernel_drops"));
    assert!(kernel > 0);
    assert!(drops > 0, "the ring overflowed");
    assert_eq!(ours + drops, kernel, "rx_packets {ours} + rx_kernel_drops {drops} = the interface's rx_packets");
    assert_eq!(got.len() as u64, ours);
}

#[test]
fn errors_at_start_name_the_interface() {
    let e = Rig::new(RawSocketArgs::new("snabbrs-nope")).err().unwrap();
    assert_eq!(format!("{e:#}"), "interface `snabbrs-nope`: no such interface (see `ip link`)");
    let e = Rig::new(RawSocketArgs::new("a/b")).err().unwrap();
    assert!(format!("{e:#}").starts_with("interface `a/b`: not an interface name"), "{e:#}");
    let e = Rig::new(RawSocketArgs::new("sixteen-chars-xx")).err().unwrap();
    assert!(format!("{e:#}").contains("not an interface name"), "{e:#}");
    let e = Rig::new(RawSocketArgs { tx_frames: 1, ..RawSocketArgs::new("lo") }).err().unwrap();
    assert!(format!("{e:#}").contains("tx_frames 1"), "{e:#}");
}
