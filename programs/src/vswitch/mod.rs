//! `snabb-rs vmdq-vswitch [CONFIG]`: the VMDq switch for virtual machines.
//!
//!   snabb-rs vmdq-vswitch                        the built-in config (configs/vmdq-vswitch.ron)
//!   snabb-rs vmdq-vswitch my.ron                 yours; saving it (or SIGHUP) applies the change
//!   snabb-rs vmdq-vswitch --print-graph my.ron   the app graph it builds, as a `snabb-rs run` config
//!   snabb-rs vmdq-vswitch --print-default        the built-in config, to start one of your own
//!
//! A vswitch config is a port list ([`schema`]), not an app graph: the
//! program builds the graph ([`graph`]), runs it, prints a per-port report
//! ([`report`]) every `--report` seconds, and on a change of the file (or
//! SIGHUP) checks the new config and applies the difference: ports added,
//! removed or changed, everything else untouched. A config with a mistake
//! is refused with its file:line:col, before anything starts, or, when the
//! switch runs, while the old config keeps running.

pub mod graph;
pub mod report;
pub mod schema;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use snabb_core::config::ConfigError;
use snabb_core::{Config, Engine, Limit, Registry, ShmOptions};

use graph::{Graph, Owner};
use schema::{Place, Vswitch};

/// The built-in config, as shipped in `configs/`.
pub const DEFAULT: &str = include_str!("../../../configs/vmdq-vswitch.ron");
pub const DEFAULT_NAME: &str = "configs/vmdq-vswitch.ron (built in)";

pub struct Options {
    pub config: Option<PathBuf>,
    pub print_graph: bool,
    pub print_default: bool,
    pub duration: Option<f64>,
    pub report: f64,
    pub busywait: bool,
    pub shm: bool,
    /// Over the config's `workers` and `worker_cpus`.
    pub workers: Option<u32>,
    pub worker_cpus: Option<Vec<usize>>,
}

/// Read the config (or the built-in one).
fn load(path: Option<&Path>) -> Result<Vswitch, ConfigError> {
    match path {
        Some(p) => schema::from_file(p),
        None => schema::parse(DEFAULT, Some(DEFAULT_NAME)),
    }
}

/// Everything that can be wrong with a vswitch config, found before
/// anything runs: the config's own consistency, then each app's arguments
/// as its class reads them (an error there is put on the port it belongs
/// to). `machine`: also what this machine must have (the uplink's device).
pub fn prepare(v: &Vswitch, registry: &Registry, machine: bool) -> Result<Graph, ConfigError> {
    v.check()?;
    if machine {
        v.check_machine()?;
    }
    let g = graph::build(v);
    for (name, spec) in g.config.apps() {
        let mut one = Config::new();
        one.app_args(name, &spec.class, spec.args.clone());
        registry.check(&one).map_err(|e| at_owner(v, &g, name, e))?;
    }
    registry.check(&g.config).map_err(|e| ConfigError { file: v.file.clone(), ..e })?;
    Ok(g)
}

/// An error about app `app`, placed on the port (or uplink) it was made for.
fn at_owner(v: &Vswitch, g: &Graph, app: &str, e: ConfigError) -> ConfigError {
    match g.owners.get(app) {
        Some(Owner::Port(i)) => v.error_at(Place::Port(*i, None), format!("port `{}`: {}", v.ports[*i].name, e.msg)),
        Some(Owner::Uplink) => v.error_at(Place::Uplink(None), format!("uplink: {}", e.msg)),
        None => ConfigError { file: v.file.clone(), ..e },
    }
}

/// An engine error (an app that could not start) placed on its port.
fn placed(v: &Vswitch, g: &Graph, e: ConfigError) -> ConfigError {
    let app = e.msg.strip_prefix("app `").and_then(|r| r.split_once('`')).map(|(a, _)| a.to_string());
    match app {
        Some(a) => at_owner(v, g, &a, e),
        None => ConfigError { file: v.file.clone(), ..e },
    }
}

/// `config check` of a vswitch config: the checks that need no machine.
pub fn check_file(path: &Path, registry: &Registry) -> Result<Config> {
    let v = schema::from_file(path)?;
    let g = prepare(&v, registry, false)?;
    Ok(g.config)
}

