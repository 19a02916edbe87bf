//! The `snabb-rs` command as users run it: configs in `configs/` check,
//! usage errors fail, a running process's counters are read by `top` from
//! another process, a config edited on disk is applied live, and a graph
//! runs over two workers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snabb-rs"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn every_example_config_checks() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ron") {
            let out = bin().args(["config", "check"]).arg(&p).output().unwrap();
            assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
            n += 1;
        }
    }
    assert!(n >= 3, "found {n} configs");
}

#[test]
fn bad_config_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.ron");
    std::fs::write(&f, "(\n  apps: {\n    \"src\": (class: \"Source\", args: (size: 60, colour: 3)),\n  },\n)\n")
        .unwrap();
    let out = bin().args(["config", "check"]).arg(&f).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", f.display())), "{err}");
    assert!(err.contains("app `src` (class `Source`)") && err.contains("colour"), "{err}");
}

/// What `run` would refuse, `config check` refuses, at the place in the file.
#[test]
fn config_check_catches_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.ron");
    let check = |text: &str| {
        std::fs::write(&f, text).unwrap();
        let check = bin().args(["config", "check"]).arg(&f).output().unwrap();
        let run = bin().args(["run", "--no-shm", "--duration", "0"]).arg(&f).output().unwrap();
        assert!(!check.status.success() && !run.status.success(), "{text}");
        let (c, r) = (String::from_utf8_lossy(&check.stderr), String::from_utf8_lossy(&run.stderr));
        assert!(r.contains(c.trim_end().trim_start_matches("snabb-rs: ")), "check: {c}\nrun: {r}");
        c.to_string()
    };
    let vm = |args: &str| {
        format!(
            "(\n  apps: {{\n    \"vm1\": (class: \"VhostUser\", args: ({args})),\n    \"sink\": (class: \"Sink\"),\n  }},\n"
        )
    };
    let sock = dir.path().join("vm1.sock");
    let s = sock.display();
    // A MAC with five bytes: refused while parsing, at its place.
    let e = check(&(vm(&format!("socket: \"{s}\", mac: Some(\"52:54:00:12:34\")")) + ")"));
    assert!(e.contains(&format!("{}:3:", f.display())) && e.contains("52:54:00:12:34"), "{e}");
    // A misspelled port: the link's place and the ports the class has.
    let e = check(&(vm(&format!("socket: \"{s}\"")) + "  links: [\"vm1.outptu -> sink.input\"],\n)"));
    assert!(e.contains(&format!("{}:6:11: link `vm1.outptu -> sink.input`", f.display())), "{e}");
    assert!(e.contains("has no output `outptu` (its outputs: output, supply); did you mean `output`?"), "{e}");
    // A missing field: the app's line and column.
    let e = check("(\n  apps: {\n    \"vm1\": (class: \"VhostUser\"),\n  },\n)");
    assert!(e.contains(&format!("{}:3:5:", f.display())) && e.contains("`socket`"), "{e}");
    // A value out of range (checked by the class's `validate`).
    let e = check(&(vm(&format!("socket: \"{s}\", queues: 0")) + ")"));
    assert!(e.contains(&format!("{}:3:", f.display())) && e.contains("queues 0"), "{e}");
}

#[test]
fn usage_errors_print_help_and_fail() {
    let out = bin().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: snabb-rs"));
    let out = bin().arg("no-such-program").output().unwrap();
    assert!(!out.status.success());
    let out = bin().args(["run"]).output().unwrap();
    assert!(!out.status.success(), "run needs a config");
    let out = bin().args(["selftest", "NoSuchApp"]).output().unwrap();
    assert!(!out.status.success());
}

/// Kills the child when dropped, so a failed test leaves no process behind.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut f: impl FnMut() -> bool, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn top_reads_counters_of_another_process() {
    let root = tempfile::tempdir().unwrap();
    let child = bin()
        .args(["run", "--duration", "20"])
        .arg(repo().join("configs/basic1.ron"))
        .env("SNABB_RS_SHM_ROOT", root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let child = Child(child);
    let dir = root.path().join(pid.to_string());
    let counter = dir.join("links/source.tx -> tee.rx/txpackets.counter");
    assert!(wait_for(|| counter.exists(), 10), "counter file appears");
    // The counter moves while the process runs.
    let read = || u64::from_ne_bytes(std::fs::read(&counter).unwrap()[..8].try_into().unwrap());
    let first = read();
    assert!(wait_for(|| read() > first, 10), "counter advances");
    let out = bin()
        .args(["top", "--once", "--interval", "0.5"])
        .arg(pid.to_string())
        .env("SNABB_RS_SHM_ROOT", root.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("source.tx -> tee.rx")).expect(&text);
    let mpps: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(mpps > 0.1, "a busy link shows a rate: {line}");
    assert!(text.contains("sink/packets"), "{text}");
    // The process removes its directory when it stops (SIGTERM).
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_for(|| !dir.exists(), 10), "counter directory removed on exit");
    drop(child);
}

