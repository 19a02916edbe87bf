//! Veth pairs for tests: made with `ip`, deleted on drop, quiet (no IPv6,
//! so the kernel sends nothing of its own on them), and the kernel's
//! counters for each end.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use snabb_core::selftest::{in_ci, require_program, skip};

/// A veth pair in this network namespace, deleted when dropped.
pub struct VethPair {
    pub a: String,
    pub b: String,
}

/// Skip (an error under CI) unless this process may make interfaces.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = "needs root to make veth interfaces";
        return Err(if in_ci() { anyhow::anyhow!(why) } else { skip(why) });
    }
    require_program("ip").map(drop)
}

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Turn IPv6 off on an interface, so the kernel sends no router or
/// neighbour solicitations of its own on it.
pub fn quiet(ifname: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1")
        .with_context(|| format!("disabling IPv6 on {ifname}"))
}

impl VethPair {
    /// A new pair with names unique to this process and call, both ends up.
    pub fn new() -> Result<VethPair> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("srs{}x{n}", std::process::id());
        let v = VethPair { a: format!("{base}a"), b: format!("{base}b") };
        ip(&["link", "add", &v.a, "type", "veth", "peer", "name", &v.b])?;
        for i in [&v.a, &v.b] {
            quiet(i)?;
            ip(&["link", "set", i, "up"])?;
        }
        Ok(v)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting one end deletes both.
        let _ = ip(&["link", "del", &self.a]);
    }
}

/// The kernel's counter `name` (rx_packets, tx_bytes...) for an interface.
pub fn kernel_stat(ifname: &str, name: &str) -> Result<u64> {
    let p = format!("/sys/class/net/{ifname}/statistics/{name}");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    s.trim().parse().with_context(|| format!("{p}: `{}`", s.trim()))
}
