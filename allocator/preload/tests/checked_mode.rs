//! Checked mode (`HEAPLENS_CHECK=1`) under `LD_PRELOAD`: each misuse in `tests/c/checked.c`
//! aborts with a `heaplens: ` report naming the pointer and the kind of misuse; correct use
//! runs clean with and without checking.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{Run, Scratch, command, compile_c, preloaded, run};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The signal `abort()` raises on Linux.
const SIGABRT: i32 = 6;

/// `checked.c`, compiled into `scratch`.
fn program(scratch: &Scratch) -> PathBuf {
    compile_c(scratch, "checked.c", &[])
}

fn run_checked(mode: &str) -> Run {
    let scratch = Scratch::new(mode);
    run(
        preloaded(program(&scratch))
            .arg(mode)
            .env("HEAPLENS_CHECK", "1"),
        TIMEOUT,
    )
}

/// Asserts the program aborted (SIGABRT) with a report line that starts with `heaplens: `,
/// contains `phrase` and names the address the program printed before the misuse.
fn assert_reported(mode: &str, phrase: &str) {
    let out = run_checked(mode);
    let addr = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("addr 0x"))
        .unwrap_or_else(|| panic!("{mode}: no address printed\n{}", out.describe()));
    let addr = u64::from_str_radix(addr.trim(), 16).expect("hex address");
    let addr_hex = format!("{addr:x}");
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "{mode}: expected SIGABRT\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("survived"),
        "{mode}: misuse went unnoticed\n{}",
        out.describe()
    );
    let report = out
        .stderr
        .lines()
        .find(|l| l.starts_with("heaplens: "))
        .unwrap_or_else(|| panic!("{mode}: no 'heaplens: ' report\n{}", out.describe()));
    assert!(
        report.contains(phrase),
        "{mode}: report lacks '{phrase}'\n{}",
        out.describe()
    );
    assert!(
        report.to_ascii_lowercase().contains(&addr_hex),
        "{mode}: report does not name {addr:#x}\n{}",
        out.describe()
    );
}

#[test]
fn double_free_aborts_with_report() {
    assert_reported("double-free", "double free");
}

#[test]
fn free_of_stack_pointer_aborts_with_report() {
    assert_reported("free-stack", "never returned");
}

#[test]
fn free_of_global_pointer_aborts_with_report() {
    assert_reported("free-global", "never returned");
}

#[test]
fn write_past_the_end_aborts_with_report() {
    assert_reported("overflow", "write past the end");
}

#[test]
fn correct_use_runs_clean_with_and_without_checking() {
    let scratch = Scratch::new("checked-ok");
    let exe = program(&scratch);
    for checked in [true, false] {
        let mut cmd = preloaded(&exe);
        cmd.arg("ok");
        if checked {
            cmd.env("HEAPLENS_CHECK", "1");
        }
        let out = run(&mut cmd, TIMEOUT);
        out.assert_success(&format!("checked.c ok (HEAPLENS_CHECK={checked})"));
        assert_eq!(out.stdout, "ok\n", "{}", out.describe());
        assert!(
            !out.stderr.contains("heaplens: "),
            "false report\n{}",
            out.describe()
        );
    }
    // and the program itself is correct by glibc's judgement too
    let out = run(command(&exe).arg("ok"), TIMEOUT);
    out.assert_success("checked.c ok on glibc");
}
