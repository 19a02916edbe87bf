//! Compiles the XDP program (bpf/xsk_redirect.c) with clang into an eBPF
//! object that the crate embeds (`include_bytes!`). clang (any version
//! with the BPF target, 11 or later), the kernel's UAPI headers
//! (linux-libc-dev) and libbpf's `bpf_helpers.h` (libbpf-dev) are needed
//! at build time only; `scripts/test.sh` installs them. `CLANG` names
//! another compiler.

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
        Err(e) => format!("cannot run `{clang}`: {e}"),
    };
    panic!(
        "snabb-apps-afxdp: compiling its XDP program ({src}) with `{clang} -target bpf` failed:\n{failed}\n\
         It needs clang, linux-libc-dev and libbpf-dev at build time \
         (`apt-get install clang libbpf-dev`; scripts/test.sh installs them)."
    );
}
