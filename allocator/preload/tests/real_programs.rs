//! Real programs under `LD_PRELOAD=libheaplens.so` must behave exactly as they do on glibc's
//! malloc: python3, gcc, git and sort, their output compared byte for byte. Every preloaded run
//! also proves heaplens was really in the process (its statistics summary at exit, or the
//! library in `/proc/self/maps`), or the comparison would test nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    Run, Scratch, command, has_stats_summary, preloaded, run, stats_summary_count, test_file,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A command for `program`, with heaplens preloaded (and its exit summary on) or not.
fn cmd(program: impl AsRef<std::ffi::OsStr>, heaplens: bool) -> Command {
    let mut c = if heaplens {
        let mut c = preloaded(program);
        c.env("HEAPLENS_SHOW_STATS", "1");
        c
    } else {
        command(program)
    };
    c.env("LC_ALL", "C");
    c
}

/// Asserts a preloaded run printed heaplens's summary and the plain run did not.
fn assert_loaded_only_when_preloaded(with: &Run, without: &Run, what: &str) {
    assert!(
        has_stats_summary(&with.stderr),
        "{what}: heaplens was not loaded\n{}",
        with.describe()
    );
    assert!(
        !has_stats_summary(&without.stderr),
        "{what}: summary without heaplens\n{}",
        without.describe()
    );
}

// --- python3 -----------------------------------------------------------------------------------

/// The real interpreter behind `python3` (skipping any version-manager shim).
fn python() -> PathBuf {
    let out = run(
        command("python3").args(["-c", "import sys; print(sys.executable)"]),
        TIMEOUT,
    );
    out.assert_success("python3 -c sys.executable");
    PathBuf::from(out.stdout.trim())
}

fn run_python(python: &Path, heaplens: bool) -> Run {
    let mut c = cmd(python, heaplens);
    c.arg(test_file("py/workload.py"))
        .env("PYTHONMALLOC", "malloc") // every object through malloc, not pymalloc's arenas
        .env("PYTHONHASHSEED", "0")
        .env_remove("PYTHONPATH");
    run(&mut c, TIMEOUT)
}

#[test]
fn python_workload_prints_the_same() {
    let python = python();
    let without = run_python(&python, false);
    without.assert_success("python3 workload on glibc");
    let with = run_python(&python, true);
    with.assert_success("python3 workload under heaplens");
    assert!(without.stdout.ends_with("done\n"), "{}", without.describe());
    assert_eq!(
        with.stdout,
        without.stdout,
        "python3 output differs under heaplens\n{}",
        with.describe()
    );
    assert!(
        with.stderr.contains("heaplens mapped: True"),
        "{}",
        with.describe()
    );
    assert!(
        without.stderr.contains("heaplens mapped: False"),
        "{}",
        without.describe()
    );
    assert_loaded_only_when_preloaded(&with, &without, "python3");
}

// --- gcc -----------------------------------------------------------------------------------------

#[test]
fn gcc_builds_the_same_program() {
    let scratch = Scratch::new("gcc");
    let src = test_file("c/gcc_input.c");
    let mut runs = Vec::new();
    for heaplens in [false, true] {
        let exe = scratch.join(if heaplens {
            "prog-heaplens"
        } else {
            "prog-glibc"
        });
        let out = run(
            cmd("gcc", heaplens)
                .args(["-O2", "-Wall", "-Wextra"])
                .arg(&src)
                .arg("-o")
                .arg(&exe),
            TIMEOUT,
        );
        out.assert_success(&format!("gcc (heaplens: {heaplens})"));
        let prog = run(&mut command(&exe), TIMEOUT);
        prog.assert_success("the compiled program");
        runs.push((out, exe, prog));
    }
    let [
        (gcc_glibc, exe_glibc, prog_glibc),
        (gcc_heaplens, exe_heaplens, prog_heaplens),
    ] = &runs[..]
    else {
        unreachable!("two runs")
    };
    assert_eq!(gcc_heaplens.stdout, gcc_glibc.stdout);
    assert!(
        prog_glibc.stdout.starts_with("primes below 20000: 2262"),
        "{}",
        prog_glibc.describe()
    );
    assert_eq!(
        prog_heaplens.stdout, prog_glibc.stdout,
        "the programs gcc built behave differently"
    );
    let bytes = |p: &Path| std::fs::read(p).expect("read compiled program");
    assert!(
        bytes(exe_heaplens) == bytes(exe_glibc),
        "gcc produced a different binary under heaplens"
    );
    // gcc, cc1, as, collect2 and ld each print a summary at exit: the children were preloaded too.
    assert!(
        stats_summary_count(&gcc_heaplens.stderr) >= 3,
        "expected summaries from gcc and its children\n{}",
        gcc_heaplens.describe()
    );
    assert_loaded_only_when_preloaded(gcc_heaplens, gcc_glibc, "gcc");
}

