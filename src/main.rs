//! `heaplens`: watch a mimalloc-design allocator work.
//!
//! - `heaplens` / `heaplens demo [NAME]`: the live demo, scenarios running in this process.
//! - `heaplens run [--record FILE [--follow-fork]] -- CMD [ARGS...]`: watch CMD live in the viewer.
//! - `heaplens view FILE [--diff BASELINE]`: replay a recorded trace in the viewer (a folder of
//!   a `--follow-fork` recording: pick a process, or `--pid N`).
//! - `heaplens learn [SCENARIO]`: a guided tour of a scenario's built-in recording.
//! - `heaplens record [--follow-fork] -o FILE -- CMD [ARGS...]`: run CMD with heaplens preloaded,
//!   record its events (with `--follow-fork` every process's, into the folder FILE).
//! - `heaplens stats FILE [--pid N] [--json]`: what a recorded trace (or each process of a folder)
//!   holds.
//! - `heaplens leaks FILE [--json]`: the blocks a recorded program never freed, by stack.
//! - `heaplens export FILE --format F -o OUT`: the trace for other tools (pprof, flame graphs,
//!   speedscope, Perfetto, spreadsheets).
//! - `heaplens diff A B` / `heaplens diff FILE --from L --to L`: what grew between two points.
//! - `heaplens attach PID [--record FILE]`: watch or record a running program started with
//!   `LD_PRELOAD=libheaplens.so HEAPLENS_ATTACH=1`; Ctrl-C or closing the viewer detaches.

mod attach;
mod demo;
mod diff;
mod export;
mod launch;
mod leaks;
mod packed;
mod priority;
mod processes;
mod quiet;
mod reap;
mod record;
mod run;
mod sites;
mod slab;
mod stats;
mod tap;
mod tracedir;
mod wake;

/// What heaplens says when it cannot open a window.
pub const NO_DISPLAY: &str = "no display to open the viewer on (DISPLAY is not set); record a \
    program with `heaplens record -o trace.hltrace -- CMD` and read it with `heaplens stats \
    trace.hltrace`";

use heaplens_viewer::backlog;
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

