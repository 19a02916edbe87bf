//! WORKERS
//!
//! A config may place apps on named workers; each worker is a thread of this
//! process with an engine of its own, pinned to its CPU when the config (or
//! the command line) gives one. Apps with no worker run on the main engine,
//! the one the program made, which also runs the workers: `Engine::configure`
//! of a config with workers splits it ([`split`]) and hands each worker its
//! part, starting and stopping worker threads as workers come and go.
//!
//! A config link whose ends are on different workers becomes two hidden apps
//! joined by an [`Interlink`]:
//!
//!   a.out -> il_<link>_tx.input   (on a's worker, with the link's copy mode)
//!   il_<link>_rx.output -> b.in   (on b's worker)
//!
//! where the interlink has the link's size. Nothing else in the graph knows.
//!
//!   split(config) -> { worker: config }   each part a plain config
//!   hop_links(spec) -> (into, out of)     the local links of a link between workers
//!   set_registry_maker(f)                 how a worker makes its registry
//!   pin_current_thread(cpu)               sched_setaffinity(2)
//!
//! A worker that panics is reported in the log with its message; its apps
//! are gone (their interlinks fill up and drop, counted at the links that
//! feed them), and the other workers and the main engine keep running. A
//! later config that still places apps on it starts it anew.
//!
//! A new config is applied on every worker or on none: each makes the
//! apps of its part first, and applies it only when no worker refused;
//! otherwise each drops what it made (see `Workers::apply`).
//!
//! Moving an app between workers keeps the packets on the links it keeps:
//! first the interlinks that feed apps leaving a worker stop delivering
//! there, and the worker runs until those apps' inputs are empty; then the
//! parts are applied, and a link removed from a worker hands what it still
//! queues to the new link at the same port (see `Engine::configure`).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::{App, AppClass, AppContext, Io, PortSpec, Registry};
use crate::config::{Config, ConfigError, LinkSettings, MAIN};
use crate::engine::{Engine, Limit, ShmOptions};
use crate::interlink::{self, Interlink};
use crate::link::CopyMode;
use crate::packet;

/// Classes of the hidden apps at an interlink's ends.
pub const SEND_CLASS: &str = "InterlinkSend";
pub const RECEIVE_CLASS: &str = "InterlinkReceive";

/// Arguments of both hidden apps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterlinkArgs {
    /// The config link it carries (`a.out -> b.in`): the interlink's name.
    pub link: String,
    pub size: usize,
    /// Receive end only: take nothing from the ring (while the app it
    /// feeds is moved away).
    #[serde(default)]
    pub paused: bool,
}

/// Producer end: moves what its input holds onto the interlink.
pub struct InterlinkSend {
    il: Arc<Interlink>,
    attached: bool,
}

impl AppClass for InterlinkSend {
    type Args = InterlinkArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &[]);
    fn new(a: InterlinkArgs, _: &AppContext) -> anyhow::Result<Self> {
        let il = interlink::named(&a.link, a.size);
        let attached = il.attach(true);
        Ok(InterlinkSend { il, attached })
    }
}

impl App for InterlinkSend {
    fn push(&mut self, io: &Io) {
        // The end may still be held by the worker this app moves from.
        if !self.attached {
            self.attached = self.il.attach(true);
            if !self.attached {
                return;
            }
        }
        if let Some(l) = io.input.first() {
            self.il.push_from(l);
        }
    }
    fn report(&self, out: &mut String) {
        let c = self.il.counters();
        out.push_str(&format!("interlink: {} sent, {} queued\n", c.txpackets, self.il.nreadable()));
    }
}

impl Drop for InterlinkSend {
    fn drop(&mut self) {
        if self.attached {
            self.il.detach(true);
        }
    }
}

/// Consumer end: moves what the interlink holds onto its output.
pub struct InterlinkReceive {
    il: Arc<Interlink>,
    link: String,
    attached: bool,
    paused: bool,
}

