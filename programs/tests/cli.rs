//! The `snabb-rs` command as users run it: configs in `configs/` check,
//! usage errors fail, a running process's counters are read by `top` from
//! another process, and a config edited on disk is applied live.

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