#[test]
fn an_edited_config_is_applied_live() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("live.ron");
    let v1 = r#"(apps: {"src": (class: "Source", args: (size: 60)), "sink": (class: "Sink")},
                links: ["src.output -> sink.input"])"#;
    std::fs::write(&f, v1).unwrap();
    let child = bin()
        .args(["run", "--duration", "30"])
        .arg(&f)
        .env("SNABB_RS_SHM_ROOT", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Child(child);
    let shm = dir.path().join(pid.to_string());
    assert!(wait_for(|| shm.join("links/src.output -> sink.input").exists(), 10));
    // Add a second sink on a second output: the first link keeps going.
    let v2 = r#"(apps: {"src": (class: "Source", args: (size: 60)), "sink": (class: "Sink"), "sink2": (class: "Sink")},
                links: ["src.output -> sink.input", "src.copy -> sink2.input"])"#;
    std::thread::sleep(Duration::from_millis(1100)); // mtime granularity
    std::fs::write(&f, v2).unwrap();
    assert!(wait_for(|| shm.join("links/src.copy -> sink2.input/txpackets.counter").exists(), 10), "new link appears");
    // A broken edit is refused and the graph keeps running.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&f, "(apps: {\"src\": (class: \"Nope\")})").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("applied the new config"), "{stderr}");
    assert!(stderr.contains("no app class `Nope`") && stderr.contains("still running the previous config"), "{stderr}");
    assert!(stdout.contains("sent on src.copy -> sink2.input"), "{stdout}");
    assert!(stdout.contains("configs"), "{stdout}");
}

