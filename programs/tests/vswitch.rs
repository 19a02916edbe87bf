//! `snabb-rs vmdq-vswitch` as users run it, with guests played by the
//! in-repo vhost-user frontend (in threads of this test, across the socket
//! as QEMU would be): frames VM to VM through the 82599 model's internal
//! switch and through the software splitter (the same deliveries), VLAN
//! isolation, broadcast, unknown unicast, a filter and a rate limit proven
//! by counts, a guest that posts no buffers, bad configs refused before
//! anything starts, and ports added and removed live while a numbered
//! stream to an untouched port loses nothing; and (as root) an AfXdp uplink
//! on a veth pair: another's XDP program and another switch refused, frames
//! both ways with the kernel's counts, the program off after stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snabb-rs"))
}

fn wait_for(mut f: impl FnMut() -> bool, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A running vmdq-vswitch, killed when dropped.
struct Switch {
    child: Option<std::process::Child>,
    shm: PathBuf,
}

impl Switch {
    fn start(dir: &Path, config: &Path) -> Switch {
        let child = bin()
            .args(["vmdq-vswitch", "--report", "0", "--duration", "120"])
            .arg(config)
            .env("SNABB_RS_SHM_ROOT", dir.join("shm"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let shm = dir.join("shm").join(child.id().to_string());
        let s = Switch { child: Some(child), shm };
        assert!(wait_for(|| s.shm.join("engine").exists(), 20), "the switch started");
        s
    }

    /// An app's counter, as committed to shared memory (0 when absent);
    /// an app on a worker has its counters under workers/<name>/.
    fn counter(&self, app: &str, name: &str) -> u64 {
        let read = |p: PathBuf| std::fs::read(p).ok().and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
        if let Some(v) = read(self.shm.join(format!("apps/{app}/{name}.counter"))) {
            return v;
        }
        for w in std::fs::read_dir(self.shm.join("workers")).into_iter().flatten().flatten() {
            if let Some(v) = read(w.path().join(format!("apps/{app}/{name}.counter"))) {
                return v;
            }
        }
        0
    }

    /// Stop it; its stderr.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let mut err = String::new();
        use std::io::Read;
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Every counter, for a failure's message.
    fn dump(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![self.shm.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(v) = std::fs::read(&p).ok().and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
                    && v != 0
                {
                    out += &format!("\n  {} = {v}", p.strip_prefix(&self.shm).unwrap().display());
                }
            }
        }
        out
    }

    /// An engine counter (`configs`: configs applied).
    fn engine(&self, name: &str) -> u64 {
        std::fs::read(self.shm.join(format!("engine/{name}.counter")))
            .ok()
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A guest in a thread: connects, keeps receive buffers posted (unless
/// told not to), records what it receives and sends what it is given.
struct Guest {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    received: Arc<AtomicU64>,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    ready: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Guest {
    /// `keep`: keep the frames received (else only count them).
    fn start(sock: &Path, post_buffers: bool, keep: bool) -> Guest {
        Guest::start_paced(sock, post_buffers, keep, None)
    }

    /// As `start`, sending no more than `window.1` frames ahead of what the
    /// counters `window.0` (other guests' receive counts) add up to.
    fn start_paced(sock: &Path, post_buffers: bool, keep: bool, window: Option<(Vec<Arc<AtomicU64>>, u64)>) -> Guest {
        let (stop, ready) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (received, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
        let sock = sock.to_path_buf();
        let (s, r, g, rc, sc) = (stop.clone(), ready.clone(), got.clone(), received.clone(), sent.clone());
        let handle = std::thread::spawn(move || -> anyhow::Result<()> {
            let opts = FrontendOptions { queue_size: 1024, mem_size: 64 << 20, ..Default::default() };
            let mut fe = Frontend::connect(&sock, opts, Duration::from_secs(20))?;
            fe.setup()?;
            if post_buffers {
                fe.post_rx(0, 1024, 2048);
            }
            r.store(true, Ordering::SeqCst);
            let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
            let mut frames = Vec::new();
            while !s.load(Ordering::SeqCst) {
                while let Ok(batch) = rx.try_recv() {
                    pending.extend(batch);
                }
                fe.reclaim_tx(0);
                while let Some(f) = pending.front() {
                    if let Some((peers, w)) = &window
                        && sc.load(Ordering::SeqCst) >= peers.iter().map(|p| p.load(Ordering::SeqCst)).sum::<u64>() + w
                    {
                        break;
                    }
                    if fe.send(0, std::slice::from_ref(f)) == 0 {
                        break;
                    }
                    pending.pop_front();
                    sc.fetch_add(1, Ordering::SeqCst);
                }
                let n = fe.receive(0, &mut frames);
                if n > 0 {
                    // Buffers back first: a paced sender sends on when the
                    // count moves, and the buffers must be there for it.
                    if post_buffers {
                        fe.post_rx(0, n, 2048);
                    }
                    let k = frames.len() as u64;
                    if keep {
                        g.lock().unwrap().append(&mut frames);
                    }
                    frames.clear();
                    rc.fetch_add(k, Ordering::SeqCst);
                }
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(())
        });
        Guest { stop, got, received, tx, ready, handle: Some(handle) }
    }

    fn wait_ready(&self) {
        assert!(wait_for(|| self.ready.load(Ordering::SeqCst), 20), "guest set up");
    }

    fn send(&self, frames: Vec<Vec<u8>>) {
        self.tx.send(frames).unwrap();
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let r = h.join();
            if !std::thread::panicking() {
                r.expect("guest thread").expect("guest");
            }
        }
    }
}

fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, last]
}

/// A frame from `src` to `dst`, `len` bytes, numbered `n`.
fn frame(dst: [u8; 6], src: [u8; 6], n: u32, len: usize) -> Vec<u8> {
    let mut f = [&dst[..], &src[..], &[0x88, 0xb5], &n.to_be_bytes()[..]].concat();
    f.resize(len, 0xab);
    f
}

const BCAST: [u8; 6] = [0xff; 6];
const UNKNOWN: [u8; 6] = [0x02, 0, 0, 0, 0x99, 0x99];

/// Three ports: vm1 and vm2 on VLAN 10, vm3 on VLAN 20; vm2 takes only
/// frames of 200 bytes or less (`to_guest` filter), vm1 sends at most 700
/// frames (a bucket that does not refill in the test's time).
fn three_ports(dir: &Path, uplink: &str) -> PathBuf {
    three_ports_with(dir, uplink, "")
}

/// `extra`: more top-level fields (workers).
fn three_ports_with(dir: &Path, uplink: &str, extra: &str) -> PathBuf {
    let f = dir.join("vswitch.ron");
    let s = |n: u32| dir.join(format!("v{n}.sock")).display().to_string();
    std::fs::write(
        &f,
        format!(
            r#"(
    uplink: {uplink},
    ports: [
        (name: "vm1", socket: "{}", macs: ["52:54:00:00:00:01"], vlan: 10,
         from_guest: (limit: (pps: 0.001, burst_packets: 700))),
        (name: "vm2", socket: "{}", macs: ["52:54:00:00:00:02"], vlan: 10, copy: Zero,
         to_guest: (filter: "less 200")),
        (name: "vm3", socket: "{}", macs: ["52:54:00:00:00:03"], vlan: 20),
    ],
    {extra}
)"#,
            s(1),
            s(2),
            s(3)
        ),
    )
    .unwrap();
    f
}

/// vm1 sends 200 frames to vm2 (100 of them too big for vm2's filter),
/// 100 to vm3 (another VLAN), 100 broadcasts, 100 to an unknown address,
/// then 300 more to vm2 over its rate limit: what each guest gets.
/// Frames each guest got, by guest.
type Arrivals = BTreeMap<&'static str, Vec<Vec<u8>>>;

fn vm_to_vm(uplink: &str) -> (Arrivals, BTreeMap<String, u64>) {
    vm_to_vm_with(uplink, "")
}

fn vm_to_vm_with(uplink: &str, extra: &str) -> (Arrivals, BTreeMap<String, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = three_ports_with(dir.path(), uplink, extra);
    let sw = Switch::start(dir.path(), &cfg);
    let guests: Vec<Guest> =
        (1..=3).map(|n| Guest::start(&dir.path().join(format!("v{n}.sock")), true, true)).collect();
    for g in &guests {
        g.wait_ready();
    }
    let mut frames = Vec::new();
    for i in 0..200 {
        frames.push(frame(mac(2), mac(1), i, if i % 2 == 0 { 100 } else { 300 }));
    }
    for i in 0..100 {
        frames.push(frame(mac(3), mac(1), 1000 + i, 100));
        frames.push(frame(BCAST, mac(1), 2000 + i, 64));
        frames.push(frame(UNKNOWN, mac(1), 3000 + i, 64));
    }
    for i in 0..300 {
        frames.push(frame(mac(2), mac(1), 4000 + i, 100));
    }
    guests[0].send(frames);
    assert!(
        wait_for(|| sw.counter("vm1", "rx_packets") == 800, 20),
        "vm1 sent 800: {}",
        sw.counter("vm1", "rx_packets")
    );
    // vm2: 100 small unicast + 100 broadcasts; vm3: nothing (VLAN 20).
    assert!(wait_for(|| guests[1].received() >= 200, 20), "vm2 got {}", guests[1].received());
    std::thread::sleep(Duration::from_millis(300));
    let mut counters = BTreeMap::new();
    for (app, c) in [
        ("vm2", "tx_zc_packets"),
        ("vm1-from-guest-limit", "dropped"),
        ("vm1-from-guest-limit", "txpackets"),
        ("vm2-to-guest-filter", "rejected"),
        ("vm2", "tx_packets"),
        ("vm3", "tx_packets"),
        ("vm1", "tx_packets"),
    ] {
        counters.insert(format!("{app}/{c}"), sw.counter(app, c));
    }
    let got = BTreeMap::from([("vm1", guests[0].frames()), ("vm2", guests[1].frames()), ("vm3", guests[2].frames())]);
    drop(guests);
    let err = sw.stop();
    assert!(!err.contains("ERROR"), "{err}");
    (got, counters)
}

fn numbers(frames: &[Vec<u8>]) -> Vec<u32> {
    frames.iter().map(|f| u32::from_be_bytes(f[14..18].try_into().unwrap())).collect()
}

fn check_vm_to_vm(got: &BTreeMap<&str, Vec<Vec<u8>>>, c: &BTreeMap<String, u64>) {
    // The rate limit passed 700 of vm1's 800 frames: the first 700.
    assert_eq!(c["vm1-from-guest-limit/txpackets"], 700, "{c:?}");
    assert_eq!(c["vm1-from-guest-limit/dropped"], 100, "{c:?}");
    let vm2 = numbers(&got["vm2"]);
    let small: Vec<u32> = (0..200).step_by(2).collect();
    let bcast: Vec<u32> = (2000..2100).collect();
    let mut want: Vec<u32> = small.iter().chain(&bcast).copied().collect();
    // The 300 sent last: 100 passed the limit (700 = 200 + 300 + 200).
    want.extend(4000..4200);
    let mut have = vm2.clone();
    have.sort();
    want.sort();
    assert_eq!(have, want, "vm2: its small frames, the broadcasts, and what passed vm1's limit");
    assert!(got["vm2"].iter().all(|f| f.len() < 200), "the filter let a big frame through");
    assert_eq!(c["vm2-to-guest-filter/rejected"], 100, "{c:?}");
    assert_eq!(c["vm2/tx_packets"], 400, "{c:?}");
    assert!(got["vm2"].iter().all(|f| f[12..14] == [0x88, 0xb5]), "frames reach the guest untagged");
    assert!(got["vm3"].is_empty(), "vm3 (VLAN 20) got {:?}", numbers(&got["vm3"]));
    assert!(got["vm1"].is_empty(), "vm1 got its own broadcasts back: {:?}", numbers(&got["vm1"]));
}

#[test]
fn vm_to_vm_through_the_82599_model() {
    let (got, c) = vm_to_vm(&format!("Model(port: \"t{}\")", std::process::id()));
    check_vm_to_vm(&got, &c);
    // vm2 is `copy: Zero`: the chip wrote its frames into the guest's buffers.
    assert_eq!(c["vm2/tx_zc_packets"], 400, "{c:?}");
}

#[test]
fn vm_to_vm_through_the_software_splitter() {
    let (got, c) = vm_to_vm("None");
    check_vm_to_vm(&got, &c);
}

/// The same deliveries with the ports spread over two workers: on the
/// 82599 model each port's pool runs on its port's worker; with the
/// software splitter (on main) every port is fed through an interlink.
#[test]
fn vm_to_vm_on_two_workers_through_the_82599_model() {
    let (got, c) =
        vm_to_vm_with(&format!("Model(port: \"w{}\")", std::process::id()), "workers: 2, worker_cpus: [0, 1],");
    check_vm_to_vm(&got, &c);
    assert_eq!(c["vm2/tx_zc_packets"], 400, "{c:?}");
}

#[test]
fn vm_to_vm_on_two_workers_through_the_software_splitter() {
    let (got, c) = vm_to_vm_with("None", "workers: 2,");
    check_vm_to_vm(&got, &c);
}

#[test]
fn a_guest_that_posts_no_buffers_slows_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vswitch.ron");
    let port = |n: u32| {
        format!(
            "(name: \"vm{n}\", socket: \"{}\", macs: [\"52:54:00:00:00:0{n}\"], vlan: 10)",
            dir.path().join(format!("v{n}.sock")).display()
        )
    };
    std::fs::write(&cfg, format!("(ports: [{}, {}, {}])", port(1), port(2), port(3))).unwrap();
    let sw = Switch::start(dir.path(), &cfg);
    let g1 = Guest::start(&dir.path().join("v1.sock"), true, false);
    let g2 = Guest::start(&dir.path().join("v2.sock"), false, false); // never posts a buffer
    let g3 = Guest::start(&dir.path().join("v3.sock"), true, false);
    for g in [&g1, &g2, &g3] {
        g.wait_ready();
    }
    // vm1 sends to vm2 and vm3 in turn: vm3 gets all of its share, vm2's is
    // dropped at vm2 (but the half link's worth that waits for it).
    // In rounds of 200, each sent once vm3 has the last round's 100: vm3's
    // guest (a test thread on a busy machine) never falls behind by more
    // than its port lets wait, so none of its frames may be dropped, while
    // vm2's pile up at vm2 and are dropped there.
    let frames: Vec<Vec<u8>> = (0..6000).map(|i| frame(mac(2 + (i % 2) as u8), mac(1), i, 64)).collect();
    for (k, round) in frames.chunks(200).enumerate() {
        g1.send(round.to_vec());
        let want = 100 * (k as u64 + 1);
        assert!(wait_for(|| g3.received() == want, 30), "vm3 got {} of {want}", g3.received());
    }
    assert!(wait_for(|| sw.counter("vm1", "rx_packets") == 6000, 10), "{}", sw.counter("vm1", "rx_packets"));
    assert!(
        wait_for(|| sw.counter("vm2", "tx_backlog_drops") == 3000 - 512, 10),
        "{}",
        sw.counter("vm2", "tx_backlog_drops")
    );
    assert_eq!((g2.received(), sw.counter("vm3", "tx_backlog_drops")), (0, 0));
    drop((g1, g2, g3));
    sw.stop();
}

/// Ports added, changed and removed (by saving the file and SIGHUP), and a
/// bad edit refused, while vm1 streams numbered frames to vm2: vm2 gets
/// every one, in order.
fn reload_under_traffic(uplink: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("vswitch.ron");
    let port = |n: u32, vlan: u16| {
        format!(
            "(name: \"vm{n}\", socket: \"{}\", macs: [\"52:54:00:00:00:0{n}\"], vlan: {vlan}),\n",
            d.join(format!("v{n}.sock")).display()
        )
    };
    let write = |ports: &str| std::fs::write(&cfg, format!("(uplink: {uplink}, ports: [\n{ports}])")).unwrap();
    write(&(port(1, 10) + &port(2, 10)));
    let sw = Switch::start(d, &cfg);
    let g2 = Guest::start(&d.join("v2.sock"), true, true);
    g2.wait_ready();
    let g1 = Guest::start_paced(&d.join("v1.sock"), true, false, Some((vec![g2.received.clone()], 1000)));
    g1.wait_ready();
    const N: u32 = 40_000;
    g1.send((0..N).map(|i| frame(mac(2), mac(1), i, 128)).collect());
    let hup = || {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(sw.pid() as i32, libc::SIGHUP) };
    };
    // Each step: the ports, and whether the config is good.
    let steps = [
        (port(1, 10) + &port(2, 10) + &port(3, 10), true),
        // A bad edit: vm4 takes vm2's address. Refused; the rest runs on.
        (port(1, 10) + &port(2, 10) + &port(3, 10) + &port(4, 10).replace("00:04", "00:02"), false),
        (port(1, 10) + &port(2, 10) + &port(3, 20), true),
        (port(1, 10) + &port(2, 10), true),
        (port(1, 10) + &port(2, 10) + &port(4, 10), true),
    ];
    let mut g3 = None;
    for (k, (ports, good)) in steps.iter().enumerate() {
        // Some of the stream first, then the change.
        let at = g2.received();
        if !wait_for(|| g2.received() >= at + 2000 || g2.received() == N as u64, 20) {
            panic!("step {k}: stream stalled at {}: {}", g2.received(), sw.dump());
        }
        let configs = sw.engine("configs");
        write(ports);
        hup();
        if *good {
            assert!(wait_for(|| sw.engine("configs") > configs, 10), "step {k} applied");
        } else {
            std::thread::sleep(Duration::from_millis(800));
            assert_eq!(sw.engine("configs"), configs, "step {k} refused");
        }
        if k == 0 {
            g3 = Some(Guest::start(&d.join("v3.sock"), true, false));
        }
        if k == 3 {
            drop(g3.take());
        }
    }
    assert!(wait_for(|| g2.received() == N as u64, 60), "vm2 got {} of {N}", g2.received());
    let got = numbers(&g2.frames());
    assert!(got.iter().copied().eq(0..N), "vm2's stream lost or reordered frames");
    for c in ["tx_backlog_drops", "tx_no_guest", "tx_no_room"] {
        assert_eq!(sw.counter("vm2", c), 0, "vm2 {c}");
    }
    drop((g1, g2, g3));
    let err = sw.stop();
    assert!(err.contains("MAC 52:54:00:00:00:02 on VLAN 10 is port `vm2`'s already"), "{err}");
    assert!(err.contains("still running the previous config"), "{err}");
    assert_eq!(err.matches("applied (").count(), 4, "{err}");
}

#[test]
fn ports_come_and_go_while_another_streams_software() {
    reload_under_traffic("None");
}

#[test]
fn ports_come_and_go_while_another_streams_82599_model() {
    reload_under_traffic(&format!("Model(port: \"r{}\")", std::process::id()));
}

/// Started with `workers: 2, worker_cpus: [0, 1]`, the layouts the move
/// tests go through, each saved with `write` and applied once `progress`
/// (vm2's guest) has 2000 more of its `n` frames (or all): a third worker
/// added (vm3, the port of index 3, moves to it with its pool), the
/// workers' CPUs swapped, the third worker removed (vm3 moves back).
fn move_vm3_and_back(sw: &Switch, write: impl Fn(&str), progress: &Guest, n: u32) {
    let steps =
        ["workers: 3, worker_cpus: [0, 1]", "workers: 3, worker_cpus: [1, 0]", "workers: 2, worker_cpus: [1, 0]"];
    for (k, layout) in steps.iter().enumerate() {
        let at = progress.received();
        if !wait_for(|| progress.received() >= at + 2000 || progress.received() == n as u64, 30) {
            panic!("step {k}: stream stalled at {}: {}", progress.received(), sw.dump());
        }
        let configs = sw.engine("configs");
        write(layout);
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(sw.pid() as i32, libc::SIGHUP) };
        assert!(wait_for(|| sw.engine("configs") > configs, 20), "step {k} ({layout}) applied: {}", sw.dump());
    }
}

/// The worker layout of a running switch changed by saving its file, while
/// vm1 streams numbered frames to vm2 and to vm3: a third worker is added
/// (vm3, with its pool on an 82599, moves to it), the workers' CPUs are
/// swapped, and the third worker is removed again (vm3 moves back). vm2
/// and vm3 each get every frame vm1 sent them, once and in order, and no
/// drop is counted on their way; vm3's guest keeps its connection through
/// both moves (its port's instance on the new worker takes it over).
fn layout_changes_under_traffic(uplink: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("vswitch.ron");
    let port = |n: u32| {
        format!(
            "(name: \"vm{n}\", socket: \"{}\", macs: [\"52:54:00:00:00:0{n}\"], vlan: 10),\n",
            d.join(format!("v{n}.sock")).display()
        )
    };
    let ports = port(1) + &port(2) + &port(3);
    let write = |layout: &str| {
        std::fs::write(&cfg, format!("(uplink: {uplink}, ports: [\n{ports}], {layout})")).unwrap();
    };
    // Port i on worker i mod n: with 2 workers vm1 and vm3 on w1, vm2 on w2;
    // with 3, vm3 on w3.
    write("workers: 2, worker_cpus: [0, 1]");
    let sw = Switch::start(d, &cfg);
    let g2 = Guest::start(&d.join("v2.sock"), true, true);
    g2.wait_ready();
    let g3 = Guest::start(&d.join("v3.sock"), true, true);
    g3.wait_ready();
    // At most 1000 frames in the switch: fewer than the link into vm3
    // holds while it moves.
    let g1 = Guest::start_paced(
        &d.join("v1.sock"),
        true,
        false,
        Some((vec![g2.received.clone(), g3.received.clone()], 1000)),
    );
    g1.wait_ready();
    const N: u32 = 30_000;
    g1.send((0..N).flat_map(|i| [frame(mac(2), mac(1), i, 128), frame(mac(3), mac(1), i, 128)]).collect());
    move_vm3_and_back(&sw, write, &g2, N);
    for g in [&g2, &g3] {
        assert!(wait_for(|| g.received() == N as u64, 60), "a guest got {} of {N}: {}", g.received(), sw.dump());
    }
    std::thread::sleep(Duration::from_millis(300));
    for (vm, g) in [("vm2", &g2), ("vm3", &g3)] {
        let got = numbers(&g.frames());
        assert!(got.iter().copied().eq(0..N), "{vm}'s stream lost or reordered frames");
    }
    // Frames in = frames delivered + drops counted on the way, and no drop.
    assert_eq!(
        (sw.counter("vm1", "rx_packets"), sw.counter("vm2", "tx_packets"), sw.counter("vm3", "tx_packets")),
        (2 * N as u64, N as u64, N as u64)
    );
    for vm in ["vm2", "vm3"] {
        for c in ["tx_backlog_drops", "tx_no_guest", "tx_no_room"] {
            assert_eq!(sw.counter(vm, c), 0, "{vm} {c}");
        }
        assert_eq!(sw.counter(&format!("{vm}-pool"), "rxdrop"), 0, "{vm}-pool rxdrop");
    }
    // vm3's guest connected once, and its connection went with the port.
    let c = |n: &str| sw.counter("vm3", n);
    assert_eq!((c("connections"), c("disconnects"), c("handoffs")), (1, 0, 2), "vm3's connection: {}", sw.dump());
    drop((g1, g2, g3));
    let err = sw.stop();
    assert!(!err.contains("ERROR") && !err.contains("previous config"), "{err}");
}

#[test]
fn worker_layout_changes_under_traffic_82599_model() {
    layout_changes_under_traffic(&format!("Model(port: \"l{}\")", std::process::id()));
}

/// As above, with vm3 on `copy: Zero` (its pool writes frames straight
/// into its guest's buffers): the port gets back what it lent before it
/// moves, its guest keeps the connection, and it lends again on the new
/// worker. Frames the chip had written into buffers the move called back,
/// or dropped while the queue restarted for it, are counted; vm3 gets the
/// rest once each and in order, and vm2's stream loses nothing.
#[test]
fn a_zero_copy_port_moves_with_its_pool_82599_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("vswitch.ron");
    let port = |n: u32, copy: &str| {
        format!(
            "(name: \"vm{n}\", socket: \"{}\", macs: [\"52:54:00:00:00:0{n}\"], vlan: 10, copy: {copy}),\n",
            d.join(format!("v{n}.sock")).display()
        )
    };
    let ports = port(1, "Simd") + &port(2, "Simd") + &port(3, "Zero");
    let uplink = format!("Model(port: \"z{}\")", std::process::id());
    let write = |layout: &str| {
        std::fs::write(&cfg, format!("(uplink: {uplink}, ports: [\n{ports}], {layout})")).unwrap();
    };
    write("workers: 2, worker_cpus: [0, 1]");
    let sw = Switch::start(d, &cfg);
    let g2 = Guest::start(&d.join("v2.sock"), true, true);
    g2.wait_ready();
    let g3 = Guest::start(&d.join("v3.sock"), true, true);
    g3.wait_ready();
    // Paced by vm2 alone (every other frame is vm2's: its count twice), as
    // vm3 may lose frames when it moves.
    let g1 = Guest::start_paced(
        &d.join("v1.sock"),
        true,
        false,
        Some((vec![g2.received.clone(), g2.received.clone()], 500)),
    );
    g1.wait_ready();
    // N frames each while the port moves, M more once it has moved.
    const N: u32 = 60_000;
    const M: u32 = 5_000;
    let stream = |r: std::ops::Range<u32>| -> Vec<Vec<u8>> {
        r.flat_map(|i| [frame(mac(2), mac(1), i, 128), frame(mac(3), mac(1), i, 128)]).collect()
    };
    g1.send(stream(0..N));
    let c = |n: &str| sw.counter("vm3", n);
    move_vm3_and_back(&sw, write, &g2, N);
    assert!(wait_for(|| g2.received() == N as u64, 60), "vm2 got {} of {N}: {}", g2.received(), sw.dump());
    let dropped = || {
        ["rxdrop", "rx_restart_drop"].iter().map(|n| sw.counter("vm3-pool", n)).sum::<u64>()
            + ["tx_backlog_drops", "tx_no_guest", "tx_no_room"].iter().map(|n| c(n)).sum::<u64>()
    };
    // Every frame sent to vm3 while it moved arrived or was counted.
    assert!(
        wait_for(|| g3.received() + dropped() == N as u64, 30),
        "vm3 got {} and {} were counted dropped, of {N}: {}",
        g3.received(),
        dropped(),
        sw.dump()
    );
    // Counters as the port's last instance commits them.
    assert!(wait_for(|| c("connections") == 1 && c("handoffs") == 2, 10), "vm3's counters: {}", sw.dump());
    // (Read again until whole: a counter may read 0 between an instance's
    // going and its successor's first commit.)
    let zc_moved = c("tx_zc_packets");
    let mut dropped_moving = 0;
    assert!(wait_for(
        || {
            dropped_moving = dropped();
            g3.received() + dropped_moving == N as u64
        },
        10
    ));
    // Then M more each, 250 at a time: fewer than vm3's guest has buffers
    // posted, so that none may be dropped for want of them.
    for k in (N..N + M).step_by(250) {
        g1.send(stream(k..k + 250));
        let all = (k + 250) as u64;
        assert!(
            wait_for(|| g2.received() == all && g3.received() + dropped_moving == all, 30),
            "after the moves: vm2 got {}, vm3 {} (and {dropped_moving} dropped before), of {all}: {}",
            g2.received(),
            g3.received(),
            sw.dump()
        );
    }
    let got = numbers(&g3.frames());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "vm3's frames came twice or out of order");
    assert!(got.len() as u64 > N as u64 / 2, "vm3 got only {} of {N}", got.len());
    assert!(got.ends_with(&(N..N + M).collect::<Vec<u32>>()), "vm3 got every frame sent after the moves");
    assert_eq!(dropped(), dropped_moving, "drops after the moves");
    assert!(numbers(&g2.frames()).iter().copied().eq(0..N + M), "vm2's stream lost or reordered frames");
    // (Counters are committed every 100 breaths.)
    assert!(
        wait_for(|| c("tx_zc_packets") >= zc_moved + M as u64, 10),
        "vm3 lends again after the moves ({zc_moved} frames in lent buffers before): {}",
        sw.dump()
    );
    assert_eq!((c("connections"), c("disconnects"), c("handoffs")), (1, 0, 2), "vm3's connection: {}", sw.dump());
    drop((g1, g2, g3));
    let err = sw.stop();
    assert!(!err.contains("ERROR") && !err.contains("previous config"), "{err}");
}

