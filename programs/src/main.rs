//! snabb-rs: run packet-processing app graphs.

mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "snabb-rs", version, about = "Packet processing with app graphs, in the tradition of Snabb")]
struct Cli {
    #[command(subcommand)]
    program: Program,
}

#[derive(Subcommand)]
enum Program {
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
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
}

/// Every app class this binary knows.
pub fn registry() -> snabb_core::Registry {
    let mut r = snabb_core::Registry::new();
    snabb_apps_basic::register(&mut r);
    r
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.program {
        Program::Bench { which: Bench::Basic1 { packets } } => bench::basic1(packets).map(drop),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snabb-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
