//! Workers: a graph spread over threads pinned to CPUs, with exact counts
//! across interlinks; a worker that panics while the others keep running;
//! an app moved between workers under traffic without a packet lost; a
//! reconfiguration one worker refuses applied nowhere.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snabb_core::config::WorkerSpec;
use snabb_core::{App, AppClass, AppContext, Config, Engine, Io, Packet, PortSpec, Registry, packet, worker};

/// What the apps saw, by app name (apps run on other threads).
static SEEN: Mutex<BTreeMap<String, Seen>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Seen {
    packets: u64,
    out_of_order: u64,
}

fn seen(name: &str) -> Seen {
    SEEN.lock().unwrap().get(name).copied().unwrap_or_default()
}

/// How many packets the Gen of that name may have sent so far (none: no
/// limit), so that a test can keep traffic going while it acts.
static LIMIT: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Sends `burst` numbered packets per breath until `count` are sent.
struct Gen {
    name: String,
    burst: u64,
    count: u64,
    sent: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct GenArgs {
    burst: u64,
    count: u64,
}

impl AppClass for Gen {
    type Args = GenArgs;
    const PORTS: PortSpec = PortSpec::new(&[], &["output"]);
    fn new(a: GenArgs, ctx: &AppContext) -> anyhow::Result<Gen> {
        Ok(Gen { name: ctx.name.to_string(), burst: a.burst, count: a.count, sent: 0 })
    }
    fn reconfigure(&mut self, _: GenArgs, _: &AppContext) -> anyhow::Result<bool> {
        Ok(true)
    }
}

impl App for Gen {
    fn has_pull(&self) -> bool {
        true
    }
    fn pull(&mut self, io: &Io) {
        let Some(out) = io.output.first() else { return };
        // Never more than the link takes: every packet sent is counted.
        let limit = LIMIT.lock().unwrap().get(&self.name).copied().unwrap_or(u64::MAX).min(self.count);
        let n = self.burst.min(limit.saturating_sub(self.sent)).min(out.nwritable() as u64);
        for _ in 0..n {
            let mut p = Packet::new();
            p.append(&[0u8; 52]);
            p.append(&self.sent.to_be_bytes());
            out.transmit(p);
            self.sent += 1;
        }
    }
}

/// Moves prepared for and called off, by app name.
static MOVES: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// Forwards everything; panics at packet `panic_at` when it is not 0;
/// refuses to start when told to (as an app whose device is missing would).
struct Fwd {
    name: String,
    panic_at: u64,
    n: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
struct FwdArgs {
    #[serde(default)]
    panic_at: u64,
    #[serde(default)]
    refuse: bool,
}

impl AppClass for Fwd {
    type Args = FwdArgs;
    const PORTS: PortSpec = PortSpec::new(&["input"], &["output"]);
    fn new(a: FwdArgs, ctx: &AppContext) -> anyhow::Result<Fwd> {
        if a.refuse {
            anyhow::bail!("Fwd: refused (as asked)");
        }
        Ok(Fwd { name: ctx.name.to_string(), panic_at: a.panic_at, n: 0 })
    }
}

impl App for Fwd {
    fn push(&mut self, io: &Io) {
        let (Some(i), Some(o)) = (io.input.first(), io.output.first()) else { return };
        while o.nwritable() > 0 {
            let Some(p) = i.receive() else { break };
            self.n += 1;
            if self.n == self.panic_at {
                panic!("Fwd: packet {} (as asked)", self.n);
            }
            o.transmit(p);
        }
    }
    fn prepare_move(&mut self) -> bool {
        MOVES.lock().unwrap().entry(self.name.clone()).or_default().0 += 1;
        true
    }
    fn move_cancelled(&mut self) {
        MOVES.lock().unwrap().entry(self.name.clone()).or_default().1 += 1;
    }
}

/// Counts packets and checks they come in order.
struct Sink {
    name: String,
    next: u64,
}

impl AppClass for Sink {
    type Args = ();
    const PORTS: PortSpec = PortSpec::new(&["input"], &[]);
    fn new(_: (), ctx: &AppContext) -> anyhow::Result<Sink> {
        Ok(Sink { name: ctx.name.to_string(), next: 0 })
    }
}

impl App for Sink {
    fn push(&mut self, io: &Io) {
        let Some(i) = io.input.first() else { return };
        let (mut n, mut bad) = (0, 0);
        for p in i.drain() {
            let d = p.data();
            let v = u64::from_be_bytes(d[d.len() - 8..].try_into().unwrap());
            if v != self.next {
                bad += 1;
            }
            self.next = v + 1;
            n += 1;
        }
        if n > 0 {
            let mut s = SEEN.lock().unwrap();
            let e = s.entry(self.name.clone()).or_default();
            e.packets += n;
            e.out_of_order += bad;
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Gen>("Gen", "numbered packets");
    r.register::<Fwd>("Fwd", "forwards");
    r.register::<Sink>("Sink", "counts");
    r
}

fn engine() -> Engine {
    worker::set_registry_maker(registry);
    Engine::new(registry())
}

fn run_until(e: &mut Engine, f: impl Fn() -> bool, secs: u64) -> bool {
    e.run_until(|_| f(), Duration::from_secs(secs))
}

#[test]
fn two_workers_exact_counts_and_every_packet_home() {
    const N: u64 = 300_000;
    let mut c = Config::new();
    c.app("gen", "Gen", &GenArgs { burst: 100, count: N })
        .app("fwd", "Fwd", &FwdArgs::default())
        .app("two-sink", "Sink", &())
        .link("gen.output -> fwd.input")
        .link("fwd.output -> two-sink.input")
        .worker("w1", WorkerSpec { cpu: Some(0) })
        .worker("w2", WorkerSpec { cpu: Some(1) })
        .place("gen", Some("w1"))
        .place("two-sink", Some("w2"));
    let mut e = engine();
    e.configure(&c).unwrap();
    assert_eq!(e.config(), &c);
    assert!(run_until(&mut e, || seen("two-sink").packets == N, 120), "{:?}", seen("two-sink"));
    // Nothing more comes.
    e.run_for(Duration::from_millis(50));
    assert_eq!(seen("two-sink"), Seen { packets: N, out_of_order: 0 });
    let load = e.report_load();
    assert!(load.contains("worker w1:") && load.contains("pinned to 0"), "{load}");
    let links = e.report_links();
    // Each link between workers is one line, named as in the config.
    for l in [
        "gen.output -> fwd.input (loss rate: 0%) between workers w1 -> main",
        "fwd.output -> two-sink.input (loss rate: 0%) between workers main -> w2",
    ] {
        assert!(links.contains(&format!("300,000 sent on {l}")), "{l}: {links}");
    }
    let apps = e.report_apps();
    assert!(!links.contains("il_") && !apps.contains("il_"), "the hidden ends show: {links}{apps}");
    e.stop();
    // The pools of ended workers are adopted until every record is home,
    // then freed.
    for _ in 0..1000 {
        packet::adopt_orphans();
        if packet::orphans() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(packet::orphans(), 0, "a worker's pool never got its records back");
    assert_eq!(packet::stats().in_use, 0);
}

#[test]
fn a_worker_that_panics_is_reported_and_the_others_run_on() {
    let config = |panic_at: u64| {
        let mut c = Config::new();
        c.app("pgen", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("pfwd", "Fwd", &FwdArgs { panic_at, ..FwdArgs::default() })
            .app("psink", "Sink", &())
            .app("pgen2", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("psink2", "Sink", &())
            .link("pgen.output -> pfwd.input")
            .link("pfwd.output -> psink.input")
            .link("pgen2.output -> psink2.input")
            .worker("p1", WorkerSpec::default())
            .worker("p2", WorkerSpec::default())
            .place("pgen", Some("p1"))
            .place("pgen2", Some("p1"))
            .place("pfwd", Some("p2"));
        c
    };
    let mut e = engine();
    e.configure(&config(1000)).unwrap();
    let failed = |e: &Engine| e.worker_reports().iter().any(|w| w.name == "p2" && w.failed.is_some());
    assert!(e.run_until(failed, Duration::from_secs(60)), "the worker did not fail");
    let load = e.report_load();
    assert!(load.contains("worker p2:") && load.contains("FAILED: Fwd: packet 1000 (as asked)"), "{load}");
    // The other worker and the main engine go on.
    let before = seen("psink2").packets;
    assert!(run_until(&mut e, || seen("psink2").packets > before + 10_000, 60));
    // (What it forwarded in the breath it failed in never left it.)
    assert!(seen("psink").packets <= 999);
    // A config that places apps on it again starts it anew.
    e.configure(&config(0)).unwrap();
    assert!(run_until(&mut e, || seen("psink").packets > 20_000, 60), "the restarted worker forwards");
    e.stop();
}

#[test]
fn an_app_moves_between_workers_under_traffic_without_loss() {
    const N: u64 = 400_000;
    let place = |fwd: Option<&str>| {
        let mut c = Config::new();
        c.app("mgen", "Gen", &GenArgs { burst: 50, count: N })
            .app("mfwd", "Fwd", &FwdArgs::default())
            .app("msink", "Sink", &())
            .link("mgen.output -> mfwd.input")
            .link("mfwd.output -> msink.input")
            .worker("m1", WorkerSpec::default())
            .worker("m2", WorkerSpec::default())
            .place("mgen", Some("m1"))
            .place("mfwd", fwd);
        c
    };
    let mut e = engine();
    let limit = |n: u64| LIMIT.lock().unwrap().insert("mgen".into(), n);
    limit(0);
    e.configure(&place(Some("m1"))).unwrap();
    let mut at = 0;
    for (i, w) in [Some("m2"), None, Some("m1"), Some("m2"), None].into_iter().enumerate() {
        // Move while traffic flows: the source may send well past what
        // the sink must have seen.
        let goal = (i as u64 + 1) * N / 8;
        limit(goal + N / 16);
        assert!(run_until(&mut e, || seen("msink").packets >= goal, 120), "{:?}", seen("msink"));
        e.configure(&place(w)).unwrap();
        at += 1;
    }
    assert_eq!(at, 5);
    limit(N);
    assert!(run_until(&mut e, || seen("msink").packets >= N, 120), "{:?}", seen("msink"));
    e.run_for(Duration::from_millis(50));
    assert_eq!(seen("msink"), Seen { packets: N, out_of_order: 0 }, "every packet once, in order");
    e.stop();
}

/// A reconfiguration that one worker's part refuses is applied nowhere:
/// not on the main engine, not on the other workers, not by starting a
/// worker it adds; the old config runs on, and the error is said once.
#[test]
fn a_config_one_worker_refuses_is_applied_on_no_worker() {
    let old = || {
        let mut c = Config::new();
        c.app("rgen", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("rsink", "Sink", &())
            .link("rgen.output -> rsink.input")
            .worker("r1", WorkerSpec::default())
            .worker("r2", WorkerSpec::default())
            .place("rgen", Some("r1"))
            .place("rsink", Some("r2"));
        c
    };
    // The same, and more on every worker: a new flow from r1 to main, a
    // worker r3, and on r2 an app that refuses to start.
    let new = |refuse: bool| {
        let mut c = old();
        c.app("rgen2", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("rsink2", "Sink", &())
            .app("rgen3", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("rfwd", "Fwd", &FwdArgs { refuse, ..FwdArgs::default() })
            .app("rsink3", "Sink", &())
            .link("rgen2.output -> rsink2.input")
            .link("rgen3.output -> rfwd.input")
            .link("rfwd.output -> rsink3.input")
            .worker("r3", WorkerSpec::default())
            .place("rgen2", Some("r1"))
            .place("rgen3", Some("r3"))
            .place("rfwd", Some("r2"));
        c
    };
    let mut e = engine();
    e.configure(&old()).unwrap();
    assert!(run_until(&mut e, || seen("rsink").packets > 1000, 60));
    let err = e.configure(&new(true)).unwrap_err();
    assert!(err.msg.contains("worker `r2`") && err.msg.contains("refused (as asked)"), "{err}");
    assert_eq!(err.msg.matches("refused (as asked)").count(), 1, "{err}");
    assert_eq!(e.config(), &old(), "the old config is the one running");
    let workers: Vec<String> = e.worker_reports().iter().map(|w| w.name.clone()).collect();
    assert_eq!(workers, ["r1", "r2"], "the worker the refused config adds was not started (or was stopped)");
    // The old graph runs on; nothing of the new one runs anywhere.
    let before = seen("rsink").packets;
    assert!(run_until(&mut e, || seen("rsink").packets > before + 1000, 60));
    assert_eq!((seen("rsink2").packets, seen("rsink3").packets), (0, 0), "a part of the refused config ran");
    assert!(e.link_counters("rgen2.output -> rsink2.input").is_none());
    // The same without the refusal applies everywhere.
    e.configure(&new(false)).unwrap();
    assert!(run_until(&mut e, || seen("rsink2").packets > 1000 && seen("rsink3").packets > 1000, 60));
    e.stop();
}

/// `engine/configs` counts the configs applied, once each: not the steps of
/// a move (pausing the interlinks that feed the app, resuming them when
/// the config is refused after all).
#[test]
fn configs_count_what_was_asked_not_the_steps_of_a_move() {
    let config = |fwd: &str, refuse: bool| {
        let mut c = Config::new();
        c.app("cgen", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("cfwd", "Fwd", &FwdArgs::default())
            .app("csink", "Sink", &())
            .link("cgen.output -> cfwd.input")
            .link("cfwd.output -> csink.input")
            .worker("c1", WorkerSpec::default())
            .worker("c2", WorkerSpec::default())
            .place("cgen", Some("c1"))
            .place("cfwd", Some(fwd));
        if refuse {
            c.app("crefuse", "Fwd", &FwdArgs { refuse: true, ..FwdArgs::default() }).place("crefuse", Some("c2"));
        }
        c
    };
    let mut e = engine();
    e.configure(&config("c1", false)).unwrap();
    assert_eq!(e.stats().configs, 1);
    assert!(run_until(&mut e, || seen("csink").packets > 1000, 60));
    // A move that a worker refuses: nothing applied, nothing counted.
    let err = e.configure(&config("c2", true)).unwrap_err();
    assert!(err.msg.contains("refused (as asked)"), "{err}");
    assert_eq!(e.stats().configs, 1, "a refused config was counted");
    // The app was asked to prepare, then told the move is off.
    assert_eq!(MOVES.lock().unwrap().get("cfwd").copied(), Some((1, 1)));
    let before = seen("csink").packets;
    assert!(run_until(&mut e, || seen("csink").packets > before + 1000, 60), "the old config runs on");
    // The same move, accepted: counted once.
    e.configure(&config("c2", false)).unwrap();
    assert_eq!(e.stats().configs, 2, "a move counted more than once");
    assert_eq!(MOVES.lock().unwrap().get("cfwd").copied(), Some((2, 1)));
    let before = seen("csink").packets;
    assert!(run_until(&mut e, || seen("csink").packets > before + 1000, 60), "it runs after the move");
    e.stop();
}

/// The counters main publishes for workers and the links between them go
/// with them: a worker removed leaves no `worker-status/<name>` behind
/// (`top` would show a ghost), and a link between workers that became
/// local keeps its files, now the local link's.
#[test]
fn counters_of_a_worker_removed_go_with_it() {
    let root = std::env::temp_dir().join(format!("snabb-rs-ghost-{}", std::process::id()));
    let opts = snabb_core::engine::ShmOptions { root: root.clone(), name: "e".into(), program: "test".into() };
    let dir = root.join("e");
    let config = |sink_on: Option<&str>| {
        let mut c = Config::new();
        c.app("ggen", "Gen", &GenArgs { burst: 10, count: u64::MAX })
            .app("gsink", "Sink", &())
            .link("ggen.output -> gsink.input")
            .place("gsink", sink_on);
        if sink_on.is_some() {
            c.worker("g1", WorkerSpec::default());
        }
        c
    };
    let mut e = engine();
    e.enable_shm(&opts).unwrap();
    e.configure(&config(Some("g1"))).unwrap();
    assert!(run_until(&mut e, || seen("gsink").packets > 1000, 60));
    e.commit();
    let link = dir.join("links/ggen.output -> gsink.input");
    assert!(dir.join("worker-status/g1/breaths.counter").exists());
    assert!(link.join("txdrop.counter").exists());
    // The sink back on main: no worker, the link local.
    e.configure(&config(None)).unwrap();
    let before = seen("gsink").packets;
    assert!(run_until(&mut e, || seen("gsink").packets > before + 1000, 60));
    e.commit();
    assert!(!dir.join("worker-status").join("g1").exists(), "the worker's counters stayed");
    let sent = snabb_core::shm::read_tree(&link).unwrap();
    assert!(sent["txpackets"] > 0, "the local link writes its counters: {sent:?}");
    e.stop();
    let _ = std::fs::remove_dir_all(&root);
}
