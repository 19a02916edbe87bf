//! SELFTESTS
//!
//! Each app has a selftest: a function that builds a small graph around
//! the app, runs it and checks what came out. `snabb-rs selftest` runs them
//! all, and each crate's unit tests run them too. A selftest that needs
//! something this machine lacks (a NIC, QEMU) returns [`skip`]: that is
//! reported as skipped, with the reason, not as a pass.

use std::fmt;

/// A selftest: `Ok` when it passed.
pub type Selftest = fn() -> anyhow::Result<()>;

/// The error a selftest returns when it cannot run here.
#[derive(Debug)]
pub struct Skipped(pub String);

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Return this from a selftest that cannot run here.
pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Skipped(reason.into()))
}

/// The reason, when `e` says the test was skipped.
pub fn skipped(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<Skipped>().map(|s| s.0.as_str())
}

/// Whether the suite runs under CI (`SNABB_RS_CI=1`, set by
/// `scripts/test.sh`): there a missing peer is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("SNABB_RS_CI").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The path of program `name`, or a skip (an error under CI) when it is not
/// installed.
pub fn require_program(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => Ok(p),
        None if in_ci() => Err(anyhow::anyhow!("`{name}` is not installed (scripts/test.sh installs it)")),
        None => Err(skip(format!("`{name}` is not installed"))),
    }
}
