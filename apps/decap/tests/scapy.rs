//! Decap and Encap against a third party's encoder and decoder: scapy
//! (Debian's python3-scapy) writes tunnelled frames that our Decap must
//! open, frames it must refuse (for the reason it says), and reads what
//! our Encap writes, checking every field, length and checksum by
//! recomputing them itself. The scripts are in tests/scapy/.
//!
//! Without scapy the tests say so and pass; under CI (`SNABB_RS_CI=1`) a
//! missing scapy is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use snabb_apps_basic::pcap::{PcapFileReader, PcapReaderArgs, PcapWriterArgs};
use snabb_apps_basic::{Match, PcapWriter};
use snabb_apps_decap::decap::Matcher;
use snabb_apps_decap::{Decap, DecapArgs, Encap, EncapArgs, Reject, Tunnel};
use snabb_core::config::ron_options;
use snabb_core::ethernet::MacAddr;
use snabb_core::{Config, Engine, Limit, selftest};

/// A Python that can import scapy, or None (after saying why).
fn python() -> Option<&'static str> {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py).args(["-c", "import scapy.all"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    if selftest::in_ci() {
        panic!("scapy is missing (apt-get install python3-scapy): required under SNABB_RS_CI");
    }
    eprintln!("skipped: no python3 with scapy (apt-get install python3-scapy)");
    None
}

/// The pcaps of make_pcaps.py, written once per run of this test binary.
fn pcaps(py: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scapy-pcaps");
        std::fs::create_dir_all(&dir).unwrap();
        run(py, &[script("make_pcaps.py").as_os_str(), dir.as_os_str()]);
        dir
    })
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scapy").join(name)
}

fn run(py: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(py).args(args).output().expect("run python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}:\n{text}");
    text
}

fn frames(path: &Path) -> Vec<Vec<u8>> {
    let mut r = PcapFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut v = vec![];
    while let Some(rec) = r.next_record().unwrap() {
        v.push(rec.data);
    }
    v
}

/// The tunnel of each kind make_pcaps.py writes, as the receiving end
/// (192.0.2.2 / 2001:db8::2) sees it.
fn tunnel(kind: &str) -> Tunnel {
    let text = match kind {
        "vlan" => "Vlan(vid: 100)",
        "qinq" => "QinQ(outer: 20, inner: 100)",
        "vxlan4" => r#"Vxlan(local: "192.0.2.2", remote: "192.0.2.1", vni: 5000)"#,
        "vxlan6" => r#"Vxlan(local: "2001:db8::2", remote: "2001:db8::1", vni: 0xabcdef)"#,
        "gre4" => r#"Gre(local: "192.0.2.2", remote: "192.0.2.1")"#,
        "gre4key" => r#"Gre(local: "192.0.2.2", remote: "192.0.2.1", key: 99)"#,
        "gre4csum" => r#"Gre(local: "192.0.2.2", remote: "192.0.2.1", checksum: true)"#,
        "gre6key" | "gre6opts" => r#"Gre(local: "2001:db8::2", remote: "2001:db8::1", key: 99)"#,
        "l2tpv3" => {
            r#"L2tpv3(local: "2001:db8::2", remote: "2001:db8::1", session: 0x1234, local_cookie: 0x1122334455667788, remote_cookie: 0x1122334455667788)"#
        }
        _ => panic!("kind {kind}"),
    };
    ron_options().from_str(text).unwrap()
}

const KINDS: [&str; 10] =
    ["vlan", "qinq", "vxlan4", "vxlan6", "gre4", "gre4key", "gre4csum", "gre6key", "gre6opts", "l2tpv3"];