#[test]
fn gcc_reports_the_same_errors() {
    let scratch = Scratch::new("gcc-error");
    let src = test_file("c/gcc_error.c");
    let outputs: Vec<Run> = [false, true]
        .into_iter()
        .map(|heaplens| {
            let mut c = cmd("gcc", heaplens);
            // the diagnostics are compared byte for byte: no summary on stderr this time
            c.env_remove("HEAPLENS_SHOW_STATS")
                .args(["-O2", "-Wall", "-Wextra", "-fdiagnostics-color=never", "-c"])
                .arg(&src)
                .arg("-o")
                .arg(scratch.join("error.o"));
            run(&mut c, TIMEOUT)
        })
        .collect();
    let [without, with] = &outputs[..] else {
        unreachable!("two runs")
    };
    assert_eq!(without.status.code(), Some(1), "{}", without.describe());
    assert!(
        without.stderr.contains("has no member named"),
        "{}",
        without.describe()
    );
    assert_eq!(
        with.status.code(),
        without.status.code(),
        "{}",
        with.describe()
    );
    assert_eq!(
        with.stderr, without.stderr,
        "gcc diagnostics differ under heaplens"
    );
}

// --- git -----------------------------------------------------------------------------------------

/// Contents of file `file` at commit `commit` of the throwaway repository: a few hundred lines
/// that change a little from commit to commit, so diffs, blame and delta packing have work.
fn file_text(file: usize, commit: usize) -> String {
    let mut s = String::new();
    for line in 0..(150 + file * 40) {
        let version = if (line + file) % 9 < commit {
            commit
        } else {
            0
        };
        s.push_str(&format!(
            "file {file} line {line} version {version} {}\n",
            "x".repeat((line * 7 + file) % 50)
        ));
    }
    s
}

/// Builds a repository with history in `dir` (with heaplens preloaded or not) and returns
/// everything the read-only commands printed, plus the stderr of all commands.
fn git_transcript(dir: &Path, heaplens: bool) -> (String, String) {
    let home = dir.join("home");
    let repo = dir.join("repo");
    std::fs::create_dir_all(&home).expect("create home");
    std::fs::create_dir_all(&repo).expect("create repo");
    let mut transcript = String::new();
    let mut stderr = String::new();
    let mut git = |args: &[&str], record: bool| {
        let mut c = cmd("git", heaplens);
        c.arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "pack.threads=2",
                "-c",
                "core.pager=cat",
                "-c",
                "color.ui=never",
            ])
            .args(args)
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Heap Lens")
            .env("GIT_AUTHOR_EMAIL", "heaplens@example.invalid")
            .env("GIT_COMMITTER_NAME", "Heap Lens")
            .env("GIT_COMMITTER_EMAIL", "heaplens@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
        let out = run(&mut c, TIMEOUT);
        out.assert_success(&format!("git {args:?} (heaplens: {heaplens})"));
        if record {
            transcript.push_str(&format!("$ git {}\n{}", args.join(" "), out.stdout));
        }
        stderr.push_str(&out.stderr);
    };

    git(&["init", "-q", "-b", "main"], false);
    for commit in 0..6 {
        for file in 0..(4 + commit) {
            std::fs::write(repo.join(format!("f{file}.txt")), file_text(file, commit))
                .expect("write file");
        }
        if commit == 4 {
            std::fs::remove_file(repo.join("f1.txt")).expect("remove file");
        }
        git(&["add", "-A"], false);
        git(
            &[
                "commit",
                "-q",
                "-m",
                &format!("commit {commit}\n\nchanges {commit} files"),
            ],
            false,
        );
    }
    git(&["checkout", "-q", "-b", "side", "HEAD~2"], false);
    std::fs::write(repo.join("side.txt"), file_text(9, 3)).expect("write side file");
    git(&["add", "side.txt"], false);
    git(&["commit", "-q", "-m", "on a side branch"], false);
    git(&["checkout", "-q", "main"], false);
    git(
        &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
        false,
    );

    git(&["log", "--oneline", "--graph", "--all"], true);
    git(&["log", "--stat", "-p", "-n", "4"], true);
    git(&["diff", "HEAD~5", "HEAD"], true);
    git(&["show", "HEAD~1"], true);
    git(&["blame", "-s", "f3.txt"], true);
    git(&["rev-list", "--all", "--objects"], true);
    git(&["gc", "-q"], false);
    git(&["fsck", "--full", "--strict"], true);
    git(&["cat-file", "--batch-check", "--batch-all-objects"], true);
    git(&["ls-files", "-s"], true);
    git(&["grep", "-n", "line 7 version 5"], true);
    std::fs::write(repo.join("f0.txt"), file_text(0, 9)).expect("modify file");
    std::fs::write(repo.join("new.txt"), "untracked\n").expect("write untracked file");
    git(&["status", "--porcelain"], true);
    git(&["diff", "--stat"], true);
    (transcript, stderr)
}

