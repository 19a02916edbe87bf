//! `snabb-rs run CONFIG`: run any graph from a RON file.
//!
//! Counters go to shared memory for `snabb-rs top`. The file is watched:
//! when it changes, the new graph is applied live (apps and links that did
//! not change keep running). SIGINT or SIGTERM stop the engine cleanly, and
//! a per-link report is printed at the end (and every `--report` seconds).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use snabb_core::{Config, Engine, Limit, ShmOptions};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Stop on SIGINT and SIGTERM instead of dying mid-breath.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Stop `engine` (at its next timer check) once SIGINT or SIGTERM came.
pub fn stop_on_signals(engine: &mut Engine) {
    engine.timers().add(
        "signals",
        Duration::from_millis(50),
        true,
        Box::new(|e: &mut Engine| {
            if STOP.load(Ordering::Relaxed) {
                e.request_stop();
            }
        }),
    );
}

pub struct RunOptions {
    pub duration: Option<f64>,
    pub report: Option<f64>,
    pub busywait: bool,
    pub shm: bool,
    pub program: String,
    /// Worker (or `main`) CPUs over the config's.
    pub cpus: Vec<(String, usize)>,
}

/// Run `engine` (already configured) with the options' reports and limits.
pub fn run_engine(engine: &mut Engine, opts: &RunOptions, watch: Option<&Path>) -> Result<()> {
    engine.busywait = opts.busywait;
    if opts.shm {
        let so = ShmOptions::for_process(&opts.program);
        engine.enable_shm(&so).with_context(|| format!("counters in {}", so.root.join(&so.name).display()))?;
        log::info!("counters in {}", engine.shm_path().unwrap().display());
    }
    catch_signals();
    stop_on_signals(engine);
    if let Some(every) = opts.report {
        engine.timers().add(
            "report",
            Duration::from_secs_f64(every),
            true,
            Box::new(|e: &mut Engine| print!("{}{}", e.report_load(), e.report_links())),
        );
    }
    if let Some(path) = watch {
        watch_config(engine, path.to_path_buf());
    }
    match opts.duration {
        Some(s) => engine.run(Limit::Duration(Duration::from_secs_f64(s))),
        None => engine.run(Limit::Forever),
    }
    print!("{}{}{}", engine.report_load(), engine.report_links(), engine.report_apps());
    Ok(())
}

/// Re-read `path` once a second; apply it when its modification time changes.
fn watch_config(engine: &mut Engine, path: PathBuf) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    engine.timers().add(
        "reload",
        Duration::from_secs(1),
        true,
        Box::new(move |e: &mut Engine| {
            let now = mtime(&path);
            if now.is_none() || now == last {
                return;
            }
            last = now;
            match Config::from_file(&path).and_then(|c| e.configure(&c)) {
                Ok(()) => log::info!("{}: applied the new config", path.display()),
                Err(err) => log::error!("{err}; still running the previous config"),
            }
        }),
    );
}

pub fn run(file: &Path, opts: RunOptions) -> Result<()> {
    let config = Config::from_file(file)?;
    let mut engine = Engine::new(crate::registry());
    engine.busywait = opts.busywait;
    for (name, cpu) in &opts.cpus {
        engine.set_worker_cpu(name, *cpu).with_context(|| format!("--cpu {name}={cpu}"))?;
    }
    engine.configure(&config)?;
    run_engine(&mut engine, &opts, Some(file))
}
