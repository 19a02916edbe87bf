//! THE ENGINE
//!
//! Runs an app graph in a loop of breaths and reconfigures it live.
//!
//! A breath:
//!   1. inhale: every app with `has_pull` pulls, in name order;
//!   2. exhale: every app pushes, in topological order of the links (apps
//!      that pull break cycles), so packets pulled this breath reach the end
//!      of the graph this breath; then apps whose inputs are still not empty
//!      push again, until a pass moves nothing (at most `MAX_PASSES`);
//!   3. ticks and timers when due; counters committed to shared memory every
//!      `COMMIT_BREATHS` breaths, at most once every `COMMIT_PERIOD`.
//!
//! When a breath moves no packet the engine sleeps, 1 µs longer each idle
//! breath up to 100 µs, and halves the sleep again when traffic returns.
//!
//! `configure(new)` compares the running config with `new`: apps gone are
//! stopped, apps added are started, apps whose class changed are restarted,
//! apps whose arguments changed are reconfigured in place when their class
//! can do so and restarted otherwise, links gone are drained, links added are
//! made, and everything else keeps running untouched: a link that exists in
//! both configs keeps its queued packets, even when an app at either end is
//! restarted. Every new app is made before anything changes, so a config
//! that fails leaves the engine as it was (but for an app that took new
//! arguments in place before another refused them). With workers, every
//! worker makes its new apps first and applies its part only when no
//! worker refused (see `worker`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::app::{App, Io, Port, Ports, Registry};
use crate::config::{Config, ConfigError, LinkSettings, LinkSpec};
use crate::link::{Link, LinkCounters};
use crate::packet;
use crate::shm::{self, Counter, ShmDir};
use crate::timer::Timers;

/// Push passes per breath at most (see the module comment).
pub const MAX_PASSES: usize = 4;
/// Breaths between commits of counters to shared memory.
pub const COMMIT_BREATHS: u64 = 100;
/// The least time between two commits: an engine whose breaths carry a
/// frame or two (a switch fed by slow guests makes millions a second) would
/// otherwise spend a tenth of its CPU committing; `top` reads once a second.
pub const COMMIT_PERIOD: Duration = Duration::from_millis(1);
/// Longest idle sleep.
pub const MAX_SLEEP_US: u64 = 100;

/// Where and whether to publish counters.
#[derive(Clone, Debug)]
pub struct ShmOptions {
    pub root: PathBuf,
    /// Directory name under the root; normally the pid.
    pub name: String,
    /// Written to `<dir>/program` for `top`.
    pub program: String,
}

impl ShmOptions {
    /// `<SNABB_RS_SHM_ROOT or /var/run/snabb-rs>/<pid>`.
    pub fn for_process(program: &str) -> ShmOptions {
        ShmOptions { root: shm::default_root(), name: std::process::id().to_string(), program: program.to_string() }
    }
}

/// Engine counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    pub breaths: u64,
    /// Reconfigurations applied.
    pub configs: u64,
    /// Packets dropped because their link was removed.
    pub reconfig_drops: u64,
    /// Breaths that moved no packet.
    pub idle_breaths: u64,
    /// Time spent in breaths of `run` that moved packets, in [`ticks`]: what the
    /// engine's CPU did work for. (A polling engine is always running; its
    /// share of idle breaths says little of how loaded it is, as a breath
    /// that moves a hundred packets lasts a hundred times longer.)
    pub busy_ticks: u64,
}

/// The clock `busy_ticks` is kept in: the time-stamp counter where there is
/// one (x86-64: constant rate, cheap to read, what DPDK's cycle counts are
/// in too), else nanoseconds.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions; every x86-64 CPU has it.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

struct AppEntry {
    name: String,
    app: Box<dyn App>,
    io: Io,
    pulls: bool,
    counters: BTreeMap<String, Counter>,
}

/// Apps made for a config, before it is applied (`Engine::prepare`).
pub(crate) struct Prepared {
    made: BTreeMap<String, Box<dyn App>>,
}

struct LinkEntry {
    link: Rc<Link>,
    settings: LinkSettings,
    counters: Option<Vec<Counter>>,
}

/// How long to run.
pub enum Limit<'a> {
    /// Until stopped from a timer (`request_stop`).
    Forever,
    Duration(Duration),
    /// Until the predicate is true (checked every breath), with a timeout.
    Until(&'a mut dyn FnMut(&Engine) -> bool, Option<Duration>),
    Breaths(u64),
}

