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

/// Builds libheaplens.so, once per test binary.
pub fn build_preload() {
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
}

/// Compiles `sample-apps/c/NAME.c` into `dir` (with `-O1 -pthread`); returns the program.
pub fn sample_c(dir: &Path, name: &str) -> PathBuf {
    compile_c(dir, &format!("sample-apps/c/{name}.c"), "-O1")
}

/// Compiles the C file `source` (a path from the repository root) into `dir` with `-pthread`
/// and optimisation `opt` (`-O2`); returns the program, named after the file.
pub fn compile_c(dir: &Path, source: &str, opt: &str) -> PathBuf {
    let exe = dir.join(Path::new(source).file_stem().expect("a file name"));
    let ok = Command::new("cc")
        .args([opt, "-pthread", "-o"])
        .arg(&exe)
        .arg(root().join(source))
        .status()
        .expect("cc")
        .success();
    assert!(ok, "compiling {source} failed");
    exe
}

/// Builds libheaplens.so (once) and `sample-apps/c/known_counts.c` into `dir`.
pub fn known_counts(dir: &Path) -> PathBuf {
    build_preload();
    sample_c(dir, "known_counts")
}

/// A virtual X display, stopped when dropped.
pub struct Display {
    server: std::process::Child,
    /// Its name, for `DISPLAY`.
    pub name: String,
}

impl Display {
    /// A fresh display: Xvfb picks a free number and tells it (`-displayfd`), so tests running
    /// at the same time (and other X servers) never collide. None when Xvfb is not installed.
    /// `-noreset`: by default an X server resets when its last client goes, and a window opened
    /// during the reset cannot connect (a test that killed one viewer and opened the next on the
    /// same display failed so, once in a run of `.ci/run`).
    pub fn start() -> Option<Display> {
        use std::io::{BufRead, BufReader};
        let mut server = Command::new("Xvfb")
            .args([
                "-noreset",
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        BufReader::new(server.stdout.take()?)
            .read_line(&mut line)
            .ok()?;
        let number: u32 = line
            .trim()
            .parse()
            .expect("Xvfb reports its display number");
        Some(Display {
            server,
            name: format!(":{number}"),
        })
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
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
