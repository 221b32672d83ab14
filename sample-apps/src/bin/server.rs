//! The `server` scenario as a program: run it under `LD_PRELOAD=libheaplens.so` (or
//! `heaplens record -- target/release/server`) to watch heaplens; `--short` runs it quickly.
//! It uses the system allocator, so under the preload every allocation goes to heaplens.

use std::process::ExitCode;

fn main() -> ExitCode {
    heaplens_sample_apps::main_for("server")
}
