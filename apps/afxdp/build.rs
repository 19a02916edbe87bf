//! Compiles the XDP program (bpf/xsk_redirect.c) with clang into an eBPF
//! object that the crate embeds (`include_bytes!`). clang (any version
//! with the BPF target, 11 or later), the kernel's UAPI headers
//! (linux-libc-dev) and libbpf's `bpf_helpers.h` (libbpf-dev) are needed
//! at build time only; `scripts/test.sh` installs them. `CLANG` names
//! another compiler.
//!
//! Without clang the object built from the same source and committed
//! beside it (bpf/xsk_redirect.o, made with `clang -O2 -target bpf`,
//! without debug info) is embedded instead, with a warning: so that
//! `cargo build` works on a machine with only a Rust toolchain (the
//! README's first command). `tests/bpf_object.rs` checks, where clang is,
//! that the committed object's program is what the source compiles to.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let src = "bpf/xsk_redirect.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("xsk_redirect.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    // `-target bpf` does not search the multiarch directory where Debian
    // keeps <asm/types.h>, which <linux/bpf.h> includes.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    if Path::new(&multiarch).is_dir() {
        cmd.arg(format!("-I{multiarch}"));
    }
    cmd.args(["-c", src, "-o"]).arg(&out);
    let failed = match cmd.output() {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && env::var_os("CLANG").is_none() => {
            println!("cargo:rerun-if-changed=bpf/xsk_redirect.o");
            println!(
                "cargo:warning=snabb-apps-afxdp: no clang: embedding the committed bpf/xsk_redirect.o \
                 (install clang, libbpf-dev and linux-libc-dev to build it from bpf/xsk_redirect.c)"
            );
            std::fs::copy("bpf/xsk_redirect.o", &out).expect("copying bpf/xsk_redirect.o");
            return;
        }
        Err(e) => format!("cannot run `{clang}`: {e}"),
    };
    panic!(
        "snabb-apps-afxdp: compiling its XDP program ({src}) with `{clang} -target bpf` failed:\n{failed}\n\
         It needs clang, linux-libc-dev and libbpf-dev at build time \
         (`apt-get install clang libbpf-dev`; scripts/test.sh installs them)."
    );
}
