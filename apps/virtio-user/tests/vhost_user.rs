//! VirtioUser against snabb-rs's own VhostUser, in one process: each app
//! stepped by hand (the selftest's `Pair`), or both in an engine built
//! from a config. Frames are compared byte for byte, counts on both sides.

use std::time::Duration;

use snabb_apps_vhost_user::app::{VhostUser, VhostUserArgs};
use snabb_apps_vhost_user::frontend::{temp_socket, test_frames};
use snabb_apps_vhost_user::virtio::{self, bit, has};
use snabb_apps_virtio_user::VirtioUserArgs;
use snabb_apps_virtio_user::selftest::{self, Pair, Wired};
use snabb_core::packet::PartialCsum;
use snabb_core::{AppClass, AppContext, Packet};

fn new_vm(a: VirtioUserArgs) -> anyhow::Result<snabb_apps_virtio_user::VirtioUser> {
    snabb_apps_virtio_user::VirtioUser::new(
        snabb_apps_virtio_user::Checked(a),
        &AppContext { name: "vm", class: "VirtioUser" },
    )
}

fn vm_args(sock: &std::path::Path) -> VirtioUserArgs {
    let mut a = VirtioUserArgs::new(sock);
    a.huge_pages = false;
    a
}

/// A frame of `len` bytes whose bytes say which frame it is.
fn frame(len: usize, n: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, seed, 0x88, 0xb5];
    f.extend_from_slice(&(n as u32).to_be_bytes());
    while f.len() < len {
        f.push((f.len() * 13 + n) as u8 ^ seed);
    }
    f.truncate(len);
    f
}

