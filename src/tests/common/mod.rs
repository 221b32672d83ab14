//! What the command's integration tests share: the heaplens binary, libheaplens.so, and the
//! C program whose allocations are known.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `heaplens`, told where libheaplens.so is (it finds it beside itself only in a release build).
pub fn heaplens() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_heaplens"));
    c.env(
        "HEAPLENS_PRELOAD",
        root().join("target/release/libheaplens.so"),
    );
    c
}

/// A fresh directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("heaplens-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds libheaplens.so (once) and `sample-apps/c/known_counts.c` into `dir`.
pub fn known_counts(dir: &Path) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "heaplens-preload"])
            .current_dir(root())
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building libheaplens.so failed");
    });
    let exe = dir.join("known_counts");
    let ok = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(root().join("sample-apps/c/known_counts.c"))
        .status()
        .expect("cc")
        .success();
    assert!(ok, "compiling known_counts.c failed");
    exe
}

/// What `heaplens ARGS TRACE` prints as JSON (`stats --json`, `leaks --json`); it must succeed.
pub fn json(args: &[&str], trace: &Path) -> serde_json::Value {
    let out = heaplens().args(args).arg(trace).output().unwrap();
    let out = succeeded(out, &format!("heaplens {}", args.join(" ")));
    serde_json::from_slice(&out.stdout).expect("heaplens prints JSON")
}

/// Builds libheaplens.so and the scenario programs of `sample-apps` (once).
pub fn build_scenarios() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let ok = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "heaplens-preload",
                "-p",
                "heaplens-sample-apps",
            ])
            .current_dir(root())
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building the scenarios failed");
    });
}

/// `out`, once it is known to have succeeded (else its stderr, labelled `what`, fails the test).
pub fn succeeded(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `heaplens record OPTIONS -o TRACE -- COMMAND`, which must succeed.
pub fn record<S: AsRef<std::ffi::OsStr>>(trace: &Path, options: &[&str], command: &[S]) {
    let out = heaplens()
        .arg("record")
        .args(options)
        .arg("-o")
        .arg(trace)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    succeeded(out, &format!("recording {}", trace.display()));
}