/// The program heaplens starts: `-- CMD [ARGS...]`.
#[derive(clap::Args)]
struct Target {
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch built-in scenarios live in the viewer (the default): all in turn, or one by name
    /// (fragmentation, producer-consumer, thread-churn, server, leak, large, c-program).
    Demo {
        /// The scenario.
        name: Option<String>,
        #[command(flatten)]
        stacks: sites::StackArgs,
    },
    /// Run a program with heaplens as its malloc and watch it live in the viewer.
    Run {
        /// Also record every event to this trace file (with --follow-fork: this folder).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Record every process the command starts (each into RECORD/PID.hltrace); the viewer
        /// watches the program itself.
        #[arg(long, requires = "record")]
        follow_fork: bool,
        #[command(flatten)]
        stacks: sites::StackArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Take a guided tour of a scenario's recording (fragmentation, producer-consumer,
    /// thread-churn, server, leak, large, c-program).
    Learn {
        /// The scenario.
        #[arg(default_value = "fragmentation")]
        scenario: String,
    },
    /// Replay a recorded trace in the viewer (a --follow-fork folder: pick a process).
    View {
        /// The trace file, or a folder recorded with --follow-fork.
        file: PathBuf,
        /// The process of the folder to replay (default: a list to pick from).
        #[arg(long)]
        pid: Option<u32>,
        /// A second trace to compare with: the Sites tab's flame graph colours what grew
        /// (red) and shrank (blue) from it to FILE.
        #[arg(long, value_name = "BASELINE")]
        diff: Option<PathBuf>,
    },
    /// Run a program with heaplens as its malloc and record every allocator event to a trace.
    Record {
        /// The trace file to write (with --follow-fork: the folder, one PID.hltrace per process).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Record every process the command starts (fork and exec), each as its own trace
        /// OUTPUT/PID.hltrace with its parent's pid and command line in the metadata.
        #[arg(long)]
        follow_fork: bool,
        /// Memory (MiB) for events the program sends faster than heaplens encodes them; the
        /// program waits only when this is full. The trace is finished after the program exits.
        #[arg(long, value_name = "MIB", default_value_t = launch::BACKLOG_BYTES >> 20)]
        backlog_mib: usize,
        #[command(flatten)]
        stacks: sites::StackArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Make a recorded trace's keyframes for seeking and add them to it, as its first `heaplens
    /// view` does (so that it opens at once, in the viewer on this or another machine).
    Index {
        /// The trace file.
        file: PathBuf,
    },
    /// Summarise a recorded trace (or each process of a --follow-fork folder).
    Stats {
        /// The trace file, or a folder recorded with --follow-fork.
        file: PathBuf,
        /// The process of the folder to summarise (all by default).
        #[arg(long)]
        pid: Option<u32>,
        /// Print JSON (stable keys; see README).
        #[arg(long)]
        json: bool,
    },
    /// List the blocks a recorded program never freed, grouped by the stack that allocated them.
    Leaks {
        /// The trace file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a trace in another tool's format: pprof, collapsed (folded stacks), speedscope,
    /// chrome (Perfetto / chrome://tracing), csv, parquet.
    Export(export::ExportArgs),
    /// Which allocation sites and size classes grew between two traces, or two markers of one.
    Diff(diff::DiffArgs),
    /// Watch a running program live in the viewer, or record it (--record), from now on. The
    /// program must run with `LD_PRELOAD=libheaplens.so HEAPLENS_ATTACH=1`. Closing the
    /// viewer, Ctrl-C or SIGTERM detaches; the program runs on untraced.
    Attach {
        /// The program's process id.
        pid: i32,
        /// Write a trace instead of opening the viewer.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        #[command(flatten)]
        stacks: sites::StackArgs,
    },
}

fn main() -> ExitCode {
    quiet::quiet_window_libraries();
    let cli = Cli::parse();
    let default = Cmd::Demo {
        name: None,
        stacks: sites::StackArgs {
            stacks: sites::StackMode::default(),
            sample_bytes: sites::DEFAULT_SAMPLE_BYTES,
        },
    };
    let result = match cli.command.unwrap_or(default) {
        Cmd::Demo { name, stacks } => demo::run(name.as_deref(), &stacks),
        Cmd::Run {
            record,
            follow_fork,
            stacks,
            target,
        } => run::run(record.as_deref(), &target.command, &stacks, follow_fork),
        Cmd::View { file, pid, diff } => run::view(&file, diff.as_deref(), pid),
        Cmd::Learn { scenario } => run::learn(&scenario),
        Cmd::Record {
            output,
            follow_fork,
            backlog_mib,
            stacks,
            target,
        } => record::run(
            &output,
            &target.command,
            &stacks,
            backlog_mib.saturating_mul(1 << 20),
            follow_fork,
        ),
        Cmd::Index { file } => tracedir::single(&file)
            .map_err(Into::into)
            .and_then(|f| run::index(&f))
            .map(|()| 0),
        Cmd::Stats { file, pid, json } => stats::run(&file, pid, json).map(|()| 0),
        Cmd::Leaks { file, json } => tracedir::single(&file)
            .map_err(Into::into)
            .and_then(|f| leaks::run(&f, json))
            .map(|()| 0),
        Cmd::Export(args) => export::run(&args).map(|()| 0),
        Cmd::Diff(mut args) => tracedir::single(&args.a)
            .and_then(|a| Ok((a, args.b.as_deref().map(tracedir::single).transpose()?)))
            .map_err(Into::into)
            .and_then(|(a, b)| {
                args.a = a;
                args.b = b;
                diff::run(&args)
            })
            .map(|()| 0),
        Cmd::Attach {
            pid,
            record,
            stacks,
        } => attach::run(pid, record.as_deref(), &stacks),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) if quiet::is_closed_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            quiet::say!("{e}");
            ExitCode::from(2)
        }
    }
}
