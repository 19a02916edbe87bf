//! The VhostUser app with the in-repo frontend in one process: the
//! frontend runs in a thread, the app is stepped by hand (a `Rig`).

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use snabb_apps_vhost_user::VhostUserArgs;
use snabb_apps_vhost_user::frontend::{
    Ctl, Frontend, FrontendOptions, Order, Rig, serve_while, spawn_frontend, temp_socket, test_frames,
};
use snabb_apps_vhost_user::protocol::{FLAG_NEED_REPLY, Reply, Request, VERSION, VringState, pf, req};
use snabb_apps_vhost_user::virtio::{self, bit};

const T: Duration = Duration::from_secs(20);

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

/// In the frontend thread: send `frames` on pair `p`, reclaiming as the
/// backend uses them.
fn send_all(fe: &mut Frontend, p: usize, frames: &[Vec<u8>]) -> Result<()> {
    let mut sent = 0;
    ensure!(
        wait(|| {
            fe.reclaim_tx(p);
            sent += fe.send(p, &frames[sent..(sent + 64).min(frames.len())]);
            sent == frames.len()
        }),
        "sent {sent} of {}",
        frames.len()
    );
    ensure!(wait(|| fe.queues[2 * p + 1].used_idx() == fe.queues[2 * p + 1].avail_idx()), "TX not consumed");
    Ok(())
}

/// In the frontend thread: receive `n` frames on pair `p`.
fn receive_n(fe: &mut Frontend, p: usize, n: usize) -> Result<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let ok = wait(|| {
        fe.receive(p, &mut got);
        if fe.queues[2 * p].num_free() > 64 {
            fe.post_rx(p, 64, 2048);
        }
        got.len() >= n
    });
    ensure!(ok, "received {} of {n}", got.len());
    Ok(got)
}

/// Run frontend `f` while stepping `rig`; when `f` parks, `check` looks at
/// the app (the frontend still connected); then `f` finishes.
fn run<R: Send + 'static>(
    rig: &mut Rig,
    f: impl FnOnce(Ctl) -> Result<R> + Send + 'static,
    check: impl FnOnce(&mut Rig),
) -> R {
    let s = spawn_frontend(f);
    s.serve(rig, T).unwrap();
    check(rig);
    s.finish(rig, T).unwrap().unwrap()
}

fn bytes(v: &[Vec<u8>]) -> u64 {
    v.iter().map(|f| f.len() as u64).sum()
}

#[test]
fn selftest_passes() {
    snabb_apps_vhost_user::frontend::selftest().unwrap();
}

/// Frames both ways, with and without MRG_RXBUF, QEMU's and DPDK's order.
fn both_ways(opts: FrontendOptions) -> Result<()> {
    let path = temp_socket("both");
    let mut rig = Rig::new(VhostUserArgs::new(&path))?;
    let (to_guest, from_guest) = (test_frames(500, 1), test_frames(700, 2));
    let (tg, fg, p) = (to_guest.clone(), from_guest.clone(), path.clone());
    let mut seen = 0;
    let (got, features) = run(
        &mut rig,
        move |ctl| {
            let mut fe = Frontend::connect(&p, opts, T)?;
            fe.setup()?;
            fe.post_rx(0, 128, 2048);
            send_all(&mut fe, 0, &fg)?;
            ctl.inject(tg.clone());
            let got = receive_n(&mut fe, 0, tg.len())?;
            ctl.park();
            Ok((got, fe.features))
        },
        |rig| seen = rig.app.device().unwrap().features(),
    );
    ensure!(got == to_guest, "guest received {} frames, differing", got.len());
    ensure!(rig.take_output() == from_guest, "switch received other frames");
    let c = |n| rig.counter(n);
    ensure!(c("rx_packets") == 700 && c("rx_bytes") == bytes(&from_guest), "rx {} {}", c("rx_packets"), c("rx_bytes"));
    ensure!(c("tx_packets") == 500 && c("tx_bytes") == bytes(&to_guest), "tx {} {}", c("tx_packets"), c("tx_bytes"));
    ensure!(seen == features, "features {seen:#x}, frontend's {features:#x}");
    Ok(())
}

#[test]
fn frames_both_ways_with_mrg_rxbuf() {
    both_ways(FrontendOptions::default()).unwrap();
}