/// PcapReader -> Decap -> Match.rx, with the expected inner frames on
/// Match.comparator: every frame scapy tunnelled comes out as scapy's
/// inner frame.
#[test]
fn decap_opens_what_scapy_tunnels() {
    let Some(py) = python() else { return };
    let dir = pcaps(py);
    for kind in KINDS {
        let file = dir.join(format!("{kind}.pcap"));
        let inner = dir.join(format!("{kind}.inner.pcap"));
        let n = frames(&inner).len() as u64;
        assert!(n >= 9, "{kind}: {n} frames");
        let mut c = Config::new();
        c.app("tunnelled", "PcapReader", &PcapReaderArgs { file, r#loop: false })
            .app("expected", "PcapReader", &PcapReaderArgs { file: inner, r#loop: false })
            .app(
                "decap",
                "Decap",
                &DecapArgs { tunnel: tunnel(kind), verify_udp_checksum: true, refuse_ip_options: false },
            )
            .app("match", "Match", &())
            .link("tunnelled.output -> decap.input")
            .link("decap.output -> match.rx")
            .link("expected.output -> match.comparator");
        let mut e = Engine::new(snabb_apps_decap::registry());
        e.configure(&c).unwrap();
        let done = |e: &Engine| e.app::<Match>("match").is_some_and(|m| m.matched() + m.mismatched() == n);
        e.run_until(done, Duration::from_secs(10));
        e.run(Limit::Breaths(2));
        let m = e.app::<Match>("match").unwrap();
        let d = e.app::<Decap>("decap").unwrap();
        let rejects: Vec<_> = Reject::ALL.iter().map(|&r| (r.name(), d.rejected(r))).filter(|x| x.1 > 0).collect();
        assert_eq!(m.mismatched(), 0, "{kind}: {:?}", m.errors());
        assert_eq!((m.matched(), d.decapsulated()), (n, n), "{kind}: rejected {rejects:?}");
    }
}

/// Frames scapy built wrong on purpose are refused for the reason
/// make_pcaps.py gives.
#[test]
fn decap_refuses_scapys_bad_frames_for_the_right_reason() {
    let Some(py) = python() else { return };
    let dir = pcaps(py);
    let bad = frames(&dir.join("rejects.pcap"));
    let reasons = std::fs::read_to_string(dir.join("rejects.txt")).unwrap();
    let reasons: Vec<&str> = reasons.lines().collect();
    assert_eq!(bad.len(), reasons.len());
    assert!(bad.len() >= 15);
    let m = Matcher::new(&tunnel("vxlan4"), true);
    for (i, (frame, want)) in bad.iter().zip(&reasons).enumerate() {
        match m.classify(frame) {
            Ok(s) => panic!("reject {i} ({want}) was accepted: {s:?}"),
            Err(r) => assert_eq!(r.name(), *want, "reject {i}"),
        }
    }
}

/// PcapReader (scapy's inner frames) -> Encap -> PcapWriter, then scapy
/// reads the result and checks every field, length and checksum.
#[test]
fn scapy_reads_what_encap_writes() {
    let Some(py) = python() else { return };
    let dir = pcaps(py);
    let mut check = vec![script("check_encap.py").into_os_string()];
    for kind in KINDS {
        let inner = dir.join(format!("{kind}.inner.pcap"));
        let out = dir.join(format!("{kind}.encap.pcap"));
        let n = frames(&inner).len() as u64;
        // Our Encap is the sending end: the receiving end's tunnel reversed.
        let mut args = EncapArgs::new(
            tunnel(kind).reversed(),
            MacAddr([0x02, 0, 0, 0, 0, 0xaa]),
            MacAddr([0x02, 0, 0, 0, 0, 0xbb]),
        );
        if let Tunnel::Vlan { pcp, .. } = &mut args.tunnel {
            *pcp = 3;
        }
        if let Tunnel::L2tpv3 { session, .. } = &mut args.tunnel {
            *session = 0x1234;
        }
        let mut c = Config::new();
        c.app("inner", "PcapReader", &PcapReaderArgs { file: inner.clone(), r#loop: false })
            .app("encap", "Encap", &args)
            .app("writer", "PcapWriter", &PcapWriterArgs { file: out.clone(), format: None })
            .link("inner.output -> encap.input")
            .link("encap.output -> writer.input");
        let mut e = Engine::new(snabb_apps_decap::registry());
        e.configure(&c).unwrap();
        e.run_until(|e| e.app::<Encap>("encap").unwrap().encapsulated() == n, Duration::from_secs(10));
        e.run(Limit::Breaths(2));
        assert!(e.app::<PcapWriter>("writer").is_some());
        drop(e);
        check.extend([kind.into(), out.into_os_string(), inner.into_os_string()]);
    }
    // One run of scapy for all kinds: starting it costs a second or two.
    let args: Vec<&std::ffi::OsStr> = check.iter().map(|s| s.as_os_str()).collect();
    let report = run(py, &args);
    for kind in KINDS {
        assert!(report.contains(&format!("{kind}: 9 frames checked, 0 problems")), "{report}");
    }
}
