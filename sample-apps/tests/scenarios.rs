//! The scenario catalogue, each scenario's short form run in-process (system allocator), the
//! binaries, and the README that repeats the stories.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use heaplens_sample_apps::{Params, find, scenarios};

const NAMES: [&str; 6] = [
    "fragmentation",
    "producer-consumer",
    "thread-churn",
    "server",
    "leak",
    "large",
];

/// The markers of one run of `name`'s short form.
fn marks_of(name: &str) -> Vec<String> {
    let scenario = find(name).expect(name);
    let marks = Mutex::new(Vec::new());
    let mark = |label: &str| {
        assert!(label.len() <= 64, "marker too long: {label:?}");
        marks.lock().unwrap().push(label.to_owned());
    };
    let t = Instant::now();
    (scenario.run)(&Params {
        short: true,
        mark: &mark,
        pace: Duration::ZERO,
    });
    eprintln!("{name}: {:.3} s", t.elapsed().as_secs_f64());
    marks.into_inner().unwrap()
}

#[test]
fn catalogue() {
    let names: Vec<&str> = scenarios().iter().map(|s| s.name).collect();
    assert_eq!(names, NAMES);
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
    for s in scenarios() {
        assert!(std::ptr::eq(find(s.name).unwrap(), s));
        assert!(s.title.len() > 20 && s.title.len() < 80, "{}", s.title);
        let sentences = s.story.matches(". ").count() + usize::from(s.story.ends_with('.'));
        assert!(
            (3..=6).contains(&sentences),
            "{}: {sentences} sentences",
            s.name
        );
        assert!(
            s.story.contains("atch"),
            "{}: the story says what to watch",
            s.name
        );
        assert!(!s.story.contains("  "), "{}: double space in story", s.name);
    }
    assert!(find("nope").is_none());
    assert!(find("").is_none());
}

#[test]
fn fragmentation() {
    let m = marks_of("fragmentation");
    assert_eq!(
        m,
        [
            "phase: fill 40000 x 48-112 B",
            "phase: free 90%, keep every 10th",
            "phase: 4000 kept objects pin the pages",
            "phase: allocate 11238 x 256 B (other class)",
            "phase: refill 48-112 B, holes reused",
            "phase: free all",
            "phase: done, empty pages purged",
        ]
    );
}

#[test]
fn producer_consumer() {
    let m = marks_of("producer-consumer");
    assert_eq!(m.len(), 7, "{m:?}");
    // 2 producers x 4000 messages a round, every one checked and freed by a consumer.
    for round in 1..=3 {
        assert_eq!(m[2 * round - 2], format!("round {round}: produce and send"));
        assert_eq!(
            m[2 * round - 1],
            format!("round {round}: {} freed cross-thread", round * 8000)
        );
    }
    assert_eq!(m[6], "phase: done");
}

#[test]
fn thread_churn() {
    let m = marks_of("thread-churn");
    assert_eq!(m.len(), 3 * 3 + 2, "{m:?}");
    // 3 threads x 3000 blocks, every 4th outlives its thread; main frees the older half.
    assert_eq!(m[0], "round 1: 3 threads start");
    assert_eq!(m[1], "round 1: threads exited, 2250 blocks left");
    assert_eq!(m[2], "round 1: main freed 1125 survivors");
    // Round 2's threads free 3 x 187 of them and leave 3 x 750 new ones.
    assert_eq!(m[4], "round 2: threads exited, 2814 blocks left");
    assert_eq!(m[9], "phase: free the last 1478 survivors");
    assert_eq!(m[10], "phase: done");
}

#[test]
fn server() {
    let m = marks_of("server");
    assert_eq!(m.len(), 1 + 8 + 2, "{m:?}");
    assert_eq!(m[0], "phase: open with workers 1-4");
    // Workers retire one at a time (the order of the places' handovers can vary) and each
    // place's successor is the next generation's worker.
    let mut handovers = m[1..9].to_vec();
    handovers.sort();
    let expected: Vec<String> = (1..=8)
        .map(|w| format!("worker-{w} exited: worker-{} takes its place", w + 4))
        .collect();
    assert_eq!(handovers, expected);
    assert_eq!(m[9], "phase: shutdown: the last workers free every slot");
    // The first generation's terms are staggered (2 500, 5 000, 7 500, 10 000 requests), then
    // two full terms of 10 000 in each of the four places.
    assert_eq!(m[10], "phase: done: 105000 requests served");
}

