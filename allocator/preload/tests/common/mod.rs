//! Shared by the test binaries: builds `libheaplens.so` once per binary, compiles the C
//! programs under `tests/c`, and runs programs (with or without `LD_PRELOAD`) under a timeout.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variables that change how heaplens or the loader behave; every command starts
/// without them so the caller's shell cannot change a test's outcome.
const SCRUBBED_ENV: [&str; 10] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "HEAPLENS_CHECK",
    "HEAPLENS_SHOW_STATS",
    "HEAPLENS_PURGE_DELAY_MS",
    "HEAPLENS_STACKS",
    "HEAPLENS_SAMPLE_BYTES",
    "HEAPLENS_SAMPLE_SEED",
    "HEAPLENS_SOCKET",
    "HEAPLENS_LAUNCHER_PID",
];

/// The workspace root (`allocator/preload/../..`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().expect("workspace root exists")
}

/// This crate's directory (`allocator/preload`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `allocator/include`, where `heaplens.h` lives.
pub fn include_dir() -> PathBuf {
    crate_dir()
        .join("../include")
        .canonicalize()
        .expect("allocator/include exists")
}

/// A file under `tests/` of this crate.
pub fn test_file(relative: &str) -> PathBuf {
    crate_dir().join("tests").join(relative)
}

/// The profile directory this test binary was built into (`<target>/release`): the binary
/// runs from `<target>/release/deps/`, so this also honours `CARGO_TARGET_DIR`/`--target-dir`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds `libheaplens.so` (once per test binary) with `cargo build --release -p heaplens-preload`
/// into the same target directory and returns its path.
pub fn preload_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("profile dir has a parent");
        let output = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "heaplens-preload",
                "--target-dir",
            ])
            .arg(target)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build -p heaplens-preload failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lib = profile.join("libheaplens.so");
        assert!(lib.is_file(), "{} missing after the build", lib.display());
        lib
    })
}

/// A scratch directory under cargo's target tmp dir, removed on drop unless the test failed
/// (then it is kept for a look at the binaries).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("heaplens-preload")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Compiles C (or C++, chosen by `compiler`) `sources` into `out` with warnings as errors;
/// `extra` goes last (libraries). Builtins are off and optimisation is low so the compiler cannot
/// fold away what the program checks about `malloc`'s results (alignment, zeroing, NULL).
pub fn compile_with(compiler: &str, sources: &[PathBuf], out: &Path, extra: &[&str]) {
    let output = Command::new(compiler)
        .args([
            "-O1",
            "-fno-builtin",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .args(sources)
        .arg("-o")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(
        output.status.success(),
        "{compiler} failed on {sources:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Compiles one C file from `tests/c` into `scratch`, returning the executable.
pub fn compile_c(scratch: &Scratch, source: &str, extra: &[&str]) -> PathBuf {
    let src = test_file(&format!("c/{source}"));
    let out = scratch.join(source.trim_end_matches(".c"));
    compile_with("cc", &[src], &out, extra);
    out
}

/// A command with the heaplens/loader variables removed.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// `command`, run with `LD_PRELOAD=libheaplens.so`.
pub fn preloaded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = command(program);
    cmd.env("LD_PRELOAD", preload_lib());
    cmd
}

/// What a finished program left.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "status: {:?} (signal {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.status.signal(),
            self.stdout,
            self.stderr
        );
        s
    }

    /// Panics with the full output unless the program exited with status 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what} failed\n{}", self.describe());
        self
    }
}

/// Runs `cmd` with stdin closed, collecting its output; kills it and panics after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{cmd:?} timed out after {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// True when `text` holds a heaplens statistics summary (`print_stats`, `hl_stats_print`,
/// `HEAPLENS_SHOW_STATS=1`), which opens with
/// `heaplens: N threads, N segments, N pages in use` and then lists reserved/committed bytes.
pub fn has_stats_summary(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("heaplens: ") && l.contains(" segments, ") && l.ends_with(" pages in use")
    }) && text.contains("committed")
}

/// How many statistics summaries `text` holds (one per process that printed one).
pub fn stats_summary_count(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("heaplens: ") && l.ends_with(" pages in use"))
        .count()
}
