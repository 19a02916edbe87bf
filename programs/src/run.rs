//! `snabb-rs run CONFIG`: run any graph from a RON file.
//!
//! Counters go to shared memory for `snabb-rs top`. The file is watched:
//! when it changes, the new graph is applied live (apps and links that did
//! not change keep running). SIGINT or SIGTERM stop the engine cleanly, and
//! a per-link report is printed at the end (and every `--report` seconds).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use snabb_core::{Config, Engine, Limit, ShmOptions, shm};

/// Stop on SIGINT and SIGTERM instead of dying mid-breath: signal-hook's
/// handler only sets the flag returned, which a timer looks at.
pub fn catch_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).with_context(|| format!("catching signal {sig}"))?;
    }
    Ok(stop)
}

/// Stop `engine` (at its next timer check) once SIGINT or SIGTERM came.
pub fn stop_on_signals(engine: &mut Engine) -> Result<()> {
    let stop = catch_signals()?;
    engine.timers().add(
        "signals",
        Duration::from_millis(50),
        true,
        Box::new(move |e: &mut Engine| {
            if stop.load(Ordering::Relaxed) {
                e.request_stop();
            }
        }),
    );
    Ok(())
}

pub struct RunOptions {
    pub duration: Option<f64>,
    pub report: Option<f64>,
    pub busywait: bool,
    pub shm: bool,
    pub program: String,
    /// Worker (or `main`) CPUs over the config's.
    pub cpus: Vec<(String, usize)>,
    /// Prometheus text exposition, rewritten every second.
    pub metrics: Option<PathBuf>,
    /// Prometheus text exposition served over HTTP at this address.
    pub metrics_listen: Option<String>,
}

impl RunOptions {
    pub fn new(program: &str) -> RunOptions {
        RunOptions {
            duration: None,
            report: None,
            busywait: false,
            shm: true,
            program: program.into(),
            metrics: None,
            metrics_listen: None,
            cpus: Vec::new(),
        }
    }
}

/// Run `engine` (already configured) with the options' reports and limits.
pub fn run_engine(engine: &mut Engine, opts: &RunOptions, watch: Option<&Path>) -> Result<()> {
    engine.busywait = opts.busywait;
    if opts.shm {
        enable_shm(engine, opts, watch)?;
    } else if opts.metrics.is_some() || opts.metrics_listen.is_some() {
        anyhow::bail!("--metrics and --metrics-listen read the counters in shared memory: drop --no-shm");
    }
    if let Some(file) = &opts.metrics {
        metrics_file(engine, &opts.program, file.clone())?;
    }
    if let Some(addr) = &opts.metrics_listen {
        let dir = engine.shm_path().expect("shared memory on").to_path_buf();
        serve_metrics(addr, dir, opts.program.clone())?;
    }
    stop_on_signals(engine)?;
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

/// Counters in the first root of `shm::roots()` this user can write: the
/// system's, else the user's runtime directory or a temp dir (said in the
/// log, since `top` and `ps` look in all of them).
fn enable_shm(engine: &mut Engine, opts: &RunOptions, config_file: Option<&Path>) -> Result<()> {
    let mut refused = Vec::new();
    for (i, root) in shm::roots().into_iter().enumerate() {
        let so = ShmOptions { root, ..ShmOptions::for_process(&opts.program) };
        let dir = so.root.join(&so.name);
        let made = if i > 0 { shm::prepare_root(&so.root) } else { Ok(()) };
        match made.and_then(|()| engine.enable_shm(&so)) {
            Ok(()) => {
                if refused.is_empty() {
                    log::info!("counters in {}", dir.display());
                } else {
                    log::warn!("counters in {} ({})", dir.display(), refused.join("; "));
                }
                if let Some(f) = config_file {
                    let f = std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf());
                    std::fs::write(dir.join("config_file"), f.display().to_string())
                        .with_context(|| format!("counters in {}", dir.display()))?;
                }
                return Ok(());
            }
            Err(e) => refused.push(format!("cannot use {}: {e}", so.root.display())),
        }
    }
    anyhow::bail!("no place for counters: {} (or run with --no-shm)", refused.join("; "))
}

/// Write the Prometheus exposition to `file` every second (to a temporary
/// file renamed over it, so a reader never sees half of one).
fn metrics_file(engine: &mut Engine, program: &str, file: PathBuf) -> Result<()> {
    let dir = engine.shm_path().expect("shared memory on").to_path_buf();
    let tmp = file.with_extension("prom.tmp");
    let write = {
        let (program, file) = (program.to_string(), file.clone());
        move || -> std::io::Result<()> {
            let counters = shm::read_tree(&dir)?;
            std::fs::write(&tmp, crate::stats::prometheus(std::process::id(), &program, &counters))?;
            std::fs::rename(&tmp, &file)
        }
    };
    write().with_context(|| format!("--metrics {}", file.display()))?;
    let mut failing = false;
    engine.timers().add(
        "metrics",
        Duration::from_secs(1),
        true,
        Box::new(move |e: &mut Engine| {
            e.commit();
            match write() {
                Ok(()) => failing = false,
                Err(err) if !failing => {
                    log::warn!("--metrics {}: {err}", file.display());
                    failing = true;
                }
                Err(_) => {}
            }
        }),
    );
    Ok(())
}

/// Serve `GET /metrics` at `addr` from a thread of its own, reading the
/// counters in shared memory as `top` does (the engine thread is not
/// involved).
fn serve_metrics(addr: &str, dir: PathBuf, program: String) -> Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    log::info!("metrics at http://{}/metrics", server.server_addr());
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for req in server.incoming_requests() {
            let resp = if req.url() != "/metrics" {
                tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
            } else {
                match shm::read_tree(&dir) {
                    Ok(c) => {
                        tiny_http::Response::from_string(crate::stats::prometheus(std::process::id(), &program, &c))
                            .with_header(
                                "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                                    .parse::<tiny_http::Header>()
                                    .expect("header"),
                            )
                    }
                    Err(e) => tiny_http::Response::from_string(format!("counters: {e}\n")).with_status_code(500),
                }
            };
            let _ = req.respond(resp);
        }
    })?;
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