#[test]
fn frames_both_ways_without_mrg_rxbuf_in_dpdk_order() {
    both_ways(FrontendOptions {
        refuse: bit(virtio::VIRTIO_NET_F_MRG_RXBUF),
        order: Order::Dpdk,
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn frames_both_ways_legacy_header_polling() {
    // No VERSION_1, no MRG_RXBUF: the 10-byte header; no eventfds at all.
    let refuse =
        bit(virtio::VIRTIO_NET_F_MRG_RXBUF) | bit(virtio::VIRTIO_F_VERSION_1) | bit(virtio::VIRTIO_RING_F_EVENT_IDX);
    both_ways(FrontendOptions { refuse, eventfds: false, ..Default::default() }).unwrap();
}

#[test]
fn two_queue_pairs() {
    let path = temp_socket("mq");
    let mut args = VhostUserArgs::new(&path);
    args.queues = 2;
    let mut rig = Rig::new(args).unwrap();
    let frames = test_frames(400, 3);
    let (f, p) = (frames.clone(), path.clone());
    let mut running = (0, 0);
    let per_pair = run(
        &mut rig,
        move |ctl| -> Result<[usize; 2]> {
            let mut fe = Frontend::connect(&p, FrontendOptions { queue_pairs: 2, ..Default::default() }, T)?;
            fe.setup()?;
            // Both TX queues send half.
            send_all(&mut fe, 0, &f[..200])?;
            send_all(&mut fe, 1, &f[200..])?;
            fe.post_rx(0, 128, 2048);
            fe.post_rx(1, 128, 2048);
            ctl.inject(f.clone());
            let mut got = [Vec::new(), Vec::new()];
            ensure!(
                wait(|| {
                    for (q, got) in got.iter_mut().enumerate() {
                        fe.receive(q, got);
                        if fe.queues[2 * q].num_free() > 64 {
                            fe.post_rx(q, 64, 2048);
                        }
                    }
                    got[0].len() + got[1].len() >= f.len()
                }),
                "received {} + {}",
                got[0].len(),
                got[1].len()
            );
            ctl.park();
            Ok([got[0].len(), got[1].len()])
        },
        |rig| running = rig.app.running(),
    );
    assert_eq!(running, (2, 2));
    assert_eq!(per_pair[0] + per_pair[1], 400);
    // More frames than one queue has buffers for: both queue pairs take some.
    assert!(per_pair[0] > 0 && per_pair[1] > 0, "spread {per_pair:?}");
    let mut out = rig.take_output();
    out.sort();
    let mut want = frames.clone();
    want.sort();
    assert_eq!(out, want);
    assert_eq!(rig.counter("tx_packets"), 400);
    assert_eq!(rig.counter("rx_packets"), 400);
}

#[test]
fn get_vring_base_stops_the_ring_and_answers_next_avail() {
    let path = temp_socket("base");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let frames = test_frames(77, 4);
    let p = path.clone();
    let r = serve_while(&mut rig, T, move |_| -> Result<(u16, u16, u16)> {
        let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
        fe.setup()?;
        send_all(&mut fe, 0, &frames)?;
        let first = fe.get_vring_base(1)?;
        // Stopped: frames sent now stay on the ring...
        fe.send(0, &frames[..5]);
        std::thread::sleep(Duration::from_millis(50));
        let used_while_stopped = fe.queues[1].used_idx();
        // ...until the ring is set up again from that base.
        fe.set_ring(1)?;
        ensure!(wait(|| fe.queues[1].used_idx() == 82), "not restarted: used {}", fe.queues[1].used_idx());
        let second = fe.get_vring_base(1)?;
        Ok((first, used_while_stopped, second))
    })
    .unwrap()
    .unwrap();
    assert_eq!(r, (77, 77, 82));
    assert_eq!(rig.counter("rx_packets"), 82);
}

#[test]
fn a_new_memory_table_while_running() {
    let path = temp_socket("mem");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let frames = test_frames(300, 5);
    let (f, p) = (frames.clone(), path.clone());
    let mut running = (0, 0);
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            send_all(&mut fe, 0, &f[..100])?;
            fe.set_mem_table()?;
            send_all(&mut fe, 0, &f[100..200])?;
            fe.set_mem_table()?;
            send_all(&mut fe, 0, &f[200..])?;
            ctl.park();
            Ok(())
        },
        |rig| running = rig.app.running(),
    );
    assert_eq!(rig.take_output(), frames);
    assert_eq!(running, (1, 1));
}

#[test]
fn frontend_disconnect_and_reconnect_in_server_mode() {
    let path = temp_socket("reconnect");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    for round in 0..3u8 {
        let frames = test_frames(50, round);
        let (f, p) = (frames.clone(), path.clone());
        serve_while(&mut rig, T, move |_| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            send_all(&mut fe, 0, &f)
        })
        .unwrap()
        .unwrap();
        assert_eq!(rig.take_output(), frames);
        assert!(rig.step_until(|r| !r.app.connected(), T), "disconnect not noticed");
        // Nothing for the guest while it is away: counted, not queued.
        rig.input.transmit(snabb_core::Packet::from_bytes(&frames[0]));
        rig.step();
        assert!(rig.input.is_empty());
    }
    assert_eq!(rig.counter("connections"), 3);
    assert_eq!(rig.counter("disconnects"), 3);
    assert_eq!(rig.counter("rx_packets"), 150);
    assert_eq!(rig.counter("tx_no_guest"), 3);
}