impl AppClass for InterlinkReceive {
    type Args = InterlinkArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["output"]);
    fn new(a: InterlinkArgs, _: &AppContext) -> anyhow::Result<Self> {
        packet::expect_visitors();
        let il = interlink::named(&a.link, a.size);
        let attached = !a.paused && il.attach(false);
        Ok(InterlinkReceive { il, link: a.link, attached, paused: a.paused })
    }
    fn reconfigure(&mut self, a: InterlinkArgs, _: &AppContext) -> anyhow::Result<bool> {
        // Only pausing and resuming are done in place.
        if a.link != self.link || a.size != self.il.capacity() {
            return Ok(false);
        }
        self.paused = a.paused;
        if self.paused && self.attached {
            self.il.detach(false);
            self.attached = false;
        }
        Ok(true)
    }
}

impl App for InterlinkReceive {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        if self.paused {
            return;
        }
        if !self.attached {
            self.attached = self.il.attach(false);
            if !self.attached {
                return;
            }
        }
        if let Some(l) = io.output.first() {
            self.il.pull_into(l);
        }
    }
    fn report(&self, out: &mut String) {
        let c = self.il.counters();
        out.push_str(&format!("interlink: {} received, {} queued\n", c.rxpackets, self.il.nreadable()));
    }
}

impl Drop for InterlinkReceive {
    fn drop(&mut self) {
        if self.attached {
            self.il.detach(false);
        }
    }
}

/// Add the hidden classes to a registry (`Registry::new` does).
pub(crate) fn register(r: &mut Registry) {
    r.register::<InterlinkSend>(SEND_CLASS, "the producer end of a link between workers (made by the engine)");
    r.register::<InterlinkReceive>(RECEIVE_CLASS, "the consumer end of a link between workers (made by the engine)");
}

/// Hidden app names for the interlink carrying config link `spec`.
fn end_names(spec: &crate::config::LinkSpec) -> (String, String) {
    let base = format!("il_{}-{}__{}-{}", spec.from.app, spec.from.port, spec.to.app, spec.to.port);
    (format!("{base}_tx"), format!("{base}_rx"))
}

/// The two local links that carry config link `spec` between workers:
/// into the producer end on its sender's worker, out of the consumer end
/// on its receiver's (what `split` makes).
pub fn hop_links(spec: &crate::config::LinkSpec) -> (String, String) {
    let (tx, rx) = end_names(spec);
    (format!("{} -> {tx}.input", spec.from), format!("{rx}.output -> {}", spec.to))
}

/// Each worker's part of `config` (`main` always among them), each a plain
/// config with no placement, links between workers replaced by interlink
/// ends. `paused` names the links whose receive ends must not deliver.
pub fn split_paused(config: &Config, paused: &[crate::config::LinkSpec]) -> BTreeMap<String, Config> {
    let mut parts: BTreeMap<String, Config> = BTreeMap::new();
    let names: Vec<String> =
        std::iter::once(MAIN.to_string()).chain(config.workers().map(|(w, _)| w.to_string())).collect();
    for w in names {
        let mut c = config.clone();
        c.retain(|name, _| config.worker_of(name) == w);
        c.unplace();
        parts.insert(w, c);
    }
    for (spec, settings) in config.links() {
        let (wf, wt) = (config.worker_of(&spec.from.app), config.worker_of(&spec.to.app));
        if wf == wt {
            continue;
        }
        let (tx, rx) = end_names(spec);
        let args = InterlinkArgs { link: spec.to_string(), size: settings.size, paused: false };
        let p = parts.get_mut(wf).expect("worker part");
        p.app(&tx, SEND_CLASS, &args);
        p.link_with(&format!("{} -> {tx}.input", spec.from), settings);
        let p = parts.get_mut(wt).expect("worker part");
        let args = InterlinkArgs { paused: paused.contains(spec), ..args };
        p.app(&rx, RECEIVE_CLASS, &args);
        p.link_with(&format!("{rx}.output -> {}", spec.to), LinkSettings { copy: CopyMode::Zero, size: settings.size });
    }
    parts
}

/// Each worker's part of `config`: see [`split_paused`].
pub fn split(config: &Config) -> BTreeMap<String, Config> {
    split_paused(config, &[])
}

static REGISTRY_MAKER: Mutex<Option<fn() -> Registry>> = Mutex::new(None);

