//! How exact `heaplens attach` is on programs that run hard: each workload of the LD_PRELOAD
//! suite started with `libheaplens.so` and `HEAPLENS_ATTACH=1`, attached to 0.3 s in and
//! recorded for 1 s with a census every 2 ms (`HEAPLENS_CENSUS_MS=2`, about 400 censuses a
//! recording), then detached (or the program exits first); `heaplens stats --json` on each trace
//! says how many censuses agree with the model rebuilt from the events. A count, not a timing:
//! the figure is how many recordings agree at every census.
//!
//! `cargo bench -p heaplens-sample-apps --bench attach_censuses [-- --runs N]` (default 8)

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A workload of the suite and its argument (its scale: each runs 1-2 s plain).
const WORKLOADS: &[(&str, &str)] = &[
    ("stress", "3"),
    ("larson", "4"),
    ("churn_mt", "4"),
    ("trees", "4"),
    ("prodcons", "4"),
    ("threadex", "4"),
    ("pareto", "4"),
];

/// One recording's verdict from `heaplens stats --json`.
struct Verdict {
    censuses: u64,
    agreeing: u64,
    dropped: u64,
}

fn main() {
    let runs = common::count_option("--runs", 8);
    let root = common::root();
    common::build_heaplens(&root);
    let heaplens = root.join("target/release/heaplens");
    let lib = root.join("target/release/libheaplens.so");
    let dir = std::env::temp_dir().join(format!("heaplens-attach-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "attach censuses: {runs} recordings a workload, a census every 2 ms, attached 0.3 s in for 1 s"
    );
    println!();
    println!(
        "| workload | recordings | agree at every census | censuses a recording (median) | the others |"
    );
    println!("|---|---|---|---|---|");
    let mut all_agree = true;
    for (name, arg) in WORKLOADS {
        let exe = dir.join(name);
        common::compile(
            &root,
            &format!("allocator/preload/benches/c/{name}.c"),
            &exe,
            true,
        );
        let mut verdicts = Vec::new();
        for run in 0..runs {
            let trace = dir.join(format!("{name}-{run}.hltrace"));
            verdicts.push(record_attached(&heaplens, &lib, &exe, arg, &trace));
            let _ = std::fs::remove_file(&trace);
        }
        let exact = verdicts
            .iter()
            .filter(|v| v.dropped == 0 && v.agreeing == v.censuses)
            .count();
        all_agree &= exact == verdicts.len();
        let mut counts: Vec<u64> = verdicts.iter().map(|v| v.censuses).collect();
        counts.sort_unstable();
        let others: Vec<String> = verdicts
            .iter()
            .filter(|v| v.dropped != 0 || v.agreeing != v.censuses)
            .map(|v| {
                format!(
                    "{} of {} disagree, {} events dropped",
                    v.censuses - v.agreeing,
                    v.censuses,
                    v.dropped
                )
            })
            .collect();
        println!(
            "| {name} {arg} | {} | {exact} | {} | {} |",
            verdicts.len(),
            counts[counts.len() / 2],
            if others.is_empty() {
                "-".to_owned()
            } else {
                others.join("; ")
            }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "verdict: {}",
        if all_agree {
            "every recording agrees at every census"
        } else {
            "NOT every recording agrees at every census"
        }
    );
}

/// Starts `exe arg` waiting to be attached to, records it with `heaplens attach` for a second,
/// detaches (SIGINT, as Ctrl-C), and reads the trace's verdict.
fn record_attached(
    heaplens: &PathBuf,
    lib: &PathBuf,
    exe: &PathBuf,
    arg: &str,
    trace: &PathBuf,
) -> Verdict {
    let mut program = Command::new(exe)
        .arg(arg)
        .env("LD_PRELOAD", lib)
        .env("HEAPLENS_ATTACH", "1")
        .env("HEAPLENS_CENSUS_MS", "2")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    std::thread::sleep(Duration::from_millis(300));
    let mut attach = Command::new(heaplens)
        .args(["attach", &program.id().to_string(), "--record"])
        .arg(trace)
        .stderr(Stdio::null())
        .spawn()
        .expect("heaplens attach");
    std::thread::sleep(Duration::from_millis(1000));
    // SIGINT, as Ctrl-C: the child has not been waited for, so its pid is still its own.
    let signalled = Command::new("kill")
        .args(["-INT", &attach.id().to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success(), "kill -INT heaplens attach");
    assert!(
        attach.wait().expect("wait for heaplens").success(),
        "heaplens attach failed"
    );
    assert!(
        program.wait().expect("wait for the workload").success(),
        "the workload failed"
    );
    let out = Command::new(heaplens)
        .args(["stats", "--json"])
        .arg(trace)
        .output()
        .expect("heaplens stats");
    assert!(
        out.status.success(),
        "heaplens stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    Verdict {
        censuses: n("censuses"),
        agreeing: n("censuses_agreeing"),
        dropped: n("dropped_events"),
    }
}