#[test]
fn leak() {
    let m = marks_of("leak");
    assert_eq!(m.len(), 12, "{m:?}");
    assert_eq!(m[0], "phase: churn, leaking 1000 x 200 B");
    assert_eq!(m[1], "round 1: 100 blocks leaked so far");
    assert_eq!(m[10], "round 10: 1000 blocks leaked so far");
    assert_eq!(m[11], "phase: exit with 1000 x 200 B leaked");
}

#[test]
fn large() {
    let m = marks_of("large");
    assert_eq!(
        m,
        [
            "wave 1: 4 large blocks",
            "wave 1: 2 huge blocks",
            "wave 1: free the large blocks",
            "wave 1: free the huge blocks",
            "wave 2: 4 large blocks",
            "wave 2: 2 huge blocks",
            "wave 2: free the large blocks",
            "wave 2: free the huge blocks",
            "phase: done, segments back to the OS",
        ]
    );
}

/// Runs a binary with `args`; its exit code and stdout.
fn run_bin(exe: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(exe)
        .args(args)
        .env_remove("LD_PRELOAD")
        .output()
        .expect(exe);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn binaries_run_their_scenario() {
    let exes = [
        env!("CARGO_BIN_EXE_fragmentation"),
        env!("CARGO_BIN_EXE_producer-consumer"),
        env!("CARGO_BIN_EXE_thread-churn"),
        env!("CARGO_BIN_EXE_server"),
        env!("CARGO_BIN_EXE_leak"),
        env!("CARGO_BIN_EXE_large"),
    ];
    for (name, exe) in NAMES.iter().zip(exes) {
        let s = find(name).unwrap();
        let (code, out) = run_bin(exe, &["--short"]);
        assert_eq!(code, Some(0), "{name}: {out}");
        assert!(out.starts_with(s.title), "{name}: {out}");
        assert!(out.contains("not preloaded"), "{name}: {out}");
        assert!(out.contains(&format!("{name}: done")), "{name}: {out}");
        // The story, wrapped for the terminal.
        let words: Vec<&str> = out.split_whitespace().collect();
        let story: Vec<&str> = s.story.split_whitespace().collect();
        assert!(
            words.windows(story.len()).any(|w| w == story),
            "{name}: {out}"
        );
    }
}

#[test]
fn fragmentation_binary_arguments() {
    let exe = env!("CARGO_BIN_EXE_fragmentation");
    let (code, out) = run_bin(exe, &["--short"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Fragmentation: long-lived objects pin mostly-empty pages"));
    assert!(out.contains("] phase: free 90%, keep every 10th"), "{out}");
    // --pace overrides the short form's zero pace: 7 phases of pauses of at least 1 ms.
    let (code, out) = run_bin(exe, &["--short", "--pace", "1"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_bin(exe, &["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--short"), "{out}");
    assert!(!out.contains("phase:"), "--help ran the scenario: {out}");
    assert_eq!(run_bin(exe, &["--bogus"]).0, Some(2));
    assert_eq!(run_bin(exe, &["--pace", "soon"]).0, Some(2));
}

/// A stand-in for `libheaplens.so`'s marker: the binaries find `hl_mark` with dlsym when a
/// preloaded library defines it.
#[test]
fn markers_reach_a_preloaded_hl_mark() {
    let dir = std::env::temp_dir().join(format!("heaplens-sample-apps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("mark.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nvoid hl_mark(const char *l) { fprintf(stderr, \"HL_MARK<%s>\\n\", l); }\n",
    )
    .unwrap();
    let lib = dir.join("libmark.so");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("cc (Debian package gcc)");
    assert!(cc.success());
    let out = Command::new(env!("CARGO_BIN_EXE_fragmentation"))
        .arg("--short")
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("not preloaded"), "{stdout}");
    let marks: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("HL_MARK<")?.strip_suffix('>'))
        .collect();
    assert_eq!(marks.len(), 7, "{stderr}");
    assert_eq!(marks[1], "phase: free 90%, keep every 10th");
}

#[test]
fn readme_tells_every_story() {
    let readme = include_str!("../README.md");
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = flat(readme);
    for s in scenarios() {
        assert!(
            readme.contains(&flat(s.story)),
            "README lacks the story of {}",
            s.name
        );
        assert!(
            readme.contains(s.title),
            "README lacks the title of {}",
            s.name
        );
        assert!(
            readme.contains(&format!("--bin {}", s.name)),
            "README lacks how to run {}",
            s.name
        );
    }
}