/// An IPv4 UDP frame of `len` bytes from port `flow`.
fn udp(len: usize, flow: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let ip_len = (len - 14) as u16;
    f.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&flow.to_be_bytes());
    f.extend_from_slice(&[0x30, 0x39, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

const SIZES: [usize; 18] =
    [60, 61, 64, 127, 128, 500, 1499, 1514, 1515, 2047, 2048, 2049, 2060, 3000, 4096, 8000, 8999, 9000];

/// Every size both ways, exact bytes and counts.
fn sizes_both_ways(vm: VirtioUserArgs, sw: VhostUserArgs) -> Pair {
    let mut p = Pair::new(vm, sw).unwrap();
    p.up().unwrap();
    let out: Vec<Vec<u8>> = (0..3 * SIZES.len()).map(|i| frame(SIZES[i % SIZES.len()], i, 1)).collect();
    let back: Vec<Vec<u8>> = (0..3 * SIZES.len()).map(|i| frame(SIZES[i % SIZES.len()], i, 2)).collect();
    assert_eq!(p.vm_to_switch(&out, 16).unwrap(), out);
    assert_eq!(p.switch_to_vm(&back, 16).unwrap(), back);
    let bytes = |v: &[Vec<u8>]| v.iter().map(|f| f.len() as u64).sum::<u64>();
    let n = out.len() as u64;
    assert_eq!(
        [p.vm("tx_packets"), p.vm("tx_bytes"), p.vm("rx_packets"), p.vm("rx_bytes")],
        [n, bytes(&out), n, bytes(&back)]
    );
    assert_eq!(
        [p.sw("rx_packets"), p.sw("rx_bytes"), p.sw("tx_packets"), p.sw("tx_bytes")],
        [n, bytes(&out), n, bytes(&back)]
    );
    for c in ["tx_no_descriptors", "tx_oversize", "rx_bad_used", "rx_oversize", "setup_errors"] {
        assert_eq!(p.vm(c), 0, "{c}");
    }
    // A backend signals each ring once at first (as Linux's vhost does
    // before it trusts used_event), then never: we asked for no interrupts.
    assert!(p.vm("calls") <= 2, "{} interrupts", p.vm("calls"));
    assert_eq!(p.sw("tx_no_room"), 0);
    p
}

#[test]
fn sizes_60_to_9000_with_mergeable_buffers() {
    let sock = temp_socket("vu-mrg");
    let p = sizes_both_ways(vm_args(&sock), VhostUserArgs::new(&sock));
    let f = p.vm("features");
    assert!(has(f, virtio::VIRTIO_NET_F_MRG_RXBUF) && has(f, virtio::VIRTIO_RING_F_EVENT_IDX));
    assert_eq!(p.sw.as_ref().unwrap().app.device().unwrap().features(), f);
}

#[test]
fn sizes_60_to_9000_with_linux_sized_buffers() {
    let sock = temp_socket("vu-1536");
    let mut a = vm_args(&sock);
    a.rx_buffer = 1536;
    sizes_both_ways(a, VhostUserArgs::new(&sock));
}

#[test]
fn sizes_60_to_9000_without_mergeable_buffers() {
    let sock = temp_socket("vu-nomrg");
    let mut a = vm_args(&sock);
    a.mrg_rxbuf = false;
    a.rx_buffer = 9000 + 12;
    let p = sizes_both_ways(a, VhostUserArgs::new(&sock));
    assert!(!has(p.vm("features"), virtio::VIRTIO_NET_F_MRG_RXBUF));
}

#[test]
fn without_event_idx_indirect_or_checksums() {
    let sock = temp_socket("vu-plain");
    let mut a = vm_args(&sock);
    (a.event_idx, a.indirect, a.csum) = (false, false, false);
    let p = sizes_both_ways(a, VhostUserArgs::new(&sock));
    let f = p.vm("features");
    for b in [
        virtio::VIRTIO_RING_F_EVENT_IDX,
        virtio::VIRTIO_RING_F_INDIRECT_DESC,
        virtio::VIRTIO_NET_F_CSUM,
        virtio::VIRTIO_NET_F_GUEST_CSUM,
    ] {
        assert!(!has(f, b), "feature bit {b} negotiated");
    }
    assert!(has(f, virtio::VIRTIO_F_VERSION_1));
}

#[test]
fn a_frame_too_big_for_a_buffer_without_mergeable_buffers_is_the_switchs_drop() {
    let sock = temp_socket("vu-small");
    let mut a = vm_args(&sock);
    (a.mrg_rxbuf, a.rx_buffer) = (false, 1536);
    let mut p = Pair::new(a, VhostUserArgs::new(&sock)).unwrap();
    p.up().unwrap();
    let f = vec![frame(1524, 0, 1), frame(1525, 1, 1), frame(60, 2, 1)];
    p.sw.as_ref().unwrap().send(&f);
    p.until("two frames", Duration::from_secs(5), |p| p.vm("rx_packets") == 2).unwrap();
    assert_eq!(p.vm.take_output(), vec![f[0].clone(), f[2].clone()]);
    assert_eq!(p.sw("tx_no_room"), 1);
}

#[test]
fn two_queue_pairs_carry_flows_each_way() {
    let sock = temp_socket("vu-mq");
    let mut a = vm_args(&sock);
    a.queues = 2;
    let mut sw = VhostUserArgs::new(&sock);
    sw.queues = 2;
    let mut p = Pair::new(a, sw).unwrap();
    p.up().unwrap();
    assert_eq!(p.vm("queue_pairs"), 2);
    assert_eq!(p.sw.as_ref().unwrap().app.running(), (2, 2));
    let frames: Vec<Vec<u8>> = (0..400).map(|i| udp(60 + i % 300, i as u16)).collect();
    let mut got = p.vm_to_switch(&frames, 64).unwrap();
    // One flow stays on one ring, in order; flows on two rings interleave.
    let mut want = frames.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let dev = p.sw.as_ref().unwrap().app.device().unwrap();
    let (r1, r3) = (dev.ring_stats(1).packets, dev.ring_stats(3).packets);
    assert!(r1 > 50 && r3 > 50 && r1 + r3 == 400, "transmit rings carried {r1} and {r3}");
    let mut got = p.switch_to_vm(&frames, 64).unwrap();
    got.sort();
    assert_eq!(got, want);
    let dev = p.sw.as_ref().unwrap().app.device().unwrap();
    let (r0, r2) = (dev.ring_stats(0).packets, dev.ring_stats(2).packets);
    assert!(r0 > 0 && r2 > 0 && r0 + r2 == 400, "receive rings carried {r0} and {r2}");
}

#[test]
fn more_queue_pairs_than_the_switch_has_uses_what_it_has() {
    let sock = temp_socket("vu-mq-less");
    let mut a = vm_args(&sock);
    a.queues = 4;
    let mut sw = VhostUserArgs::new(&sock);
    sw.queues = 2;
    let mut p = Pair::new(a, sw).unwrap();
    p.up().unwrap();
    assert_eq!(p.vm("queue_pairs"), 2);
    let f = test_frames(100, 3);
    assert_eq!(p.vm_to_switch(&f, 50).unwrap().len(), 100);
}

#[test]
fn server_mode_and_the_switch_restarting_as_a_client() {
    let sock = temp_socket("vu-server");
    let mut a = vm_args(&sock);
    a.server = true;
    let mut sw = VhostUserArgs::new(&sock);
    sw.server = false;
    let mut p = Pair::new(a, sw.clone()).unwrap();
    p.up().unwrap();
    let f = test_frames(100, 4);
    assert_eq!(p.vm_to_switch(&f, 64).unwrap(), f);
    for round in 1..=3 {
        p.sw = None;
        p.until("disconnect noticed", Duration::from_secs(5), |p| !p.vm.app.link_up()).unwrap();
        // Frames meanwhile are dropped and counted.
        p.vm.send(&f[..10]);
        p.step();
        assert_eq!(p.vm("tx_not_ready"), 10 * round);
        p.sw = Some(Wired::new(VhostUser::new(sw.clone(), &AppContext { name: "sw", class: "VhostUser" }).unwrap()));
        p.up().unwrap();
        assert_eq!(p.switch_to_vm(&f, 64).unwrap(), f);
        assert_eq!(p.vm_to_switch(&f, 64).unwrap(), f);
        assert_eq!((p.vm("connections"), p.vm("disconnects")), (round + 1, round));
    }
}

#[test]
fn a_new_vm_on_the_same_switch() {
    let sock = temp_socket("vu-vm-restart");
    let mut p = Pair::new(vm_args(&sock), VhostUserArgs::new(&sock)).unwrap();
    p.up().unwrap();
    let f = test_frames(50, 5);
    assert_eq!(p.vm_to_switch(&f, 50).unwrap(), f);
    p.vm = Wired::new(new_vm(vm_args(&sock)).unwrap());
    p.up().unwrap();
    assert_eq!(p.switch_to_vm(&f, 50).unwrap(), f);
    assert_eq!(p.sw("connections"), 2);
}

#[test]
fn a_full_transmit_ring_drops_and_counts() {
    let sock = temp_socket("vu-full");
    let mut a = vm_args(&sock);
    a.queue_size = 64;
    let mut p = Pair::new(a, VhostUserArgs::new(&sock)).unwrap();
    p.up().unwrap();
    let f = test_frames(1000, 6);
    p.vm.send(&f);
    p.vm.push();
    p.step();
    p.step();
    let got = p.sw.as_ref().unwrap().take_output();
    assert_eq!(got, f[..64]);
    assert_eq!((p.vm("tx_packets"), p.vm("tx_no_descriptors")), (64, 936));
}

#[test]
fn mtu_is_set_on_the_switch_and_longer_frames_are_dropped() {
    let sock = temp_socket("vu-mtu");
    let mut a = vm_args(&sock);
    a.mtu = Some(1500);
    let mut sw = VhostUserArgs::new(&sock);
    sw.mtu = 1500;
    let mut p = Pair::new(a, sw).unwrap();
    p.up().unwrap();
    assert!(has(p.vm("features"), virtio::VIRTIO_NET_F_MTU));
    assert_eq!(p.sw.as_ref().unwrap().app.device().unwrap().mtu(), Some(1500));
    let f = vec![frame(1518, 0, 7), frame(1519, 1, 7), frame(60, 2, 7)];
    p.vm.send(&f);
    p.until("two frames", Duration::from_secs(5), |p| p.sw("rx_packets") == 2).unwrap();
    assert_eq!(p.sw.as_ref().unwrap().take_output(), vec![f[0].clone(), f[2].clone()]);
    assert_eq!(p.vm("tx_oversize"), 1);
}

/// Partial checksums both ways: carried as such with CSUM/GUEST_CSUM,
/// finished (and correct) without.
#[test]
fn partial_checksums() {
    for csum in [true, false] {
        let sock = temp_socket("vu-csum");
        let mut a = vm_args(&sock);
        a.csum = csum;
        let mut p = Pair::new(a, VhostUserArgs::new(&sock)).unwrap();
        p.up().unwrap();
        let c = PartialCsum { start: 34, offset: 6 };
        let mk = || {
            let mut pk = Packet::from_bytes(&udp(200, 7));
            assert!(pk.set_partial_csum(Some(c)));
            pk
        };
        let finished = {
            let mut pk = mk();
            pk.finish_partial_csum();
            pk.data().to_vec()
        };
        p.vm.input.transmit(mk());
        p.until("VM to switch", Duration::from_secs(5), |p| p.sw("rx_packets") == 1).unwrap();
        let got = p.sw.as_ref().unwrap().output.receive().unwrap();
        if csum {
            assert_eq!(got.partial_csum(), Some(c));
        } else {
            assert_eq!((got.partial_csum(), got.data()), (None, &finished[..]));
            assert_eq!(p.vm("tx_csum_completed"), 1);
        }
        p.sw.as_ref().unwrap().input.transmit(mk());
        p.until("switch to VM", Duration::from_secs(5), |p| p.vm("rx_packets") == 1).unwrap();
        let got = p.vm.output.receive().unwrap();
        if csum {
            assert_eq!(got.partial_csum(), Some(c));
            assert_eq!(p.vm("rx_partial_csum"), 1);
        } else {
            assert_eq!((got.partial_csum(), got.data()), (None, &finished[..]));
        }
    }
}

#[test]
fn no_output_link_drops_and_counts() {
    let sock = temp_socket("vu-nooutput");
    let vm = new_vm(vm_args(&sock));
    let sw = VhostUser::new(VhostUserArgs::new(&sock), &AppContext { name: "sw", class: "VhostUser" }).unwrap();
    let (mut vm, mut sw) = (vm.unwrap(), Wired::new(sw));
    use snabb_core::App;
    let io = snabb_core::Io::default();
    vm.link(&io);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !vm.link_up() {
        assert!(std::time::Instant::now() < end);
        vm.tick(&io);
        sw.tick();
        std::thread::sleep(Duration::from_micros(100));
    }
    sw.send(&test_frames(30, 8));
    for _ in 0..10 {
        sw.push();
        vm.pull(&io);
    }
    assert_eq!(vm.counter("rx_no_output"), Some(30));
}

#[test]
fn config_check_finds_bad_arguments_with_their_place() {
    let mut r = snabb_core::Registry::new();
    snabb_apps_virtio_user::register(&mut r);
    let c = snabb_core::Config::parse(
        "(\n  apps: {\n    \"vm\": (class: \"VirtioUser\", args: (socket: \"/x\", queue_size: 100)),\n  },\n  links: [],\n)",
        None,
    )
    .unwrap();
    let e = r.check(&c).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("queue_size 100"), "{e}");
}

#[test]
fn bad_arguments_are_refused() {
    let sock = temp_socket("vu-bad");
    let err = |f: &dyn Fn(&mut VirtioUserArgs)| {
        let mut a = vm_args(&sock);
        f(&mut a);
        match new_vm(a) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    assert!(err(&|a| a.queue_size = 100).contains("queue_size 100"));
    assert!(err(&|a| a.queues = 0).contains("queues 0"));
    assert!(err(&|a| a.rx_buffer = 10).contains("rx_buffer 10"));
    assert!(err(&|a| a.mtu = Some(10000)).contains("mtu 10000"));
    assert!(err(&|a| a.mem_mb = Some(1)).contains("need"));
}

/// Through the engine, from a config: Source -> VirtioUser ~ VhostUser ->
/// Sink and back, every frame accounted for.
#[test]
fn in_an_engine_from_a_config() {
    use snabb_core::{Config, Engine, Limit, Registry};
    let sock = temp_socket("vu-engine");
    let mut r = Registry::new();
    snabb_apps_basic::register(&mut r);
    snabb_apps_vhost_user::register(&mut r);
    snabb_apps_virtio_user::register(&mut r);
    let config = |sources: bool| {
        let (apps, links) = if sources {
            (
                r#""gen": (class: "Source", args: (size: 64)), "back": (class: "Source", args: (size: 1514)),"#,
                r#""gen.output -> vm.input", "back.output -> sw.input","#,
            )
        } else {
            ("", "")
        };
        let text = format!(
            r#"(
                apps: {{
                    "vm": (class: "VirtioUser", args: (socket: "{s}", huge_pages: false, queue_size: 512)),
                    "sw": (class: "VhostUser", args: (socket: "{s}")),
                    "sink": (class: "Sink"),
                    "vmsink": (class: "Sink"),
                    {apps}
                }},
                links: [ "sw.output -> sink.input", "vm.output -> vmsink.input", {links} ],
            )"#,
            s = sock.display()
        );
        Config::parse(&text, None).unwrap()
    };
    let mut e = Engine::new(r);
    e.configure(&config(true)).unwrap();
    let mut enough =
        |e: &Engine| e.app_counters("vm")["rx_packets"] > 20000 && e.app_counters("vm")["tx_packets"] > 20000;
    e.run(Limit::Until(&mut enough, Some(Duration::from_secs(30))));
    // The sources stop; what is in flight arrives.
    e.configure(&config(false)).unwrap();
    let mut drained = |e: &Engine| {
        let (a, s) = (e.app_counters("vm"), e.app_counters("sw"));
        a["tx_packets"] == s["rx_packets"] && a["rx_packets"] == s["tx_packets"]
    };
    e.run(Limit::Until(&mut drained, Some(Duration::from_secs(10))));
    e.run(Limit::Breaths(200));
    let a = e.app_counters("vm");
    let s = e.app_counters("sw");
    assert!(a["tx_packets"] > 20000 && a["rx_packets"] > 20000, "vm {a:?}");
    assert_eq!(e.link_counters("sw.output -> sink.input").unwrap().txpackets, a["tx_packets"], "vm {a:?} sw {s:?}");
    assert_eq!((s["rx_packets"], s["rx_bytes"]), (a["tx_packets"], a["tx_bytes"]));
    assert_eq!(a["tx_bytes"], 64 * a["tx_packets"]);
    assert_eq!((a["rx_packets"], a["rx_bytes"]), (s["tx_packets"], s["tx_bytes"]));
    assert_eq!(e.link_counters("vm.output -> vmsink.input").unwrap().txpackets, a["rx_packets"]);
    assert_eq!(a["rx_bytes"], 1514 * a["rx_packets"]);
    assert_eq!(bit(virtio::VIRTIO_F_VERSION_1) & a["features"], bit(virtio::VIRTIO_F_VERSION_1));
}

#[test]
fn the_selftest() {
    selftest::selftest().unwrap();
}

/// A backend played by hand in a thread: each message it gets is answered
/// by `answer` (None: no reply); it serves connections one after another.
fn fake_backend(
    sock: &std::path::Path,
    answer: impl Fn(&snabb_apps_vhost_user::protocol::Message) -> Option<Vec<u8>> + Send + 'static,
    close_at_once: bool,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use snabb_apps_vhost_user::channel::{Channel, listen};
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = listen(sock, "test").unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let Ok(conn) = l.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            if close_at_once {
                continue;
            }
            let mut c = Channel::new(conn).unwrap();
            while let Ok(m) = c.recv_timeout(Duration::from_secs(2)) {
                if let Some(payload) = answer(&m) {
                    c.send_reply(m.header.request, &payload).unwrap();
                }
            }
        }
    });
    stop
}