#[test]
fn client_mode_connects_and_reconnects() {
    let path = temp_socket("client");
    let listener = UnixListener::bind(&path).unwrap();
    let mut args = VhostUserArgs::new(&path);
    args.server = false;
    let mut rig = Rig::new(args).unwrap();
    let listener = std::sync::Arc::new(listener);
    for round in 0..2u8 {
        let frames = test_frames(40, round);
        let (f, l) = (frames.clone(), listener.clone());
        serve_while(&mut rig, T, move |_| -> Result<()> {
            let mut fe = Frontend::accept(&l, FrontendOptions::default(), T)?;
            fe.setup()?;
            send_all(&mut fe, 0, &f)
        })
        .unwrap()
        .unwrap();
        assert_eq!(rig.take_output(), frames);
        assert!(rig.step_until(|r| !r.app.connected(), T));
    }
    assert_eq!(rig.counter("connections"), 2);
    // With no listener at all the app keeps trying, with back-off, and stays up.
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(100) {
        rig.step();
    }
    assert!(!rig.app.connected());
    let l = UnixListener::bind(&path).unwrap();
    let (p2, _) = (path.clone(), ());
    serve_while(&mut rig, T, move |_| -> Result<()> {
        let mut fe = Frontend::accept(&l, FrontendOptions::default(), T)?;
        fe.setup()?;
        drop(p2);
        Ok(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(rig.counter("connections"), 3);
    std::fs::remove_file(&path).ok();
}

#[test]
fn unknown_and_refused_requests_get_replies() {
    let path = temp_socket("unknown");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let p = path.clone();
    let mut connected = false;
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.negotiate()?;
            // An unknown request with need_reply: a non-zero ack.
            let r = fe.request_with(Request::Other(200), true)?;
            ensure!(r == Some(Reply::U64(1)), "unknown with need_reply: {r:?}");
            // One that has a reply by itself (GET_MAX_MEM_SLOTS, not offered).
            let r = fe.request_with(Request::Other(req::GET_MAX_MEM_SLOTS), false)?;
            ensure!(r == Some(Reply::U64(1)), "GET_MAX_MEM_SLOTS: {r:?}");
            // A queue out of range, acked: refused, the connection stays.
            let r = fe.request_with(Request::SetVringNum(VringState { index: 9, num: 256 }), true)?;
            ensure!(r == Some(Reply::U64(1)), "queue 9: {r:?}");
            let r = fe.request_with(Request::SetVringNum(VringState { index: 0, num: 300 }), true)?;
            ensure!(r == Some(Reply::U64(1)), "size 300: {r:?}");
            // GET_VRING_BASE out of range still answers.
            let r = fe.request_with(Request::GetVringBase(VringState { index: 77, num: 0 }), false)?;
            ensure!(matches!(r, Some(Reply::VringState(VringState { index: 77, .. }))), "{r:?}");
            // Config space: link up, max queue pairs, MTU.
            let r = fe.request_with(
                Request::GetConfig(snabb_apps_vhost_user::protocol::ConfigSpace {
                    offset: 6,
                    size: 6,
                    flags: 0,
                    payload: vec![],
                }),
                false,
            )?;
            match r {
                Some(Reply::Config(c)) => ensure!(c.payload == [1, 0, 1, 0, 0xdc, 0x05], "config {:?}", c.payload),
                r => anyhow::bail!("GET_CONFIG: {r:?}"),
            }
            // Status and MTU.
            fe.request(Request::SetStatus(7))?;
            ensure!(fe.request(Request::GetStatus)? == Some(Reply::U64(7)));
            fe.request(Request::NetSetMtu(9000))?;
            ensure!(fe.request_with(Request::NetSetMtu(10), true)? == Some(Reply::U64(1)));
            // Without need_reply nothing comes back for an unknown request: the
            // next request's reply is the next message.
            fe.send_raw(201, VERSION, &[1, 2, 3], &[])?;
            ensure!(fe.request(Request::GetQueueNum)? == Some(Reply::U64(1)));
            ensure!(fe.protocol_features & pf::REPLY_ACK != 0);
            fe.send_raw(req::SET_OWNER, VERSION | FLAG_NEED_REPLY, &[], &[])?;
            let m = fe.chan.recv_timeout(Duration::from_secs(5))?;
            ensure!(Reply::parse(req::SET_OWNER, &m)? == Reply::U64(0));
            ctl.park();
            Ok(())
        },
        |rig| connected = rig.app.connected(),
    );
    assert!(connected, "refused requests must not drop the connection");
    assert_eq!(rig.counter("protocol_errors"), 0);
    assert!(rig.counter("request_errors") >= 5);
}

#[test]
fn a_malformed_message_drops_the_connection_only() {
    let path = temp_socket("malformed");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let p = path.clone();
    serve_while(&mut rig, T, move |_| -> Result<()> {
        let fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
        fe.send_raw(req::SET_FEATURES, VERSION, &[1, 2], &[])?;
        let mut fe = fe;
        // The backend hangs up.
        ensure!(fe.chan.recv_timeout(Duration::from_secs(5)).is_err());
        Ok(())
    })
    .unwrap()
    .unwrap();
    assert!(rig.step_until(|r| !r.app.connected(), T));
    assert_eq!(rig.counter("protocol_errors"), 1);
    // The next frontend is served.
    let p = path.clone();
    let mut running = (0, 0);
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            ctl.park();
            Ok(())
        },
        |rig| running = rig.app.running(),
    );
    assert_eq!(running, (1, 1));
}