#[test]
fn worker_layout_changes_under_traffic_software() {
    layout_changes_under_traffic("None");
}

#[test]
fn bad_configs_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = |n: u32| d.join(format!("b{n}.sock")).display().to_string();
    let cases = [
        (
            format!(
                "(ports: [(name: \"a\", socket: \"{}\", macs: [\"52:54:00:00:00:01\"]),\n  (name: \"b\", socket: \"{}\", macs: [\"52:54:00:00:00:01\"])])",
                sock(1),
                sock(2)
            ),
            ":2:*: port `b`: MAC 52:54:00:00:00:01 untagged is port `a`'s already",
        ),
        (
            format!(
                "(ports: [(name: \"a\", socket: \"{}\", macs: [\"52:54:00:00:00:01\"]),\n  (name: \"b\", socket: \"{}\", macs: [\"52:54:00:00:00:02\"])])",
                sock(1),
                sock(1)
            ),
            ":2:*: port `b`: socket",
        ),
        (
            format!("(ports: [(name: \"a\", socket: \"{}\", macs: [\"52:54:00:00:00:01\"],\n vlan: 5000)])", sock(1)),
            ":2:2: port `a`: VLAN 5000 is out of range",
        ),
        (
            "(uplink: Intel10g(pci: \"0000:01:00.0\", pools: 32), ports: [\n".to_string()
                + &(0..33)
                    .map(|i| {
                        format!(
                            "(name: \"p{i}\", socket: \"{}\", macs: [\"52:54:00:00:01:{i:02x}\"]),\n",
                            d.join(format!("p{i}.sock")).display()
                        )
                    })
                    .collect::<String>()
                + "])",
            ":34:2: port `p32`: 33 ports, but the 82599 has 32 VMDq pools",
        ),
        ("(uplink: Intel40g(pci: \"0000:01:00.0\"))".to_string(), ":1:"),
        (
            "(\n  uplink: RawSocket(interface: \"nosuchif0\"),\n  ports: [])".to_string(),
            ":2:21: uplink: no interface `nosuchif0`",
        ),
        (
            "(\n  uplink: AfXdp(interface: \"nosuchif0\"),\n  ports: [])".to_string(),
            ":2:17: uplink: no interface `nosuchif0`",
        ),
        (
            "(\n  uplink: AfXdp(interface: \"lo\", queues: [0, 5]),\n  ports: [])".to_string(),
            ":2:34: uplink: interface `lo` has 1 receive queue: there is no queue 5",
        ),
        (
            "(\n  uplink: AfXdp(interface: \"lo\", tx_ring: 100),\n  ports: [])".to_string(),
            ":2:11: uplink: tx_ring 100: a power of two",
        ),
        (
            format!(
                "(ports: [(name: \"a\", socket: \"{}\", macs: [\"52:54:00:00:00:01\"],\n  from_guest: (limit: (gbps: -1.0)))])",
                sock(1)
            ),
            ":2:3: port `a`: from_guest: limit: gbps -1",
        ),
    ];
    for (text, want) in cases {
        let f = d.join("bad.ron");
        std::fs::write(&f, &text).unwrap();
        let out = bin().args(["vmdq-vswitch", "--report", "0"]).arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: accepted");
        let found = match want.split_once(":*:") {
            // A column that depends on the temporary path's length.
            Some((line, msg)) => err.contains(&format!("{}{line}:", f.display())) && err.contains(msg),
            None => err.contains(&format!("{}{want}", f.display())),
        };
        assert!(found, "{text}\nwant {want}\ngot {err}");
        assert!(!Path::new(&sock(1)).exists(), "nothing started: no socket");
        // `config check` says the same (but for what only a machine check sees).
        if !want.contains("no interface") && !want.contains("receive queue") {
            let out = bin().args(["config", "check"]).arg(&f).output().unwrap();
            let msg = want.split_once(":*:").map_or(want, |(_, m)| m);
            assert!(
                !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(msg),
                "config check: {text}"
            );
        }
    }
}