/// How worker threads make their registry (a program's app classes). A
/// program that runs configs with workers sets it once at start.
pub fn set_registry_maker(f: fn() -> Registry) {
    *REGISTRY_MAKER.lock().unwrap() = Some(f);
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("CPU {cpu} out of range")));
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // (cpu < CPU_SETSIZE); sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> i64 {
    // SAFETY: no arguments; returns -1 on error.
    unsafe { libc::sched_getcpu() as i64 }
}

/// What the main engine sees of a worker.
#[derive(Default)]
pub struct WorkerStatus {
    pub breaths: AtomicU64,
    pub idle_breaths: AtomicU64,
    pub busy_ticks: AtomicU64,
    /// The CPU it ran on last (-1 before its first breath).
    pub cpu: AtomicI64,
    /// Its thread ended: stopped, or the panic message.
    pub ended: Mutex<Option<String>>,
}

/// A snapshot of a worker, for reports and counters.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub name: String,
    pub breaths: u64,
    pub idle_breaths: u64,
    pub busy_ticks: u64,
    pub cpu: i64,
    pub pinned: Option<usize>,
    /// The panic message of a worker that failed.
    pub failed: Option<String>,
    /// Its link and app report, when it answered in time.
    pub links: String,
}

enum Msg {
    /// Make the apps of a part, given as RON text (a Config holds `Rc`s:
    /// it stays on its thread); apply nothing yet.
    Prepare(String, mpsc::Sender<Result<(), ConfigError>>),
    /// Apply the part prepared last, on this CPU, busy-waiting or not.
    Commit(Option<usize>, bool, mpsc::Sender<Result<(), ConfigError>>),
    /// Drop what was prepared.
    Abort,
    /// How many packets these links (of the worker's part) hold.
    Queued(Vec<String>, mpsc::Sender<usize>),
    Report(mpsc::Sender<String>),
    AppCounters(String, mpsc::Sender<BTreeMap<String, u64>>),
    LinkCounters(String, mpsc::Sender<Option<crate::link::LinkCounters>>),
    /// Publish counters (under the main engine's directory).
    Shm(ShmOptions),
    /// Run this with the worker's engine.
    Run(Box<dyn FnOnce(&mut Engine) + Send>),
    Stop,
}

struct Worker {
    tx: mpsc::Sender<Msg>,
    mail: Arc<AtomicBool>,
    status: Arc<WorkerStatus>,
    join: Option<JoinHandle<()>>,
    cpu: Option<usize>,
}

impl Worker {
    fn send(&self, m: Msg) -> bool {
        let ok = self.tx.send(m).is_ok();
        self.mail.store(true, Ordering::Release);
        ok
    }
    fn alive(&self) -> bool {
        self.status.ended.lock().unwrap().is_none()
    }
}

/// The workers of a main engine.
#[derive(Default)]
pub(crate) struct Workers {
    workers: BTreeMap<String, Worker>,
    /// The whole config running.
    pub config: Config,
    /// CPUs from the command line, over the config's.
    pub cpus: BTreeMap<String, usize>,
    /// The main engine's counter directory, when it publishes.
    shm: Option<ShmOptions>,
}

