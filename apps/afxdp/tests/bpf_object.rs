//! The committed XDP object (bpf/xsk_redirect.o, what `cargo build` embeds
//! on a machine without clang) is what bpf/xsk_redirect.c compiles to: its
//! program and map sections hold the same bytes. Skipped where there is no
//! clang (then the build used the committed object anyway).

use std::path::Path;
use std::process::Command;

use object::{Object, ObjectSection, SectionKind};

/// Sections that matter to the kernel: code, maps, license.
fn sections(elf: &[u8]) -> Vec<(String, Vec<u8>)> {
    let f = object::File::parse(elf).expect("an ELF object");
    let mut v: Vec<(String, Vec<u8>)> = f
        .sections()
        .filter(|s| matches!(s.kind(), SectionKind::Text | SectionKind::Data | SectionKind::ReadOnlyData))
        .map(|s| (s.name().unwrap_or("?").to_string(), s.data().unwrap_or(&[]).to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn committed_object_matches_the_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("xsk_redirect-{}.o", std::process::id()));
    let r = Command::new("clang")
        .args(["-O2", "-Wall", "-Werror", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c"])
        .arg(dir.join("bpf/xsk_redirect.c"))
        .arg("-o")
        .arg(&out)
        .output();
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: no clang");
            return;
        }
        Err(e) => panic!("clang: {e}"),
        Ok(o) => assert!(o.status.success(), "clang: {}", String::from_utf8_lossy(&o.stderr)),
    }
    let fresh = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let committed = std::fs::read(dir.join("bpf/xsk_redirect.o")).unwrap();
    let (a, b) = (sections(&fresh), sections(&committed));
    assert!(!a.is_empty(), "no program in the fresh object");
    assert_eq!(
        a, b,
        "bpf/xsk_redirect.o is stale: rebuild it with \
         `clang -O2 -Wall -Werror -target bpf -I/usr/include/x86_64-linux-gnu -c bpf/xsk_redirect.c -o bpf/xsk_redirect.o`"
    );
}