#[test]
fn git_history_and_maintenance_print_the_same() {
    let scratch = Scratch::new("git");
    let (without, _) = git_transcript(&scratch.join("glibc"), false);
    let (with, with_stderr) = git_transcript(&scratch.join("heaplens"), true);
    assert!(
        without.contains("merge side") && without.contains("?? new.txt"),
        "{without}"
    );
    assert_eq!(with, without, "git output differs under heaplens");
    assert!(
        has_stats_summary(&with_stderr),
        "heaplens was not loaded into git\n{with_stderr}"
    );
}

#[test]
fn git_on_this_repository_prints_the_same() {
    // Read-only commands whose output cannot change while someone works in the tree.
    let root = common::workspace_root();
    let files = [
        "allocator/preload/Cargo.toml",
        "allocator/preload/tests/c/contracts.c",
        "allocator/include/heaplens.h",
    ];
    let mut outputs = Vec::new();
    for heaplens in [false, true] {
        let mut transcript = String::new();
        let mut stderr = String::new();
        for args in [
            vec![
                "rev-parse",
                "--show-toplevel",
                "--is-inside-work-tree",
                "--git-dir",
            ],
            [&["hash-object"], &files[..]].concat(),
            vec![
                "check-ignore",
                "-v",
                "--no-index",
                "target/release/libheaplens.so",
            ],
        ] {
            let out = run(
                cmd("git", heaplens).arg("-C").arg(&root).args(&args),
                TIMEOUT,
            );
            out.assert_success(&format!("git {args:?}"));
            transcript.push_str(&out.stdout);
            stderr.push_str(&out.stderr);
        }
        outputs.push((transcript, stderr));
    }
    let [(without, _), (with, with_stderr)] = &outputs[..] else {
        unreachable!("two runs")
    };
    assert!(
        without.contains(&format!("{}\n", root.display())),
        "{without}"
    );
    assert_eq!(with, without, "git output differs under heaplens");
    assert!(
        has_stats_summary(with_stderr),
        "heaplens was not loaded into git\n{with_stderr}"
    );
}

// --- sort ----------------------------------------------------------------------------------------

/// A deterministic input of `lines` lines: a word, a number and some padding.
fn sort_input(lines: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = String::with_capacity(lines * 40);
    for _ in 0..lines {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let word: String = (0..(3 + (state >> 60) as usize))
            .map(|i| char::from(b'a' + ((state >> (i * 5)) % 26) as u8))
            .collect();
        s.push_str(&format!(
            "{word} {} {}\n",
            (state >> 20) % 100_000,
            "-".repeat(((state >> 40) % 30) as usize)
        ));
    }
    s
}

#[test]
fn sort_of_a_big_input_prints_the_same() {
    let scratch = Scratch::new("sort");
    let input = scratch.join("input.txt");
    std::fs::write(&input, sort_input(200_000)).expect("write sort input");
    let variants: [&[&str]; 4] = [
        &[],
        &["-n", "-k2"],
        &["-u", "-k1,1"],
        &["--parallel=2", "-S", "1M", "-r"],
    ];
    for args in variants {
        let [without, with] = [false, true].map(|heaplens| {
            let mut c = cmd("sort", heaplens);
            // sort closes stderr before the exit summary can be written (see the test below), so
            // the proof that heaplens is in the process is the loader's word: it ran our init.
            c.env("LD_DEBUG", "files").args(args).arg(&input);
            let out = run(&mut c, TIMEOUT);
            out.assert_success(&format!("sort {args:?} (heaplens: {heaplens})"));
            out
        });
        assert!(without.stdout.len() > 100_000, "sort printed too little");
        assert!(
            with.stdout == without.stdout,
            "sort {args:?} output differs under heaplens"
        );
        let init = format!("calling init: {}", common::preload_lib().display());
        assert!(
            with.stderr.contains(&init),
            "heaplens was not initialised in sort\n{}",
            with.stderr
        );
        assert!(
            !without.stderr.contains("libheaplens"),
            "{}",
            without.stderr
        );
    }
}