pub struct Engine {
    registry: Rc<Registry>,
    config: Config,
    /// Apps in push order.
    apps: Vec<AppEntry>,
    /// Position in `apps` by name.
    index: BTreeMap<String, usize>,
    /// Positions of the apps that pull, in name order.
    pulls: Vec<usize>,
    links: BTreeMap<LinkSpec, LinkEntry>,
    /// The same links in a plain list, for the per-breath walks.
    link_list: Vec<Rc<Link>>,
    push_order: Vec<String>,
    pull_order: Vec<String>,
    stats: EngineStats,
    timers: Timers<Engine>,
    shm: Option<ShmDir>,
    engine_counters: Vec<(&'static str, Counter)>,
    /// Counters of interlinks (as links) and workers, by path: the main
    /// engine publishes them.
    extra_counters: BTreeMap<String, Counter>,
    tick_period: Duration,
    next_tick: Instant,
    /// No commit before this (see COMMIT_PERIOD).
    next_commit: Instant,
    sleep_us: u64,
    /// Never sleep when idle.
    pub busywait: bool,
    stop_requested: bool,
    moved_before: u64,
    clock: BreathClock,
    /// Worker threads, when the config places apps on workers.
    workers: crate::worker::Workers,
}

/// The time as the engine sees it after each breath. Reading the clock
/// costs tens of nanoseconds, a few per cent of a busy breath of ~1 µs, so
/// while breaths are short the clock is read only every few breaths: the
/// stride doubles (up to `MAX_STRIDE`) while reads come less than
/// `INTERVAL` apart and halves when they do not, so the time seen is never
/// more than about `INTERVAL` old.
struct BreathClock {
    now: Instant,
    stride: u32,
    countdown: u32,
}

impl BreathClock {
    const INTERVAL: Duration = Duration::from_micros(20);
    const MAX_STRIDE: u32 = 16;

    fn new() -> BreathClock {
        BreathClock { now: Instant::now(), stride: 1, countdown: 0 }
    }

    #[inline]
    fn tick(&mut self) -> Instant {
        if self.countdown > 0 {
            self.countdown -= 1;
            return self.now;
        }
        let now = Instant::now();
        self.stride = if now - self.now < Self::INTERVAL {
            (self.stride * 2).min(Self::MAX_STRIDE)
        } else {
            (self.stride / 2).max(1)
        };
        self.countdown = self.stride - 1;
        self.now = now;
        now
    }

    /// Read the clock now, and after each of the next breaths.
    fn reset(&mut self) -> Instant {
        self.stride = 1;
        self.countdown = 0;
        self.now = Instant::now();
        self.now
    }
}

impl Engine {
    /// An engine with no apps, making apps from `registry`.
    pub fn new(registry: Registry) -> Engine {
        Engine::with_registry(Rc::new(registry))
    }

    pub fn with_registry(registry: Rc<Registry>) -> Engine {
        Engine {
            registry,
            config: Config::new(),
            apps: Vec::new(),
            index: BTreeMap::new(),
            pulls: Vec::new(),
            links: BTreeMap::new(),
            link_list: Vec::new(),
            push_order: Vec::new(),
            pull_order: Vec::new(),
            stats: EngineStats::default(),
            timers: Timers::default(),
            shm: None,
            engine_counters: Vec::new(),
            extra_counters: BTreeMap::new(),
            tick_period: Duration::from_millis(1),
            next_tick: Instant::now(),
            next_commit: Instant::now(),
            sleep_us: 0,
            busywait: false,
            stop_requested: false,
            moved_before: 0,
            clock: BreathClock::new(),
            workers: crate::worker::Workers::default(),
        }
    }

    /// Publish counters under `opts.root/opts.name`.
    pub fn enable_shm(&mut self, opts: &ShmOptions) -> std::io::Result<()> {
        let dir = ShmDir::create(&opts.root, &opts.name)?;
        dir.write_text("program", &opts.program)?;
        // The graph running now; rewritten by each `configure`.
        dir.write_text("config.ron", &self.config.to_ron())?;
        let mut ec = Vec::new();
        for n in [
            "breaths",
            "configs",
            "reconfig_drops",
            "idle_breaths",
            "busy_ticks",
            "packets_in_use",
            "packets_total",
            "packets_flattened",
        ] {
            ec.push((n, dir.counter(&format!("engine/{n}"))?));
        }
        self.engine_counters = ec;
        self.shm = Some(dir);
        // Workers publish under <dir>/workers/<name>.
        self.workers.enable_shm(opts);
        // Counters for what already runs.
        for (spec, l) in &mut self.links {
            l.counters = link_counters(self.shm.as_ref(), spec);
        }
        self.commit();
        Ok(())
    }