/// The README's first command: the built-in config runs with no argument,
/// the VMs (VirtioUser apps) get frames, and the report accounts for every
/// frame the generator offered.
#[test]
fn the_built_in_config_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["vmdq-vswitch", "--duration", "4.5", "--report", "2"])
        .env("SNABB_RS_SHM_ROOT", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("configs/vmdq-vswitch.ron (built in) (3 ports)"), "{stdout}");
    assert!(stdout.contains("snabb-rs top"), "says how to watch it: {stdout}");
    assert!(stdout.contains("--print-default"), "says where to edit: {stdout}");
    assert!(stdout.contains("not taken    the guest had posted no receive buffers"), "explains drops: {stdout}");
    // The last report: each VM got frames; the generator's frames add up.
    let last = stdout.rsplit("--- ").next().unwrap();
    for vm in ["vm1", "vm2", "vm3"] {
        let row = last.lines().find(|l| l.starts_with(vm)).unwrap_or_else(|| panic!("{vm} row: {last}"));
        let frames: u64 = row.split_whitespace().nth(4).unwrap().replace(',', "").parse().unwrap();
        assert!(frames > 0, "{vm} got no frames: {row}");
    }
    let g = last.lines().find(|l| l.starts_with("generator:")).expect("generator line");
    let n: Vec<u64> = g
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .filter(|w| !w.is_empty() && w.chars().any(|c| c.is_ascii_digit()))
        .map(|w| w.replace(',', "").parse().unwrap())
        .collect();
    // offered = arrived + lost + on their way
    assert_eq!(n[0], n[1] + n[2] + n[3], "{g}");
    assert!(n[4] > 0, "vm3's frames came back out of the uplink: {g}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// The built-in config with its ports on two workers (its sockets moved
/// to a directory of this test's own): the report still has the uplink's
/// lines, which come from the 82599 driver of a pool that now runs on a
/// worker, and every port's.
#[test]
fn the_built_in_config_on_two_workers_reports_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vswitch.ron");
    let text = String::from_utf8(bin().args(["vmdq-vswitch", "--print-default"]).output().unwrap().stdout).unwrap();
    let socks = dir.path().join("socks");
    std::fs::write(&cfg, text.replace("/tmp/snabb-rs-vmdq-vswitch", socks.to_str().unwrap())).unwrap();
    let out = bin()
        .args(["vmdq-vswitch", "--duration", "4.5", "--report", "2", "--workers", "2"])
        .arg(&cfg)
        .env("SNABB_RS_SHM_ROOT", dir.path().join("shm"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last = stdout.rsplit("--- ").next().unwrap();
    let frames = |row: &str| -> u64 { row.split_whitespace().nth(4).unwrap().replace(',', "").parse().unwrap() };
    let up = last.lines().find(|l| l.starts_with("uplink")).unwrap_or_else(|| panic!("no uplink row: {last}"));
    assert!(frames(up) > 0, "the 82599 counted no frame from the wire: {up}");
    assert!(last.contains("sent by ports"), "{last}");
    for vm in ["vm1", "vm2", "vm3"] {
        let row = last.lines().find(|l| l.starts_with(vm)).unwrap_or_else(|| panic!("{vm} row: {last}"));
        assert!(frames(row) > 0, "{vm} got no frames: {row}");
    }
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// A frame tagged with `vlan`, numbered `n` as `frame` numbers them (the
/// number after the tag).
fn tagged(dst: [u8; 6], src: [u8; 6], vlan: u16, n: u32, len: usize) -> Vec<u8> {
    let mut f =
        [&dst[..], &src[..], &[0x81, 0x00], &vlan.to_be_bytes()[..], &[0x88, 0xb5], &n.to_be_bytes()[..]].concat();
    f.resize(len, 0xcd);
    f
}

/// The uplink an AF_XDP socket on one end of a veth pair, the wire's other
/// end an AfXdp app driven by this test: another's XDP program on the
/// interface makes the switch refuse to start (naming it, nothing started)
/// until told to replace it; a second switch on the interface is refused;
/// frames from the wire reach their guests by
/// VLAN and address, frames from a guest leave tagged; the uplink's counts
/// are the kernel's for the interface; stopping takes the program off.
#[test]
fn an_afxdp_uplink_on_a_veth() {
    use snabb_apps_afxdp::rig::Rig;
    use snabb_apps_afxdp::{AfXdpArgs, xdp_programs};
    use snabb_apps_rawsocket::veth::{VethPair, ip, kernel_stat, require_root};
    match require_root() {
        Ok(()) => {}
        Err(e) if snabb_core::selftest::skipped(&e).is_some() => {
            eprintln!("{e}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    }
    let v = VethPair::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Another's program (tests/xdp_pass.c of the AfXdp crate), put on as
    // `ip` does.
    let obj = d.join("pass.o");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../apps/afxdp/tests/xdp_pass.c");
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let st = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", &multiarch, "-c", src, "-o"])
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success(), "clang");
    ip(&["link", "set", "dev", &v.a, "xdp", "obj", obj.to_str().unwrap(), "sec", "xdp"]).unwrap();
    let names = |i: &str| xdp_programs(i).unwrap().into_iter().map(|p| p.2).collect::<Vec<_>>();
    assert_eq!(names(&v.a), ["other_pass"]);

    let cfg = three_ports(d, &format!("AfXdp(interface: \"{}\")", v.a));
    let out = bin().args(["vmdq-vswitch", "--report", "0"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with another's program on the interface");
    let want = format!("{}:2:", cfg.display());
    assert!(
        err.contains(&want)
            && err.contains(&format!("uplink: interface `{}` already has an XDP program", v.a))
            && err.contains("`other_pass`")
            && err.contains("replace: true"),
        "{err}"
    );
    assert!(!d.join("v1.sock").exists(), "nothing started");
    assert_eq!(names(&v.a), ["other_pass"], "left as it was");

    let cfg = three_ports(d, &format!("AfXdp(interface: \"{}\", replace: true)", v.a));
    let sw = Switch::start(d, &cfg);
    let guests: Vec<Guest> = (1..=3).map(|n| Guest::start(&d.join(format!("v{n}.sock")), true, true)).collect();
    for g in &guests {
        g.wait_ready();
    }
    assert!(wait_for(|| names(&v.a).iter().any(|n| n.starts_with("snabb_xsk")), 10), "{:?}", names(&v.a));
    // A second switch on the same interface: refused, naming the first.
    let d2 = tempfile::tempdir().unwrap();
    let cfg2 = three_ports(d2.path(), &format!("AfXdp(interface: \"{}\", replace: true)", v.a));
    let out = bin().args(["vmdq-vswitch", "--report", "0"]).arg(&cfg2).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("in use by another snabb-rs process (pid {})", sw.pid())),
        "{err}"
    );
    let k_rx = kernel_stat(&v.a, "rx_packets").unwrap();
    let k_tx = kernel_stat(&v.a, "tx_packets").unwrap() + kernel_stat(&v.a, "tx_dropped").unwrap();
    let mut wire = Rig::named("wire", AfXdpArgs::new(&v.b)).unwrap();
    let far = [0x02, 0, 0, 0, 0, 0x0b];
    let mut frames = Vec::new();
    for i in 0..100 {
        frames.push(tagged(mac(1), far, 10, i, 300));
        frames.push(tagged(mac(2), far, 10, 1000 + i, 100));
        frames.push(tagged(mac(3), far, 20, 2000 + i, 1500));
    }
    for i in 0..50 {
        // vm3's address on vm1's VLAN, and an address no port has.
        frames.push(tagged(mac(3), far, 10, 3000 + i, 64));
        frames.push(tagged(UNKNOWN, far, 10, 4000 + i, 64));
    }
    wire.send(&frames);
    let want = [100, 100, 100];
    assert!(
        wait_for(|| guests.iter().map(Guest::received).eq(want), 20),
        "guests got {:?}{}",
        guests.iter().map(Guest::received).collect::<Vec<_>>(),
        sw.dump()
    );
    for (g, base) in guests.iter().zip([0, 1000, 2000]) {
        let mut n = numbers(&g.frames());
        n.sort();
        assert_eq!(n, (base..base + 100).collect::<Vec<_>>(), "frames reach their guest, untagged");
    }
    assert_eq!(guests[2].frames()[0].len(), 1496, "1500 bytes with a tag, 1496 without");
    // From vm3 to the wire: tagged with its VLAN.
    guests[2].send((0..100).map(|i| frame(far, mac(3), 5000 + i, 200)).collect());
    let got = wire.receive(100, Duration::from_secs(20));
    assert_eq!(got.len(), 100, "{}", sw.dump());
    assert!(got.iter().all(|f| f[12..16] == [0x81, 0x00, 0, 20] && f.len() == 204), "tagged for VLAN 20");
    let mut n: Vec<u32> = got.iter().map(|f| u32::from_be_bytes(f[18..22].try_into().unwrap())).collect();
    n.sort();
    assert_eq!(n, (5000..5100).collect::<Vec<_>>());
    // The uplink's counts, the kernel's, and where the rest went.
    let ours = || {
        (
            sw.counter("uplink-q0", "rx_packets") + sw.counter("uplink-q0", "xdp_rx_dropped"),
            sw.counter("uplink-q0", "tx_packets"),
        )
    };
    let kernel = || {
        (
            kernel_stat(&v.a, "rx_packets").unwrap() - k_rx,
            kernel_stat(&v.a, "tx_packets").unwrap() + kernel_stat(&v.a, "tx_dropped").unwrap() - k_tx,
        )
    };
    assert!(
        wait_for(|| ours() == (400, 100) && kernel() == (400, 100), 10),
        "ours {:?}, kernel {:?}{}",
        ours(),
        kernel(),
        sw.dump()
    );
    assert_eq!(sw.counter("switch", "drop/unknown_unicast") + sw.counter("switch", "drop/vlan"), 100, "{}", sw.dump());
    drop(guests);
    let err = sw.stop();
    assert!(!err.contains("ERROR"), "{err}");
    assert!(err.contains("in native mode"), "the log says where the program runs: {err}");
    assert!(names(&v.a).is_empty(), "the program is off after stop: {:?}", names(&v.a));
    wire.stop();
}
