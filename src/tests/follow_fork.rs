//! `heaplens record --follow-fork`: every process of a command recorded, each into its own trace
//! `OUT/PID.hltrace` with its parent's pid and command line; real programs (a shell running
//! programs one after the other and in the background, a C program that forks without exec,
//! `gcc -c` and its `cc1`). Without the flag, one line names the children that were not
//! recorded. `stats` and `export` take the folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{heaplens, known_counts, tempdir};
use serde_json::Value;

/// `heaplens record [--follow-fork] -o out -- args...`, run in `dir`.
fn record(dir: &Path, out: &Path, follow: bool, args: &[&str]) -> Output {
    let mut c = heaplens();
    c.current_dir(dir).arg("record");
    if follow {
        c.arg("--follow-fork");
    }
    c.arg("-o").arg(out).arg("--").args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `heaplens stats --json` of a folder: one summary per process, by pid.
fn processes(folder: &Path) -> Vec<Value> {
    let v = common::json(&["stats", "--json"], folder);
    v.as_array().expect("a folder's stats are an array").clone()
}

fn n(s: &Value, key: &str) -> u64 {
    s[key].as_u64().unwrap_or_else(|| panic!("{key} in {s}"))
}

/// The program of a summary: its command's first word without the directory.
fn program(s: &Value) -> String {
    let first = s["command"][0].as_str().unwrap_or("");
    Path::new(first)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Live blocks of one block size at the end, from `top_size_classes`.
fn live_of(s: &Value, block_size: u64) -> u64 {
    s["top_size_classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["block_size"] == block_size)
        .map_or(0, |c| n(c, "live_blocks"))
}

/// Every census in the trace agreed with the model rebuilt from its events.
fn censuses_agree(s: &Value) {
    assert!(n(s, "censuses") >= 1, "{s}");
    assert_eq!(n(s, "censuses"), n(s, "censuses_agreeing"), "{s}");
    assert_eq!(n(s, "census_mismatches"), 0, "{s}");
    assert_eq!(n(s, "dropped_events"), 0, "{s}");
}

/// known_counts.c: 1000 blocks of 100 bytes (100 leak), 200 of 48 in a thread, freed by main.
fn is_known_counts(s: &Value) {
    let allocs = n(s, "allocs");
    assert!((1200..1230).contains(&allocs), "allocs {allocs}: {s}");
    assert_eq!(live_of(s, 112), 100, "the 100 leaked 100-byte blocks: {s}");
    censuses_agree(s);
}

/// Compiles `sample-apps/c/NAME.c` into `dir` (and builds libheaplens.so once).
fn sample(dir: &Path, name: &str) -> PathBuf {
    known_counts(dir);
    common::sample_c(dir, name)
}

#[test]
fn a_shell_and_the_programs_it_runs_one_after_another_and_in_the_background() {
    let dir = tempdir("ff-shell");
    known_counts(&dir);
    let out = dir.join("rec");
    let script = "./known_counts; ./known_counts & ./known_counts; wait; true";
    let o = record(&dir, &out, true, &["sh", "-c", script]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all = processes(&out);
    let shell = all.iter().find(|s| program(s) == "sh").expect("the shell");
    let sh_pid = n(shell, "pid");
    assert!(
        n(shell, "allocs") < 500,
        "the shell's trace holds only the shell's allocations: {shell}"
    );
    let programs: Vec<&Value> = all
        .iter()
        .filter(|s| program(s) == "known_counts")
        .collect();
    assert_eq!(programs.len(), 3, "three runs of the program: {all:?}");
    for p in &programs {
        is_known_counts(p);
        assert_eq!(n(p, "parent_pid"), sh_pid, "started by the shell");
        assert_eq!(
            p["exit"]["code"], 3,
            "its exit status, as it said at exit (main returned 3): {p}"
        );
    }
    assert_eq!(all.len(), 4, "the shell and its three programs: {all:?}");
    // Each trace is the file named by its pid.
    for s in &all {
        assert!(out.join(format!("{}.hltrace", n(s, "pid"))).is_file());
    }
    // `--pid` picks one.
    let one = common::json(
        &[
            "stats",
            "--json",
            "--pid",
            &n(programs[0], "pid").to_string(),
        ],
        &out,
    );
    assert_eq!(one["pid"], programs[0]["pid"]);
    // A second recording into the same folder is refused rather than mixed in.
    let again = record(&dir, &out, true, &["sh", "-c", "true"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already holds traces"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_program_run_by_sh_c_has_its_known_counts_and_without_the_flag_the_note_names_it() {
    let dir = tempdir("ff-shc");
    known_counts(&dir);
    let out = dir.join("rec");
    let o = record(&dir, &out, true, &["sh", "-c", "./known_counts; true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all = processes(&out);
    let prog = all
        .iter()
        .find(|s| program(s) == "known_counts")
        .expect("the program's trace");
    is_known_counts(prog);
    assert!(!stderr(&o).contains("not recorded"), "{}", stderr(&o));

    let file = dir.join("only-shell.hltrace");
    let o = record(&dir, &file, false, &["sh", "-c", "./known_counts; true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("not recorded")).collect();
    assert_eq!(
        lines,
        [
            "heaplens: 1 child process was not recorded (known_counts); add --follow-fork to record them"
        ],
        "said once, naming the child"
    );
    let shell = common::json(&["stats", "--json"], &file);
    assert!(n(&shell, "allocs") < 500, "only the shell: {shell}");
}

#[test]
fn a_child_forked_without_exec_records_from_the_fork_with_a_census_of_what_it_inherited() {
    let dir = tempdir("ff-fork");
    sample(&dir, "fork_child");
    // Single-threaded; a thread joined before the fork; two threads allocating while it forks
    // (their buffered events belong to the parent, their heaps stay behind in the child).
    for (i, args) in [
        &["./fork_child"][..],
        &["./fork_child", "threads"][..],
        &["./fork_child", "busy"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.join(format!("rec-{i}"));
        let o = record(&dir, &out, true, args);
        assert_eq!(
            o.status.code(),
            Some(5),
            "the child's 0 plus 5: {}",
            stderr(&o)
        );
        let all = processes(&out);
        assert_eq!(all.len(), 2, "parent and child: {all:?}");
        let parent = all
            .iter()
            .find(|s| s["exit"]["code"] == 5)
            .expect("the program, with its exit code");
        let child = all
            .iter()
            .find(|s| s["pid"] != parent["pid"])
            .expect("the child");
        assert_eq!(child["parent_pid"], parent["pid"]);
        assert_eq!(
            child["exit"]["code"], 0,
            "the child's exit(0), as it said: {child}"
        );
        assert_eq!(
            child["command"], parent["command"],
            "a fork runs the same program"
        );
        // The child's own work: 700 blocks of 520 bytes (block size 640), 200 of them freed,
        // and 100 of the 300 inherited 200-byte blocks (block size 224) freed.
        let allocs = n(child, "allocs");
        assert!(
            (700..=703).contains(&allocs),
            "child allocs {allocs}: {child}"
        );
        // 300 by the program; the C library may free a block of its own as the child exits,
        // and a free by the child's collector of a block in a traced page is reported too (frees
        // by untraced threads are, since the live demo's census fix); the live counts below
        // check the program's own class by class.
        let frees = n(child, "frees");
        assert!((300..=303).contains(&frees), "child frees {frees}: {child}");
        assert!(live_of(child, 640) >= 500, "{child}");
        // What it inherited comes from its first census, which the model takes over and then
        // agrees with, as with every census after.
        assert_eq!(
            live_of(child, 224),
            200,
            "inherited, less those freed: {child}"
        );
        censuses_agree(child);
        // The parent's trace holds none of it.
        if args.get(1) != Some(&"busy") {
            let pallocs = n(parent, "allocs");
            assert!(
                (300..360).contains(&pallocs),
                "parent allocs {pallocs}: {parent}"
            );
        }
        assert_eq!(
            live_of(parent, 224),
            0,
            "the parent freed its blocks: {parent}"
        );
        censuses_agree(parent);
    }
    // Without the flag the child is not recorded, and the note says so once.
    let file = dir.join("parent-only.hltrace");
    let o = record(&dir, &file, false, &["./fork_child", "busy"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.contains("not recorded")).collect();
    assert_eq!(
        notes,
        [
            "heaplens: 1 child process was not recorded (fork_child); add --follow-fork to record them"
        ]
    );
    censuses_agree(&common::json(&["stats", "--json"], &file));
}

#[test]
fn gcc_is_recorded_with_its_cc1_and_without_the_flag_the_note_names_them() {
    let dir = tempdir("ff-gcc");
    known_counts(&dir);
    std::fs::write(
        dir.join("t.c"),
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    )
    .unwrap();
    let out = dir.join("rec");
    let o = record(&dir, &out, true, &["gcc", "-c", "t.c", "-o", "t.o"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.join("t.o").is_file());
    let all = processes(&out);
    let gcc = all
        .iter()
        .find(|s| program(s) == "gcc")
        .expect("the driver");
    let cc1 = all
        .iter()
        .find(|s| program(s) == "cc1")
        .expect("cc1's trace");
    assert_eq!(cc1["parent_pid"], gcc["pid"]);
    assert!(
        n(cc1, "allocs") > n(gcc, "allocs"),
        "the compiler proper allocates more than the driver: {cc1}"
    );
    censuses_agree(cc1);
    assert_eq!(gcc["exit"]["code"], 0);

    let o = record(
        &dir,
        &dir.join("driver.hltrace"),
        false,
        &["gcc", "-c", "t.c", "-o", "t.o"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let note: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains("not recorded"))
        .map(str::to_owned)
        .collect();
    assert_eq!(note.len(), 1, "{}", stderr(&o));
    assert!(
        note[0].contains("2 child processes were not recorded (cc1, as); add --follow-fork"),
        "{}",
        note[0]
    );
}

#[test]
fn export_takes_a_folder_every_process_or_one() {
    let dir = tempdir("ff-export");
    sample(&dir, "fork_child");
    let out = dir.join("rec");
    let o = record(&dir, &out, true, &["./fork_child"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let pids: Vec<u64> = processes(&out).iter().map(|s| n(s, "pid")).collect();
    assert_eq!(pids.len(), 2);
    // Parquet: every process into its own partition of the same tables.
    let pq = dir.join("pq");
    let e = heaplens()
        .args(["export", "--format", "parquet", "-o"])
        .arg(&pq)
        .arg(&out)
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", stderr(&e));
    for pid in &pids {
        let events = std::fs::read_dir(pq.join("events"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|host| host.path().join(format!("pid={pid}")).is_dir());
        assert!(events, "events/host=*/pid={pid}");
    }
    // csv: one file per process, or the one `--pid` names.
    let csv = dir.join("csv");
    let e = heaplens()
        .args(["export", "--format", "csv", "-o"])
        .arg(&csv)
        .arg(&out)
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", stderr(&e));
    for pid in &pids {
        assert!(csv.join(format!("{pid}.csv")).is_file());
    }
    let one = dir.join("one.csv");
    let e = heaplens()
        .args([
            "export",
            "--format",
            "csv",
            "--pid",
            &pids[1].to_string(),
            "-o",
        ])
        .arg(&one)
        .arg(&out)
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", stderr(&e));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(csv.join(format!("{}.csv", pids[1]))).unwrap()
    );
    // Commands that read one trace say how to name one.
    let e = heaplens().arg("leaks").arg(&out).output().unwrap();
    assert_eq!(e.status.code(), Some(2));
    assert!(
        stderr(&e).contains("is a recording of 2 processes"),
        "{}",
        stderr(&e)
    );
    // A pid that is not there is named as such.
    let e = heaplens()
        .args(["stats", "--pid", "1"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(2));
    assert!(
        stderr(&e).contains("has no trace of pid 1"),
        "{}",
        stderr(&e)
    );
}
