//! `heaplens record` and `heaplens stats` on real programs: the counts `stats` reports agree with
//! what the program did; the program's exit status is passed through; a program that crashes
//! leaves a readable trace; damaged and foreign files give clear errors.

mod common;

use std::path::Path;

use common::{heaplens, known_counts as setup, tempdir};

/// `heaplens record -o trace -- exe args...`
fn record(trace: &Path, exe: &Path, args: &[&str]) -> std::process::Output {
    heaplens()
        .arg("record")
        .arg("-o")
        .arg(trace)
        .arg("--")
        .arg(exe)
        .args(args)
        .output()
        .unwrap()
}

fn stats_json(trace: &Path) -> serde_json::Value {
    let out = heaplens()
        .args(["stats", "--json"])
        .arg(trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --json prints JSON")
}

#[test]
fn stats_agree_with_what_the_program_did() {
    let dir = tempdir("counts");
    let exe = setup(&dir);
    let trace = dir.join("run.hltrace");
    let out = record(&trace, &exe, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the program's exit code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stats_json(&trace);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    // The program's own allocations, plus the few glibc makes for itself (thread start, stdio).
    assert!(
        (1200..1230).contains(&n("allocs")),
        "allocs {}",
        n("allocs")
    );
    assert!((1100..1130).contains(&n("frees")), "frees {}", n("frees"));
    assert!(
        n("cross_thread_frees") >= 1,
        "cross-thread frees {}",
        n("cross_thread_frees")
    );
    assert!(
        (100..120).contains(&n("live_blocks_at_exit")),
        "leaks {}",
        n("live_blocks_at_exit")
    );
    assert!(n("threads") >= 2);
    assert_eq!(
        n("dropped_events"),
        0,
        "recording is lossless; lost because: {}",
        s["dropped_reasons"]
    );
    assert!(n("events") >= n("allocs") + n("frees"));
    // The worker's blocks outlive it: its segment is abandoned at its exit and reclaimed by
    // main's frees, and the model rebuilt from the events must agree with the last census.
    assert_eq!(
        n("census_mismatches"),
        0,
        "the model equals the allocator's last census"
    );
    assert!(n("peak_committed_bytes") >= n("final_committed_bytes"));
    assert_eq!(s["complete"], true);
    let labels: Vec<_> = s["markers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["label"])
        .collect();
    assert_eq!(labels, ["worker joined"], "hl_mark reaches the trace");
    assert_eq!(s["exit"]["code"], 3);
    for when in ["fragmentation_at_peak", "fragmentation_at_end"] {
        for f in ["internal", "page", "segment"] {
            let v = s[when][f].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{when}.{f} = {v}");
        }
    }
    let top = s["top_size_classes"].as_array().unwrap();
    let leaked = top
        .iter()
        .find(|c| c["block_size"] == 112)
        .expect("the 112-byte class is live at exit");
    assert_eq!(
        leaked["live_blocks"], 100,
        "the 100 leaked 100-byte blocks: {top:?}"
    );
    let text = heaplens().arg("stats").arg(&trace).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("live at exit"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crashing_program_leaves_a_readable_trace() {
    let dir = tempdir("crash");
    let exe = setup(&dir);
    let trace = dir.join("crash.hltrace");
    let out = record(&trace, &exe, &["crash"]);
    assert_eq!(out.status.code(), Some(128 + 11), "128 + SIGSEGV");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("signal 11") && err.contains("SIGSEGV"),
        "{err}"
    );
    let s = stats_json(&trace);
    assert_eq!(s["exit"]["signal"], 11);
    // Events flushed before the crash are there (the collector drains every 10 ms; the program
    // ran long enough for some, and the stream's end is reported, not invented).
    assert!(s["events"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_and_foreign_files_give_clear_errors() {
    let dir = tempdir("damage");
    let exe = setup(&dir);
    let trace = dir.join("full.hltrace");
    let out = record(&trace, &exe, &[]);
    assert_eq!(out.status.code(), Some(3));
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.join("cut.hltrace");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let s = stats_json(&cut);
    assert_eq!(s["complete"], false);
    assert!(
        s["damage"].as_str().unwrap().contains("truncated"),
        "{}",
        s["damage"]
    );
    let garbage = dir.join("garbage.hltrace");
    std::fs::write(&garbage, b"this is not a trace at all, just some bytes").unwrap();
    let out = heaplens().arg("stats").arg(&garbage).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("heaplens: ") && err.contains("not a heaplens trace"),
        "{err}"
    );
    let out = heaplens()
        .arg("stats")
        .arg(dir.join("missing.hltrace"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reader_that_stops_early_ends_stats_quietly() {
    // `heaplens stats TRACE | head -1`, made deterministic: the reading end is closed before
    // heaplens writes its first line (it replays the trace first), so every write meets a pipe
    // without a reader.
    let trace = common::root().join("assets/traces/producer-consumer.hltrace");
    for json in [false, true] {
        let mut cmd = heaplens();
        cmd.arg("stats").arg(&trace);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "nothing on stderr (json {json}): {err}");
        assert!(out.status.success(), "json {json}: {:?}", out.status);
    }
    // And through a real `head -1`: its one line, no panic.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("\"$0\" stats \"$1\" | head -1")
        .arg(env!("CARGO_BIN_EXE_heaplens"))
        .arg(&trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("trace "), "{text}");
    assert_eq!(text.lines().count(), 1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stream_that_ends_early_is_told_in_words() {
    // A shell leaves through `_exit`: the hook never sends its end mark.
    let dir = tempdir("early-end");
    let exe = setup(&dir);
    let trace = dir.join("run.hltrace");
    let out = heaplens()
        .arg("record")
        .arg("-o")
        .arg(&trace)
        .args(["--", "sh", "-c", "\"$0\"; true"])
        .arg(&exe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the shell's status: {err}");
    assert!(
        err.contains("stopped without the end mark") && err.contains("events that arrived"),
        "{err}"
    );
    for debug in ["Some(", "Custom {", "kind:"] {
        assert!(!err.contains(debug), "no Rust debug formatting: {err}");
    }
    assert!(stats_json(&trace)["events"].as_u64().unwrap() > 0);
}