/// How long phase 1 of a move waits for the apps moving to quiesce.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a worker may take to apply a config.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Workers {
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Workers publish their counters under `<main's dir>/workers/<name>`.
    pub fn enable_shm(&mut self, main: &ShmOptions) {
        self.shm = Some(main.clone());
        for (name, w) in &self.workers {
            w.send(Msg::Shm(worker_shm(main, name)));
        }
    }

    fn cpu_of(&self, config: &Config, name: &str) -> Option<usize> {
        self.cpus.get(name).copied().or_else(|| config.workers().find(|(w, _)| *w == name).and_then(|(_, s)| s.cpu))
    }

    /// Apply the parts of `new` that run on workers, `main` by calling
    /// `configure_main`. See the module comment for the order.
    pub fn configure(&mut self, new: &Config, main: &mut Engine) -> Result<(), ConfigError> {
        let maker = *REGISTRY_MAKER.lock().unwrap();
        let old = std::mem::take(&mut self.config);
        // Workers that ended (a panic) are forgotten: a config that still
        // places apps on one starts it anew.
        let ended: Vec<String> = self.workers.iter().filter(|(_, w)| !w.alive()).map(|(n, _)| n.clone()).collect();
        for n in ended {
            let mut w = self.workers.remove(&n).unwrap();
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }

        // Phase 1: apps that move to another worker are quiesced. The
        // interlinks that feed them stop delivering, and their workers run
        // until those inputs are empty; then until what they sent over
        // interlinks has been taken, and each app says it is ready to
        // move (`App::prepare_move`: a port gets back what it lent). (An
        // app that makes packets of its own never quiesces: after
        // QUIESCE_TIMEOUT the move goes on, and what it has in flight on a
        // link that stops being an interlink is lost and counted.)
        let moving: Vec<&str> = old
            .apps()
            .map(|(n, _)| n)
            .filter(|n| new.app_spec(n).is_some() && new.worker_of(n) != old.worker_of(n))
            .collect();
        if !moving.is_empty() {
            let cross = |s: &crate::config::LinkSpec| old.worker_of(&s.from.app) != old.worker_of(&s.to.app);
            let paused: Vec<crate::config::LinkSpec> = old
                .links()
                .map(|(s, _)| s)
                .filter(|s| cross(s) && moving.contains(&s.to.app.as_str()))
                .cloned()
                .collect();
            let parts = split_paused(&old, &paused);
            self.apply(&old, &parts, maker, main, false)?;
            // (worker, local link) pairs that must empty, and interlinks.
            let mut local: Vec<(String, String)> = Vec::new();
            let mut rings: Vec<String> = Vec::new();
            for s in &paused {
                let (_, rx) = end_names(s);
                local.push((old.worker_of(&s.to.app).to_string(), format!("{rx}.output -> {}", s.to)));
            }
            for (s, _) in old.links() {
                if cross(s) && moving.contains(&s.from.app.as_str()) {
                    let (tx, _) = end_names(s);
                    local.push((old.worker_of(&s.from.app).to_string(), format!("{} -> {tx}.input", s.from)));
                    rings.push(s.to_string());
                }
            }
            let deadline = Instant::now() + QUIESCE_TIMEOUT;
            // The apps themselves, until each says it is ready to go.
            let mut unready: Vec<(String, String)> =
                moving.iter().map(|a| (old.worker_of(a).to_string(), a.to_string())).collect();
            loop {
                unready.retain(|(w, a)| !self.prepare_move(main, w, a));
                let mut n: usize = rings.iter().filter_map(|r| interlink::get(r)).map(|l| l.nreadable()).sum();
                for (w, l) in &local {
                    n += self.queued(main, w, l);
                }
                if (n == 0 && unready.is_empty()) || Instant::now() > deadline {
                    break;
                }
                // The main engine's apps may be among those that must drain.
                main.breathe();
                std::thread::sleep(Duration::from_micros(100));
            }
        }

        // Phase 2: every part, or none.
        let parts = split(new);
        if let Err(e) = self.apply(new, &parts, maker, main, true) {
            // Phase 1 paused interlinks: they deliver again (arguments
            // changed in place, which no app refuses), and the apps that
            // prepared to move go on as before.
            if !moving.is_empty() {
                if let Err(u) = self.apply(&old, &split(&old), maker, main, false) {
                    log::error!("resuming the interlinks paused for a move: {u}");
                }
                for a in &moving {
                    self.cancel_move(main, old.worker_of(a), a);
                }
            }
            self.config = old;
            return Err(e);
        }
        // Workers gone from the config stop.
        let gone: Vec<String> = self.workers.keys().filter(|n| !parts.contains_key(*n)).cloned().collect();
        self.stop_workers(&gone);
        self.config = new.clone();
        Ok(())
    }

    fn stop_workers(&mut self, names: &[String]) {
        for n in names {
            let Some(mut w) = self.workers.remove(n) else { continue };
            w.send(Msg::Stop);
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
    }

    /// `f` run with the engine of worker `w`: main's here, another's on its
    /// thread (None: it did not answer).
    fn on_engine<R: Send + 'static>(
        &self,
        main: &mut Engine,
        w: &str,
        f: impl FnOnce(&mut Engine) -> R + Send + 'static,
    ) -> Option<R> {
        if w == MAIN { Some(f(main)) } else { self.run_on(w, f) }
    }

    /// Ask app `app` on worker `w` to prepare to move (true: ready, or gone).
    fn prepare_move(&self, main: &mut Engine, w: &str, app: &str) -> bool {
        let app = app.to_string();
        self.on_engine(main, w, move |e| e.prepare_move(&app)).unwrap_or(true)
    }

    /// Tell app `app` on worker `w` that its move is off.
    fn cancel_move(&self, main: &mut Engine, w: &str, app: &str) {
        let app = app.to_string();
        self.on_engine(main, w, move |e| e.cancel_move(&app));
    }

    /// Packets on link `link` of worker `w`'s part.
    fn queued(&self, main: &Engine, w: &str, link: &str) -> usize {
        if w == MAIN {
            return main.link(link).map_or(0, |l| l.nreadable());
        }
        let Some(wk) = self.workers.get(w) else { return 0 };
        let (tx, rx) = mpsc::channel();
        if !wk.send(Msg::Queued(vec![link.to_string()], tx)) {
            return 0;
        }
        rx.recv_timeout(REPLY_TIMEOUT).unwrap_or(0)
    }

    /// Apply `parts` of `whole` on the workers and the main engine, all or
    /// nothing: each makes the apps of its part (`Engine::prepare`), and
    /// only when none refused (or failed to answer) does each apply it;
    /// else each drops what it made, and the workers this call started
    /// stop. The first refusal is the error. (What can still fail after
    /// that, an app taking new arguments in place, is said and not undone.)
    /// `count`: as for `Engine::apply_prepared`.
    fn apply(
        &mut self,
        whole: &Config,
        parts: &BTreeMap<String, Config>,
        maker: Option<fn() -> Registry>,
        main: &mut Engine,
        count: bool,
    ) -> Result<(), ConfigError> {
        // Positions in an error would point into the part's text: the
        // file's name and the app's name say where.
        let at = |name: &str, e: ConfigError| ConfigError {
            msg: format!("worker `{name}`: {}", e.msg),
            pos: None,
            file: whole.file().map(str::to_string),
        };
        let answer = |name: &str, r: Result<Result<(), ConfigError>, mpsc::RecvTimeoutError>| match r {
            Ok(r) => r.map_err(|e| at(name, e)),
            Err(_) => Err(ConfigError::new(format!("worker `{name}` did not answer (it failed: see the log)"))),
        };
        let mut started: Vec<String> = Vec::new();
        let mut replies = Vec::new();
        let mut refused: Option<ConfigError> = None;
        for (name, part) in parts {
            if name == MAIN {
                continue;
            }
            if !self.workers.contains_key(name) {
                let Some(maker) = maker else {
                    refused = Some(ConfigError::new(format!(
                        "worker `{name}`: this program cannot start workers (no registry maker)"
                    )));
                    break;
                };
                let w = spawn(name, maker);
                if let Some(o) = &self.shm {
                    w.send(Msg::Shm(worker_shm(o, name)));
                }
                self.workers.insert(name.clone(), w);
                started.push(name.clone());
            }
            let (tx, rx) = mpsc::channel();
            self.workers[name].send(Msg::Prepare(part.to_ron(), tx));
            replies.push((name.clone(), rx));
        }
        let prepared =
            if refused.is_none() { main.prepare(&parts[MAIN]).map_err(|e| refused = Some(e)).ok() } else { None };
        for (name, rx) in &replies {
            let r = answer(name, rx.recv_timeout(REPLY_TIMEOUT));
            if let Err(e) = r
                && refused.is_none()
            {
                refused = Some(e);
            }
        }
        if let Some(e) = refused {
            for (name, _) in &replies {
                if let Some(w) = self.workers.get(name) {
                    w.send(Msg::Abort);
                }
            }
            self.stop_workers(&started);
            return Err(e);
        }

        let mut replies = Vec::new();
        for (name, _) in parts.iter().filter(|(n, _)| *n != MAIN) {
            let cpu = self.cpu_of(whole, name);
            let w = self.workers.get_mut(name).expect("a worker that prepared");
            let (tx, rx) = mpsc::channel();
            w.send(Msg::Commit(cpu, main.busywait, tx));
            w.cpu = cpu;
            replies.push((name.clone(), rx));
        }
        let mut result = main.apply_prepared(&parts[MAIN], prepared.expect("main prepared"), count);
        for (name, rx) in replies {
            let r = answer(&name, rx.recv_timeout(REPLY_TIMEOUT));
            if result.is_ok() {
                result = r;
            }
        }
        if let Err(e) = &result {
            log::error!("{e}: applied on the other workers (an app refused its new arguments in place)");
        }
        result
    }

    /// `f` run with worker `w`'s engine, on its thread (None: no such
    /// worker, or it did not answer within a second).
    pub fn run_on<R: Send + 'static>(&self, w: &str, f: impl FnOnce(&mut Engine) -> R + Send + 'static) -> Option<R> {
        let wk = self.workers.get(w)?;
        let (tx, rx) = mpsc::channel();
        if !wk.send(Msg::Run(Box::new(move |e: &mut Engine| {
            let _ = tx.send(f(e));
        }))) {
            return None;
        }
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// The counters of app `name` on the worker it runs on.
    pub fn app_counters(&self, name: &str) -> BTreeMap<String, u64> {
        let Some(w) = self.workers.get(self.config.worker_of(name)) else { return BTreeMap::new() };
        let (tx, rx) = mpsc::channel();
        if !w.send(Msg::AppCounters(name.to_string(), tx)) {
            return BTreeMap::new();
        }
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }

    /// The counters of link `spec` of the whole config: of the worker it
    /// runs on, or, between workers, its three hops: sent and copied as the
    /// producer's local link counts them, received as the consumer's does,
    /// drops of both.
    pub fn link_counters(&self, spec: &str, main: &Engine) -> Option<crate::link::LinkCounters> {
        let s: crate::config::LinkSpec = spec.parse().ok()?;
        self.config.link_settings(&s)?;
        let (wf, wt) = (self.config.worker_of(&s.from.app), self.config.worker_of(&s.to.app));
        let ask = |w: &str, link: String| -> Option<crate::link::LinkCounters> {
            if w == MAIN {
                return main.link(&link).map(|l| l.counters());
            }
            let wk = self.workers.get(w)?;
            let (tx, rx) = mpsc::channel();
            if !wk.send(Msg::LinkCounters(link, tx)) {
                return None;
            }
            rx.recv_timeout(Duration::from_secs(1)).ok().flatten()
        };
        if wf == wt {
            return ask(wf, spec.to_string());
        }
        let (txa, rxa) = end_names(&s);
        let a = ask(wf, format!("{} -> {txa}.input", s.from)).unwrap_or_default();
        let b = ask(wt, format!("{rxa}.output -> {}", s.to)).unwrap_or_default();
        Some(crate::link::LinkCounters {
            txpackets: a.txpackets,
            txbytes: a.txbytes,
            txdrop: a.txdrop + b.txdrop,
            rxpackets: b.rxpackets,
            rxbytes: b.rxbytes,
            copybytes: a.copybytes,
        })
    }

    /// Every worker's state, and (within `wait`) its link report.
    pub fn reports(&self, wait: Duration) -> Vec<WorkerReport> {
        let mut out = Vec::new();
        for (name, w) in &self.workers {
            let ended = w.status.ended.lock().unwrap().clone();
            let mut links = String::new();
            if ended.is_none() {
                let (tx, rx) = mpsc::channel();
                if w.send(Msg::Report(tx)) {
                    links = rx.recv_timeout(wait).unwrap_or_default();
                }
            }
            out.push(WorkerReport {
                name: name.clone(),
                breaths: w.status.breaths.load(Ordering::Relaxed),
                idle_breaths: w.status.idle_breaths.load(Ordering::Relaxed),
                busy_ticks: w.status.busy_ticks.load(Ordering::Relaxed),
                cpu: w.status.cpu.load(Ordering::Relaxed),
                pinned: w.cpu,
                failed: ended.filter(|m| m != STOPPED),
                links,
            });
        }
        out
    }

    /// Stop every worker and wait for it.
    pub fn stop_all(&mut self) {
        for w in self.workers.values() {
            w.send(Msg::Stop);
        }
        for (_, mut w) in std::mem::take(&mut self.workers) {
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
        self.config = Config::new();
    }
}

const STOPPED: &str = "stopped";

fn worker_shm(main: &ShmOptions, name: &str) -> ShmOptions {
    ShmOptions { root: main.root.clone(), name: format!("{}/workers/{name}", main.name), program: main.program.clone() }
}

fn spawn(name: &str, maker: fn() -> Registry) -> Worker {
    let (tx, rx) = mpsc::channel::<Msg>();
    let mail = Arc::new(AtomicBool::new(false));
    let status = Arc::new(WorkerStatus { cpu: AtomicI64::new(-1), ..WorkerStatus::default() });
    let (m, st, wname) = (mail.clone(), status.clone(), name.to_string());
    let join = std::thread::Builder::new()
        .name(format!("worker-{name}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| worker_main(&wname, maker, &rx, &m, &st)));
            let msg = match r {
                Ok(()) => STOPPED.to_string(),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "(no message)".into());
                    log::error!(
                        "worker `{wname}` panicked: {msg}; its apps are gone, the main engine and the other workers keep running"
                    );
                    msg
                }
            };
            packet::flush_returns();
            *st.ended.lock().unwrap() = Some(msg);
        })
        .expect("spawn a worker thread");
    Worker { tx, mail, status, join: Some(join), cpu: None }
}

