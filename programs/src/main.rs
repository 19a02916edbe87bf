//! snabb-rs: run packet-processing app graphs.

mod bench;
mod bench_copy;
mod bench_decap;
mod bench_interlink;
mod bench_splitter;
mod bench_vm2vm;
mod bench_zerocopy;
mod logger;
mod ps;
mod run;
mod selftest;
mod stats;
mod top;
mod tsc;
mod vswitch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  snabb-rs apps                                  the app classes, with their ports
  snabb-rs config check configs/basic1.ron       check a config, print its graph
  snabb-rs run configs/basic1.ron --report 1     run it; edit the file to reconfigure live
  snabb-rs ps                                    the instances running
  snabb-rs top                                   live rates of the only instance (or: top PID)
  snabb-rs top --once --json                     one sample as JSON, for scripts
  snabb-rs selftest Tee                          one app's selftest (all without a name)
  snabb-rs completions bash > /etc/bash_completion.d/snabb-rs

Environment:
  SNABB_RS_LOG            log level and per-module levels: info (default), debug,
                          warn,snabb_apps_vhost_user=debug ...
  SNABB_RS_SHM_ROOT       where counters go (default /var/run/snabb-rs, else
                          $XDG_RUNTIME_DIR/snabb-rs or a temp dir for other users)
  SNABB_RS_NO_HUGEPAGES   1: keep packet memory off huge pages
  SNABB_RS_COPY           avx2, sse2 or portable: cap the SIMD copier";

#[derive(Parser)]
#[command(
    name = "snabb-rs",
    version,
    about = "Packet processing with app graphs, in the tradition of Snabb",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    program: Program,
}