static RELOAD: AtomicBool = AtomicBool::new(false);

/// Create the directories of listening sockets (a socket's file is made by
/// the port; its directory must be there).
fn socket_dirs(v: &Vswitch) -> Result<()> {
    for p in v.ports.iter().filter(|p| p.server) {
        if let Some(d) = p.socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::create_dir_all(d)
                .with_context(|| format!("port `{}`: making {} for its socket", p.name, d.display()))?;
        }
    }
    Ok(())
}

/// What runs, in a few lines.
fn summary(v: &Vswitch, g: &Graph) -> String {
    let mut s = format!(
        "vmdq-vswitch: {} ({} ports)\n  uplink: {}\n",
        v.file.as_deref().unwrap_or("?"),
        v.ports.len(),
        v.uplink.as_ref().map_or("none: VM to VM only, ports switched in software".into(), |u| u.describe())
    );
    if g.uplink.class == Some("AfXdp") {
        s += &format!(
            "    one AfXdp app per receive queue: {}; frames to the wire leave on {}\n",
            g.uplink.nics.join(", "),
            g.uplink.nics.first().map_or("none", String::as_str)
        );
    }
    for (_, f) in &g.uplink.flows {
        s += &format!("    generated on the wire: {f}\n");
    }
    for p in &v.ports {
        let mut extra = Vec::new();
        if let Some(vid) = p.vlan {
            extra.push(format!("VLAN {vid}"));
        }
        if let Some(t) = &p.tunnel {
            extra.push(format!("{} tunnel", t.tunnel.kind()));
        }
        for (dir, d) in [("to guest", &p.to_guest), ("from guest", &p.from_guest)] {
            if let Some(f) = &d.filter {
                extra.push(format!("{dir} filter `{f}`"));
            }
            if let Some(l) = &d.limit {
                let mut r = Vec::new();
                if let Some(g) = l.gbps {
                    r.push(format!("{g} Gbit/s"));
                }
                if let Some(p) = l.pps {
                    r.push(format!("{p} frames/s"));
                }
                extra.push(format!("{dir} limit {}", r.join(" and ")));
            }
        }
        if p.guest.is_some() {
            extra.push("guest played here by a VirtioUser app".into());
        }
        let macs: Vec<String> = p.macs.iter().map(|m| m.to_string()).collect();
        s += &format!(
            "  port {}: {} ({}), {}{}{}\n",
            p.name,
            p.socket.display(),
            if p.server { "listening" } else { "connecting" },
            macs.join(" "),
            if extra.is_empty() { "" } else { ", " },
            extra.join(", ")
        );
        if let Some(schema::Guest::VirtioUser { send }) = &p.guest {
            for f in send {
                s += &format!("    its guest sends: {}\n", graph::describe_flow(v, f, false));
            }
        }
    }
    s
}

struct Running {
    v: Vswitch,
    g: Graph,
    reporter: report::Reporter,
}

/// The command line's worker options over the config's.
fn overrides(v: &mut Vswitch, opts: &Options) {
    if let Some(n) = opts.workers {
        v.workers = n;
    }
    if let Some(c) = &opts.worker_cpus {
        v.worker_cpus = c.clone();
    }
}

