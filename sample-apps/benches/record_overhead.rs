//! What recording costs a real program: a C workload (sample-apps/c/alloc_workload.c: 4 threads, 1.6 M
//! allocations, cross-thread frees) run plain, under `heaplens record`, and under heaptrack
//! (Debian package `heaptrack`), interleaved; medians and ratios; bytes per event on disk.
//!
//! `cargo bench -p heaplens-sample-apps --bench record_overhead [-- --rounds N]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "heaplens",
            "-p",
            "heaplens-preload",
        ])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success());
    let target = root.join("target/release");
    let heaplens = target.join("heaplens");
    let dir = std::env::temp_dir().join(format!("heaplens-record-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("workload");
    let cc = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(root.join("sample-apps/c/alloc_workload.c"))
        .status()
        .expect("cc");
    assert!(cc.success());
    let heaptrack = Path::new("/usr/bin/heaptrack").exists();
    let trace = dir.join("run.hltrace");
    let (mut plain, mut record, mut ht) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        plain.push(run(&mut Command::new(&exe)));
        record.push(run(Command::new(&heaplens)
            .arg("record")
            .arg("-o")
            .arg(&trace)
            .arg("--")
            .arg(&exe)));
        if heaptrack {
            ht.push(run(Command::new("heaptrack")
                .arg("-o")
                .arg(dir.join("ht"))
                .arg(&exe)));
        }
        eprintln!("round {round}/{rounds} done");
    }
    let out = Command::new(&heaplens)
        .args(["stats", "--json"])
        .arg(&trace)
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout);
    let events: f64 = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"events\": "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or(0.0);
    let bytes = std::fs::metadata(&trace).map_or(0, |m| m.len()) as f64;
    let (p, r) = (median(plain), median(record));
    println!(
        "record overhead: sample-apps/c/alloc_workload.c (4 threads, 1.6 M mallocs), {rounds} rounds, medians"
    );
    println!("  plain (glibc malloc)     {p:8.3} s");
    println!(
        "  heaplens record          {:8.3} s   {:.2}x plain",
        r,
        r / p
    );
    if heaptrack {
        let h = median(ht);
        println!(
            "  heaptrack                {:8.3} s   {:.2}x plain",
            h,
            h / p
        );
        println!(
            "  heaptrack / heaplens record: {:.1}x (budget: heaplens >= 10x faster)",
            h / r
        );
    } else {
        println!("  heaptrack: not installed (apt-get install heaptrack)");
    }
    println!(
        "  trace: {events} events, {bytes} bytes, {:.2} bytes/event (budget <= 4)",
        bytes / events.max(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