#[derive(Subcommand)]
enum Program {
    /// Run the app graph in a RON config file (re-applied live when the file changes).
    #[command(after_help = "\
Examples:
  snabb-rs run configs/basic1.ron --report 1
  snabb-rs run configs/vhost-vm-pair.ron --metrics /var/lib/node_exporter/snabb.prom
  snabb-rs run my.ron --metrics-listen 127.0.0.1:9417 --duration 60

Counters go to shared memory for `snabb-rs top` and `ps`; SIGINT or SIGTERM stop cleanly.")]
    Run {
        /// The config: a RON file of apps and links (see configs/ and the README).
        config: PathBuf,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Print a per-link report every this many seconds.
        #[arg(long, value_name = "SECONDS")]
        report: Option<f64>,
        /// Never sleep when idle (lowest latency, one CPU always busy).
        #[arg(long)]
        busywait: bool,
        /// Do not publish counters in shared memory (no `top`, `ps` or metrics then).
        #[arg(long)]
        no_shm: bool,
        /// Pin worker NAME (or `main`) to CPU N, over the config's `cpu`;
        /// may be given once per worker.
        #[arg(long = "cpu", value_name = "NAME=N", value_parser = parse_cpu)]
        cpus: Vec<(String, usize)>,
        /// Write every counter in Prometheus text format to this file, rewritten every second
        /// (for node_exporter's textfile collector).
        #[arg(long, value_name = "FILE")]
        metrics: Option<PathBuf>,
        /// Serve every counter in Prometheus text format over HTTP at ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// The VMDq switch for VMs: an uplink and vhost-user ports from a vswitch
    /// config (the built-in one when none is given); saving the file, or
    /// SIGHUP, applies changes live.
    #[command(
        name = "vmdq-vswitch",
        after_help = "\
Examples:
  snabb-rs vmdq-vswitch                          the built-in config: the 82599 model, three VM ports
  snabb-rs vmdq-vswitch --print-default > my.ron a config to edit
  snabb-rs vmdq-vswitch my.ron                   yours; saving it (or kill -HUP) applies the change
  snabb-rs vmdq-vswitch my.ron --print-graph     the app graph it makes (a `run` config)"
    )]
    VmdqVswitch {
        /// The vswitch config (default: the built-in configs/vmdq-vswitch.ron).
        config: Option<PathBuf>,
        /// Spread the ports over this many workers (over the config's `workers`).
        #[arg(long)]
        workers: Option<u32>,
        /// The workers' CPUs, in turn (over the config's `worker_cpus`).
        #[arg(long, value_delimiter = ',')]
        worker_cpus: Option<Vec<usize>>,
        /// Print the app graph the config makes (a `snabb-rs run` config) and exit.
        #[arg(long)]
        print_graph: bool,
        /// Print the built-in config and exit.
        #[arg(long)]
        print_default: bool,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Seconds between per-port reports (0: none).
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        report: f64,
        /// Never sleep when idle.
        #[arg(long)]
        busywait: bool,
        /// Do not publish counters in shared memory.
        #[arg(long)]
        no_shm: bool,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Show the link rates and app counters of a running snabb-rs process.
    #[command(after_help = "\
Examples:
  snabb-rs top                       terminal UI (Tab: pane, arrows/PgUp/PgDn: scroll, q: quit)
  snabb-rs top 4242 --once           one plain sample of process 4242
  snabb-rs top --once --json         every counter and rate as JSON
  snabb-rs top --once --prometheus   Prometheus text exposition
  snabb-rs top | tee log             without a terminal: a plain sample every interval")]
    Top {
        /// The process id (default: the only one running; `snabb-rs ps` lists them).
        pid: Option<u32>,
        /// Print one sample and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between samples.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Print samples as JSON objects (with --once: one).
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print samples in Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
        /// Print this many samples, then exit (plain output, no terminal UI).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// List the running snabb-rs processes: pid, program, uptime, CPU, config, threads.
    Ps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run each app's selftest, or one app's.
    Selftest {
        /// App class (e.g. Tee); all when omitted.
        app: Option<String>,
    },
    /// List the app classes this binary knows, with their ports.
    Apps,
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  snabb-rs completions bash > /etc/bash_completion.d/snabb-rs
  snabb-rs completions zsh > \"${fpath[1]}/_snabb-rs\"
  snabb-rs completions fish > ~/.config/fish/completions/snabb-rs.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a config (an app graph, or a vmdq-vswitch config) without
    /// running it and print its graph.
    #[command(after_help = "\
Everything `run` would refuse in the config itself is refused here, with the file, line and column:
unknown classes and fields, bad values, links to ports a class does not have.")]
    Check {
        /// The config: a RON file of apps and links, or a vmdq-vswitch config.
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Source -> Tee -> Sink, 60-byte packets (Snabb's snabbmark basic1).
    Basic1 {
        /// Source packets to send.
        #[arg(long, default_value_t = 100_000_000)]
        packets: u64,
    },
    /// The 82599 driver's cycles per packet, receive and transmit, on the
    /// model (the model's own work is not timed).
    Intel10g {
        /// Packets per direction and batch size.
        #[arg(long, default_value_t = 2_000_000)]
        packets: u64,
        /// Batch sizes (packets per driver call).
        #[arg(long, value_delimiter = ',', default_value = "32,64")]
        batch: Vec<usize>,
    },
    /// ns per copy by size, warm and cold: each copy kernel level against memcpy.
    Copy {
        /// Sizes in bytes (default: 64 128 256 512 1024 1514 4096 9000).
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// Measurements per contender; the median is shown.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Memory the cold copies are spread over, MiB (several times the last-level cache).
        #[arg(long, default_value_t = 256)]
        arena_mib: usize,
        /// Source offset from 64-byte alignment.
        #[arg(long, default_value_t = 0)]
        src_offset: usize,
    },
    /// Mpps through Decap and Encap (VLAN, QinQ, VXLAN, GRE, L2TPv3), 64-byte inner frames.
    Decap {
        /// Packets per run.
        #[arg(long, default_value_t = 20_000_000)]
        packets: u64,
        /// Runs per case; the median is shown.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Only the case of this name, or else those whose name contains it (and the baseline).
        #[arg(long)]
        only: Option<String>,
    },
    /// Zero copy between an 82599 pool (the model) and a guest (the in-repo
    /// frontend): the switch's ns and bytes copied or moved per packet,
    /// lending (copy: Zero) against copying (copy: Simd).
    Zerocopy {
        /// Packets timed per case.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
        /// Frame sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,1500,9000")]
        sizes: Vec<usize>,
        /// Guest receive buffer lengths, net header included (2060: DPDK's
        /// 2 KiB mbufs; 1536: Linux's mergeable buffers for 1500-byte traffic).
        #[arg(long, value_delimiter = ',', default_value = "2060,1536")]
        buffers: Vec<u32>,
        /// Packets per batch (one breath's worth).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Directions: rx (NIC to guest), tx (guest to NIC).
        #[arg(long, value_delimiter = ',', default_value = "rx,tx")]
        dirs: Vec<String>,
        /// Copy modes to run: simd, zero (a ratio needs both; one alone is
        /// for profiling).
        #[arg(long, value_delimiter = ',', default_value = "simd,zero")]
        modes: Vec<String>,
    },
    /// VM to VM through vmdq-vswitch's graph (two VhostUser ports, the
    /// software splitter), in-repo guests: the switch's ns per frame.
    Vm2vm {
        /// Frames timed per size.
        #[arg(long, default_value_t = 400_000)]
        packets: u64,
        /// Frame sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<usize>,
        /// Frames per round (one breath's worth).
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// VmdqSplitter: Mpps with 64-byte frames, unicast over the pools and 1/4 broadcast.
    Splitter {
        /// Frames per figure.
        #[arg(long, default_value_t = 30_000_000)]
        packets: u64,
        /// Pool counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "8,64")]
        pools: Vec<usize>,
        /// Only the unicast mix, or only the broadcast-heavy one.
        #[arg(long)]
        only: Option<bench_splitter::Mix>,
    },
    /// A cross-worker link: ns per 60-byte packet, Source on one CPU, Sink on the other.
    Interlink {
        #[arg(long, default_value_t = 20_000_000)]
        packets: u64,
        /// Runs; the median is shown.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// CPUs of the Source and the Sink.
        #[arg(long, value_delimiter = ',', default_value = "0,1")]
        cpus: Vec<usize>,
        /// Packets the Source makes per round (one breath's worth).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Ring slots.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// basic1 with Source and Tee on one worker and Sink on another, against one engine.
    #[command(name = "basic1-workers")]
    Basic1Workers {
        #[arg(long, default_value_t = 20_000_000)]
        packets: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// CPUs of the two workers.
        #[arg(long, value_delimiter = ',', default_value = "0,1")]
        cpus: Vec<usize>,
    },
}

/// Two CPUs from `--cpus a,b`.
fn two_cpus(v: &[usize]) -> anyhow::Result<(usize, usize)> {
    match v {
        [a, b] => Ok((*a, *b)),
        _ => anyhow::bail!("--cpus: two CPUs, e.g. 0,1"),
    }
}

/// Every app class this binary knows.
pub fn registry() -> snabb_core::Registry {
    let mut r = snabb_core::Registry::new();
    snabb_apps_basic::register(&mut r);
    snabb_apps_intel10g::register(&mut r);
    snabb_apps_copier::register(&mut r);
    snabb_apps_decap::register(&mut r);
    snabb_apps_vmdq_splitter::register(&mut r);
    snabb_apps_rawsocket::register(&mut r);
    snabb_apps_vhost_user::register(&mut r);
    snabb_apps_rate_limiter::register(&mut r);
    snabb_apps_pcap_filter::register(&mut r);
    snabb_apps_virtio_user::register(&mut r);
    snabb_apps_afxdp::register(&mut r);
    r
}

/// `NAME=N`: a worker (or `main`) and a CPU.
fn parse_cpu(s: &str) -> Result<(String, usize), String> {
    let (name, cpu) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=CPU, e.g. w1=1"))?;
    let cpu = cpu.trim().parse::<usize>().map_err(|e| format!("`{s}`: CPU `{cpu}`: {e}"))?;
    Ok((name.trim().to_string(), cpu))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logger::init() {
        eprintln!("snabb-rs: {e}");
        return ExitCode::from(2);
    }
    // Workers make their own registry, with every class this binary knows.
    snabb_core::worker::set_registry_maker(registry);
    let r = match cli.program {
        Program::Run { config, duration, report, busywait, no_shm, metrics, metrics_listen, cpus } => run::run(
            &config,
            run::RunOptions {
                duration,
                report,
                busywait,
                shm: !no_shm,
                metrics,
                metrics_listen,
                cpus,
                ..run::RunOptions::new("run")
            },
        ),
        Program::VmdqVswitch {
            config,
            workers,
            worker_cpus,
            print_graph,
            print_default,
            duration,
            report,
            busywait,
            no_shm,
        } => vswitch::run(vswitch::Options {
            config,
            workers,
            worker_cpus,
            print_graph,
            print_default,
            duration,
            report,
            busywait,
            shm: !no_shm,
        }),
        Program::Config { what: ConfigCmd::Check { config } } => config_check(&config),
        Program::Top { pid, once, interval, json, prometheus, count } => {
            let format = match (json, prometheus) {
                (true, _) => top::Format::Json,
                (_, true) => top::Format::Prometheus,
                _ => top::Format::Plain,
            };
            top::top(top::TopOptions { pid, once, interval, format, count })
        }
        Program::Ps { json } => ps::ps(json),
        Program::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "snabb-rs", &mut std::io::stdout());
            Ok(())
        }
        Program::Selftest { app } => selftest::run(app.as_deref()),
        Program::Apps => {
            let r = registry();
            for (name, doc) in r.classes() {
                println!("{name:<16} {doc}");
                println!("{:<16} ports: {}", "", r.ports(name).map(|p| p.describe()).unwrap_or_default());
            }
            Ok(())
        }
        Program::Bench { which: Bench::Basic1 { packets } } => bench::basic1(packets).map(drop),
        Program::Bench { which: Bench::Intel10g { packets, batch } } => bench::intel10g(packets, &batch),
        Program::Bench { which: Bench::Copy { sizes, rounds, arena_mib, src_offset } } => {
            let mut o = bench_copy::Options { rounds, arena_mib, src_offset, ..Default::default() };
            if let Some(s) = sizes {
                o.sizes = s;
            }
            bench_copy::run(&o)
        }
        Program::Bench { which: Bench::Decap { packets, rounds, only } } => {
            bench_decap::run(packets, rounds, only.as_deref())
        }
        Program::Bench { which: Bench::Zerocopy { packets, sizes, buffers, batch, dirs, modes } } => {
            bench_zerocopy::run(&bench_zerocopy::Options { packets, sizes, buffers, batch, dirs, modes })
        }
        Program::Bench { which: Bench::Vm2vm { packets, sizes, batch } } => {
            bench_vm2vm::run(&bench_vm2vm::Options { packets, sizes, batch })
        }
        Program::Bench { which: Bench::Splitter { packets, pools, only } } => {
            bench_splitter::splitter(packets, &pools, only)
        }
        Program::Bench { which: Bench::Interlink { packets, rounds, cpus, batch, size } } => {
            two_cpus(&cpus).and_then(|c| bench_interlink::interlink(packets, rounds, c, batch, size))
        }
        Program::Bench { which: Bench::Basic1Workers { packets, rounds, cpus } } => {
            two_cpus(&cpus).and_then(|c| bench_interlink::basic1_two(packets, rounds, c))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snabb-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    if vswitch::schema::looks_like_vswitch(&text) {
        let c = vswitch::check_file(path, &registry())?;
        print!("{}", c.to_ron());
        eprintln!(
            "{}: ok, a vmdq-vswitch config ({} apps, {} links)",
            path.display(),
            c.apps().count(),
            c.links().count()
        );
        return Ok(());
    }
    let c = snabb_core::Config::from_file(path)?;
    registry().check(&c)?;
    print!("{}", c.to_ron());
    eprintln!("{}: ok ({} apps, {} links)", path.display(), c.apps().count(), c.links().count());
    Ok(())
}
