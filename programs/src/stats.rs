//! Reading a running instance's counters from shared memory, for `top`,
//! `ps` and the metrics export:
//!
//!   find(pid)               the counter directory of an instance, in any root
//!   sample(dir)             every counter, with the time it was read
//!   link_rows(a, b)         per-link rates between two samples
//!   app_rows(a, b)          per-app counters and their rates
//!   json(..)                a sample as JSON (`top --once --json`)
//!   prometheus(..)          a sample in Prometheus's text exposition format

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use snabb_core::config::{LinkSpec, MAIN};
use snabb_core::{shm, worker};

#[derive(Clone)]
pub struct Sample {
    pub at: Instant,
    /// `engine::ticks()` when taken: the clock of the engines' busy_ticks.
    pub ticks: u64,
    pub counters: BTreeMap<String, u64>,
}

pub fn sample(dir: &Path) -> Result<Sample> {
    Ok(Sample { at: Instant::now(), ticks: snabb_core::engine::ticks(), counters: shm::read_tree(dir)? })
}

fn secs(a: &Sample, b: &Sample) -> f64 {
    (b.at - a.at).as_secs_f64().max(1e-6)
}

/// The counter directory of `pid`, or of the only instance running, looked
/// for in every root (`shm::roots`).
pub fn find(pid: Option<u32>) -> Result<(u32, PathBuf)> {
    let live = shm::live_everywhere();
    let roots = || shm::roots().iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    match pid {
        Some(p) => match live.into_iter().find(|(q, _)| *q == p) {
            Some(x) => Ok(x),
            None => bail!("no running snabb-rs process {p} (looked in {})", roots()),
        },
        None => match live.len() {
            0 => bail!("no running snabb-rs process (looked in {})", roots()),
            1 => Ok(live.into_iter().next().unwrap()),
            _ => bail!(
                "several snabb-rs processes run ({}): name one (`snabb-rs ps` lists them)",
                live.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

pub fn program_name(dir: &Path) -> String {
    text(dir, "program").unwrap_or_else(|| "?".into())
}

/// A small text file of an instance (`program`, `config_file`).
pub fn text(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string())
}

/// One row of the link table.
pub struct LinkRow {
    /// The link, with `[worker]` after it when it is a worker's own, or
    /// `[w1 -> w2]` when it joins two workers.
    pub link: String,
    /// Where its counters are (`links/<link>` or `workers/<w>/links/<link>`).
    pub path: String,
    pub mpps: f64,
    pub gbps: f64,
    pub drops_per_s: f64,
    pub packets: u64,
    pub drops: u64,
}

pub fn link_rows(a: &Sample, b: &Sample) -> Vec<LinkRow> {
    let secs = secs(a, b);
    // The main engine's links (interlinks among them, by their config
    // name) under links/, each worker's own under workers/<w>/links/:
    // (link, worker or "", where its counters are).
    let mut links: Vec<(String, String, String)> = Vec::new();
    for k in b.counters.keys() {
        let (worker, rest) = match k.strip_prefix("links/") {
            Some(rest) => ("", rest),
            None => match k.strip_prefix("workers/").and_then(|r| r.split_once("/links/")) {
                Some((w, rest)) => (w, rest),
                None => continue,
            },
        };
        let Some((link, _)) = rest.rsplit_once('/') else { continue };
        let path = if worker.is_empty() { format!("links/{link}") } else { format!("workers/{worker}/links/{link}") };
        if links.last().is_none_or(|(_, _, p)| *p != path) {
            links.push((link.to_string(), worker.to_string(), path));
        }
    }
    let get = |s: &Sample, l: &str, c: &str| s.counters.get(&format!("{l}/{c}")).copied().unwrap_or(0);
    let row = |link: String, path: &str, paths: &[&str]| {
        // Packets and bytes as the first path counts them, drops of all.
        let sum = |s: &Sample, c: &str| paths.iter().map(|p| get(s, p, c)).sum::<u64>();
        let d = |v: &dyn Fn(&Sample) -> u64| v(b).saturating_sub(v(a)) as f64 / secs;
        LinkRow {
            link,
            path: path.to_string(),
            mpps: d(&|s| get(s, paths[0], "txpackets")) / 1e6,
            gbps: d(&|s| get(s, paths[0], "txbytes")) * 8.0 / 1e9,
            drops_per_s: d(&|s| sum(s, "txdrop")),
            packets: get(b, paths[0], "txpackets"),
            drops: sum(b, "txdrop"),
        }
    };
    // A link between workers is published by the main engine under its
    // config name (the ring's counts); the two local links that carry it,
    // into the ring on one worker and out of it on the other (between
    // hidden apps the engine made), are folded into its row: packets and
    // bytes as its sender's side counts them, the drops of all three.
    let at = |l: &str| links.iter().position(|(m, _, _)| m == l);
    let mut folded = vec![false; links.len()];
    let mut cross: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (link, worker, _)) in links.iter().enumerate() {
        let Some(spec) = worker.is_empty().then(|| link.parse::<LinkSpec>().ok()).flatten() else { continue };
        let (into, out) = worker::hop_links(&spec);
        if let (Some(p), Some(q)) = (at(&into), at(&out)) {
            folded[p] = true;
            folded[q] = true;
            cross.push((i, p, q));
        }
    }
    let name = |w: &str| if w.is_empty() { MAIN.to_string() } else { w.to_string() };
    let mut rows = Vec::new();
    for (i, (link, worker, path)) in links.iter().enumerate() {
        if folded[i] {
            continue;
        }
        match cross.iter().find(|(c, _, _)| *c == i) {
            Some(&(_, p, q)) => {
                let (wf, wt) = (name(&links[p].1), name(&links[q].1));
                rows.push(row(format!("{link} [{wf} -> {wt}]"), path, &[&links[p].2, path, &links[q].2]));
            }
            None if worker.is_empty() => rows.push(row(link.clone(), path, &[path])),
            None => rows.push(row(format!("{link} [{worker}]"), path, &[path])),
        }
    }
    rows
}

/// One line per worker (main first): breaths per second, busy share, CPU.
/// Busy: the share of the time spent in breaths that moved packets (from
/// busy_ticks), or, from an engine that does not keep it, the share of
/// such breaths.
pub fn worker_rows(a: &Sample, b: &Sample) -> Vec<String> {
    let secs = secs(a, b);
    let c = |s: &Sample, k: &str| s.counters.get(k).copied().unwrap_or(0);
    let mut names: Vec<&str> = b
        .counters
        .keys()
        .filter_map(|k| k.strip_prefix("worker-status/").and_then(|r| r.split_once('/')).map(|(w, _)| w))
        .collect();
    names.dedup();
    let elapsed = b.ticks.saturating_sub(a.ticks);
    // `dir`: where an engine's breaths, idle_breaths and busy_ticks are.
    let row = |w: &str, dir: &str, cpu: String, failed: bool| {
        let (breaths, idle, busy_ticks) =
            (format!("{dir}/breaths"), format!("{dir}/idle_breaths"), format!("{dir}/busy_ticks"));
        let db = c(b, &breaths).saturating_sub(c(a, &breaths));
        let di = c(b, &idle).saturating_sub(c(a, &idle)).min(db);
        let busy = if b.counters.contains_key(&busy_ticks) && elapsed > 0 {
            (c(b, &busy_ticks).saturating_sub(c(a, &busy_ticks)) as f64 * 100.0 / elapsed as f64).min(100.0)
        } else if db == 0 {
            0.0
        } else {
            (db - di) as f64 * 100.0 / db as f64
        };
        let failed = if failed { "  FAILED (see the log)" } else { "" };
        format!("{w:<16} {:>12.0} {busy:>7.0}% {cpu:>5}{failed}", db as f64 / secs)
    };
    let mut rows = vec![row("main", "engine", "-".into(), false)];
    for w in names {
        rows.push(row(
            w,
            &format!("worker-status/{w}"),
            c(b, &format!("worker-status/{w}/cpu")).to_string(),
            c(b, &format!("worker-status/{w}/failed")) != 0,
        ));
    }
    rows
}

/// One app counter: `app/name`, its value and its rate per second.
pub struct AppRow {
    pub counter: String,
    pub value: u64,
    pub per_s: f64,
}

pub fn app_rows(a: &Sample, b: &Sample) -> Vec<AppRow> {
    let secs = secs(a, b);
    b.counters
        .iter()
        .filter_map(|(k, &v)| {
            // (An app on a worker: `app/name [worker]`.)
            let counter = match k.strip_prefix("apps/") {
                Some(c) => c.to_string(),
                None => {
                    let (w, c) = k.strip_prefix("workers/")?.split_once("/apps/")?;
                    format!("{c} [{w}]")
                }
            };
            let before = a.counters.get(k).copied().unwrap_or(v);
            Some(AppRow { counter, value: v, per_s: v.saturating_sub(before) as f64 / secs })
        })
        .collect()
}

/// The plain table `top --once` prints.
pub fn plain_table(pid: u32, dir: &Path, a: &Sample, b: &Sample) -> String {
    let mut s = format!("snabb-rs process {pid} ({})\n", program_name(dir));
    let _ =
        writeln!(s, "{:<48} {:>10} {:>10} {:>12} {:>16} {:>12}", "link", "Mpps", "Gbps", "drops/s", "packets", "drops");
    for r in link_rows(a, b) {
        let _ = writeln!(
            s,
            "{:<48} {:>10.3} {:>10.3} {:>12.0} {:>16} {:>12}",
            r.link, r.mpps, r.gbps, r.drops_per_s, r.packets, r.drops
        );
    }
    if b.counters.keys().any(|k| k.starts_with("worker-status/")) {
        let _ = writeln!(s, "{:<16} {:>12} {:>8} {:>5}", "worker", "breaths/s", "busy", "CPU");
        for r in worker_rows(a, b) {
            let _ = writeln!(s, "{r}");
        }
    }
    let apps = app_rows(a, b);
    if !apps.is_empty() {
        let _ = writeln!(s, "{:<60} {:>16} {:>14}", "app counter", "value", "per second");
        for r in apps {
            let _ = writeln!(s, "  {:<58} {:>16} {:>14.0}", r.counter, r.value, r.per_s);
        }
    }
    s
}

/// A sample as JSON: every counter, and the rates since the previous one.
pub fn json(pid: u32, dir: &Path, a: &Sample, b: &Sample) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut links = Map::new();
    for r in link_rows(a, b) {
        let prefix = format!("{}/", r.path);
        let counters: Map<String, Value> = b
            .counters
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_string(), json!(v)))
            .collect();
        links.insert(
            r.link.clone(),
            json!({ "counters": counters, "mpps": r.mpps, "gbps": r.gbps, "drops_per_s": r.drops_per_s }),
        );
    }
    let mut apps: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in app_rows(a, b) {
        let (app, name) = r.counter.split_once('/').unwrap_or((&r.counter, ""));
        apps.entry(app.to_string())
            .or_default()
            .insert(name.to_string(), json!({ "value": r.value, "per_s": r.per_s }));
    }
    let engine: Map<String, Value> =
        b.counters.iter().filter_map(|(k, v)| Some((k.strip_prefix("engine/")?.to_string(), json!(v)))).collect();
    json!({
        "pid": pid,
        "program": program_name(dir),
        "config_file": text(dir, "config_file"),
        "interval_s": secs(a, b),
        "engine": engine,
        "links": links,
        "apps": apps,
    })
}

