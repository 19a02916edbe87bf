//! The copier's level as `SNABB_RS_COPY` sets it, seen from outside the
//! process, and the copy and decap benchmarks running end to end (tiny
//! sizes: this checks that they work, not how fast).

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snabb-rs"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{cmd:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn environment_caps_the_copy_level() {
    let quick = ["bench", "copy", "--sizes", "64,300", "--rounds", "1", "--arena-mib", "4"];
    for level in ["portable", "sse2"] {
        let text = run(bin().args(quick).env("SNABB_RS_COPY", level));
        assert!(text.contains(&format!("dispatch uses {level}")), "{text}");
        assert!(text.contains(&format!("copy()={level}")), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains(" warm ") || l.contains(" cold ")).count(), 4, "{text}");
    }
    // Asking for more than the CPU has keeps the best it has, with a warning.
    let out = bin().args(quick).env("SNABB_RS_COPY", "no-such-level").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of"));
}

#[test]
fn decap_bench_runs_every_case() {
    let text = run(bin().args(["bench", "decap", "--packets", "20000", "--rounds", "1"]));
    for case in
        ["baseline", "vlan strip", "qinq strip", "vxlan4 strip", "vxlan6 strip", "gre4 key strip", "l2tpv3 strip"]
    {
        assert!(text.contains(case), "{case}: {text}");
    }
    assert!(text.contains("vxlan4 strip, fixed start") && text.contains("vxlan6 encap"), "{text}");
    let text = run(bin().args(["bench", "decap", "--packets", "20000", "--rounds", "1", "--only", "vlan strip"]));
    assert_eq!(text.lines().count(), 4, "header, column names, baseline, the case: {text}");
    assert!(!bin().args(["bench", "decap", "--only", "nothing-like-this"]).status().unwrap().success());
}
