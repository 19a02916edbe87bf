//! PcapWriter's files are read by a third party: tcpdump.

use snabb_core::selftest::{require_program, skipped};
use snabb_core::{Args, Config, Engine, Limit};

#[test]
fn tcpdump_reads_what_pcapwriter_writes() {
    let tcpdump = match require_program("tcpdump") {
        Ok(p) => p,
        Err(e) if skipped(&e).is_some() => return eprintln!("{e}"),
        Err(e) => panic!("{e:#}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.pcap");
    let mut c = Config::new();
    c.app_args(
        "src",
        "Source",
        Args::from_ron(
            "(sizes: [60, 1514, 9000], count: 30, dst: \"02:00:00:00:00:02\", src: \"02:00:00:00:00:01\", ethertype: 0x0800, vlan: 42)",
        )
        .unwrap(),
    )
    .app("w", "PcapWriter", &snabb_apps_basic::pcap::PcapWriterArgs { file: file.clone(), format: None })
    .link("src.output -> w.input");
    let mut e = Engine::new(snabb_apps_basic::registry());
    e.configure(&c).unwrap();
    e.run(Limit::Breaths(5));
    drop(e);
    let out = std::process::Command::new(tcpdump).args(["-nn", "-e", "-r"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "tcpdump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 30, "{text}");
    for (i, l) in lines.iter().enumerate() {
        let len = [60, 1514, 9000][i % 3];
        assert!(l.contains("02:00:00:00:00:01 > 02:00:00:00:00:02"), "{l}");
        assert!(l.contains("vlan 42"), "{l}");
        assert!(l.contains(&format!("length {len}")), "frame {i} should be {len} bytes: {l}");
    }
}