/// The counters in Prometheus's text exposition format (version 0.0.4).
/// Links: `snabb_link_<counter>{link, from, to}`; apps:
/// `snabb_app_counter{app, counter}` (apps name their own counters, so the
/// name is a label); the engine: `snabb_engine_<counter>`. Every series has
/// the `pid` and `program` labels.
pub fn prometheus(pid: u32, program: &str, counters: &BTreeMap<String, u64>) -> String {
    let base = format!("pid=\"{pid}\",program=\"{}\"", label(program));
    let mut families: BTreeMap<String, (&str, &str, Vec<String>)> = BTreeMap::new();
    for (k, v) in counters {
        let (family, kind, help, labels) = if let Some(rest) = k.strip_prefix("engine/") {
            let kind = if rest == "packets_in_use" || rest == "packets_total" { "gauge" } else { "counter" };
            (format!("snabb_engine_{}", metric(rest)), kind, "engine counter", String::new())
        } else if let Some(rest) = k.strip_prefix("links/") {
            let Some((link, c)) = rest.rsplit_once('/') else { continue };
            let (from, to) = link.split_once(" -> ").unwrap_or((link, ""));
            let labels = format!(",link=\"{}\",from=\"{}\",to=\"{}\"", label(link), label(from), label(to));
            (format!("snabb_link_{}", metric(c)), "counter", "link counter", labels)
        } else if let Some(rest) = k.strip_prefix("apps/") {
            let Some((app, c)) = rest.split_once('/') else { continue };
            (
                "snabb_app_counter".to_string(),
                "untyped",
                "an app's counter",
                format!(",app=\"{}\",counter=\"{}\"", label(app), label(c)),
            )
        } else {
            continue;
        };
        families
            .entry(family.clone())
            .or_insert((kind, help, Vec::new()))
            .2
            .push(format!("{family}{{{base}{labels}}} {v}"));
    }
    let mut s = String::new();
    for (name, (kind, help, lines)) in families {
        let _ = writeln!(s, "# HELP {name} snabb-rs {help}\n# TYPE {name} {kind}");
        for l in lines {
            s += &l;
            s.push('\n');
        }
    }
    s
}