pub fn run(opts: Options) -> Result<()> {
    if opts.print_default {
        print!("{DEFAULT}");
        return Ok(());
    }
    let registry = crate::registry();
    let mut v = load(opts.config.as_deref())?;
    overrides(&mut v, &opts);
    let g = prepare(&v, &registry, !opts.print_graph)?;
    if opts.print_graph {
        print!("{}", g.config.to_ron());
        return Ok(());
    }
    socket_dirs(&v)?;
    let mut engine = Engine::new(registry);
    engine.busywait = opts.busywait;
    engine.configure(&g.config).map_err(|e| placed(&v, &g, e))?;
    let mut watch_hint = String::new();
    if opts.shm {
        let so = ShmOptions::for_process("vmdq-vswitch");
        engine.enable_shm(&so).with_context(|| format!("counters in {}", so.root.join(&so.name).display()))?;
        watch_hint = format!(
            "Watch it from another terminal: snabb-rs top {} (every link and app counter, live).\n",
            std::process::id()
        );
    }
    print!("{}", summary(&v, &g));
    print!("{watch_hint}");
    match &opts.config {
        Some(p) => println!(
            "Edit {}: saving it (or `kill -HUP {}`) applies the change to the running switch.",
            p.display(),
            std::process::id()
        ),
        None => println!(
            "This is the built-in config: `snabb-rs vmdq-vswitch --print-default > my.ron`, edit it, and run \
             `snabb-rs vmdq-vswitch my.ron` (saving it then applies changes live)."
        ),
    }
    if opts.report > 0.0 {
        print!("{}", report::legend());
    }
    println!("Ctrl-C stops it.");

    // SAFETY: the action only stores to an atomic, which is async-signal-safe.
    unsafe { signal_hook::low_level::register(signal_hook::consts::SIGHUP, || RELOAD.store(true, Ordering::Relaxed)) }
        .context("catching SIGHUP")?;
    let state = Rc::new(RefCell::new(Running { v, g, reporter: report::Reporter::new() }));
    crate::run::stop_on_signals(&mut engine)?;
    if opts.report > 0.0 {
        {
            // The origin of the first report's rates.
            let mut s = state.borrow_mut();
            let Running { g, reporter, .. } = &mut *s;
            reporter.report(&mut engine, g);
        }
        let st = state.clone();
        engine.timers().add(
            "report",
            Duration::from_secs_f64(opts.report),
            true,
            Box::new(move |e: &mut Engine| {
                let mut s = st.borrow_mut();
                let Running { g, reporter, .. } = &mut *s;
                print!("{}", reporter.report(e, g));
            }),
        );
    }
    let (workers, worker_cpus) = (opts.workers, opts.worker_cpus.clone());
    watch(&mut engine, opts.config.clone(), state.clone(), move |v: &mut Vswitch| {
        if let Some(n) = workers {
            v.workers = n;
        }
        if let Some(c) = &worker_cpus {
            v.worker_cpus = c.clone();
        }
    });
    match opts.duration {
        Some(s) => engine.run(Limit::Duration(Duration::from_secs_f64(s))),
        None => engine.run(Limit::Forever),
    }
    if opts.report > 0.0 {
        let mut s = state.borrow_mut();
        let Running { g, reporter, .. } = &mut *s;
        print!("{}", reporter.report(&mut engine, g));
    }
    engine.stop();
    Ok(())
}

/// Reload on a change of the file's modification time (checked every
/// second) or on SIGHUP: check the new config, then apply it; a bad one is
/// logged with its place and the running config stays.
fn watch(
    engine: &mut Engine,
    path: Option<PathBuf>,
    state: Rc<RefCell<Running>>,
    overrides: impl Fn(&mut Vswitch) + 'static,
) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = path.as_deref().and_then(mtime);
    engine.timers().add(
        "reload",
        Duration::from_millis(200),
        true,
        Box::new(move |e: &mut Engine| {
            let hup = RELOAD.swap(false, Ordering::Relaxed);
            let now = path.as_deref().and_then(mtime);
            if !hup && now == last {
                return;
            }
            last = now;
            let v = match load(path.as_deref()) {
                Ok(mut v) => {
                    overrides(&mut v);
                    v
                }
                Err(err) => {
                    log::error!("{err}; still running the previous config");
                    return;
                }
            };
            let g = match prepare(&v, e.registry(), true) {
                Ok(g) => g,
                Err(err) => {
                    log::error!("{err}; still running the previous config");
                    return;
                }
            };
            if let Err(err) = socket_dirs(&v) {
                log::error!("{err:#}; still running the previous config");
                return;
            }
            let old: Vec<String> = state.borrow().v.ports.iter().map(|p| p.name.clone()).collect();
            match e.configure(&g.config) {
                Ok(()) => {
                    let new: Vec<String> = v.ports.iter().map(|p| p.name.clone()).collect();
                    let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
                    let gone: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
                    log::info!(
                        "{}: applied ({} ports; added {:?}, removed {:?}; the others untouched unless changed)",
                        v.file.as_deref().unwrap_or("config"),
                        new.len(),
                        added,
                        gone
                    );
                    let mut s = state.borrow_mut();
                    s.v = v;
                    s.g = g;
                }
                Err(err) => log::error!("{}; still running the previous config", placed(&v, &g, err)),
            }
        }),
    );
}