#[test]
fn rarp_is_sent_on_the_output() {
    let path = temp_socket("rarp");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let p = path.clone();
    serve_while(&mut rig, T, move |_| -> Result<()> {
        let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
        fe.setup()?;
        fe.request(Request::SendRarp([0x52, 0x54, 0, 0, 0, 7]))?;
        Ok(())
    })
    .unwrap()
    .unwrap();
    rig.step();
    let out = rig.take_output();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][..6], &[0xff; 6]);
    assert_eq!(&out[0][6..12], &[0x52, 0x54, 0, 0, 0, 7]);
    assert_eq!(&out[0][12..14], &[0x80, 0x35]);
    assert_eq!(rig.counter("rarp_sent"), 1);
}

#[test]
fn dirty_log_marks_pages_the_device_wrote() {
    let path = temp_socket("log");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let frames = test_frames(20, 6);
    let p = path.clone();
    let (f, tg) = (frames.clone(), frames.clone());
    let mut logging = false;
    let dirty = run(
        &mut rig,
        move |ctl| -> Result<u64> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            let log = fe.start_logging()?;
            fe.post_rx(0, 64, 2048);
            ctl.inject(tg);
            receive_n(&mut fe, 0, f.len())?;
            // Count the bits set in the log.
            let mut buf = vec![0u8; 4096];
            // SAFETY: reads at most buf.len() bytes into buf from a descriptor we hold.
            let n =
                unsafe { libc::pread(std::os::fd::AsRawFd::as_raw_fd(&log), buf.as_mut_ptr().cast(), buf.len(), 0) };
            ensure!(n > 0);
            ctl.park();
            Ok(buf.iter().map(|b| b.count_ones() as u64).sum())
        },
        |rig| logging = rig.app.device().unwrap().logging(),
    );
    assert!(dirty > 0, "no page marked dirty");
    assert!(logging);
}