#[test]
fn a_backend_without_version_1_is_refused_and_retried_with_back_off() {
    use snabb_apps_vhost_user::protocol::req;
    let sock = temp_socket("vu-legacy");
    let stop =
        fake_backend(&sock, |m| (m.header.request == req::GET_FEATURES).then(|| 0u64.to_le_bytes().to_vec()), false);
    let mut vm = Wired::new(new_vm(vm_args(&sock)).unwrap());
    // Five refusals: with the back-off doubling from 10 ms, they take at
    // least 10 + 20 + 40 + 80 ms (a slow machine only takes longer).
    let t0 = std::time::Instant::now();
    while vm.app.counter("setup_errors").unwrap() < 5 {
        assert!(t0.elapsed() < Duration::from_secs(30), "setup errors {:?}", vm.app.counter("setup_errors"));
        vm.tick();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(t0.elapsed() >= Duration::from_millis(150), "five attempts in {:?}", t0.elapsed());
    let c = |n: &str| vm.app.counter(n).unwrap();
    assert!(!vm.app.link_up());
    assert!(c("connections") - c("setup_errors") <= 1, "connections {}", c("connections"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_backend_that_hangs_up_during_setup_is_counted() {
    let sock = temp_socket("vu-hangup");
    let stop = fake_backend(&sock, |_| None, true);
    let mut vm = Wired::new(new_vm(vm_args(&sock)).unwrap());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while vm.app.counter("setup_errors").unwrap() < 2 {
        assert!(std::time::Instant::now() < end, "no second attempt");
        vm.tick();
        std::thread::sleep(Duration::from_micros(200));
    }
    vm.send(&test_frames(5, 9));
    vm.push();
    assert_eq!(vm.app.counter("tx_not_ready"), Some(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A backend that serves a config space (protocol feature CONFIG, which
/// neither QEMU's nor DPDK's vhost-user net backends offer): the VM reads
/// its MAC from it. The device is the vhost-user crate's, with CONFIG added
/// to what it offers.
#[test]
fn the_mac_comes_from_the_config_space_when_the_backend_serves_one() {
    use snabb_apps_vhost_user::channel::{Channel, listen};
    use snabb_apps_vhost_user::device::{Device, DeviceConfig};
    use snabb_apps_vhost_user::protocol::{Header, Message, pf, req};
    let sock = temp_socket("vu-config");
    let l = listen(&sock, "test").unwrap();
    let server = std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(_) if std::time::Instant::now() < end => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("no frontend: {e}"),
            }
        };
        let mut c = Channel::new(conn).unwrap();
        let mac = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        let mut dev = Device::new(DeviceConfig { queue_pairs: 1, mtu: 1500, mac: Some(mac), in_order: true });
        let mut got_config = false;
        while let Ok(mut m) = c.recv_timeout(Duration::from_secs(2)) {
            let code = m.header.request;
            if code == req::GET_PROTOCOL_FEATURES {
                let offered = dev.handle(m).unwrap().unwrap().1;
                let v = u64::from_le_bytes(offered.try_into().unwrap()) | pf::CONFIG;
                c.send_reply(code, &v.to_le_bytes()).unwrap();
                continue;
            }
            if code == req::SET_PROTOCOL_FEATURES {
                let v = u64::from_le_bytes(m.payload[..8].try_into().unwrap()) & !pf::CONFIG;
                m = Message { header: Header { size: 8, ..m.header }, payload: v.to_le_bytes().to_vec(), fds: m.fds };
            }
            got_config |= code == req::GET_CONFIG;
            if let Some((code, payload)) = dev.handle(m).unwrap() {
                c.send_reply(code, &payload).unwrap();
            }
        }
        got_config
    });
    let mut a = vm_args(&sock);
    a.mac = Some("02:00:00:00:00:99".parse().unwrap());
    let mut vm = Wired::new(new_vm(a).unwrap());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !vm.app.link_up() {
        assert!(std::time::Instant::now() < end, "not set up: {:?}", vm.app.counter("setup_errors"));
        vm.tick();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(vm.app.mac().unwrap().to_string(), "52:54:00:ab:cd:ef");
    assert!(has(vm.app.negotiated().unwrap().features, virtio::VIRTIO_NET_F_MAC));
    drop(vm);
    assert!(server.join().unwrap(), "no GET_CONFIG");
}

/// New arguments live: a VM listening keeps its path (no second listener
/// is made while the first one holds it), takes the switch back, and a
/// bigger ring is laid out anew.
#[test]
fn reconfigured_in_place() {
    use snabb_core::{Config, Engine, Limit, Registry};
    let sock = temp_socket("vu-reconf");
    let mut r = Registry::new();
    snabb_apps_basic::register(&mut r);
    snabb_apps_vhost_user::register(&mut r);
    snabb_apps_virtio_user::register(&mut r);
    let config = |qsize: u16| {
        Config::parse(
            &format!(
                r#"(apps: {{
                    "vm": (class: "VirtioUser", args: (socket: "{s}", server: true, huge_pages: false, queue_size: {qsize})),
                    "sw": (class: "VhostUser", args: (socket: "{s}", server: false)),
                }}, links: [])"#,
                s = sock.display()
            ),
            None,
        )
        .unwrap()
    };
    let mut e = Engine::new(r);
    e.configure(&config(256)).unwrap();
    let mut up = |e: &Engine| e.app_counters("vm")["link_up"] == 1;
    e.run(Limit::Until(&mut up, Some(Duration::from_secs(10))));
    assert_eq!(e.app_counters("vm")["connections"], 1);
    e.configure(&config(1024)).unwrap();
    let mut again = |e: &Engine| e.app_counters("vm")["link_up"] == 1 && e.app_counters("vm")["connections"] == 2;
    e.run(Limit::Until(&mut again, Some(Duration::from_secs(10))));
    assert_eq!(e.app_counters("vm")["connections"], 2);
    let sw = e.app::<VhostUser>("sw").unwrap();
    assert_eq!(sw.running(), (1, 1));
}

/// The memory is on huge pages when some are free (MFD_HUGETLB), else on
/// ordinary pages, and works either way.
#[test]
fn memory_on_huge_pages_when_there_are_some() {
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:").map(|v| v.trim().parse::<u64>().unwrap()))
        .unwrap_or(0);
    let off = std::env::var("SNABB_RS_NO_HUGEPAGES").is_ok_and(|v| !v.is_empty() && v != "0");
    let sock = temp_socket("vu-huge");
    let mut a = vm_args(&sock);
    a.huge_pages = true;
    let mut p = Pair::new(a, VhostUserArgs::new(&sock)).unwrap();
    if free >= 64 && !off {
        assert!(p.vm.app.huge_pages(), "{free} huge pages free, yet ordinary memory");
    }
    p.up().unwrap();
    let f = test_frames(100, 10);
    assert_eq!(p.vm_to_switch(&f, 50).unwrap(), f);
    assert_eq!(p.switch_to_vm(&f, 50).unwrap(), f);
}