    /// The counter directory, when shared memory is on.
    pub fn shm_path(&self) -> Option<&std::path::Path> {
        self.shm.as_ref().map(|d| d.path())
    }

    /// Ticks per second for `App::tick` (default 1000).
    pub fn set_tick_hz(&mut self, hz: u32) {
        self.tick_period = Duration::from_secs(1) / hz.max(1);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    /// The running config (the whole one, when apps run on workers).
    pub fn config(&self) -> &Config {
        if self.workers.is_empty() { &self.config } else { &self.workers.config }
    }

    /// Pin worker `name` (or `main`) to `cpu`, over what configs say.
    pub fn set_worker_cpu(&mut self, name: &str, cpu: usize) -> std::io::Result<()> {
        if name == crate::config::MAIN {
            crate::worker::pin_current_thread(cpu)?;
        }
        self.workers.cpus.insert(name.to_string(), cpu);
        Ok(())
    }

    /// Every worker's state and link report (none without workers).
    pub fn worker_reports(&self) -> Vec<crate::worker::WorkerReport> {
        self.workers.reports(Duration::from_secs(1))
    }
    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn timers(&mut self) -> &mut Timers<Engine> {
        &mut self.timers
    }

    /// Ask `run` to return after the current breath (for timers).
    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    // -----------------------------------------------------------------------
    // Reconfiguration

    /// Move to the graph `new`. See the module comment; a config with
    /// workers is split among them (see `worker`).
    pub fn configure(&mut self, new: &Config) -> Result<(), ConfigError> {
        if new.workers().next().is_some() || !self.workers.is_empty() {
            self.registry.check(new)?;
            let mut w = std::mem::take(&mut self.workers);
            let r = w.configure(new, self);
            self.workers = w;
            return r;
        }
        self.configure_here(new)
    }

    /// Move this engine's own graph to `new` (no workers).
    pub(crate) fn configure_here(&mut self, new: &Config) -> Result<(), ConfigError> {
        let made = self.prepare(new)?;
        self.apply_prepared(new, made, true)
    }

    /// Phase 1 of `configure_here`: make every app of `new` that is not
    /// running (or runs with another class). Nothing changes yet, so the
    /// workers of a config can all prepare their parts, and commit them
    /// only when none refused.
    pub(crate) fn prepare(&mut self, new: &Config) -> Result<Prepared, ConfigError> {
        self.registry.check(new)?;
        let mut made: BTreeMap<String, Box<dyn App>> = BTreeMap::new();
        for (name, spec) in new.apps() {
            if self.config.app_spec(name).is_none_or(|old| old.class != spec.class) {
                made.insert(name.to_string(), self.registry.create(new, name)?);
            }
        }
        Ok(Prepared { made })
    }

    /// Phase 2 of `configure_here`: apply `new`, with the apps `prepare`
    /// made for it. (The running config may have changed in between by
    /// arguments only: a move's quiescing pauses interlinks.)
    /// `count`: whether it is a config the user asked for (counted in
    /// `engine/configs`), not a step of a move (pausing interlinks, or
    /// resuming them when the config is refused).
    pub(crate) fn apply_prepared(&mut self, new: &Config, prepared: Prepared, count: bool) -> Result<(), ConfigError> {
        let mut made = prepared.made;
        let in_place: Vec<String> = new
            .apps()
            .filter(|(name, spec)| {
                !made.contains_key(*name) && self.config.app_spec(name).is_some_and(|old| old.args != spec.args)
            })
            .map(|(name, _)| name.to_string())
            .collect();
        // Apps whose class can take new arguments do so now; the others are
        // made anew. An app that refuses is an error before any restart.
        for name in in_place {
            let i = self.index[&name];
            if !self.registry.reconfigure(new, &name, &mut *self.apps[i].app)? {
                made.insert(name.clone(), self.registry.create(new, &name)?);
            }
        }

        // Apply.
        let mut apps: BTreeMap<String, AppEntry> = self.apps.drain(..).map(|e| (e.name.clone(), e)).collect();
        let gone_links: Vec<LinkSpec> =
            self.links.keys().filter(|s| !new.links().any(|(n, _)| n == *s)).cloned().collect();
        let mut leftovers: Vec<(LinkSpec, Rc<Link>, Option<std::sync::Arc<crate::interlink::Interlink>>)> = Vec::new();
        for spec in gone_links {
            let l = self.links.remove(&spec).unwrap();
            // (An empty one too: it may lead to an interlink that holds
            // packets.)
            // The interlink it fed, when it led to a producer end: held
            // here, as the app will be gone before the packets move.
            let il = self
                .config
                .app_spec(&spec.to.app)
                .filter(|a| a.class == crate::worker::SEND_CLASS)
                .and_then(|a| a.args.parse::<crate::worker::InterlinkArgs>().ok())
                .and_then(|args| crate::interlink::get(&args.link));
            leftovers.push((spec.clone(), l.link.clone(), il));
            if let Some(d) = &self.shm {
                d.remove(&format!("links/{spec}"));
            }
        }
        let gone_apps: Vec<String> = apps.keys().filter(|n| new.app_spec(n).is_none()).cloned().collect();
        for name in gone_apps {
            let mut e = apps.remove(&name).unwrap();
            e.app.stop();
            drop(e);
            if let Some(d) = &self.shm {
                d.remove(&format!("apps/{name}"));
            }
        }
        let mut fresh: BTreeSet<String> = BTreeSet::new();
        for (name, app) in made {
            if let Some(mut old) = apps.remove(&name) {
                old.app.stop();
            }
            apps.insert(
                name.clone(),
                AppEntry { name: name.clone(), app, io: Io::default(), pulls: false, counters: BTreeMap::new() },
            );
            fresh.insert(name);
        }
        for (spec, settings) in new.links() {
            match self.links.get_mut(spec) {
                Some(l) if l.settings == settings => {}
                Some(l) => {
                    if l.settings.size != settings.size {
                        l.link = Rc::new(l.link.resized(settings.size));
                    }
                    l.link.set_copy_mode(settings.copy);
                    l.settings = settings;
                }
                None => {
                    let link = Link::new(settings.size);
                    link.set_copy_mode(settings.copy);
                    let counters = link_counters(self.shm.as_ref(), spec);
                    self.links.insert(spec.clone(), LinkEntry { link: Rc::new(link), settings, counters });
                }
            }
        }
        // A link gone hands what it still queues to a new link at the same
        // input port (or, failing that, output port): when an app moves to
        // another worker, its links here are replaced by interlink ends.
        for (spec, old, il) in leftovers {
            let to = self
                .links
                .iter()
                .find(|(s, _)| s.to == spec.to && !self.config.links().any(|(o, _)| o == *s))
                .or_else(|| {
                    self.links.iter().find(|(s, _)| s.from == spec.from && !self.config.links().any(|(o, _)| o == *s))
                })
                .map(|(s, _)| s.clone());
            match (to, il) {
                (Some(to), il) => {
                    // The interlink became a local link here (its consumer
                    // moved to this worker and was quiesced): what is on the
                    // ring comes first. The link grows to hold it all.
                    let il = il.filter(|il| il.attach(false));
                    let need = old.nreadable() + il.as_ref().map_or(0, |il| il.nreadable());
                    let e = self.links.get_mut(&to).unwrap();
                    if e.link.nwritable() < need {
                        let size = (e.link.nreadable() + need).next_power_of_two().min(crate::link::MAX_SIZE);
                        e.link = Rc::new(e.link.resized(size));
                    }
                    if let Some(il) = il {
                        // Its packets may be of other workers' pools.
                        packet::expect_visitors();
                        while il.pull_into(&e.link) > 0 {}
                        il.detach(false);
                    }
                    old.transfer(&e.link);
                }
                (None, Some(il)) => {
                    // An interlink's producer end goes (its app moved away):
                    // what it still had to send stays with the ring.
                    il.stash_from(&old);
                }
                (None, None) => {}
            }
            let dropped = old.discard().0;
            if dropped > 0 {
                log::warn!("{dropped} packets dropped with link {spec} (removed)");
            }
            self.stats.reconfig_drops += dropped;
        }
        // Ports: rebuilt from the links; apps whose ports changed are told.
        let mut io: BTreeMap<&str, (Vec<Port>, Vec<Port>)> = BTreeMap::new();
        for (spec, l) in &self.links {
            io.entry(&spec.from.app).or_default().1.push(Port { name: spec.from.port.clone(), link: l.link.clone() });
            io.entry(&spec.to.app).or_default().0.push(Port { name: spec.to.port.clone(), link: l.link.clone() });
        }
        for (name, e) in &mut apps {
            let (i, o) = io.remove(name.as_str()).unwrap_or_default();
            let new_io = Io { input: Ports::new(i), output: Ports::new(o) };
            let changed = !new_io.input.same_as(&e.io.input) || !new_io.output.same_as(&e.io.output);
            e.io = new_io;
            e.pulls = e.app.has_pull();
            if changed || fresh.contains(name) {
                e.app.link(&e.io);
            }
        }
        self.link_list = self.links.values().map(|l| l.link.clone()).collect();
        self.config = new.clone();
        self.stats.configs += count as u64;
        self.set_breathe_order(apps);
        if let Some(d) = &self.shm {
            let _ = d.write_text("config.ron", &self.config.to_ron());
        }
        self.commit();
        Ok(())
    }

    /// Stop every app and worker and drop every link (packets go back to
    /// their owners).
    pub fn stop(&mut self) {
        self.workers.stop_all();
        let _ = self.configure_here(&Config::new());
        packet::flush_returns();
        packet::collect_returns();
        packet::adopt_orphans();
    }

    /// Lay the apps out in push order: a depth-first walk from the outputs
    /// of pulling apps, in reverse post-order, so each app pushes after the
    /// apps that feed it. A pulling app's own outputs are not followed when
    /// it is reached as a consumer: that breaks the cycles through it.
    fn set_breathe_order(&mut self, mut apps: BTreeMap<String, AppEntry>) {
        let pulling: Vec<String> = apps.values().filter(|e| e.pulls).map(|e| e.name.clone()).collect();
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for spec in self.links.keys() {
            next.entry(&spec.from.app).or_default().push(&spec.to.app);
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut post: Vec<&str> = Vec::new();
        fn visit<'a>(
            a: &'a str,
            pulls: &dyn Fn(&str) -> bool,
            next: &BTreeMap<&'a str, Vec<&'a str>>,
            seen: &mut BTreeSet<&'a str>,
            post: &mut Vec<&'a str>,
        ) {
            if !seen.insert(a) {
                return;
            }
            if !pulls(a) {
                for &b in next.get(a).into_iter().flatten() {
                    visit(b, pulls, next, seen, post);
                }
            }
            post.push(a);
        }
        let pulls = |a: &str| apps.get(a).is_some_and(|e| e.pulls);
        for root in &pulling {
            for &b in next.get(root.as_str()).into_iter().flatten() {
                visit(b, &pulls, &next, &mut seen, &mut post);
            }
        }
        for a in apps.keys() {
            visit(a, &pulls, &next, &mut seen, &mut post);
        }
        post.reverse();
        let order: Vec<String> = post.into_iter().map(str::to_string).collect();
        self.apps = order.iter().map(|n| apps.remove(n).expect("app in order")).collect();
        self.index = order.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        self.pulls = pulling.iter().map(|n| self.index[n]).collect();
        self.push_order = order;
        self.pull_order = pulling;
    }

    fn entry(&self, name: &str) -> Option<&AppEntry> {
        self.index.get(name).map(|&i| &self.apps[i])
    }
    fn entry_mut(&mut self, name: &str) -> Option<&mut AppEntry> {
        self.index.get(name).map(|&i| &mut self.apps[i])
    }

    // -----------------------------------------------------------------------
    // Running

    /// One breath. Returns the number of packets that crossed links.
    pub fn breathe(&mut self) -> u64 {
        for &i in &self.pulls {
            let e = &mut self.apps[i];
            e.app.pull(&e.io);
        }
        for e in &mut self.apps {
            e.app.push(&e.io);
        }
        // Settle: apps whose inputs still hold packets push again.
        for _ in 1..MAX_PASSES {
            let mut again = false;
            for e in &mut self.apps {
                if e.io.input.iter().any(|l| !l.is_empty()) {
                    let before: usize = e.io.input.iter().map(Link::nreadable).sum();
                    e.app.push(&e.io);
                    let after: usize = e.io.input.iter().map(Link::nreadable).sum();
                    again |= after < before;
                }
            }
            if !again {
                break;
            }
        }
        for l in &self.link_list {
            l.rewind();
        }
        // Packets of other workers' pools dropped here go home; ours come
        // back (both cheap when there are none).
        packet::flush_returns();
        packet::collect_returns();
        self.stats.breaths += 1;
        let moved = self.links_moved();
        let delta = moved - self.moved_before;
        self.moved_before = moved;
        delta
    }

    fn links_moved(&self) -> u64 {
        self.link_list.iter().map(|l| l.txpackets()).sum()
    }

    fn after_breath(&mut self, moved: u64, now: Instant) {
        if now >= self.next_tick {
            self.next_tick = now + self.tick_period;
            for e in &mut self.apps {
                e.app.tick(&e.io);
            }
            packet::adopt_orphans();
        }
        if self.timers.due(now) {
            let mut due = self.timers.take_due(now);
            for t in &mut due {
                (t.action)(self);
            }
            self.timers.put_back(due, now);
        }
        if self.stats.breaths.is_multiple_of(COMMIT_BREATHS) && now >= self.next_commit {
            self.next_commit = now + COMMIT_PERIOD;
            self.commit();
        }
        if moved == 0 {
            self.stats.idle_breaths += 1;
            if !self.busywait {
                self.sleep_us = (self.sleep_us + 1).min(MAX_SLEEP_US);
                std::thread::sleep(Duration::from_micros(self.sleep_us));
                // A sleep makes the last reading stale: read after each breath.
                self.clock.stride = 1;
                self.clock.countdown = 0;
            }
        } else {
            self.sleep_us /= 2;
        }
    }

    /// Run breaths until the limit. Counters are committed at the end.
    pub fn run(&mut self, mut limit: Limit) {
        let start = self.clock.reset();
        let first_breath = self.stats.breaths;
        self.stop_requested = false;
        self.moved_before = self.links_moved();
        let mut t0 = ticks();
        loop {
            let moved = self.breathe();
            let t1 = ticks();
            if moved > 0 {
                self.stats.busy_ticks += t1.wrapping_sub(t0);
            }
            let now = self.clock.tick();
            self.after_breath(moved, now);
            // (after_breath may sleep: not part of the next breath.)
            t0 = if self.busywait { t1 } else { ticks() };
            let done = self.stop_requested
                || match &mut limit {
                    Limit::Forever => false,
                    Limit::Duration(d) => now - start >= *d,
                    Limit::Breaths(n) => self.stats.breaths - first_breath >= *n,
                    Limit::Until(f, timeout) => {
                        let f: &mut dyn FnMut(&Engine) -> bool = *f;
                        f(self) || timeout.is_some_and(|t| now - start >= t)
                    }
                };
            if done {
                break;
            }
        }
        self.commit();
    }

    /// Run for a duration.
    pub fn run_for(&mut self, d: Duration) {
        self.run(Limit::Duration(d));
    }

    /// Run until `f` is true or `timeout` passes; returns whether `f` held.
    pub fn run_until(&mut self, mut f: impl FnMut(&Engine) -> bool, timeout: Duration) -> bool {
        self.run(Limit::Until(&mut f, Some(timeout)));
        f(self)
    }

    // -----------------------------------------------------------------------
    // Looking inside

    /// A running app, as its own type.
    pub fn app<T: 'static>(&self, name: &str) -> Option<&T> {
        self.entry(name)?.app.as_any().downcast_ref::<T>()
    }
    pub fn app_mut<T: 'static>(&mut self, name: &str) -> Option<&mut T> {
        self.entry_mut(name)?.app.as_any_mut().downcast_mut::<T>()
    }
    /// Ask app `name` of this engine to prepare to move (`App::prepare_move`);
    /// true when it is ready, or is not here.
    pub fn prepare_move(&mut self, name: &str) -> bool {
        self.entry_mut(name).is_none_or(|e| e.app.prepare_move())
    }
    /// Tell app `name` of this engine that its move is off (`App::move_cancelled`).
    pub fn cancel_move(&mut self, name: &str) {
        if let Some(e) = self.entry_mut(name) {
            e.app.move_cancelled();
        }
    }
    /// Call `f` on app `name` as its own type, on the thread it runs on
    /// (here, or its worker's), and return what `f` returns: for what an
    /// app offers beyond its counters (a driver's statistics read from the
    /// chip now). None when there is no such app of that type, or its
    /// worker did not answer within a second.
    pub fn with_app<T: 'static, R: Send + 'static>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Option<R> {
        if self.entry(name).is_some() || self.workers.is_empty() {
            return self.app_mut::<T>(name).map(f);
        }
        let name = name.to_string();
        let w = self.workers.config.worker_of(&name).to_string();
        self.workers.run_on(&w, move |e: &mut Engine| e.app_mut::<T>(&name).map(f)).flatten()
    }
    /// A running app's ports.
    pub fn app_io(&self, name: &str) -> Option<&Io> {
        self.entry(name).map(|e| &e.io)
    }
    /// Apps in push order.
    pub fn push_order(&self) -> &[String] {
        &self.push_order
    }
    pub fn pull_order(&self) -> &[String] {
        &self.pull_order
    }

