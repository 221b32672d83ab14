//! What recording costs real C programs, against their plain run and against heaptrack (Debian
//! package `heaptrack`): allocation-heavy workloads (sample-apps/c/alloc_workload.c and some of
//! the LD_PRELOAD suite's, allocator/preload/benches/c/), each built with and without frame
//! pointers, run plain, under `heaplens record` with each stack mode, and under heaptrack,
//! interleaved; medians, and ratios taken round by round, from this one run, with the budgets'
//! verdicts. Each takes 0.3-0.6 s plain, so that starting a recording (about 20 ms) does not
//! decide the ratios. Peak RSS is `ru_maxrss` from `wait4`: the largest single process of the
//! command (heaplens's recorder under `record`; under heaptrack, the larger of the program and
//! `heaptrack_interpret`).
//!
//! `cargo bench -p heaplens-sample-apps --bench record_overhead [-- --rounds N]`

#![allow(unsafe_code)] // wait4: the peak RSS of each command

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `cmd` with its standard error in the file `err`; returns its wall time, its standard
/// error and its peak RSS in MiB (the largest single process it waited for).
fn run(cmd: &mut Command, err: &Path) -> (f64, String, f64) {
    use std::os::unix::process::ExitStatusExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(err).expect("create stderr file"));
    let t = Instant::now();
    // Reaped by `wait4` below, which gives its resource use as `Child::wait` does not.
    let pid = i32::try_from(cmd.spawn().expect("spawn").id()).expect("pid");
    let mut status = 0;
    // SAFETY: all-zero bytes are a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (its `Child` was dropped unwaited); `status`
    // and `usage` are valid for writes.
    while unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) } != pid {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
    let secs = t.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(err).unwrap_or_default();
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "{cmd:?} failed ({status}): {stderr}");
    (secs, stderr, usage.ru_maxrss as f64 / 1024.0)
}

/// The program's own run time that `heaplens record` reports.
fn program_time(stderr: &str) -> f64 {
    stderr
        .split("(the program ran ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no program time in: {stderr}"))
}

/// A workload: a C file, built twice, and its arguments.
struct Workload {
    name: &'static str,
    source: &'static str,
    args: &'static [&'static str],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "alloc_workload 1600000 (4 threads, mixed sizes, cross-thread frees)",
        source: "sample-apps/c/alloc_workload.c",
        args: &["1600000"],
    },
    Workload {
        name: "trees 0.4 (binary trees, 1 thread)",
        source: "allocator/preload/benches/c/trees.c",
        args: &["0.4"],
    },
    Workload {
        name: "larson 1 (server-like, 4 threads)",
        source: "allocator/preload/benches/c/larson.c",
        args: &["1"],
    },
    Workload {
        name: "churn_mt 1 (random sizes, cross-thread frees)",
        source: "allocator/preload/benches/c/churn_mt.c",
        args: &["1"],
    },
];

/// The runs of one round, in order.
const RUNS: &[&str] = &[
    "plain",
    "record",
    "record_off",
    "record_all",
    "record_all_nofp",
    "heaptrack",
    "heaptrack_nofp",
];

#[derive(Default)]
struct Figures {
    /// Command wall time per run kind.
    wall: std::collections::HashMap<&'static str, Vec<f64>>,
    /// The program's own time under `heaplens record` per run kind.
    program: std::collections::HashMap<&'static str, Vec<f64>>,
    /// Peak RSS in MiB per run kind.
    peak: std::collections::HashMap<&'static str, Vec<f64>>,
    trace_all_bytes: u64,
    /// The same trace once `heaplens index` (what the first `heaplens view` does) has added its
    /// keyframes.
    trace_all_indexed_bytes: u64,
    trace_all_events: u64,
    heaptrack_bytes: u64,
}

impl Figures {
    fn wall(&self, k: &str) -> f64 {
        median(&self.wall[k])
    }
    fn program(&self, k: &str) -> f64 {
        median(&self.program[k])
    }
    fn peak(&self, k: &str) -> f64 {
        median(&self.peak[k])
    }

    /// `a`'s time against `b`'s, round by round (the two ran minutes apart at most, the rounds
    /// further apart, on a machine whose speed drifts): the median of the rounds' ratios.
    fn ratio(a: &[f64], b: &[f64]) -> f64 {
        let each: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        median(&each)
    }

    /// [`Figures::ratio`] of two commands' wall times.
    fn wall_ratio(&self, a: &str, b: &str) -> f64 {
        Self::ratio(&self.wall[a], &self.wall[b])
    }
}

