//! `snabb-rs top [PID]`: live per-link rates of a running snabb-rs process,
//! read from its counters in shared memory.
//!
//! With `--once` it samples twice, `--interval` apart, prints a plain table
//! and exits (for scripts); otherwise it is a terminal UI refreshed every
//! interval (q or Esc to quit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use snabb_core::shm;

#[derive(Clone, Default)]
struct Sample {
    at: Option<Instant>,
    counters: BTreeMap<String, u64>,
}

fn sample(dir: &Path) -> Result<Sample> {
    Ok(Sample { at: Some(Instant::now()), counters: shm::read_tree(dir)? })
}

/// One row of the link table.
pub struct LinkRow {
    pub link: String,
    pub mpps: f64,
    pub gbps: f64,
    pub drops_per_s: f64,
    pub packets: u64,
    pub drops: u64,
}

fn link_rows(a: &Sample, b: &Sample) -> Vec<LinkRow> {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64().max(1e-6),
        _ => 1.0,
    };
    // Links of the main engine (interlinks among them, by their config
    // name) under links/, and each worker's own under workers/<w>/links/.
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for k in b.counters.keys() {
        let (prefix, rest) = match k.strip_prefix("links/") {
            Some(rest) => ("", rest),
            None => match k.strip_prefix("workers/").and_then(|r| r.split_once("/links/")) {
                Some((w, rest)) => (w, rest),
                None => continue,
            },
        };
        if let Some((link, _)) = rest.rsplit_once('/') {
            let (label, path) = if prefix.is_empty() {
                (link.to_string(), format!("links/{link}"))
            } else {
                (format!("{link} [{prefix}]"), format!("workers/{prefix}/links/{link}"))
            };
            links.insert(label, path);
        }
    }
    let get = |s: &Sample, l: &str, c: &str| s.counters.get(&format!("{l}/{c}")).copied().unwrap_or(0);
    links
        .iter()
        .map(|(label, l)| {
            let d = |c| get(b, l, c).saturating_sub(get(a, l, c)) as f64 / secs;
            LinkRow {
                link: label.clone(),
                mpps: d("txpackets") / 1e6,
                gbps: d("txbytes") * 8.0 / 1e9,
                drops_per_s: d("txdrop"),
                packets: get(b, l, "txpackets"),
                drops: get(b, l, "txdrop"),
            }
        })
        .collect()
}

/// One row per worker: breaths per second, busy share, CPU.
fn worker_rows(a: &Sample, b: &Sample) -> Vec<String> {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64().max(1e-6),
        _ => 1.0,
    };
    let mut names: Vec<&str> = b
        .counters
        .keys()
        .filter_map(|k| k.strip_prefix("worker-status/").and_then(|r| r.split_once('/')).map(|(w, _)| w))
        .collect();
    names.dedup();
    let get = |s: &Sample, w: &str, c: &str| s.counters.get(&format!("worker-status/{w}/{c}")).copied().unwrap_or(0);
    let mut rows = Vec::new();
    let mut one = |w: &str, breaths: (u64, u64), idle: (u64, u64), cpu: String, failed: bool| {
        let db = breaths.1.saturating_sub(breaths.0);
        let di = idle.1.saturating_sub(idle.0);
        let busy = if db == 0 { 0.0 } else { (db - di.min(db)) as f64 * 100.0 / db as f64 };
        rows.push(format!(
            "{w:<16} {:>12.0} {busy:>7.0}% {cpu:>5}{}",
            db as f64 / secs,
            if failed { "  FAILED (see the log)" } else { "" }
        ));
    };
    let c = |s: &Sample, k: &str| s.counters.get(k).copied().unwrap_or(0);
    one(
        "main",
        (c(a, "engine/breaths"), c(b, "engine/breaths")),
        (c(a, "engine/idle_breaths"), c(b, "engine/idle_breaths")),
        "-".into(),
        false,
    );
    for w in names {
        one(
            w,
            (get(a, w, "breaths"), get(b, w, "breaths")),
            (get(a, w, "idle_breaths"), get(b, w, "idle_breaths")),
            get(b, w, "cpu").to_string(),
            get(b, w, "failed") != 0,
        );
    }
    rows
}

fn app_rows(b: &Sample) -> Vec<(String, u64)> {
    b.counters.iter().filter_map(|(k, v)| k.strip_prefix("apps/").map(|n| (n.to_string(), *v))).collect()
}

