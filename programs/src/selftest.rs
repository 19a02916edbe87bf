//! `snabb-rs selftest [APP]`: each app's selftest, or one app's.

use anyhow::{Result, bail};
use snabb_core::selftest::{Selftest, skipped};

/// Every selftest this binary carries, by app class name.
pub fn all() -> Vec<(&'static str, Selftest)> {
    let mut v = Vec::new();
    v.extend(snabb_apps_basic::selftests());
    v.extend(snabb_apps_intel10g::selftests());
    v.extend(snabb_apps_copier::selftests());
    v.extend(snabb_apps_decap::selftests());
    v.extend(snabb_apps_vmdq_splitter::selftests());
    v.extend(snabb_apps_rawsocket::selftests());
    v.extend(snabb_apps_vhost_user::selftests());
    v.extend(snabb_apps_rate_limiter::selftests());
    v.extend(snabb_apps_pcap_filter::selftests());
    v.extend(snabb_apps_virtio_user::selftests());
    v.extend(snabb_apps_afxdp::selftests());
    v
}

pub fn run(only: Option<&str>) -> Result<()> {
    let tests = all();
    let chosen: Vec<_> = match only {
        None => tests,
        Some(name) => {
            let t: Vec<_> = tests.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).cloned().collect();
            if t.is_empty() {
                bail!(
                    "no selftest for `{name}`; there are: {}",
                    tests.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                );
            }
            t
        }
    };
    let (mut passed, mut failed, mut skips) = (0, 0, 0);
    for (name, test) in chosen {
        let t0 = std::time::Instant::now();
        match test() {
            Ok(()) => {
                passed += 1;
                println!("ok       {name} ({:.2} s)", t0.elapsed().as_secs_f64());
            }
            Err(e) => match skipped(&e) {
                Some(why) => {
                    skips += 1;
                    println!("skipped  {name}: {why}");
                }
                None => {
                    failed += 1;
                    println!("FAILED   {name}: {e:#}");
                }
            },
        }
    }
    println!("selftest: {passed} passed, {failed} failed, {skips} skipped");
    if failed > 0 {
        bail!("{failed} selftest(s) failed");
    }
    Ok(())
}