    /// A link by its spec (`"a.x -> b.y"`).
    pub fn link(&self, spec: &str) -> Option<&Link> {
        let s: LinkSpec = spec.parse().ok()?;
        self.links.get(&s).map(|l| &*l.link)
    }
    /// A link's counters; with workers, a link of the whole config
    /// wherever it runs (one between workers sums its three hops: see
    /// `worker`).
    pub fn link_counters(&self, spec: &str) -> Option<LinkCounters> {
        match self.link(spec) {
            Some(l) => Some(l.counters()),
            None if !self.workers.is_empty() => self.workers.link_counters(spec, self),
            None => None,
        }
    }
    pub fn links(&self) -> impl Iterator<Item = (&LinkSpec, &Link)> {
        self.links.iter().map(|(s, l)| (s, &*l.link))
    }

    /// An app's counters by name.
    /// (With workers, of an app wherever it runs.)
    pub fn app_counters(&self, name: &str) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        if let Some(e) = self.entry(name) {
            e.app.counters(&mut |k, v| {
                m.insert(k.to_string(), v);
            });
        } else if !self.workers.is_empty() {
            return self.workers.app_counters(name);
        }
        m
    }

    /// Copy every counter to shared memory (when enabled).
    pub fn commit(&mut self) {
        let Some(dir) = &self.shm else { return };
        let ps = packet::stats();
        let values = [
            self.stats.breaths,
            self.stats.configs,
            self.stats.reconfig_drops,
            self.stats.idle_breaths,
            self.stats.busy_ticks,
            ps.in_use,
            ps.total,
            ps.flattened,
        ];
        for ((_, c), v) in self.engine_counters.iter().zip(values) {
            c.set(v);
        }
        for l in self.links.values() {
            if let Some(cs) = &l.counters {
                for (c, (_, v)) in cs.iter().zip(l.link.counters().named()) {
                    c.set(v);
                }
            }
        }
        if !self.workers.is_empty() || !self.extra_counters.is_empty() {
            let mut values: Vec<(String, u64)> = Vec::new();
            for (name, c) in crate::interlink::all_counters() {
                values.push((format!("links/{name}/txpackets"), c.txpackets));
                values.push((format!("links/{name}/rxpackets"), c.rxpackets));
                values.push((format!("links/{name}/txdrop"), c.drops));
            }
            for w in self.workers.reports(Duration::ZERO) {
                values.push((format!("worker-status/{}/breaths", w.name), w.breaths));
                values.push((format!("worker-status/{}/idle_breaths", w.name), w.idle_breaths));
                values.push((format!("worker-status/{}/busy_ticks", w.name), w.busy_ticks));
                values.push((format!("worker-status/{}/cpu", w.name), w.cpu.max(0) as u64));
                values.push((format!("worker-status/{}/failed", w.name), w.failed.is_some() as u64));
            }
            for (k, v) in &values {
                if !self.extra_counters.contains_key(k)
                    && let Ok(c) = dir.counter(k)
                {
                    self.extra_counters.insert(k.clone(), c);
                }
                if let Some(c) = self.extra_counters.get(k) {
                    c.set(*v);
                }
            }
            // Those of workers and links between workers that are gone, so
            // that `top` shows no ghost: a worker's directory goes, and a
            // link's unless it runs on here now (a link that became local
            // keeps its files, written by the local link from now on).
            if self.extra_counters.len() > values.len() {
                let live: BTreeSet<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
                let stale: Vec<String> =
                    self.extra_counters.keys().filter(|k| !live.contains(k.as_str())).cloned().collect();
                for k in stale {
                    self.extra_counters.remove(&k);
                    let Some((sub, _)) = k.rsplit_once('/') else { continue };
                    let local =
                        sub.strip_prefix("links/").is_some_and(|l| self.links.keys().any(|s| s.to_string() == l));
                    if !local {
                        dir.remove(sub);
                    }
                }
            }
        }
        for e in &mut self.apps {
            let counters = &mut e.counters;
            let name = &e.name;
            e.app.counters(&mut |k, v| match counters.get(k) {
                Some(c) => c.set(v),
                None => {
                    if let Ok(c) = dir.counter(&format!("apps/{name}/{k}")) {
                        c.set(v);
                        counters.insert(k.to_string(), c);
                    }
                }
            });
        }
    }

    /// Whether app `name` is one of the hidden ends of a link between
    /// workers (made by the engine, not by the config: reports show the
    /// config's link instead).
    fn hidden(&self, name: &str) -> bool {
        self.config
            .app_spec(name)
            .is_some_and(|a| a.class == crate::worker::SEND_CLASS || a.class == crate::worker::RECEIVE_CLASS)
    }

    /// Per-link report: packets sent, drops and loss, one line per link of
    /// the config; a link between workers is one line too (its three hops
    /// added up, see `link_counters`), with the workers it joins.
    pub fn report_links(&self) -> String {
        let line = |s: &mut String, spec: &dyn std::fmt::Display, c: LinkCounters, what: &str| {
            let sent = c.txpackets + c.txdrop;
            let loss = if sent == 0 { 0.0 } else { c.txdrop as f64 * 100.0 / sent as f64 };
            let _ = writeln!(s, "  {:>15} sent on {spec} (loss rate: {loss:.0}%){what}", group(c.txpackets));
        };
        let mut s = String::from("link report:\n");
        for (spec, l) in &self.links {
            if !self.hidden(&spec.from.app) && !self.hidden(&spec.to.app) {
                line(&mut s, spec, l.link.counters(), "");
            }
        }
        if !self.workers.is_empty() {
            let whole = &self.workers.config;
            for (spec, _) in whole.links() {
                let (wf, wt) = (whole.worker_of(&spec.from.app), whole.worker_of(&spec.to.app));
                if wf != wt {
                    let c = self.workers.link_counters(&spec.to_string(), self).unwrap_or_default();
                    let queued = crate::interlink::get(&spec.to_string()).map_or(0, |il| il.nreadable());
                    line(&mut s, spec, c, &format!(" between workers {wf} -> {wt}, {} queued", group(queued as u64)));
                }
            }
        }
        for w in self.worker_reports() {
            let _ = writeln!(s, "worker {}:", w.name);
            for line in w.links.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        s
    }

    /// Per-app report, from each app's `report` (the hidden ends of links
    /// between workers are in the link report).
    pub fn report_apps(&self) -> String {
        let mut s = String::from("app report:\n");
        for name in self.push_order.iter().filter(|n| !self.hidden(n)) {
            if let Some(e) = self.entry(name) {
                let mut r = String::new();
                e.app.report(&mut r);
                if !r.is_empty() {
                    let _ = writeln!(s, "  {name}:");
                    for line in r.lines() {
                        let _ = writeln!(s, "    {line}");
                    }
                }
            }
        }
        s
    }

    /// Engine load: breaths and idle share since start.
    pub fn report_load(&self) -> String {
        let ps = packet::stats();
        let mut s = format!(
            "load: {} breaths ({} idle), {} configs, packets in use {} of {}\n",
            self.stats.breaths, self.stats.idle_breaths, self.stats.configs, ps.in_use, ps.total
        );
        for w in self.workers.reports(Duration::ZERO) {
            let busy = w.breaths.saturating_sub(w.idle_breaths) as f64 * 100.0 / w.breaths.max(1) as f64;
            let state = match &w.failed {
                Some(m) => format!(" FAILED: {m}"),
                None => String::new(),
            };
            let pin = w.pinned.map(|c| format!(" (pinned to {c})")).unwrap_or_default();
            let _ = writeln!(
                s,
                "worker {}: {} breaths ({} idle: {busy:.0}% moved packets), on CPU {}{pin}{state}",
                w.name, w.breaths, w.idle_breaths, w.cpu
            );
        }
        s
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn link_counters(dir: Option<&ShmDir>, spec: &LinkSpec) -> Option<Vec<Counter>> {
    let dir = dir?;
    LinkCounters::default().named().iter().map(|(n, _)| dir.counter(&format!("links/{spec}/{n}")).ok()).collect()
}

/// 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
