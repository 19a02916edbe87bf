//! `snabb-rs ps`: the running snabb-rs instances (those with counters in
//! shared memory, in any root), with pid, program, config file, uptime, CPU
//! use since start and their threads: each thread's name, the CPU it last
//! ran on and the CPUs it may run on (Snabb's `snabb ps`); and the worker
//! layout: each worker (main first), the CPU its thread last ran on, the
//! CPUs it may run on, and the apps of the config it runs (the engine's
//! hidden ends of links between workers left out).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use snabb_core::shm;

use snabb_core::config::MAIN;
use snabb_core::{Config, worker};

use crate::stats::{program_name, text};

#[derive(Serialize, Debug)]
pub struct Thread {
    pub tid: u32,
    pub name: String,
    /// The CPU it last ran on.
    pub cpu: Option<u32>,
    /// The CPUs it may run on (`Cpus_allowed_list`).
    pub allowed: String,
}

/// A worker (or `main`) and what runs on it.
#[derive(Serialize, Debug)]
pub struct Worker {
    pub name: String,
    pub cpu: Option<u32>,
    pub allowed: String,
    pub apps: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Instance {
    pub pid: u32,
    pub program: String,
    pub config_file: Option<String>,
    pub counters: String,
    pub uptime_s: f64,
    /// CPU time used since start, as a share of one CPU (100 = one CPU busy).
    pub cpu_percent: f64,
    pub threads: Vec<Thread>,
    pub workers: Vec<Worker>,
}

/// The apps of the config an engine publishes in `dir` (its part, when it
/// is one of several workers), but the hidden ends of links between them.
fn apps_of(dir: &Path) -> Vec<String> {
    let Some(c) = std::fs::read_to_string(dir.join("config.ron")).ok().and_then(|t| Config::parse(&t, None).ok())
    else {
        return Vec::new();
    };
    let hidden = [worker::SEND_CLASS, worker::RECEIVE_CLASS];
    c.apps().filter(|(_, a)| !hidden.contains(&a.class.as_str())).map(|(n, _)| n.to_string()).collect()
}

/// Main and each worker of the instance publishing in `dir`, with the
/// thread that runs it (a worker's is named `worker-<name>`).
fn workers(pid: u32, dir: &Path, threads: &[Thread]) -> Vec<Worker> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("workers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for (name, thread, wdir) in
        std::iter::once((MAIN.to_string(), threads.iter().find(|t| t.tid == pid), dir.to_path_buf())).chain(
            names.into_iter().map(|n| {
                // (A thread's name is cut at 15 bytes.)
                let comm: String = format!("worker-{n}").chars().take(15).collect();
                let t = threads.iter().find(|t| t.name == comm);
                let d = dir.join("workers").join(&n);
                (n, t, d)
            }),
        )
    {
        out.push(Worker {
            name,
            cpu: thread.and_then(|t| t.cpu),
            allowed: thread.map(|t| t.allowed.clone()).unwrap_or_default(),
            apps: apps_of(&wdir),
        });
    }
    out
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces).
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()
}

pub fn instance(pid: u32, dir: &Path) -> Option<Instance> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    // Fields counted from `state` (field 3 in proc(5)): utime is 14, stime 15, starttime 22.
    let f = stat_fields(&proc_dir.join("stat"))?;
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = clock_ticks();
    let uptime_s = (system_uptime().unwrap_or(0.0) - num(22) / hz).max(0.0);
    let cpu_s = (num(14) + num(15)) / hz;
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) {
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
            // `processor` is field 39.
            let cpu = stat_fields(&t.path().join("stat")).and_then(|f| f.get(39 - 3)?.parse().ok());
            let allowed = std::fs::read_to_string(t.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
                })
                .unwrap_or_default();
            threads.push(Thread { tid, name, cpu, allowed });
        }
    }
    threads.sort_by_key(|t| t.tid);
    let workers = workers(pid, dir, &threads);
    Some(Instance {
        pid,
        program: program_name(dir),
        config_file: text(dir, "config_file"),
        counters: dir.display().to_string(),
        uptime_s,
        cpu_percent: if uptime_s > 0.0 { 100.0 * cpu_s / uptime_s } else { 0.0 },
        threads,
        workers,
    })
}

fn duration(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

pub fn ps(json: bool) -> Result<()> {
    let all: Vec<Instance> = shm::live_everywhere().iter().filter_map(|(pid, dir)| instance(*pid, dir)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        let roots: Vec<String> = shm::roots().iter().map(|r| r.display().to_string()).collect();
        println!("no snabb-rs instance running (looked in {})", roots.join(", "));
        return Ok(());
    }
    println!(
        "{:>8}  {:<14} {:>9} {:>6}  {:<40} threads (name cpu [allowed])",
        "pid", "program", "uptime", "cpu%", "config"
    );
    for i in &all {
        let threads: Vec<String> = i
            .threads
            .iter()
            .map(|t| format!("{} {} [{}]", t.name, t.cpu.map_or("?".into(), |c| c.to_string()), t.allowed))
            .collect();
        println!(
            "{:>8}  {:<14} {:>9} {:>6.1}  {:<40} {}",
            i.pid,
            i.program,
            duration(i.uptime_s),
            i.cpu_percent,
            i.config_file.as_deref().unwrap_or("-"),
            threads.join(", ")
        );
        // The worker layout, when there are workers.
        if i.workers.len() > 1 {
            for w in &i.workers {
                println!(
                    "{:>8}  worker {:<8} CPU {} [{}]: {}",
                    "",
                    w.name,
                    w.cpu.map_or("?".into(), |c| c.to_string()),
                    w.allowed,
                    if w.apps.is_empty() { "-".to_string() } else { w.apps.join(", ") }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_an_instance() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("program"), "run\n").unwrap();
        std::fs::write(dir.path().join("config_file"), "/etc/x.ron").unwrap();
        let i = instance(std::process::id(), dir.path()).unwrap();
        assert_eq!((i.program.as_str(), i.config_file.as_deref()), ("run", Some("/etc/x.ron")));
        assert!(!i.threads.is_empty() && i.threads.iter().any(|t| t.tid == std::process::id()));
        assert!(i.uptime_s >= 0.0 && i.cpu_percent >= 0.0);
        assert_eq!(duration(3725.0), "1h02m");
    }
}