/// The counter directory of `pid`, or of the only process running.
fn process_dir(root: &Path, pid: Option<u32>) -> Result<(u32, PathBuf)> {
    let live = shm::live_processes(root);
    match pid {
        Some(p) => match live.into_iter().find(|(q, _)| *q == p) {
            Some(x) => Ok(x),
            None => bail!("no running snabb-rs process {p} under {}", root.display()),
        },
        None => match live.len() {
            0 => bail!("no running snabb-rs process under {}", root.display()),
            1 => Ok(live.into_iter().next().unwrap()),
            _ => bail!(
                "several snabb-rs processes run ({}): name one",
                live.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

fn program_name(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("program")).unwrap_or_else(|_| "?".into()).trim().to_string()
}

fn plain_table(pid: u32, dir: &Path, a: &Sample, b: &Sample) -> String {
    let mut s = format!("snabb-rs process {pid} ({})\n", program_name(dir));
    s += &format!("{:<48} {:>10} {:>10} {:>12} {:>16} {:>12}\n", "link", "Mpps", "Gbps", "drops/s", "packets", "drops");
    for r in link_rows(a, b) {
        s += &format!(
            "{:<48} {:>10.3} {:>10.3} {:>12.0} {:>16} {:>12}\n",
            r.link, r.mpps, r.gbps, r.drops_per_s, r.packets, r.drops
        );
    }
    if b.counters.keys().any(|k| k.starts_with("worker-status/")) {
        s += &format!("{:<16} {:>12} {:>8} {:>5}\n", "worker", "breaths/s", "busy", "CPU");
        for r in worker_rows(a, b) {
            s += &r;
            s += "\n";
        }
    }
    let apps = app_rows(b);
    if !apps.is_empty() {
        s += "app counters:\n";
        for (k, v) in apps {
            s += &format!("  {k:<60} {v:>16}\n");
        }
    }
    s
}

pub fn top(pid: Option<u32>, once: bool, interval: f64) -> Result<()> {
    let root = shm::default_root();
    let (pid, dir) = process_dir(&root, pid)?;
    let interval = Duration::from_secs_f64(interval.max(0.05));
    if once {
        let a = sample(&dir)?;
        std::thread::sleep(interval);
        let b = sample(&dir)?;
        print!("{}", plain_table(pid, &dir, &a, &b));
        return Ok(());
    }
    tui(pid, &dir, interval)
}

fn tui(pid: u32, dir: &Path, interval: Duration) -> Result<()> {
    use crossterm::event::{self, Event, KeyCode};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

    let mut terminal = ratatui::init();
    let mut prev = sample(dir)?;
    let result = (|| -> Result<()> {
        loop {
            if event::poll(interval)? {
                if let Event::Key(k) = event::read()? {
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
            if !dir.exists() {
                bail!("process {pid} has exited");
            }
            let now = sample(dir)?;
            let rows = link_rows(&prev, &now);
            let apps = app_rows(&now);
            let workers = worker_rows(&prev, &now);
            let name = program_name(dir);
            terminal.draw(|f| {
                let [head, links, app_area] =
                    Layout::vertical([Constraint::Length(1), Constraint::Min(5), Constraint::Percentage(40)])
                        .areas(f.area());
                let workers = if now.counters.keys().any(|k| k.starts_with("worker-status/")) {
                    format!(
                        "   workers: {}",
                        workers
                            .iter()
                            .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                } else {
                    String::new()
                };
                f.render_widget(
                    Paragraph::new(format!("snabb-rs top: process {pid} ({name})   q: quit{workers}")),
                    head,
                );
                let header = Row::new(["link", "Mpps", "Gbps", "drops/s", "packets", "drops"])
                    .style(Style::default().add_modifier(Modifier::BOLD));
                let body = rows.iter().map(|r| {
                    Row::new(vec![
                        Cell::from(r.link.clone()),
                        Cell::from(format!("{:.3}", r.mpps)),
                        Cell::from(format!("{:.3}", r.gbps)),
                        Cell::from(format!("{:.0}", r.drops_per_s)),
                        Cell::from(r.packets.to_string()),
                        Cell::from(r.drops.to_string()),
                    ])
                });
                let widths = [
                    Constraint::Min(30),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(16),
                    Constraint::Length(12),
                ];
                f.render_widget(
                    Table::new(body, widths)
                        .header(header)
                        .block(Block::default().borders(Borders::ALL).title("links")),
                    links,
                );
                let app_lines: Vec<Row> = apps
                    .iter()
                    .map(|(k, v)| Row::new(vec![Cell::from(k.clone()), Cell::from(v.to_string())]))
                    .collect();
                f.render_widget(
                    Table::new(app_lines, [Constraint::Min(40), Constraint::Length(16)])
                        .block(Block::default().borders(Borders::ALL).title("app counters")),
                    app_area,
                );
            })?;
            prev = now;
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_samples() {
        let t0 = Instant::now();
        let mut a = Sample { at: Some(t0), counters: BTreeMap::new() };
        let mut b = Sample { at: Some(t0 + Duration::from_secs(2)), counters: BTreeMap::new() };
        a.counters.insert("links/a.x -> b.y/txpackets".into(), 1_000_000);
        b.counters.insert("links/a.x -> b.y/txpackets".into(), 5_000_000);
        a.counters.insert("links/a.x -> b.y/txbytes".into(), 0);
        b.counters.insert("links/a.x -> b.y/txbytes".into(), 2_000_000_000);
        b.counters.insert("links/a.x -> b.y/txdrop".into(), 10);
        let rows = link_rows(&a, &b);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].link, "a.x -> b.y");
        assert!((rows[0].mpps - 2.0).abs() < 1e-9);
        assert!((rows[0].gbps - 8.0).abs() < 1e-9);
        assert!((rows[0].drops_per_s - 5.0).abs() < 1e-9);
        assert_eq!(rows[0].packets, 5_000_000);
    }
}
