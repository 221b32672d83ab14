//! `heaplens export --format parquet` on the 100 M-event synthetic trace (`trace::synth`, four
//! threads, sampled stacks, a census a second): time, rows and bytes per table, and peak RSS,
//! which the export's design bounds by the trace's state (live blocks, pages, stacks) and one
//! row group per table, not by the trace's length.
//!
//! The trace is written once to `HEAPLENS_BENCH_EXPORT_TRACE` (default: the temp folder; kept
//! for the next run) with `HEAPLENS_BENCH_EXPORT_EVENTS` events (default 100 M); the export then
//! runs in a child process so that its peak RSS (`VmHWM`) is its own, not the generator's.
//!
//! Run: `cargo bench -p heaplens-viewer --bench export_parquet`. The same export from the
//! command line: `/usr/bin/time -v heaplens export TRACE --format parquet -o DIR`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use heaplens_alloc::event::stack_mode;
use heaplens_viewer::export::parquet;
use heaplens_viewer::trace::synth::{self, SynthConfig};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};

const CHILD: &str = "HEAPLENS_BENCH_EXPORT_CHILD";

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Peak resident set of this process (`VmHWM`), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn generate(path: &Path, events: usize) {
    let start = Instant::now();
    let batches = synth::generate(&SynthConfig {
        events,
        stacks: stack_mode::SAMPLED,
        ..SynthConfig::default()
    });
    let mut meta = Metadata::with_allocator_constants();
    meta.pid = 4242;
    meta.hostname = "synth".into();
    let mut w = TraceWriter::create(path, &meta).unwrap();
    for (heap, evs) in &batches {
        w.write_batch(*heap, evs).unwrap();
    }
    let n = w.events_written();
    w.finish(EndInfo::clean(0)).unwrap();
    println!(
        "trace: {n} events, {:.0} MiB, written in {:.1} s -> {}",
        mib(std::fs::metadata(path).map_or(0, |m| m.len())),
        start.elapsed().as_secs_f64(),
        path.display()
    );
}

fn export(trace: &Path, out: &Path) {
    let start = Instant::now();
    let s = parquet::write(trace, out, &parquet::Options::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let events = s.rows("events");
    for (name, path, rows) in &s.tables {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        println!(
            "  {name:<8} {rows:>11} rows {:>9.1} MiB  {:.2} bytes/row",
            mib(bytes),
            bytes as f64 / (*rows).max(1) as f64
        );
    }
    println!(
        "export: {events} events in {secs:.1} s ({:.1} M events/s), peak RSS {:.0} MiB \
         ({:.2} bytes per event)",
        events as f64 / secs / 1e6,
        mib(peak_rss()),
        peak_rss() as f64 / events.max(1) as f64
    );
}

fn main() {
    let trace = std::env::var_os("HEAPLENS_BENCH_EXPORT_TRACE").map_or_else(
        || std::env::temp_dir().join("heaplens-export-bench.hltrace"),
        PathBuf::from,
    );
    let out = std::env::temp_dir().join(format!("heaplens-export-bench-{}", std::process::id()));
    if std::env::var_os(CHILD).is_some() {
        export(&trace, &out);
        let _ = std::fs::remove_dir_all(&out);
        return;
    }
    if !trace.exists() {
        let events = std::env::var("HEAPLENS_BENCH_EXPORT_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000_000);
        generate(&trace, events);
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("HEAPLENS_BENCH_EXPORT_TRACE", &trace)
        .status()
        .unwrap();
    assert!(status.success(), "the export failed");
}