fn worker_main(
    name: &str,
    maker: fn() -> Registry,
    rx: &mpsc::Receiver<Msg>,
    mail: &AtomicBool,
    status: &WorkerStatus,
) {
    let mut engine = Engine::new(maker());
    let mut pinned: Option<usize> = None;
    // The part prepared, until committed or aborted.
    let mut pending: Option<(Config, crate::engine::Prepared)> = None;
    loop {
        mail.store(false, Ordering::Release);
        loop {
            let m = match rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            };
            match m {
                Msg::Prepare(c, reply) => {
                    let r = Config::parse(&c, None).and_then(|c| {
                        let p = engine.prepare(&c)?;
                        pending = Some((c, p));
                        Ok(())
                    });
                    let _ = reply.send(r);
                }
                Msg::Abort => pending = None,
                Msg::Commit(cpu, busywait, reply) => {
                    engine.busywait = busywait;
                    if cpu != pinned
                        && let Some(cpu) = cpu
                    {
                        match pin_current_thread(cpu) {
                            Ok(()) => log::info!("worker `{name}` on CPU {cpu}"),
                            Err(e) => log::error!("worker `{name}`: cannot pin to CPU {cpu}: {e}"),
                        }
                    }
                    pinned = cpu;
                    let r = match pending.take() {
                        Some((c, p)) => engine.apply_prepared(&c, p, true),
                        None => Err(ConfigError::new("nothing prepared to apply")),
                    };
                    let _ = reply.send(r);
                }
                Msg::Queued(links, reply) => {
                    let n = links.iter().filter_map(|l| engine.link(l)).map(|l| l.nreadable()).sum();
                    let _ = reply.send(n);
                }
                Msg::Report(reply) => {
                    let _ = reply.send(format!("{}{}", engine.report_links(), engine.report_apps()));
                }
                Msg::AppCounters(app, reply) => {
                    let _ = reply.send(engine.app_counters(&app));
                }
                Msg::LinkCounters(link, reply) => {
                    let _ = reply.send(engine.link_counters(&link));
                }
                Msg::Shm(o) => {
                    if let Err(e) = engine.enable_shm(&o) {
                        log::error!("worker `{name}`: counters in {}: {e}", o.root.join(&o.name).display());
                    }
                }
                Msg::Run(f) => f(&mut engine),
                Msg::Stop => {
                    engine.stop();
                    return;
                }
            }
        }
        let mut every = 0u32;
        engine.run(Limit::Until(
            &mut |e: &Engine| {
                let s = e.stats();
                status.breaths.store(s.breaths, Ordering::Relaxed);
                status.idle_breaths.store(s.idle_breaths, Ordering::Relaxed);
                status.busy_ticks.store(s.busy_ticks, Ordering::Relaxed);
                every = every.wrapping_add(1);
                if every % 1024 == 1 {
                    status.cpu.store(current_cpu(), Ordering::Relaxed);
                }
                mail.load(Ordering::Acquire)
            },
            None,
        ));
    }
}
