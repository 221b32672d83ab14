//! `heaplens`: watch a mimalloc-design allocator work.
//!
//! - `heaplens` / `heaplens demo`: a workload on the heaplens allocator (this program's own).
//! - `heaplens record -o FILE -- CMD [ARGS...]`: run CMD with heaplens preloaded, record its events.
//! - `heaplens stats FILE [--json]`: what a recorded trace holds.

mod demo;
mod launch;
mod record;
mod stats;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

/// heaplens: a memory allocator you can watch.
#[derive(Parser)]
#[command(name = "heaplens", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a built-in workload on the heaplens allocator and show its state (the default).
    Demo,
    /// Run a program with heaplens as its malloc and record every allocator event to a trace.
    Record {
        /// The trace file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The program and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Summarise a recorded trace.
    Stats {
        /// The trace file.
        file: PathBuf,
        /// Print JSON (stable keys; see README).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Cmd::Demo) {
        Cmd::Demo => {
            demo::run();
            Ok(0)
        }
        Cmd::Record { output, command } => record::run(&output, &command),
        Cmd::Stats { file, json } => stats::run(&file, json).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("heaplens: {e}");
            ExitCode::from(2)
        }
    }
}