/// A metric name: letters, digits and `_`.
fn metric(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn two_samples() -> (Sample, Sample) {
        let t0 = Instant::now();
        let mut a = Sample { at: t0, ticks: 1_000, counters: BTreeMap::new() };
        let mut b = Sample { at: t0 + Duration::from_secs(2), ticks: 2_001_000, counters: BTreeMap::new() };
        a.counters.insert("links/a.x -> b.y/txpackets".into(), 1_000_000);
        b.counters.insert("links/a.x -> b.y/txpackets".into(), 5_000_000);
        a.counters.insert("links/a.x -> b.y/txbytes".into(), 0);
        b.counters.insert("links/a.x -> b.y/txbytes".into(), 2_000_000_000);
        b.counters.insert("links/a.x -> b.y/txdrop".into(), 10);
        a.counters.insert("apps/b/drop/vlan".into(), 10);
        b.counters.insert("apps/b/drop/vlan".into(), 30);
        b.counters.insert("engine/breaths".into(), 7);
        (a, b)
    }

    #[test]
    fn rates_from_two_samples() {
        let (a, b) = two_samples();
        let rows = link_rows(&a, &b);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].link, "a.x -> b.y");
        assert!((rows[0].mpps - 2.0).abs() < 1e-9);
        assert!((rows[0].gbps - 8.0).abs() < 1e-9);
        assert!((rows[0].drops_per_s - 5.0).abs() < 1e-9);
        assert_eq!(rows[0].packets, 5_000_000);
        let apps = app_rows(&a, &b);
        assert_eq!((apps[0].counter.as_str(), apps[0].value), ("b/drop/vlan", 30));
        assert!((apps[0].per_s - 10.0).abs() < 1e-9);
    }

    #[test]
    fn busy_is_the_share_of_time_in_breaths_that_moved_packets() {
        let (mut a, mut b) = two_samples();
        // Main: 98 of 100 breaths idle, but the two busy ones took 45% of the time.
        a.counters.insert("engine/breaths".into(), 0);
        b.counters.insert("engine/breaths".into(), 100);
        b.counters.insert("engine/idle_breaths".into(), 98);
        a.counters.insert("engine/busy_ticks".into(), 50);
        b.counters.insert("engine/busy_ticks".into(), 900_050);
        // A worker of an engine without busy_ticks: the share of busy breaths.
        b.counters.insert("worker-status/w1/breaths".into(), 10);
        b.counters.insert("worker-status/w1/idle_breaths".into(), 7);
        b.counters.insert("worker-status/w1/cpu".into(), 1);
        let rows = worker_rows(&a, &b);
        assert!(rows[0].starts_with("main") && rows[0].contains(" 45%"), "{rows:?}");
        assert!(rows[1].starts_with("w1") && rows[1].contains(" 30%"), "{rows:?}");
    }

    #[test]
    fn json_has_every_counter_and_rates() {
        let (a, b) = two_samples();
        let j = json(42, Path::new("/nonexistent"), &a, &b);
        assert_eq!(j["pid"], 42);
        assert_eq!(j["links"]["a.x -> b.y"]["counters"]["txdrop"], 10);
        assert_eq!(j["links"]["a.x -> b.y"]["mpps"], 2.0);
        assert_eq!(j["apps"]["b"]["drop/vlan"]["value"], 30);
        assert_eq!(j["engine"]["breaths"], 7);
    }

    #[test]
    fn prometheus_exposition() {
        let (_, b) = two_samples();
        let text = prometheus(42, "run", &b.counters);
        assert!(text.contains("# TYPE snabb_link_txpackets counter\n"), "{text}");
        assert!(
            text.contains(
                "snabb_link_txpackets{pid=\"42\",program=\"run\",link=\"a.x -> b.y\",from=\"a.x\",to=\"b.y\"} 5000000\n"
            ),
            "{text}"
        );
        assert!(text.contains("snabb_app_counter{pid=\"42\",program=\"run\",app=\"b\",counter=\"drop/vlan\"} 30"));
        assert!(text.contains("snabb_engine_breaths{pid=\"42\",program=\"run\"} 7"));
        // One HELP and TYPE per family, before its samples.
        assert_eq!(text.matches("# TYPE snabb_link_txpackets").count(), 1);
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
