//! What the benchmarks of this crate share: building heaplens, compiling the C workloads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The value of option `name` (`--rounds 3`) on the command line, or `default`.
pub fn count_option(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds `target/release/heaplens` and `libheaplens.so` (release, as a user would).
pub fn build_heaplens(root: &Path) {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "heaplens",
            "-p",
            "heaplens-preload",
        ])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success());
}

/// Compiles the C workload `source` (relative to `root`) to `out`, with or without frame
/// pointers.
pub fn compile(root: &Path, source: &str, out: &Path, frame_pointers: bool) {
    let fp = if frame_pointers {
        "-fno-omit-frame-pointer"
    } else {
        "-fomit-frame-pointer"
    };
    let ok = Command::new("cc")
        .args(["-O2", "-g", "-pthread", fp, "-I"])
        .arg(root.join("allocator/preload/benches/c"))
        .arg("-o")
        .arg(out)
        .arg(root.join(source))
        .arg("-lm")
        .status()
        .expect("cc")
        .success();
    assert!(ok, "cc {source}");
}
