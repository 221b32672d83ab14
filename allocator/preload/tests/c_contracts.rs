//! The C contracts of the malloc family (`tests/c/contracts.c`), under `LD_PRELOAD` and, to
//! prove the program is a fair judge, under glibc's own malloc.

mod common;

use std::time::Duration;

use common::{Scratch, command, compile_c, preloaded, run};

/// The sections `contracts.c` prints, in order, each as "ok NAME" when all its checks held.
const SECTIONS: [&str; 11] = [
    "malloc0",
    "huge-sizes",
    "failed-realloc",
    "realloc-contents",
    "usable-size",
    "alignments",
    "page-aligned",
    "bad-alignments",
    "calloc-zeroes",
    "cross-thread",
    "fork",
];

const TIMEOUT: Duration = Duration::from_secs(30);

fn expected_stdout(allocator: &str) -> String {
    let mut s = format!("allocator: {allocator}\n");
    for section in SECTIONS {
        s.push_str(&format!("ok {section}\n"));
    }
    s.push_str("done\n");
    s
}

fn build(scratch: &Scratch) -> std::path::PathBuf {
    compile_c(scratch, "contracts.c", &["-ldl"])
}

#[test]
fn contracts_hold_under_preload() {
    let scratch = Scratch::new("contracts-preload");
    let exe = build(&scratch);
    let out = run(&mut preloaded(&exe), TIMEOUT);
    out.assert_success("contracts.c under LD_PRELOAD=libheaplens.so");
    assert_eq!(
        out.stdout,
        expected_stdout("libheaplens.so"),
        "{}",
        out.describe()
    );
}

#[test]
fn contracts_hold_in_checked_mode() {
    // Checked mode must not change any contract (usable sizes, alignment, zeroing, fork).
    let scratch = Scratch::new("contracts-checked");
    let exe = build(&scratch);
    let out = run(preloaded(&exe).env("HEAPLENS_CHECK", "1"), TIMEOUT);
    out.assert_success("contracts.c under LD_PRELOAD with HEAPLENS_CHECK=1");
    assert_eq!(
        out.stdout,
        expected_stdout("libheaplens.so"),
        "{}",
        out.describe()
    );
}

#[test]
fn contracts_program_passes_on_glibc() {
    // The same program against the system allocator: the checks ask nothing glibc does not do
    // (the few heaplens-only ones are skipped when malloc is glibc's).
    let scratch = Scratch::new("contracts-glibc");
    let exe = build(&scratch);
    let out = run(&mut command(&exe), TIMEOUT);
    out.assert_success("contracts.c on glibc");
    assert_eq!(
        out.stdout,
        expected_stdout("libc.so.6"),
        "{}",
        out.describe()
    );
}
