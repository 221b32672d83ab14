//! Builds the C programs with the system C compiler: the C scenario (`c/alloc_workload.c`), so
//! `heaplens demo c-program` can run it under LD_PRELOAD, and the live-viewing workload
//! (`c/live_heavy.c`) that `heaplens`'s `live_frames` benchmark watches. Without a C compiler
//! the rest still builds, and the demo says the C program is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `c/NAME.c` into `out`; sets `VAR` to the executable's path when it built.
fn build(cc: &str, out: &Path, name: &str, var: &str, missing: &str) {
    println!("cargo::rerun-if-changed=c/{name}.c");
    let exe = out.join(name);
    let built = Command::new(cc)
        .args(["-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(format!("c/{name}.c"))
        .status()
        .is_ok_and(|s| s.success());
    if built {
        println!("cargo::rustc-env={var}={}", exe.display());
    } else {
        println!("cargo::warning=could not compile c/{name}.c with {cc}: {missing}");
    }
}

fn main() {
    println!("cargo::rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    build(
        &cc,
        &out,
        "alloc_workload",
        "HEAPLENS_C_WORKLOAD",
        "`heaplens demo c-program` will be unavailable",
    );
    build(
        &cc,
        &out,
        "live_heavy",
        "HEAPLENS_C_LIVE_HEAVY",
        "the live_frames benchmark will be unavailable",
    );
}
