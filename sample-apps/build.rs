//! Builds the C scenario (`c/alloc_workload.c`) with the system C compiler, so `heaplens demo
//! c-program` can run it under LD_PRELOAD. Without a C compiler the rest still builds, and the
//! demo says the C program is missing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=c/alloc_workload.c");
    println!("cargo::rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let exe = out.join("alloc_workload");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args(["-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg("c/alloc_workload.c")
        .status()
        .is_ok_and(|s| s.success());
    if built {
        println!("cargo::rustc-env=HEAPLENS_C_WORKLOAD={}", exe.display());
    } else {
        println!(
            "cargo::warning=could not compile c/alloc_workload.c with {cc}: `heaplens demo c-program` will be unavailable"
        );
    }
}