/// Starts `run CONFIG` with counters under `root`, and waits for its counters.
fn start(config: &Path, root: &Path, extra: &[&str]) -> (Child, u32, PathBuf) {
    let child = bin()
        .args(["run", "--duration", "20"])
        .args(extra)
        .arg(config)
        .env("SNABB_RS_SHM_ROOT", root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let dir = root.join(pid.to_string());
    assert!(wait_for(|| dir.join("engine/breaths.counter").exists(), 10), "counters appear");
    (Child(child), pid, dir)
}

#[test]
fn top_without_a_terminal_prints_plain_samples() {
    let root = tempfile::tempdir().unwrap();
    let (_child, pid, dir) = start(&repo().join("configs/basic1.ron"), root.path(), &[]);
    // config.ron is there from the start, not only after a reload.
    assert!(std::fs::read_to_string(dir.join("config.ron")).unwrap().contains("source.tx -> tee.rx"));
    // stdout a pipe, stdin nothing: no terminal UI, plain samples.
    let out = bin()
        .args(["top", "--interval", "0.2", "--count", "2"])
        .env("SNABB_RS_SHM_ROOT", root.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches(&format!("snabb-rs process {pid}")).count(), 2, "{text}");
    assert!(text.contains("per second") && text.contains("source/sent"), "{text}");
    // And without --count too: it runs until stopped, never panics.
    let mut top = Child(
        bin()
            .args(["top", "--interval", "0.2"])
            .env("SNABB_RS_SHM_ROOT", root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(top.0.try_wait().unwrap().is_none(), "top keeps running");
    let _ = top.0.kill();
    let out = std::mem::replace(&mut top.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("source.tx -> tee.rx"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn stats_export_json_prometheus_and_ps() {
    let root = tempfile::tempdir().unwrap();
    let prom = root.path().join("snabb.prom");
    let config = repo().join("configs/basic1.ron");
    let (mut child, pid, _dir) =
        start(&config, root.path(), &["--metrics", prom.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"]);
    let env = ("SNABB_RS_SHM_ROOT", root.path());
    // top --once --json: every link and app counter, with rates.
    let out = bin().args(["top", "--once", "--json", "--interval", "0.3"]).env(env.0, env.1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["pid"], pid);
    assert!(j["links"]["source.tx -> tee.rx"]["counters"]["txpackets"].as_u64().unwrap() > 0, "{j}");
    assert!(j["links"]["source.tx -> tee.rx"]["mpps"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["apps"]["sink"]["packets"]["value"].as_u64().unwrap() > 0, "{j}");
    // --metrics: a Prometheus file, rewritten every second.
    assert!(wait_for(|| prom.exists(), 5));
    let read = |t: &str| -> u64 {
        let line =
            t.lines().find(|l| l.starts_with("snabb_link_txpackets{") && l.contains("link=\"source.tx -> tee.rx\""));
        line.expect(t).rsplit(' ').next().unwrap().parse().unwrap()
    };
    let first = read(&std::fs::read_to_string(&prom).unwrap());
    assert!(wait_for(|| read(&std::fs::read_to_string(&prom).unwrap()) > first, 5), "the file is rewritten");
    assert!(std::fs::read_to_string(&prom).unwrap().contains("# TYPE snabb_link_txpackets counter"));
    // --metrics-listen: the same over HTTP.
    // The address is in the log (port 0: the kernel chose it).
    let mut log = String::new();
    let mut err = child.0.stderr.take().unwrap();
    let mut buf = [0u8; 4096];
    let addr = loop {
        use std::io::Read;
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "no metrics address in the log: {log}");
        log += &String::from_utf8_lossy(&buf[..n]);
        if let Some(a) = log.split("metrics at http://").nth(1).and_then(|r| r.split("/metrics").next()) {
            break a.to_string();
        }
    };
    let body = http_get(&addr, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("snabb_app_counter{"), "{body}");
    assert!(http_get(&addr, "/").starts_with("HTTP/1.1 404"));
    // ps: the instance, its config file and threads.
    let out = bin().args(["ps", "--json"]).env(env.0, env.1).output().unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = ps.as_array().unwrap().iter().find(|i| i["pid"] == pid).expect("listed");
    assert_eq!(me["program"], "run");
    assert_eq!(me["config_file"], std::fs::canonicalize(&config).unwrap().display().to_string());
    assert!(!me["threads"].as_array().unwrap().is_empty());
    let out = bin().arg("ps").env(env.0, env.1).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.trim_start().starts_with(&pid.to_string()) && l.contains("basic1.ron")), "{text}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A user who may not write /var/run/snabb-rs gets counters in
/// $XDG_RUNTIME_DIR/snabb-rs (said in the log), and `top` finds them there.
/// Needs root, to become another user (`setpriv`); says so and passes otherwise.
#[test]
fn run_as_a_user_falls_back_to_the_runtime_dir() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let perm = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    perm(tmp.path(), 0o755);
    let exe = tmp.path().join("snabb-rs");
    std::fs::copy(env!("CARGO_BIN_EXE_snabb-rs"), &exe).unwrap();
    perm(&exe, 0o755);
    let config = tmp.path().join("basic1.ron");
    std::fs::copy(repo().join("configs/basic1.ron"), &config).unwrap();
    perm(&config, 0o644);
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::os::unix::fs::chown(&xdg, Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(args)
            .env_remove("SNABB_RS_SHM_ROOT")
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("SNABB_RS_NO_HUGEPAGES", "1");
        c
    };
    let mut child = Child(
        as_nobody(&["run", "--duration", "20", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let dir = xdg.join("snabb-rs").join(pid.to_string());
    assert!(wait_for(|| dir.join("engine/breaths.counter").exists(), 10), "counters under $XDG_RUNTIME_DIR");
    let out = as_nobody(&["top", "--once", "--interval", "0.2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("snabb-rs process {pid}")));
    let out = as_nobody(&["ps"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("basic1.ron"));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("counters in {}", dir.display())) && log.contains("cannot use /var/run/snabb-rs"),
        "{log}"
    );
    assert!(!dir.exists(), "removed on exit");
}

/// `bench zerocopy` runs both modes and directions and checks what it
/// measures (every frame delivered, the model clean); a short run.
#[test]
fn bench_zerocopy_runs() {
    let out = bin()
        .args(["bench", "zerocopy", "--packets", "3000", "--sizes", "64,1500", "--buffers", "2060", "--dirs", "rx,tx"])
        .env("SNABB_RS_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("ZEROCOPY_RATIO").count(), 4, "{text}");
    // Lending copies nothing at 1500 bytes into 2 KiB buffers.
    let row = text.lines().find(|l| l.starts_with("rx") && l.contains(" 1500 ") && l.contains("Zero")).unwrap();
    assert_eq!(row.split_whitespace().nth(5), Some("0"), "{row}");
}

/// `bench vm2vm` runs and checks what it measures (every frame vm1's guest
/// posted reaches vm2's, of the right length); a short run.
#[test]
fn bench_vm2vm_runs() {
    let out = bin().args(["bench", "vm2vm", "--packets", "3000"]).env("SNABB_RS_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for size in [64, 1500] {
        assert!(text.lines().any(|l| l.starts_with(&format!("VM2VM size={size} ")) && l.contains("frames=")), "{text}");
    }
}

/// basic1 over two workers from a config file, as `snabb-rs run` runs it:
/// every Source packet reaches the Sink on the other worker, twice (the
/// Tee), exactly; the workers show in the load report.
#[test]
fn basic1_on_two_workers_delivers_every_packet() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("basic1-workers.ron");
    // Paced, with rings long enough that a loaded machine cannot make the
    // Sink's worker miss any.
    std::fs::write(
        &f,
        r#"(
    apps: {
        "source": (class: "Source", args: (size: 60, count: 50000, pps: 100000.0), worker: "w1"),
        "tee": (class: "Tee", worker: "w1"),
        "sink": (class: "Sink", worker: "w2"),
    },
    links: [
        "source.tx -> tee.rx",
        (link: "tee.tx1 -> sink.rx1", size: 65536),
        (link: "tee.tx2 -> sink.rx2", size: 65536),
    ],
    workers: { "w1": (cpu: 0), "w2": (cpu: 1) },
)"#,
    )
    .unwrap();
    let out = bin()
        .args(["run", "--no-shm", "--duration", "3", "--cpu", "w1=1"])
        .arg(&f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("100000 packets, 6000000 bytes"), "{text}");
    assert!(text.contains("50,000 sent on tee.tx1 -> sink.rx1 (loss rate: 0%) between workers w1 -> w2"), "{text}");
    assert!(!text.contains("il_"), "the engine's hidden apps show: {text}");
    // w1 pinned by --cpu over the config's 0, w2 by the config.
    assert!(text.contains("worker w1:") && text.contains("worker w2:"), "{text}");
    assert_eq!(text.matches("(pinned to 1)").count(), 2, "{text}");
}

/// basic1 over two workers as `top` and `ps` show it: each link between
/// workers is one row named as in the config, with the workers it joins
/// (not the engine's hidden apps at its ends); `ps` lists each worker with
/// its CPU and its apps.
#[test]
fn top_and_ps_show_workers_and_the_links_between_them() {
    let root = tempfile::tempdir().unwrap();
    let f = root.path().join("basic1-workers.ron");
    std::fs::write(
        &f,
        r#"(
    apps: {
        "source": (class: "Source", args: (size: 60, pps: 100000.0), worker: "w1"),
        "tee": (class: "Tee", worker: "w1"),
        "sink": (class: "Sink", worker: "w2"),
    },
    links: ["source.tx -> tee.rx", "tee.tx1 -> sink.rx1", "tee.tx2 -> sink.rx2"],
    workers: { "w1": (cpu: 0), "w2": (cpu: 1) },
)"#,
    )
    .unwrap();
    let (_child, pid, dir) = start(&f, root.path(), &[]);
    let env = ("SNABB_RS_SHM_ROOT", root.path());
    assert!(wait_for(|| dir.join("links/tee.tx1 -> sink.rx1/txpackets.counter").exists(), 10));
    let out = bin().args(["top", "--once", "--json", "--interval", "0.3"]).env(env.0, env.1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let links: Vec<&String> = j["links"].as_object().unwrap().keys().collect();
    assert!(links.iter().all(|l| !l.contains("il_")), "hidden apps in {links:?}");
    for l in ["tee.tx1 -> sink.rx1 [w1 -> w2]", "tee.tx2 -> sink.rx2 [w1 -> w2]"] {
        assert!(j["links"][l]["mpps"].as_f64().unwrap() > 0.0, "{l}: {j}");
    }
    assert!(links.contains(&&"source.tx -> tee.rx [w1]".to_string()), "{links:?}");
    let out = bin().args(["top", "--once", "--interval", "0.2"]).env(env.0, env.1).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tee.tx1 -> sink.rx1 [w1 -> w2]") && !text.contains("il_"), "{text}");
    // ps: the layout.
    let out = bin().args(["ps", "--json"]).env(env.0, env.1).output().unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = ps.as_array().unwrap().iter().find(|i| i["pid"] == pid).expect("listed");
    let layout: Vec<(String, Vec<String>)> = me["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let apps = w["apps"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
            (w["name"].as_str().unwrap().to_string(), apps)
        })
        .collect();
    let want = |n: &str, a: &[&str]| (n.to_string(), a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(layout, [want("main", &[]), want("w1", &["source", "tee"]), want("w2", &["sink"])]);
    let w1 = &me["workers"][1];
    assert_eq!((w1["cpu"].as_u64(), w1["allowed"].as_str()), (Some(0), Some("0")), "{me}");
    let out = bin().arg("ps").env(env.0, env.1).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("worker w2") && text.contains("CPU 1 [1]: sink"), "{text}");
}