/// The file heaptrack wrote for output prefix `prefix` (it adds .zst or .gz).
fn heaptrack_file(prefix: &Path) -> Option<PathBuf> {
    let dir = prefix.parent()?;
    let stem = prefix.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")))
        })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

#[allow(clippy::too_many_lines)] // one table, printed in order
fn main() {
    let rounds = common::count_option("--rounds", 3);
    let root = common::root();
    common::build_heaplens(&root);
    let heaplens = root.join("target/release/heaplens");
    let dir = std::env::temp_dir().join(format!("heaplens-record-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let heaptrack = Path::new("/usr/bin/heaptrack").exists();
    let mut figures: Vec<Figures> = WORKLOADS.iter().map(|_| Figures::default()).collect();
    for (i, w) in WORKLOADS.iter().enumerate() {
        common::compile(&root, w.source, &dir.join(format!("w{i}")), true);
        common::compile(&root, w.source, &dir.join(format!("w{i}-nofp")), false);
    }
    let mut trips = Vec::new();
    for round in 1..=rounds {
        trips.extend(common::cross_core_round_trip_ns());
        for (i, w) in WORKLOADS.iter().enumerate() {
            let f = &mut figures[i];
            for &kind in RUNS {
                if kind.starts_with("heaptrack") && !heaptrack {
                    continue;
                }
                let exe = if kind.ends_with("nofp") {
                    dir.join(format!("w{i}-nofp"))
                } else {
                    dir.join(format!("w{i}"))
                };
                let trace = dir.join(format!("{kind}.hltrace"));
                let ht = dir.join(format!("ht-{kind}-{round}"));
                let mut cmd = match kind {
                    "plain" => Command::new(&exe),
                    k if k.starts_with("record") => {
                        let stacks = match k {
                            "record" => "sampled",
                            "record_off" => "off",
                            _ => "all",
                        };
                        let mut c = Command::new(&heaplens);
                        c.args(["record", "--stacks", stacks, "-o"])
                            .arg(&trace)
                            .arg("--")
                            .arg(&exe);
                        c
                    }
                    _ => {
                        let mut c = Command::new("heaptrack");
                        c.arg("-o").arg(&ht).arg(&exe);
                        c
                    }
                };
                let (secs, err, peak) = run(cmd.args(w.args), &dir.join("stderr.txt"));
                f.wall.entry(kind).or_default().push(secs);
                f.peak.entry(kind).or_default().push(peak);
                if kind.starts_with("record") {
                    f.program.entry(kind).or_default().push(program_time(&err));
                }
                if kind == "record_all" {
                    f.trace_all_bytes = std::fs::metadata(&trace).map_or(0, |m| m.len());
                    run(
                        Command::new(&heaplens).arg("index").arg(&trace),
                        &dir.join("stderr.txt"),
                    );
                    f.trace_all_indexed_bytes = std::fs::metadata(&trace).map_or(0, |m| m.len());
                    let out = Command::new(&heaplens)
                        .args(["stats", "--json"])
                        .arg(&trace)
                        .output()
                        .unwrap();
                    let stats: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    f.trace_all_events = stats["events"].as_u64().unwrap_or(0);
                }
                if kind == "heaptrack"
                    && let Some(file) = heaptrack_file(&ht)
                {
                    f.heaptrack_bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
                }
                if let Some(file) = heaptrack_file(&ht) {
                    let _ = std::fs::remove_file(file);
                }
            }
            // The first view's pass over the default recording's trace, which makes its
            // keyframes (the recorder leaves them to it): after the round's runs, so that the
            // runs whose times are compared follow one another.
            let (secs, _, _) = run(
                Command::new(&heaplens)
                    .arg("index")
                    .arg(dir.join("record.hltrace")),
                &dir.join("stderr.txt"),
            );
            f.wall.entry("index").or_default().push(secs);
        }
        eprintln!("round {round}/{rounds} done");
    }
    println!(
        "record overhead: {} workloads, {rounds} rounds interleaved; times in seconds (medians), ratios the median of the rounds' ratios",
        WORKLOADS.len()
    );
    if !trips.is_empty() {
        let trips: Vec<String> = trips.iter().map(|t| format!("{t:.0}")).collect();
        println!(
            "cross-core round trip (a cache line CPU 0 -> 1 -> 0) before each round: {} ns (under 100 ns: nearby cores; about 300 ns: far ones, where a recording, which moves every event across cores, takes about 1.6 times as long)",
            trips.join(", ")
        );
    }
    println!(
        "(\"program\" is the program's own run time under `heaplens record`, to its exit; \"command\" is the whole command's, to the finished trace; \"first view\" is `heaplens index` on that trace, the pass the first `heaplens view` makes to add keyframes)"
    );
    println!();
    println!(
        "| workload | plain | record: program | command | first view | sampled/off (command) | all (fp) | all (no fp) | heaptrack (fp) | heaptrack (no fp) | heaptrack / record | heaptrack / all (fp) | heaptrack / all (no fp) | trace all / heaptrack file | peak RSS: plain, record, heaptrack (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut fails: Vec<String> = Vec::new();
    for (w, f) in WORKLOADS.iter().zip(&figures) {
        let plain = f.wall("plain");
        let (prog, cmd) = (f.program("record"), f.wall("record"));
        // The ratios round by round (see `Figures::ratio`); the times are the medians.
        let prog_plain = Figures::ratio(&f.program["record"], &f.wall["plain"]);
        let cmd_plain = f.wall_ratio("record", "plain");
        let sampled_off = f.wall_ratio("record", "record_off");
        let (all, all_nofp) = (f.wall("record_all"), f.wall("record_all_nofp"));
        let mut row = format!(
            "| {} | {plain:.3} | {prog:.3} ({prog_plain:.2}x) | {cmd:.3} ({cmd_plain:.2}x) | {:.3} | {sampled_off:.2}x | {all:.3} | {all_nofp:.3} |",
            w.name,
            f.wall("index")
        );
        let check = |fails: &mut Vec<String>, ok: bool, what: String| {
            if !ok {
                fails.push(format!("{}: {what}", w.name));
            }
        };
        check(
            &mut fails,
            prog_plain <= 2.0,
            format!("program under record {prog_plain:.2}x plain (budget <= 2x)"),
        );
        check(
            &mut fails,
            cmd_plain <= 3.0,
            format!("record command {cmd_plain:.2}x plain (budget <= 3x)"),
        );
        check(
            &mut fails,
            sampled_off <= 1.1,
            format!("--stacks sampled {sampled_off:.2}x off (budget <= 1.1x)"),
        );
        if heaptrack {
            let (ht, ht_nofp) = (f.wall("heaptrack"), f.wall("heaptrack_nofp"));
            let ht_record = f.wall_ratio("heaptrack", "record");
            let ht_all = f.wall_ratio("heaptrack", "record_all");
            let ht_all_nofp = f.wall_ratio("heaptrack_nofp", "record_all_nofp");
            let size = f.trace_all_bytes as f64 / f.heaptrack_bytes.max(1) as f64;
            let indexed = f.trace_all_indexed_bytes as f64 / f.heaptrack_bytes.max(1) as f64;
            row += &format!(
                " {ht:.3} | {ht_nofp:.3} | {ht_record:.1}x | {ht_all:.1}x | {ht_all_nofp:.1}x | {size:.2}x ({:.2} bytes/event; {indexed:.2}x with keyframes) |",
                f.trace_all_bytes as f64 / f.trace_all_events.max(1) as f64
            );
            check(
                &mut fails,
                ht_record >= 10.0,
                format!("heaptrack only {ht_record:.1}x slower than record (budget >= 10x)"),
            );
            check(
                &mut fails,
                ht_all >= 3.0,
                format!(
                    "heaptrack only {ht_all:.1}x slower than --stacks all with frame pointers (budget >= 3x)"
                ),
            );
            check(
                &mut fails,
                ht_all_nofp > 1.0,
                format!(
                    "--stacks all without frame pointers not faster than heaptrack ({ht_all_nofp:.2}x)"
                ),
            );
            check(
                &mut fails,
                size <= 1.0,
                format!(
                    "trace with --stacks all {size:.2}x heaptrack's file (budget <= 1x; {indexed:.2}x once its first view added keyframes)"
                ),
            );
        } else {
            row += " - | - | - | - | - | heaptrack not installed |";
        }
        let ht_peak = if heaptrack {
            format!("{:.0}", f.peak("heaptrack"))
        } else {
            "-".into()
        };
        row += &format!(
            " {:.0}, {:.0}, {ht_peak} |",
            f.peak("plain"),
            f.peak("record")
        );
        println!("{row}");
    }
    println!();
    println!(
        "budgets: program <= 2x plain, command <= 3x plain, sampled <= 1.1x off, heaptrack >= 10x record, heaptrack >= 3x all (fp), all (no fp) faster than heaptrack, trace (all) <= heaptrack's file"
    );
    if fails.is_empty() {
        println!("verdict: every budget met");
    } else {
        println!("verdict: {} budgets NOT MET:", fails.len());
        for f in &fails {
            println!("  {} {f}", verdict(false));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