#[test]
fn args_parse_with_defaults_and_unknown_fields_are_refused() {
    use snabb_core::Args;
    let a: VhostUserArgs = Args::from_ron(r#"(socket: "/tmp/x.sock")"#).unwrap().parse().unwrap();
    assert_eq!(a, VhostUserArgs::new("/tmp/x.sock"));
    let a: VhostUserArgs =
        Args::from_ron(r#"(socket: "/s", server: false, queues: 4, mtu: 9000, mac: Some("52:54:00:12:34:56"))"#)
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!((a.server, a.queues, a.mtu, a.mac), (false, 4, 9000, Some("52:54:00:12:34:56".parse().unwrap())));
    assert!(Args::from_ron(r#"(socket: "/s", queue: 2)"#).unwrap().parse::<VhostUserArgs>().is_err());
    // A bad MAC is refused while parsing; values out of range by `config
    // check` (the class's validate), and when the app is made.
    assert!(
        Args::from_ron(r#"(socket: "/s", mac: Some("52:54:00:12:34"))"#).unwrap().parse::<VhostUserArgs>().is_err()
    );
    let mut registry = snabb_core::Registry::new();
    snabb_apps_vhost_user::register(&mut registry);
    for bad in
        [r#"(socket: "/tmp/snabb-vhost-bad.sock", queues: 0)"#, r#"(socket: "/tmp/snabb-vhost-bad.sock", mtu: 20)"#]
    {
        let mut c = snabb_core::Config::new();
        c.app_args("vm", "VhostUser", Args::from_ron(bad).unwrap());
        let e = registry.check(&c).unwrap_err().to_string();
        assert!(e.contains("must be"), "{bad}: {e}");
        let a: VhostUserArgs = Args::from_ron(bad).unwrap().parse().unwrap();
        assert!(Rig::new(a).is_err(), "{bad}");
    }
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let path = temp_socket("stale");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
    let rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    // Another app on the same path while this one listens: refused.
    let ctx = snabb_core::AppContext { name: "another", class: "VhostUser" };
    let e =
        <snabb_apps_vhost_user::VhostUser as snabb_core::AppClass>::new(VhostUserArgs::new(&path), &ctx).err().unwrap();
    assert!(format!("{e:#}").contains("app `vhost` of this process is listening on it"), "{e:#}");
    // The same app made anew (restarted, or moved to another worker) while
    // the instance it replaces still runs: the same socket, which stays
    // until both are gone.
    let again = Rig::new(VhostUserArgs::new(&path)).unwrap();
    drop(rig);
    assert!(path.exists(), "the socket went with the instance replaced");
    drop(again);
    assert!(!path.exists(), "socket file left behind");
    // Another process on the path: refused.
    let other = std::process::Command::new("python3")
        .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print(flush=True); time.sleep(30)"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut other) = other {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(other.stdout.take().unwrap()), &mut line).unwrap();
        let e = Rig::new(VhostUserArgs::new(&path)).err().unwrap();
        assert!(format!("{e:#}").contains("another process is listening"), "{e:#}");
        let _ = other.kill();
        let _ = other.wait();
        std::fs::remove_file(&path).unwrap();
    }
    // Not a socket: refused, and left alone.
    std::fs::write(&path, b"data").unwrap();
    assert!(Rig::new(VhostUserArgs::new(&path)).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_second_frontend_is_turned_away_not_left_waiting() {
    let path = temp_socket("second");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let p = path.clone();
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            // A second one gets no answer but a closed connection.
            let mut second = Frontend::connect(&p, FrontendOptions::default(), T)?;
            ensure!(second.request(Request::GetFeatures).is_err(), "the second frontend was served");
            // The first is still served.
            ensure!(fe.request(Request::GetStatus)? == Some(Reply::U64(0x0f)));
            ctl.park();
            Ok(())
        },
        |rig| assert_eq!(rig.app.running(), (1, 1)),
    );
    assert_eq!(rig.counter("refused_connections"), 1);
    assert_eq!(rig.counter("connections"), 1);
}

#[test]
fn in_an_engine_from_a_config() {
    use snabb_core::{Args, Config, Engine, Limit};
    let path = temp_socket("engine");
    let mut r = snabb_core::Registry::new();
    snabb_apps_basic::register(&mut r);
    snabb_apps_vhost_user::register(&mut r);
    let mut c = Config::new();
    c.app_args("src", "Source", Args::from_ron("(size: 100)").unwrap())
        .app_args(
            "vm",
            "VhostUser",
            Args::from_ron(&format!("(socket: {:?}, queues: 2)", path.to_str().unwrap())).unwrap(),
        )
        .app("sink", "Sink", &())
        .link("src.output -> vm.input")
        .link("vm.output -> sink.input");
    r.check(&c).unwrap();
    let mut e = Engine::new(r);
    e.configure(&c).unwrap();
    let frames = test_frames(120, 9);
    let p = path.clone();
    let s = spawn_frontend(move |ctl| -> Result<usize> {
        let mut fe = Frontend::connect(&p, FrontendOptions { queue_pairs: 2, ..Default::default() }, T)?;
        fe.setup()?;
        send_all(&mut fe, 1, &frames)?;
        fe.post_rx(0, 100, 2048);
        fe.post_rx(1, 100, 2048);
        ctl.park();
        let mut got = Vec::new();
        fe.receive(0, &mut got);
        fe.receive(1, &mut got);
        Ok(got.len())
    });
    // The engine serves the socket from its ticks; the Source floods the
    // guest, which takes exactly the 200 buffers it posted.
    let ok = e.run_until(
        |e| e.app_counters("sink").get("packets") == Some(&120) && e.app_counters("vm").get("tx_packets") == Some(&200),
        T,
    );
    assert!(ok, "sink: {:?}, vm: {:?}", e.app_counters("sink"), e.app_counters("vm"));
    assert_eq!(e.app_counters("vm")["rx_packets"], 120);
    let received = s.finish_with(|| e.run(Limit::Breaths(10)), T).unwrap().unwrap();
    assert_eq!(received, 200);
    assert!(e.app_counters("vm")["tx_no_guest"] > 0, "frames before the guest came are counted");
}

#[test]
fn reconfigure_in_place() {
    use snabb_core::{AppClass, AppContext};
    let (a, b) = (temp_socket("reconf-a"), temp_socket("reconf-b"));
    let mut rig = Rig::new(VhostUserArgs::new(&a)).unwrap();
    let ctx = AppContext { name: "vhost", class: "VhostUser" };
    let p = a.clone();
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            ctl.park();
            // The app moved to another socket meanwhile: this connection ends.
            ensure!(fe.request(Request::GetStatus).is_err(), "still served after the socket changed");
            Ok(())
        },
        |rig| {
            // Same socket, new MTU: the guest keeps its connection.
            let mut args = VhostUserArgs::new(&a);
            args.mtu = 9000;
            assert!(rig.app.reconfigure(args, &ctx).unwrap());
            assert!(rig.app.connected());
            assert!(rig.app.reconfigure(VhostUserArgs::new(&b), &ctx).unwrap());
            assert!(!rig.app.connected());
        },
    );
    assert!(!a.exists(), "the old socket file is left behind");
    let p = b.clone();
    run(
        &mut rig,
        move |ctl| -> Result<()> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            ctl.park();
            Ok(())
        },
        |rig| assert_eq!(rig.app.running(), (1, 1)),
    );
}

#[test]
fn a_broken_queue_is_reported_on_its_err_eventfd_and_the_rest_runs() {
    use snabb_apps_vhost_user::frontend::eventfd_take;
    let path = temp_socket("broken");
    let mut rig = Rig::new(VhostUserArgs::new(&path)).unwrap();
    let frames = test_frames(10, 7);
    let p = path.clone();
    let mut seen = (0, (0, 0));
    let (signalled, got) = run(
        &mut rig,
        move |ctl| -> Result<(u64, usize)> {
            let mut fe = Frontend::connect(&p, FrontendOptions::default(), T)?;
            fe.setup()?;
            let err = new_eventfd()?;
            fe.request(Request::SetVringErr(1, Some(err.try_clone()?)))?;
            // The guest's TX avail index leaps past the ring: nonsense.
            let idx = fe.queues[1].avail_idx().wrapping_add(1000);
            fe.queues[1].set_avail_idx(idx);
            ensure!(wait(|| { eventfd_take(&err) > 0 }), "no error signalled");
            // Its RX queue still works.
            fe.post_rx(0, 16, 2048);
            ctl.inject(frames.clone());
            let got = receive_n(&mut fe, 0, frames.len())?;
            ctl.park();
            Ok((1, got.len()))
        },
        |rig| seen = (rig.counter("broken_queues"), rig.app.running()),
    );
    assert_eq!((signalled, got), (1, 10));
    assert_eq!(seen, (1, (1, 0)), "broken_queues, running queues");
    assert!(rig.counter("rx_bad_index") >= 1);
}

fn new_eventfd() -> std::io::Result<std::os::fd::OwnedFd> {
    snabb_apps_vhost_user::frontend::eventfd()
}

/// Two ports cabled to each other; guest 2 enables its receive queue and
/// posts no buffer. Guest 1 must still send everything it has (its frames
/// are dropped and counted at port 2, which keeps the newest half link's
/// worth for when its guest comes back), not stall behind a full link.
#[test]
fn a_guest_that_posts_no_buffers_does_not_hold_back_the_other() {
    use snabb_core::{Args, Config, Engine, Limit};
    let (p1, p2) = (temp_socket("stall-1"), temp_socket("stall-2"));
    let mut r = snabb_core::Registry::new();
    snabb_apps_vhost_user::register(&mut r);
    let mut c = Config::new();
    for (name, p) in [("vm1", &p1), ("vm2", &p2)] {
        c.app_args(name, "VhostUser", Args::from_ron(&format!("(socket: {:?})", p.to_str().unwrap())).unwrap());
    }
    c.link("vm1.output -> vm2.input").link("vm2.output -> vm1.input");
    let mut e = Engine::new(r);
    e.configure(&c).unwrap();
    let q = p2.clone();
    let silent = spawn_frontend(move |ctl| -> Result<Vec<Vec<u8>>> {
        let mut fe = Frontend::connect(&q, FrontendOptions::default(), T)?;
        fe.setup()?;
        ctl.park();
        // Back: buffers at last.
        receive_n(&mut fe, 0, 300)
    });
    let end = Instant::now() + T;
    while !silent.is_parked_or_done() && Instant::now() < end {
        e.run(Limit::Breaths(10));
    }
    assert!(silent.is_parked_or_done(), "guest 2 set up");
    assert_eq!(e.app::<snabb_apps_vhost_user::VhostUser>("vm2").unwrap().running(), (1, 1));
    // Frames under 512 bytes: the copy path (larger ones would be lent by
    // guest 1, and those waiting for guest 2 would hold guest 1's chains).
    let frames: Vec<Vec<u8>> = test_frames(5000, 3)
        .into_iter()
        .map(|mut f| {
            f.truncate(300);
            f
        })
        .collect();
    let f = frames.clone();
    let q = p1.clone();
    let sender = spawn_frontend(move |_| -> Result<()> {
        let mut fe = Frontend::connect(&q, FrontendOptions::default(), T)?;
        fe.setup()?;
        send_all(&mut fe, 0, &f)
    });
    sender.finish_with(|| e.run(Limit::Breaths(10)), T).unwrap().expect("guest 1 sends all its frames");
    let link = e.link_counters("vm1.output -> vm2.input").unwrap();
    let vm2 = e.app_counters("vm2");
    assert_eq!(e.app_counters("vm1")["rx_packets"], 5000);
    assert_eq!((link.txpackets, link.txdrop), (5000, 0), "nothing dropped on the way: at the port");
    assert_eq!(vm2["tx_packets"], 0);
    assert_eq!(vm2["tx_backlog_drops"], 5000 - 512, "all but half a link dropped at port 2: {vm2:?}");
    let got = silent.finish_with(|| e.run(Limit::Breaths(10)), T).unwrap().unwrap();
    assert!(got.len() >= 300 && got.len() <= 512, "guest 2 got {} frames", got.len());
    assert!(got[..] == frames[5000 - 512..5000 - 512 + got.len()], "guest 2 gets the newest frames, in order");
}
