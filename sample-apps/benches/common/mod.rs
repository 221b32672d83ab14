//! What the benchmarks of this crate share: building heaplens, compiling the C workloads.

use std::path::Path;
use std::process::Command;

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