// --- HEAPLENS_SHOW_STATS -------------------------------------------------------------------------

#[test]
fn show_stats_prints_one_summary_at_exit_only_when_asked() {
    let python = python();
    let script = "import json; print(len(json.dumps([str(i) * 10 for i in range(100000)])))";
    let asked = run(
        preloaded(&python)
            .args(["-c", script])
            .env("HEAPLENS_SHOW_STATS", "1"),
        TIMEOUT,
    );
    asked.assert_success("python3 with HEAPLENS_SHOW_STATS=1");
    assert_eq!(
        stats_summary_count(&asked.stderr),
        1,
        "{}",
        asked.describe()
    );
    assert!(has_stats_summary(&asked.stderr), "{}", asked.describe());
    assert_eq!(
        asked.stdout, "5288900\n",
        "the summary must not go to stdout"
    );

    for value in [None, Some("0")] {
        let mut c = preloaded(&python);
        c.args(["-c", script]);
        if let Some(v) = value {
            c.env("HEAPLENS_SHOW_STATS", v);
        }
        let quiet = run(&mut c, TIMEOUT);
        quiet.assert_success(&format!("python3 with HEAPLENS_SHOW_STATS={value:?}"));
        assert_eq!(quiet.stderr, "", "{}", quiet.describe());
        assert_eq!(quiet.stdout, asked.stdout);
    }
}

/// A program that frees a working set and builds it again a little later, round after round:
/// the first rounds fault it in again after its purge, then the thread's purge delay has grown
/// past the pause and the rounds find it resident (as under mimalloc, whose delay is longer), and
/// the exit summary says how long the delay grew. With the fixed 10 ms delay every round faulted
/// its 8 MiB in again (about 2000 faults a round, all 20 rounds).
#[test]
fn a_working_set_taken_again_after_each_pause_stays_resident_once_the_delay_has_grown() {
    let script = "import resource, time\n\
                  faults = []\n\
                  for r in range(20):\n\
                  \x20   before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n\
                  \x20   blocks = [bytearray(2000) for _ in range(4000)]\n\
                  \x20   del blocks\n\
                  \x20   faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n\
                  \x20   time.sleep(0.03)\n\
                  print(' '.join(map(str, faults)))\n";
    let out = run(
        preloaded(python())
            .args(["-c", script])
            .env("HEAPLENS_SHOW_STATS", "1")
            .env("HEAPLENS_PURGE_DELAY_MS", "10"),
        TIMEOUT,
    );
    out.assert_success("python3 rounds with pauses");
    let faults: Vec<u64> = out
        .stdout
        .split_whitespace()
        .map(|f| f.parse().expect("a count of faults"))
        .collect();
    assert_eq!(faults.len(), 20, "{}", out.describe());
    // The first round faults its 8 MiB in (about 2000 pages); once the delay covers the pause,
    // a round faults next to nothing.
    let first = faults[0];
    let late = faults[15..].iter().copied().min().unwrap_or(u64::MAX);
    assert!(
        first >= 1000,
        "the first round faulted only {first} pages: {faults:?}"
    );
    assert!(
        late * 4 < first,
        "the last rounds still fault their memory in again: {faults:?}\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("purge delay grew to"),
        "the summary does not say the delay grew\n{}",
        out.describe()
    );
}

#[test]
fn show_stats_survives_a_program_closing_stderr_at_exit() {
    // GNU coreutils close stdout and stderr in an atexit handler (gnulib close_stdout), which
    // runs before heaplens's own exit handler: the summary must still reach the stderr the
    // program started with.
    let scratch = Scratch::new("show-stats-sort");
    let input = scratch.join("input.txt");
    std::fs::write(&input, sort_input(1000)).expect("write input");
    let out = run(
        preloaded("sort")
            .arg(&input)
            .env("HEAPLENS_SHOW_STATS", "1"),
        TIMEOUT,
    );
    out.assert_success("sort with HEAPLENS_SHOW_STATS=1");
    assert_eq!(out.stdout.lines().count(), 1000);
    assert_eq!(
        stats_summary_count(&out.stderr),
        1,
        "no summary from sort\n{}",
        out.describe()
    );
}
